"""Issue 13 fault 10: the build writes a sample index per split, and a start reads it instead
of scanning every tar header; older sets still load by scanning; a damaged index is refused."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, run_door
from sslrun.data import samples
from sslrun.data.build import build_shards
from sslrun.data.manifest import read_manifest
from sslrun.data.sample_index import entry_for, pack
from sslrun.data.verify import verify_shards
from sslrun.errors import UserError

COLS = ("shard", "offset", "size", "label", "hidden")


@pytest.fixture
def shards(digits: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(digits, tmp_path / "set"))


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tar files scan_tar is asked to parse (the real parser still runs)."""
    seen: list[str] = []
    real = samples.scan_tar

    def counting(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(samples, "scan_tar", counting)
    return seen


def _same(a: samples.SplitSamples, b: samples.SplitSamples) -> None:
    for k in COLS:
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and np.array_equal(x, y), k
    assert a.ids == b.ids and a.shards == b.shards and a.name == b.name


def _edit_manifest(root: Path, edit) -> None:
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_start_reads_the_index_not_the_tars_and_it_equals_the_scan(shards: Path, scans: list[str]) -> None:
    m = read_manifest(shards)
    assert all(s.index is not None for s in m.splits.values())
    loaded = {name: samples.load_split(m, name) for name in m.splits}
    assert scans == []  # no tar header read at start
    for name, got in loaded.items():
        _same(got, samples.scan_split(m, name))
    assert len(scans) == sum(len(s.shards) for s in m.splits.values())
    assert (loaded["unlabeled"].hidden >= 0).all() and (loaded["train"].label >= 0).all()
    assert verify_shards(shards, decode=False) == []


def test_set_without_index_loads_by_scanning_with_one_log_line(shards: Path, scans: list[str],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    want = {n: samples.load_split(read_manifest(shards), n) for n in ("train", "unlabeled")}
    _edit_manifest(shards, lambda m: [s.pop("index") for s in m["splits"].values()])
    for p in shards.glob("*.index.npz"):
        p.unlink()
    m = read_manifest(shards)
    with caplog.at_level(logging.WARNING, logger="sslrun.data.samples"):
        for n, w in want.items():
            _same(samples.load_split(m, n), w)
    assert len(scans) == len(m.split("train").shards) + len(m.split("unlabeled").shards)
    lines = [r.getMessage() for r in caplog.records if "no sample index" in r.getMessage()]
    assert len(lines) == 1 and "shards/build.py" in lines[0] and str(shards) in lines[0]
    assert verify_shards(shards, decode=False) == []


@pytest.mark.parametrize("damage, fragment", [
    ("flip", "sha256 differs from the manifest"),
    ("truncate", "bytes, manifest says"),
    ("remove", "cannot read"),
    ("not-npz", "not a readable index"),
    ("wrong-count", "column 'shard' is int32[149], expected int32[150]"),
])
def test_damaged_index_is_refused_naming_the_file(shards: Path, damage: str, fragment: str) -> None:
    path = shards / "train.index.npz"
    raw = path.read_bytes()
    if damage == "flip":
        path.write_bytes(raw[:200] + bytes([raw[200] ^ 1]) + raw[201:])
    elif damage == "truncate":
        path.write_bytes(raw[:-10])
    elif damage == "remove":
        path.unlink()
    else:  # a file the manifest vouches for (size, sha256) that is not a good index
        if damage == "not-npz":
            data = b"PK\x03\x04 not really a zip"
        else:
            s = samples.load_split(read_manifest(shards), "train")
            data = pack({k: getattr(s, k)[1:] for k in COLS}, s.ids[1:])
        path.write_bytes(data)
        _edit_manifest(shards, lambda m: m["splits"]["train"].update(index=entry_for(path.name, data)))
    with pytest.raises(UserError) as err:
        samples.load_split(read_manifest(shards), "train")
    msg = str(err.value)
    assert f"sample index {path}" in msg and fragment in msg and "\n" not in msg
    assert samples.load_split(read_manifest(shards), "val")  # the other splits are untouched


def test_verify_compares_the_index_with_the_tars(shards: Path) -> None:
    """An index the manifest vouches for but whose offsets are wrong: training would trust it,
    shards/verify.py finds it."""
    s = samples.load_split(read_manifest(shards), "unlabeled")
    cols = {k: getattr(s, k).copy() for k in COLS}
    cols["offset"][5] += 512
    data = pack(cols, s.ids)
    (shards / "unlabeled.index.npz").write_bytes(data)
    _edit_manifest(shards, lambda m: m["splits"]["unlabeled"].update(index=entry_for("unlabeled.index.npz", data)))
    problems = verify_shards(shards, decode=False)
    assert len(problems) == 1 and "unlabeled/unlabeled.index.npz: sample 5" in problems[0] and "offset" in problems[0]


def test_rerunning_the_build_adds_the_index_to_an_older_set(tmp_path: Path) -> None:
    tree = tmp_path / "in"
    for c in ("a", "b"):
        (tree / c).mkdir(parents=True)
        for i in range(6):
            from PIL import Image

            Image.new("RGB", (5, 5), (i * 30, 0, 0)).save(tree / c / f"{c}{i}.png")
    out = tmp_path / "out"
    kw = dict(labeled=tree, val_per_class=1, labels_per_class=2, shard_samples=3)
    first = build_shards(out, **kw)
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    _edit_manifest(out, lambda m: [s.pop("index") for s in m["splits"].values()])
    for p in out.glob("*.index.npz"):
        p.unlink()
    again = build_shards(out, **kw)
    assert again == first  # the same index the build wrote, found by scanning
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def test_training_door_refuses_a_damaged_index_in_one_line(shards: Path, tmp_path: Path) -> None:
    path = shards / "unlabeled.index.npz"
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    r = run_door("jobs/train.py", f"data={shards}", f"root={tmp_path / 'runs'}", *FAST)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: sample index ") and str(path) in lines[-1], lines[-3:]
    assert not list((tmp_path / "runs").rglob("config.yaml"))  # refused before a run folder is made
