"""Property tests (issue 15) beyond tests/test_hostile_data.py (tar headers, manifest fields) and
tests/test_key_table.py (ASCII threshold texts, one value per key): any Unicode override text,
any threshold text, any YAML text, bytes in a run folder's files, any file name in a build, and
byte-level damage to a manifest. Every outcome is a correct result or one clean UserError line:
never another exception, a hang (each example runs under an alarm) or code run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from sslrun.config import KEYS, Config, make_config, parse_overrides, save_config
from sslrun.errors import UserError
from sslrun.strategies.thresholds import parse_threshold
from sslrun.text import bad_char
from sslrun.yaml_file import load_text

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Hang(Exception):
    pass


@contextmanager
def alarm(seconds: int = 5) -> Iterator[None]:
    def ring(*_: object) -> None:
        raise Hang()

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def one_line(err: UserError) -> None:
    text = str(err)
    assert text and "\n" not in text and "\r" not in text, repr(text)


# Text with the characters that broke things: controls, line and bidi marks, surrogates (what a
# non-UTF-8 argv byte becomes), Unicode digits, and plain ASCII.
NASTY = st.text(alphabet=st.one_of(
    st.characters(codec="utf-8"),
    st.sampled_from(["\n", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\u202e", "\u2066", "\udcff", "\u0663", "\uff14",
                     "\u00b3", "e", "1", ".", "-", "+", "_", "=", ",", "/", " ", "'", '"', "!", "&", "*"]),
), max_size=40)
NUMBERS = st.one_of(st.integers(-10**20, 10**20).map(str), st.floats().map(repr),
                    st.sampled_from(["nan", "-nan", "inf", "-inf", "1e309", "-0", "0", "+5", " 5", "1_000", "0x10",
                                     "1e-400", "yes", "on", "off", "", "[1]", "{a: 1}", "٤٢"]))


@FAST
@given(key=st.sampled_from([*sorted(KEYS), "extra.mixup", "extra.t1"]), value=st.one_of(NASTY, NUMBERS))
def test_any_override_is_a_checked_config_or_one_line(key, value, tmp_path):
    """parse_overrides + make_config, as every door calls them: a Config whose text is printable
    and whose numbers are finite and in range, or one UserError line."""
    with alarm():
        try:
            cfg = make_config(parse_overrides([f"{key}={value}", f"root={tmp_path}"]), env={})
        except UserError as err:
            one_line(err)
            return
    for name, spec in KEYS.items():
        got = getattr(cfg, name)
        if spec.kind in ("int", "float"):
            assert isinstance(got, (int, float)) and math.isfinite(got)
        if isinstance(got, str):
            assert bad_char(got) is None, (name, got)
    if key in ("name", "sweep"):  # given: any printable folder name
        assert "/" not in getattr(cfg, key) and getattr(cfg, key) not in (".", "..")
    else:  # derived from the overrides: a safe ASCII folder name
        assert re.fullmatch(r"[A-Za-z0-9_.,=+\-]+", cfg.name), cfg.name
    assert not list(tmp_path.iterdir()), "make_config wrote something"


@FAST
@given(text=st.one_of(NASTY, st.text(alphabet="0123456789.e+-*/(),epochstmainx _\u0663\u00b3", max_size=80)))
def test_any_threshold_text_is_a_schedule_or_one_line(text):
    with alarm():
        f = _schedule_or_one_line(text)
        for epoch in (0, 1, 7, 1000) if f is not None else ():
            assert math.isfinite(f(epoch, epoch))


def _schedule_or_one_line(text: str):
    """The parsed schedule, or None once its refusal was checked to be one line."""
    try:
        return parse_threshold(text)
    except UserError as err:
        one_line(err)
        return None


def _expr(depth: int) -> st.SearchStrategy[str]:
    leaf = st.one_of(st.sampled_from(["epoch", "step", "1e308", "0", "-1", "0.9"]),
                     st.floats(allow_nan=False, allow_infinity=False).map(repr))
    if depth == 0:
        return leaf
    sub = _expr(depth - 1)
    return st.one_of(leaf, st.tuples(sub, st.sampled_from("+-*/"), sub).map(lambda t: f"({t[0]}{t[1]}{t[2]})"),
                     st.tuples(st.sampled_from(["min", "max"]), st.lists(sub, min_size=1, max_size=3))
                     .map(lambda t: f"{t[0]}({','.join(t[1])})"))


@FAST
@given(text=_expr(4))
def test_threshold_arithmetic_is_finite_or_one_line(text):
    """Well-formed expressions with overflowing or dividing-by-zero parts: finite or refused."""
    with alarm():
        f = _schedule_or_one_line(text)
        assert f is None or math.isfinite(f(3, 3))


PLAIN = (dict, list, str, int, float, bool, type(None), bytes)


def _plain(value: object, depth: int = 0) -> bool:
    import datetime

    assert depth < 60
    if isinstance(value, dict):
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    return isinstance(value, (*PLAIN, datetime.date, datetime.datetime, set))


YAML_TEXT = st.lists(st.sampled_from(list("&*!{}[]:-,?|>'\"#%@` \n\tab1.=") +
                                     ["!!python/object/apply:os.system ", "!!python/name:os.system", "&a ", "*a",
                                      "<<: ", "a: ", "- ", "\udcff", "\u2028", "grid:\n  seed: ", "runs:\n  - "]),
                     max_size=60).map("".join)


@FAST
@given(text=YAML_TEXT)
def test_any_yaml_text_is_plain_data_or_a_yaml_error(text):
    """The one loader (sslrun/yaml_file.py): data without objects or aliases, or a YAMLError."""
    with alarm():
        try:
            value = load_text(text)
        except yaml.YAMLError:
            return
    assert _plain(value)


@FAST
@given(text=YAML_TEXT)
def test_a_sweep_file_of_any_text_plans_or_is_one_line(text, tmp_path):
    from sslrun.sweeps import read_sweep_file

    path = tmp_path / "s.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with alarm():
        try:
            rows = read_sweep_file(path)
        except UserError as err:
            one_line(err)
            return
    assert rows and all(isinstance(r, dict) for r in rows)


# --- run folders: the tolerant readers never raise, whatever bytes the files hold
def _run_folder(root: Path) -> Path:
    run = root / "s" / "r"
    run.mkdir(parents=True)
    cfg = make_config({"root": str(root), "sweep": "s", "name": "r", "strategy": "supervised"}, env={})
    (run / "config.yaml").write_text(save_config(cfg))
    (run / "result.json").write_text(json.dumps({"best_val_acc": 0.5, "val_acc": 0.5, "steps": 4}))
    (run / "metrics.jsonl").write_text('{"step": 2, "val_acc": 0.5}\n{"step": 4, "val_acc": 0.5}\n')
    return run


BYTES = st.one_of(st.binary(max_size=300), YAML_TEXT.map(lambda t: t.encode("utf-8", "surrogateescape")),
                  st.sampled_from([b"[" * 50000, b"{" * 50000, b'{"step": NaN}\n', b"\xff\xfe", b"",
                                   b'{"best_val_acc": "x"}', b"seed: &a [1]\nname: *a\n"]))


@FAST
@given(name=st.sampled_from(["config.yaml", "result.json", "metrics.jsonl", "failure.json"]), data=BYTES,
       cut=st.booleans())
def test_any_bytes_in_a_run_file_are_a_state_never_an_exception(name, data, cut, tmp_path_factory):
    from sslrun import run_folder

    run = _run_folder(tmp_path_factory.mktemp("rf"))
    path = run / name
    if cut and path.exists():
        data = path.read_bytes()[: len(data) % (path.stat().st_size + 1)]
    path.write_bytes(data)
    with alarm():
        view = run_folder.read_run(run, checkpoints=False)
        jobs = run_folder.submitted_jobs(run.parent)
    assert view.state in ("new", "started", "partial", "done", "failed", "damaged")
    assert "\n" not in view.damage
    assert isinstance(jobs[0], dict)


# --- build: any file name is packed, rejected with its reason, or refused in one line
def _fs_name(text: str) -> bool:
    raw = text.encode("utf-8", "surrogateescape")
    return bool(text) and "/" not in text and "\0" not in text and text not in (".", "..") and len(raw) <= 200


@FEW
@given(names=st.lists(NASTY.filter(_fs_name), min_size=1, max_size=4, unique=True))
def test_any_file_names_build_or_are_one_line(names, tmp_path_factory):
    from sslrun.data.build import build_shards

    root = tmp_path_factory.mktemp("names")
    tree = root / "in"
    for c in ("a", "b"):
        (tree / c).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tree / c / f"{c}0.png")
    for n in names:
        try:
            Image.new("RGB", (4, 4)).save(os.fsencode(tree / "a") + b"/" + n.encode("utf-8", "surrogateescape"),
                                          format="PNG")
        except (OSError, ValueError):
            assume(False)
    visible = sum(not n.startswith(".") for n in names)
    with alarm(20):
        try:
            m = build_shards(root / "out", tree)
        except UserError as err:
            one_line(err)
            assert not (root / "out" / "manifest.json").exists()
            return
    rejects = (root / "out" / "rejects.tsv").read_text().splitlines()[1:]
    assert sum(s["count"] for s in m["splits"].values()) + len(rejects) == 2 + visible
    for split in m["splits"].values():
        for shard in split["shards"]:
            assert bad_char(shard["file"]) is None


# --- manifests damaged at the byte level (test_hostile_data.py damages its fields)
@FAST
@given(data=st.data())
def test_manifest_bytes_flipped_or_cut_are_ok_or_one_line(data, tmp_path_factory):
    from sslrun.data.manifest import read_manifest
    from sslrun.data.samples import load_split
    from sslrun.data.verify import verify_shards

    folder = tmp_path_factory.mktemp("mb")
    shutil.copytree(_good_set(tmp_path_factory), folder / "d")
    path = folder / "d" / "manifest.json"
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.sampled_from([raw[at] ^ (1 << data.draw(st.integers(0, 7))), ord("["), ord("9"),
                                             ord('"'), 0xFF, ord("-")]))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path.write_bytes(bytes(raw))
    with alarm(10):
        try:
            m = read_manifest(folder / "d")
            for name in m.splits:
                load_split(m, name)
        except UserError as err:
            one_line(err)
        try:
            for line in verify_shards(folder / "d"):
                assert "\n" not in line
        except UserError as err:
            one_line(err)


_GOOD: list[Path] = []


def _good_set(factory: pytest.TempPathFactory) -> Path:
    """A small real shard set, built once for the module."""
    if not _GOOD:
        from sslrun.data.build import build_shards

        root = factory.mktemp("goodset")
        for c in ("a", "b"):
            (root / "in" / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (4, 4), (60 * i, 0, 0)).save(root / "in" / c / f"{c}{i}.png")
        build_shards(root / "out", root / "in", val_per_class=1)
        _GOOD.append(root / "out")
    return _GOOD[0]


def test_config_round_trips_through_the_strict_loader(tmp_path):
    """What sslrun writes (save_config) is what the strict loader reads back: no alias, no tag."""
    cfg = make_config({"root": str(tmp_path), "strategy": "fixmatch", "threshold": "0.9+0.01*epoch",
                       "extra.t1": "0.5"}, env={})
    assert load_text(save_config(cfg)) == cfg.to_dict()
    assert isinstance(Config(**{k: v for k, v in cfg.to_dict().items()}), Config)
