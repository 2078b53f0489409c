"""Config overrides, validation messages, run names and threshold schedules."""

from __future__ import annotations

import pytest

from sslrun.config import make_config, parse_overrides, run_name
from sslrun.errors import UserError
from sslrun.launch import parse_array, parse_minutes
from sslrun.run_check import check_run
from sslrun.strategies.thresholds import parse_threshold


def test_overrides_are_typed_and_aliases_apply(tmp_path):
    cfg = make_config(parse_overrides(["seeds=7", "frozen=true", "lr=0.1", f"root={tmp_path}"]))
    assert (cfg.seed, cfg.frozen, cfg.lr) == (7, True, 0.1)
    assert cfg.name == "seed=7,frozen=true,lr=0.1"
    assert cfg.run_dir() == tmp_path / "digits" / cfg.name


def test_embedded_defaults_apply_only_without_data(tmp_path):
    assert make_config({"root": str(tmp_path)}).model == "test_resnet"
    assert make_config({"root": str(tmp_path), "model": "resnet18"}).model == "resnet18"
    assert make_config({"root": str(tmp_path), "data": str(tmp_path)}).model == "resnet50"


@pytest.mark.parametrize("items, fragment", [
    (["nosuchkey=1"], "unknown key 'nosuchkey'"),
    (["seed"], "expected key=value"),
    (["steps=ten"], "steps=ten: expected an integer"),
    (["frozen=maybe"], "frozen=maybe: expected true or false"),
    (["strategy=magic"], "strategy=magic: unknown (expected one of"),
    (["model=resnet_nope"], "model=resnet_nope: not a timm model"),
    (["optimizer=lbfgs"], "optimizer=lbfgs: expected one of sgd, adamw"),
    (["steps=0"], "steps=0: expected a positive integer"),
    (["threshold=__import__('os')"], "threshold="),
    (["data=/nonexistent/shards"], "data=/nonexistent/shards: folder does not exist"),
])
def test_bad_overrides_name_the_key(items, fragment, tmp_path):
    with pytest.raises(UserError, match=None) as err:
        check_run(make_config(parse_overrides([*items, f"root={tmp_path}"])))
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_run_name_skips_placement_keys():
    assert run_name({"root": "/x", "data": "/d", "seed": "1", "strategy": "supervised"}) == "seed=1,strategy=supervised"
    assert run_name({}) == "default"


def test_array_is_a_cartesian_product_in_order():
    combos = parse_array(["seeds=1,2", "strategy=fixmatch,supervised"])
    assert combos == [{"seed": "1", "strategy": "fixmatch"}, {"seed": "1", "strategy": "supervised"},
                      {"seed": "2", "strategy": "fixmatch"}, {"seed": "2", "strategy": "supervised"}]


@pytest.mark.parametrize("bad", ["seeds", "seeds=", "seeds=1,,2", "nokey=1,2", "=1"])
def test_malformed_array_is_refused(bad):
    with pytest.raises(UserError):
        parse_array([bad])


def test_threshold_schedules():
    assert parse_threshold("0.95")(3, 0) == 0.95
    ramp = parse_threshold("0.9+0.02*epoch")
    assert ramp(0, 0) == pytest.approx(0.9)
    assert ramp(2, 0) == pytest.approx(0.94)
    assert parse_threshold("min(0.99, 0.9+0.02*epoch)")(10, 0) == pytest.approx(0.99)


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30:00", 90), ("2-00", 2880), ("1-2:30", 1590), ("10:30", 11)])
def test_slurm_time_formats(text, minutes):
    assert parse_minutes(text) == minutes
