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

from shard_tools import ShardWriter, shard_paths, tar_member
from sslrun.data import build as build_mod
from sslrun.data.build import build_shards, parse_size
from sslrun.data.manifest import read_manifest
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
    train = _read_wds(shard_paths(man, "train"))
    assert len(train) == 12 and all(set(x) >= {"__key__", "png", "cls"} for x in train)
    assert sorted(int(x["cls"]) for x in train) == [0] * 4 + [1] * 4 + [2] * 4
    for x in train:  # the class in the shard is the folder it came from
        assert x["__key__"].split("_")[0] == CLASSES[int(x["cls"])]
        cls, stem = x["__key__"].split("_")
        assert x["png"] == (tree / "train" / cls / f"{stem}.png").read_bytes() and "id" not in x
    unl = _read_wds(shard_paths(man, "unlabeled"))
    assert len(unl) == 18 and not any("cls" in x for x in unl)
    hidden = [h for e in man.split("unlabeled").shards for h in e.hidden_labels]
    assert [CLASSES.index(x["__key__"].split("_")[0]) for x in unl] == hidden
    test = _read_wds(shard_paths(man, "test"))
    assert sorted(x["__key__"] for x in test) == sorted(p.stem for p in (tree / "test").iterdir())
    assert not any("id" in x or "cls" in x for x in test)
    all_keys = [x["__key__"] for x in train + unl + _read_wds(shard_paths(man, "val"))]
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


