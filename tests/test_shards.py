"""Tests of the shard builder, writer and verifier on tiny images made here."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslrun.data import build as build_mod
from sslrun.data.build import build_shards, parse_size
from sslrun.data.manifest import read_manifest
from sslrun.data.shard_writer import ShardWriter, tar_member
from sslrun.data.verify import verify_shards
from sslrun.errors import UserError

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["cat", "dog", "owl"]


def _img(path: Path, seed: int, fmt: str = "PNG", mode: str = "RGB", size: int = 12) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    im = Image.fromarray(arr).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)


def _tree(root: Path, per_class: int = 12, test: int = 3, unlabeled: int = 0) -> Path:
    n = 0
    for c in CLASSES:
        for i in range(per_class):
            _img(root / "train" / c / f"{i:04d}.png", n)  # numbered per class, as in CIFAR folders
            n += 1
        for i in range(test):
            _img(root / "test" / f"t{c}{i}.jpg", n, fmt="JPEG")
            n += 1
    for i in range(unlabeled):
        _img(root / "unl" / f"u{i:03d}.jpg", n, fmt="JPEG")
        n += 1
    return root


def _read_wds(paths: list[Path]) -> list[dict]:
    import webdataset as wds

    ds = wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False)
    return list(ds)


def test_build_manifest_counts_and_webdataset_reads(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "in", per_class=12, test=3)
    out = tmp_path / "out"
    m = build_shards(out, labeled=tree / "train", test=tree / "test", val_per_class=2, labels_per_class=4,
                     seed=0, shard_samples=7)
    assert m["classes"] == CLASSES
    s = m["splits"]
    assert (s["train"]["count"], s["val"]["count"], s["unlabeled"]["count"], s["test"]["count"]) == (12, 6, 18, 9)
    assert s["train"]["per_class"] == [4, 4, 4] and s["val"]["per_class"] == [2, 2, 2]
    assert [x["count"] for x in s["unlabeled"]["shards"]] == [7, 7, 4]
    assert s["test"]["labeled"] is False and s["unlabeled"]["hidden_labels"] is True
    man = read_manifest(out)  # the project's reader accepts it
    assert man.split("unlabeled").has_hidden_labels
    # webdataset sees exactly the planned samples, labels only in labeled splits
    train = _read_wds(man.shard_paths("train"))
    assert len(train) == 12 and all(set(x) >= {"__key__", "png", "cls"} for x in train)
    assert sorted(int(x["cls"]) for x in train) == [0] * 4 + [1] * 4 + [2] * 4
    for x in train:  # the class in the shard is the folder it came from
        assert x["__key__"].split("_")[0] == CLASSES[int(x["cls"])]
        cls, stem = x["__key__"].split("_")
        assert x["png"] == (tree / "train" / cls / f"{stem}.png").read_bytes() and "id" not in x
    unl = _read_wds(man.shard_paths("unlabeled"))
    assert len(unl) == 18 and not any("cls" in x for x in unl)
    hidden = [h for e in man.split("unlabeled").shards for h in e.hidden_labels]
    assert [CLASSES.index(x["__key__"].split("_")[0]) for x in unl] == hidden
    test = _read_wds(man.shard_paths("test"))
    assert sorted(x["__key__"] for x in test) == sorted(p.stem for p in (tree / "test").iterdir())
    assert not any("id" in x or "cls" in x for x in test)
    all_keys = [x["__key__"] for x in train + unl + _read_wds(man.shard_paths("val"))]
    assert len(set(all_keys)) == 36
    info = json.loads((out / "_info.json").read_text())
    assert info["splits"]["unlabeled"]["shard_lengths"] == [7, 7, 4]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no plan, journal or temp left
    assert verify_shards(out) == []


def test_tar_headers_are_plain_ustar(tmp_path: Path) -> None:
    ti = tarfile.TarInfo("k_1.jpg")
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = 1000, 0, 0o444, "", ""
    assert tar_member("k_1.jpg", b"x" * 1000)[:512] == ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    with ShardWriter(tmp_path, "s", max_count=3, max_bytes=4096) as w:
        for i in range(5):
            w.write(f"k{i}", {"jpg": b"y" * 1500, "cls": b"1"}, hidden_label=i)
    entries = w.entries
    # 1500 B image + cls member = 2560 B a sample; two (5120 B + 1024 B end) exceed 4096 B
    assert [e.count for e in entries] == [1, 1, 1, 1, 1]
    with tarfile.open(tmp_path / entries[0].file) as tf:
        infos = tf.getmembers()
    assert [i.name for i in infos] == ["k0.jpg", "k0.cls"]
    assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 and i.mode == 0o444 and not i.pax_headers for i in infos)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_deterministic_byte_identical(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "in", per_class=10, test=2, unlabeled=5)
    kw = dict(labeled=tree / "train", unlabeled=tree / "unl", test=tree / "test", val_fraction=0.2, seed=3,
              shard_samples=4)
    build_shards(tmp_path / "a", **kw, workers=1)
    build_shards(tmp_path / "b", **kw, workers=2)
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = build_shards(tmp_path / "c", **{**kw, "seed": 4})
    assert other["splits"]["train"]["shards"][0]["sha256"] != json.loads(
        (tmp_path / "a" / "manifest.json").read_text())["splits"]["train"]["shards"][0]["sha256"]


def test_cli_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "in", per_class=2, test=0)
    (tree / "train" / "empty").mkdir()
    cases = [
        ["--labeled", str(tree / "train"), "--out", str(tmp_path / "o")],  # empty class folder
        ["--labeled", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        ["--labeled", str(tree / "train")],  # no --out
        ["--labeled", str(tree / "train"), "--out", str(tmp_path / "o"), "--shard-bytes", "lots"],
    ]
    for args in cases:
        r = subprocess.run([sys.executable, str(REPO / "shards" / "build.py"), *args, "--no-progress"],
                           capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "o").exists()  # nothing written on a user error
