"""The key table, the threshold grammar and the error boundary, by construction: every value is
a typed result in range or one UserError line, never a traceback, a hang or code run."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO
from sslrun.config import KEYS, Config, load_config, make_config, parse_overrides, save_config
from sslrun.errors import UserError
from sslrun.strategies import STRATEGIES
from sslrun.strategies.thresholds import first_epoch_above_one, parse_threshold


def test_every_config_key_has_a_row():
    assert set(KEYS) == {f for f in Config().to_dict() if f != "extra"}


@pytest.mark.parametrize("item", ["seed=-1", "image_size=1", "momentum=-1", "momentum=1", "lr=nan", "lr=0",
                                  "budget_s=nan", "budget_s=-1", "epoch_steps=-1", "warmup_steps=-1",
                                  "weight_decay=-1", "lambda_u=-1", "ema_decay=1", "workers=-2", "mu=0",
                                  "steps=1e3", "seed=true", "name=" + "x" * 300, "name=-rf", "sweep=a/b",
                                  "sweep=a\nb", "threshold=x\x1b[2J", "lr=0.1\n"])
def test_out_of_range_is_one_line(item, tmp_path):
    with pytest.raises(UserError) as err:
        make_config(parse_overrides([item, f"root={tmp_path}"]))
    assert item.split("=")[0] in str(err.value) and "\n" not in str(err.value)


def test_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        make_config({"root": str(tmp_path / "f")})


def test_long_derived_names_stay_distinct(tmp_path):
    a = make_config({"root": str(tmp_path), "threshold": "0.9+" + "0" * 250 + "1*epoch"})
    b = make_config({"root": str(tmp_path), "threshold": "0.9+" + "0" * 250 + "2*epoch"})
    assert len(a.name) <= 200 and a.name != b.name


def test_config_file_types_are_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: fast\n")
    with pytest.raises(UserError, match=r"c.yaml: lr=fast: expected a number"):
        load_config(path)
    cfg = make_config({"root": str(tmp_path), "strategy": "classical", "extra.t1": "3"})
    path.write_text(save_config(cfg))
    assert load_config(path) == cfg


def test_extra_yaml_error_is_one_line(tmp_path):
    with pytest.raises(UserError, match="not a YAML value") as err:
        make_config({"root": str(tmp_path), "extra.mixup": "{a: [1"})
    assert "\n" not in str(err.value)


def test_every_strategy_declares_its_extra_keys_with_defaults_in_range():
    for cls in STRATEGIES.values():
        declared = cls.declared_extra()
        assert "mixup" in declared
        for key, spec in declared.items():
            if spec.default is not None:
                assert spec.check(f"extra.{key}", spec.default) == spec.default


@pytest.mark.parametrize("text, at3", [("0.95", 0.95), ("0.9+0.02*epoch", 0.96), ("min(0.99, 0.9+0.02*epoch)", 0.96),
                                        ("max(0.5, step/1000)", 0.5), ("-(0.1-1)", 0.9), ("1.5e-1*epoch", 0.45)])
def test_threshold_grammar(text, at3):
    assert math.isclose(parse_threshold(text)(3, 0), at3)


@pytest.mark.parametrize("text", ["1/0", "9**9**9", "min()", "min(1)", "__import__('os')", "epoch.real", "1e999",
                                  "(" * 60 + "1" + ")" * 60, "1" * 300, "epoch/epoch", "lambda: 1", "[1]", "", "0.9+"])
def test_threshold_refuses_python(text):
    with pytest.raises(UserError, match="threshold="):
        parse_threshold(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.e+-*/(),epochstmainx _", max_size=60))
def test_threshold_is_a_number_or_one_line(text):
    try:
        f = parse_threshold(text)
    except UserError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(f(2, 100), float)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(KEYS)), st.one_of(st.text(max_size=20), st.integers(), st.floats(), st.booleans()))
def test_any_value_of_any_key_is_typed_or_one_line(key, value):
    try:
        out = KEYS[key].check(key, value)
    except UserError as err:
        assert "\n" not in str(err) and key in str(err)
        return
    assert isinstance(out, {"int": int, "float": float, "bool": bool, "str": str}[KEYS[key].kind])


def test_first_epoch_above_one():
    assert first_epoch_above_one("0.9+0.02*epoch", 10) == 6
    assert first_epoch_above_one("0.9+0.02*epoch", 5) is None
    assert first_epoch_above_one("min(0.99, 0.9+0.02*epoch)", 1000) is None
    assert first_epoch_above_one("0.5+step/1000", 3, epoch_steps=300) == 2


def test_a_bug_is_one_line_and_a_log_file(tmp_path):
    code = ("from sslrun.errors import exit_on_user_error\n"
            "def main():\n    raise KeyError('boom')\n"
            "exit_on_user_error(main)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"SSLRUN_ERROR_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3 and len(lines) == 1 and lines[0].startswith("error: internal: KeyError"), proc.stderr
    log = lines[0].split("(details: ")[1].rstrip(")")
    assert "Traceback" in open(log).read() and log.startswith(str(tmp_path))