def _bad_tree(root: Path) -> Path:
    """A labeled tree with every kind of odd file the issue lists, two classes."""
    a, b = root / "train" / "a", root / "train" / "b"
    for i in range(3):
        _img(a / f"ok{i}.jpg", i, fmt="JPEG")
        _img(b / f"ok{i}.png", 10 + i)
    _img(a / "cmyk.jpg", 20, fmt="JPEG", mode="CMYK")
    _img(a / "gray.png", 21, mode="L")
    _img(b / "rgba.png", 22, mode="RGBA")
    _img(b / "pic.webp", 23, fmt="WEBP")
    _img(b / "pal.gif", 24, fmt="GIF", mode="P")
    (a / "zero.jpg").write_bytes(b"")
    (a / "notes.jpg").write_text("this is not an image\n")
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(good, "JPEG")
    (b / "cut.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(6).integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(png, "PNG")
    (b / "cutp.png").write_bytes(png.getvalue()[:-30])
    _img(a / "huge.png", 25, size=40)  # a "bomb" once the pixel limit is lowered below 1600
    _img(a / "locked.png", 26)
    return root


def test_bad_files_rejected_or_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = _bad_tree(tmp_path / "in")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    locked = str(tree / "train" / "a" / "locked.png")
    if os.geteuid() == 0:  # root reads a chmod-000 file anyway: make the open fail instead
        real_open = os.open

        def fake_open(path, *args, **kw):  # type: ignore[no-untyped-def]
            if str(path) == locked:
                raise PermissionError(13, "Permission denied", path)
            return real_open(path, *args, **kw)

        monkeypatch.setattr(os, "open", fake_open)
    else:
        os.chmod(locked, 0)
    out = tmp_path / "out"
    m = build_shards(out, labeled=tree / "train", shard_samples=4)
    rejects = dict(line.split("\t") for line in (out / "rejects.tsv").read_text().splitlines()[1:])
    why = {Path(p).name: r for p, r in rejects.items()}
    assert set(why) == {"zero.jpg", "notes.jpg", "cut.jpg", "cutp.png", "huge.png", "locked.png"}
    assert why["zero.jpg"] == "empty file" and why["notes.jpg"].startswith("not an image")
    assert why["cut.jpg"].startswith("cannot decode") and why["cutp.png"].startswith("cannot decode")
    assert why["huge.png"].startswith("decompression bomb") and "ermission denied" in why["locked.png"]
    assert m["rejects"] == {"count": 6, "file": "rejects.tsv"}
    assert m["splits"]["train"]["count"] == 11 and m["splits"]["train"]["per_class"] == [5, 6]
    monkeypatch.undo()
    samples = _read_wds(shard_paths(read_manifest(out), "train"))
    exts = sorted(next(k for k in x if k in ("jpg", "png", "webp", "gif")) for x in samples)
    assert exts == ["gif", "jpg", "jpg", "jpg", "jpg", "png", "png", "png", "png", "png", "webp"]
    import webdataset as wds

    ds = wds.WebDataset([str(p) for p in shard_paths(read_manifest(out), "train")], shardshuffle=False).decode("pil")
    assert all(next(v for k, v in x.items() if k in ("jpg", "png", "webp", "gif")).convert("RGB").mode == "RGB"
               for x in ds)
    assert verify_shards(out) == []  # odd modes (CMYK, L, RGBA, P) decode to RGB


def test_fatal_user_errors_write_nothing(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "in", per_class=3, test=1)
    out = tmp_path / "out"
    _img(tree / "train" / "cat" / "0000.jpg", 99, fmt="JPEG")  # same id as 0000.png
    with pytest.raises(UserError, match="id 'cat/0000'"):
        build_shards(out, labeled=tree / "train")
    (tree / "train" / "cat" / "0000.jpg").unlink()
    (tree / "unl").mkdir()
    _img(tree / "unl" / "x.png", 1)
    _img(tree / "unl" / "x.jpg", 2, fmt="JPEG")
    with pytest.raises(UserError, match="id 'x'"):
        build_shards(out, labeled=tree / "train", unlabeled=tree / "unl")
    (tree / "train" / "emu").mkdir()
    with pytest.raises(UserError, match="emu is empty"):
        build_shards(out, labeled=tree / "train")
    (tree / "train" / "emu").rmdir()
    _img(tree / "ltest" / "yak" / "1.png", 3)
    with pytest.raises(UserError, match="class 'yak'"):
        build_shards(out, labeled=tree / "train", test=tree / "ltest")
    with pytest.raises(UserError, match="too few"):
        build_shards(out, labeled=tree / "train", val_per_class=2, labels_per_class=2)
    with pytest.raises(UserError, match="not both"):
        build_shards(out, labeled=tree / "train", val_per_class=1, val_fraction=0.1)
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        build_shards(out, labeled=tree / "train")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_rerun_is_noop_and_other_params_refused(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "in", per_class=4, test=0)
    out = tmp_path / "out"
    m1 = build_shards(out, labeled=tree / "train", seed=1)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert build_shards(out, labeled=tree / "train", seed=1) == m1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(UserError, match="different shard set"):
        build_shards(out, labeled=tree / "train", seed=2)


def test_resume_after_crash_redoes_only_missing_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = _tree(tmp_path / "in", per_class=8, test=0)
    kw = dict(labeled=tree / "train", labels_per_class=2, seed=0, shard_samples=3)
    ref = build_shards(tmp_path / "ref", **kw)
    n_shards = sum(len(s["shards"]) for s in ref["splits"].values())  # 2 train + 6 unlabeled
    out = tmp_path / "out"
    real = build_mod.write_shard
    calls: list[str] = []

    def crashing(task):  # type: ignore[no-untyped-def]
        calls.append(task.file)
        if len(calls) == 4:  # die in the middle of writing the 4th shard
            shard_add = build_mod.TarShard.add

            def add_then_die(self, key, members):  # type: ignore[no-untyped-def]
                shard_add(self, key, members)
                raise KeyboardInterrupt

            monkeypatch.setattr(build_mod.TarShard, "add", add_then_die)
        return real(task)

    monkeypatch.setattr(build_mod, "write_shard", crashing)
    with pytest.raises(KeyboardInterrupt):
        build_shards(out, **kw)
    monkeypatch.undo()
    left = sorted(p.name for p in out.iterdir())
    assert "manifest.json" not in left and len([n for n in left if n.endswith(".tar")]) == 3
    assert not [n for n in left if n.endswith(".tmp")]  # the partial shard is gone
    redone: list[str] = []
    monkeypatch.setattr(build_mod, "write_shard", lambda t: (redone.append(t.file), real(t))[1])
    m = build_shards(out, **kw)
    assert len(redone) == n_shards - 3 and not set(redone) & set(calls[:3])
    assert m == ref
    for p in (tmp_path / "ref").iterdir():
        assert p.read_bytes() == (out / p.name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())


@pytest.mark.slow
def test_resume_after_kill_9_via_cli(tmp_path: Path) -> None:
    """A SIGKILL between writing a shard and renaming it leaves a temp file; the same command
    removes it and finishes, redoing only what was not complete."""
    tree = _tree(tmp_path / "in", per_class=6, test=2)
    out = tmp_path / "out"
    args = ["--labeled", str(tree / "train"), "--test", str(tree / "test"), "--out", str(out),
            "--val-per-class", "1", "--labels-per-class", "2", "--shard-samples", "2", "--no-progress"]
    killer = (
        "import os, signal, sys, runpy\n"
        "import sslrun.data.shard_writer as w\n"
        "n = [0]\n"
        "real = w.TarShard.commit\n"
        "def commit(self, hidden=None):\n"
        "    n[0] += 1\n"
        "    if n[0] == 3:\n"
        "        self._f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, hidden)\n"
        "w.TarShard.commit = commit\n"
        f"sys.argv = ['build.py', *{args!r}]\n"
        f"runpy.run_path({str(REPO / 'shards' / 'build.py')!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", killer], env=env, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    assert len(list(out.glob(".*.tmp"))) == 1 and len(list(out.glob("*.tar"))) == 2
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    r = subprocess.run([sys.executable, str(REPO / "shards" / "build.py"), *args], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not list(out.glob(".*"))
    assert all((out / n).stat().st_mtime_ns == t for n, t in kept.items())  # not rewritten
    assert verify_shards(out) == []
    r = subprocess.run([sys.executable, str(REPO / "shards" / "verify.py"), str(out)], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout


@pytest.mark.slow
def test_verify_finds_damage(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "in", per_class=4, test=0)
    out = tmp_path / "out"
    build_shards(out, labeled=tree / "train", shard_samples=5)
    shard = out / "train-000001.tar"
    raw = bytearray(shard.read_bytes())
    raw[600] ^= 0xFF  # inside the first image's data
    shard.write_bytes(bytes(raw))
    problems = verify_shards(out)
    assert any("train-000001.tar: sha256 differs" in p for p in problems)
    # a hand-made set with an undecodable image and a class out of range
    bad = tmp_path / "bad"
    bad.mkdir()
    with ShardWriter(bad, "train") as w:
        w.write("k0", {"jpg": b"\xff\xd8\xff garbage \xff\xd9", "cls": b"0"})
        w.write("k1", {"png": (tree / "train" / "cat" / "0000.png").read_bytes(), "cls": b"7"})
    e = w.entries[0]
    manifest = {"format": "sslrun-shards/1", "classes": ["x", "y"], "splits": {"train": {
        "count": 2, "labeled": True, "per_class": [1, 0],
        "shards": [{"file": e.file, "count": 2, "bytes": e.bytes, "sha256": e.sha256}]}}}
    (bad / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_shards(bad)
    assert any("k0 does not decode" in p for p in problems)
    assert any("k1 has class b'7'" in p for p in problems)
    r = subprocess.run([sys.executable, str(REPO / "shards" / "verify.py"), str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "problem" in r.stdout
    r = subprocess.run([sys.executable, str(REPO / "shards" / "verify.py"), str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_max_side_shard_bytes_ids_and_unlabeled_folder(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "in", per_class=5, test=0, unlabeled=4)
    _img(tree / "train" / "dog" / "big.jpg", 50, fmt="JPEG", size=64)
    _img(tree / "unl" / "odd.name v2.png", 51)
    out = tmp_path / "out"
    m = build_shards(out, labeled=tree / "train", unlabeled=tree / "unl", labels_per_class=3, max_side=16,
                     shard_bytes=12 * 1024)
    assert all(s["bytes"] <= 12 * 1024 for sp in m["splits"].values() for s in sp["shards"])
    man = read_manifest(out)
    train = {x["__key__"]: x for x in _read_wds(shard_paths(man, "train"))}
    unl = {x["__key__"]: x for x in _read_wds(shard_paths(man, "unlabeled"))}
    assert len(train) == 9 and len(unl) == 7 + 5  # 16 labeled files, 3 per class kept
    big = train.get("dog_big") or unl["dog_big"]
    assert Image.open(io.BytesIO(big["jpg"])).size == (16, 16)
    assert unl["odd_name_v2"]["id"] == b"odd.name v2"
    assert unl["u000"]["jpg"] == (tree / "unl" / "u000.jpg").read_bytes()  # raw bytes, untouched
    hidden = {x["__key__"]: h for e, shard in zip(man.split("unlabeled").shards, shard_paths(man, "unlabeled"))
              for x, h in zip(_read_wds([shard]), e.hidden_labels)}
    assert hidden["u000"] == -1 and hidden["odd_name_v2"] == -1  # true class unknown
    assert all(hidden[k] == CLASSES.index(k.split("_")[0]) for k in hidden if not k.startswith(("u0", "odd")))


def test_parse_size() -> None:
    assert parse_size("1G") == 2**30 and parse_size("500M") == 500 * 2**20 and parse_size("64k") == 65536
    assert parse_size("20000") == 20000
    for bad in ("lots", "1X", "100"):
        with pytest.raises(UserError):
            parse_size(bad)


@pytest.mark.slow
def test_ctrl_c_with_workers_stops_cleanly_then_resumes(tmp_path: Path) -> None:
    """SIGINT to the whole process group (what Ctrl-C does) while 2 workers write: exit 130
    at once, no temporary file, no worker left; the same command then finishes."""
    import signal
    import time

    tree = _tree(tmp_path / "in", per_class=10, test=0)
    out = tmp_path / "out"
    args = ["--labeled", str(tree / "train"), "--out", str(out), "--shard-samples", "2", "-j", "2", "--no-progress"]
    slow = (
        "import signal, sys, time, runpy\n"
        # A shell's background job (`cmd &` without job control, as `nohup bash .ci/run &`) starts
        # with SIGINT ignored, and Python keeps an inherited SIG_IGN: give the build the handler a
        # terminal's foreground process has, where Ctrl-C is pressed.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import sslrun.data.shard_writer as w\n"
        "real = w.TarShard.add\n"
        "def add(self, key, members):\n"
        "    time.sleep(0.5)\n"
        "    return real(self, key, members)\n"
        "w.TarShard.add = add\n"
        f"sys.argv = ['build.py', *{args!r}]\n"
        f"runpy.run_path({str(REPO / 'shards' / 'build.py')!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-c", slow], env=env, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not list(out.glob("*.tar")) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    # 15 shards of 2 slowed samples on 2 workers take about 8 s: the signal lands seconds before the end.
    assert p.poll() is None, f"the build ended before the SIGINT was sent: {p.communicate()[1]}"
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    with pytest.raises(ProcessLookupError):
        os.killpg(p.pid, 0)  # no worker outlived the build
    done = sorted(out.glob("*.tar"))
    assert 0 < len(done) < 15 and not list(out.glob(".*.tmp")) and not (out / "manifest.json").exists()
    r = subprocess.run([sys.executable, str(REPO / "shards" / "build.py"), *args], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert read_manifest(out).split("train").count == 30 and not list(out.glob(".*"))
