"""Faults: a full disk, a non-finite loss, damaged checkpoints, hostile images, SIGINT, SIGKILL.

Each test checks what a user is promised: nothing saved is lost, nothing fails silently, and
every failure is one line `error: ...` (exit 2) naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import FAST, REPO, _train, run_door, signal_when, start_door
from sslrun import atomic, checkpoint
from sslrun.errors import UserError


def _steps(run_dir: Path, kind: str) -> list[int]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["kind"] == kind]


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A small real file system (root only): a disk that really fills up."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


class _FullDisk:
    """A file whose writes fail with ENOSPC, as on a full disk (for machines without mount)."""

    def __init__(self, f: object) -> None:
        self._f = f

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()  # type: ignore[attr-defined]

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> object:
        return getattr(self._f, name)


# ------------------------------------------------------------------------- a full disk


def _state(n: int) -> dict:
    return {"step": n, "model": {"w": torch.full((n * 1000,), float(n))}}


def test_full_disk_during_checkpoint_keeps_both_files_injected(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    checkpoint.save(folder, _state(1))
    checkpoint.save(folder, _state(2))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(atomic, "open", lambda *a, **k: _FullDisk(open(*a, **k)), raising=False)  # save writes through atomic
    with pytest.raises(UserError, match=r"cannot write .*last\.pt: No space left on device; the previous"):
        checkpoint.save(folder, _state(3))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no tmp file, nothing changed
    assert checkpoint.load_latest(folder)[0]["step"] == 2


def test_full_disk_during_checkpoint_real_tmpfs(tmp_path):
    with _tmpfs(tmp_path / "disk", "256k") as disk:
        folder = disk / "ckpt"
        checkpoint.save(folder, _state(10))  # ~40 KB each
        checkpoint.save(folder, _state(11))
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        with pytest.raises(UserError, match=r"cannot write .*last\.pt: No space left on device"):
            checkpoint.save(folder, _state(60))  # ~240 KB: does not fit
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
        state, note = checkpoint.load_latest(folder)
        assert note == "" and state["step"] == 11


def _tree(root: Path, per_class: int = 12, size: int = 24) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{c}{i}.png")
    return root


def test_full_disk_during_shard_build_is_one_line_and_resumes(tmp_path):
    tree = _tree(tmp_path / "in")  # 36 PNGs of ~1.8 KB: ~12 shards of 3 samples, ~90 KB in all
    build = [sys.executable, str(REPO / "shards/build.py"), "--labeled", str(tree), "--shard-samples", "3",
             "--val-per-class", "2", "--no-progress"]
    with _tmpfs(tmp_path / "disk", "40k") as disk:
        out = disk / "out"
        proc = subprocess.run([*build, "--out", str(out)], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 2, proc.stderr[-2000:]
        line = _one_error_line(proc.stderr)
        assert "No space left on device" in line and str(out) in line and "rerun the same command" in line
        names = {p.name for p in out.iterdir()}
        assert "manifest.json" not in names and not [n for n in names if n.endswith(".tmp")]
        kept = sorted(n for n in names if n.endswith(".tar"))
        assert kept, names  # the shards written before the disk filled up are kept
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        again = subprocess.run([*build, "--out", str(out)], capture_output=True, text=True, cwd=REPO)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "resuming:" in again.stderr
        from sslrun.data.verify import verify_shards

        assert verify_shards(out) == []


def test_full_disk_during_shard_write_injected(tmp_path, monkeypatch):
    from sslrun.data import build as build_mod
    from sslrun.data import shard_writer

    tree = _tree(tmp_path / "in", per_class=4)
    real_put = shard_writer.TarShard._put
    calls = {"n": 0}

    def put(self: shard_writer.TarShard, chunk: bytes) -> None:
        calls["n"] += 1
        if calls["n"] > 10:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_put(self, chunk)

    monkeypatch.setattr(shard_writer.TarShard, "_put", put)
    with pytest.raises(UserError, match=r"cannot write .*\.tar: No space left on device; finished shards are kept"):
        build_mod.build_shards(tmp_path / "out", labeled=tree, shard_samples=2)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp") or p.name == "manifest.json"]


def test_full_disk_during_training_checkpoint_is_one_line_and_resumable(digits, tmp_path, monkeypatch, capsys):
    """The door's view of a full disk in the middle of a run: one line, last good checkpoint kept."""
    import importlib.util

    from sslrun.errors import exit_on_user_error

    spec = importlib.util.spec_from_file_location("train_door", REPO / "jobs/train.py")
    door = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(door)  # type: ignore[union-attr]
    args = [*FAST, "strategy=supervised", f"data={digits}", f"root={tmp_path}", "sweep=s", "name=full"]
    real_open, saves = open, {"n": 0}

    def full_after_first(path, *a, **k):  # noqa: ANN001 - open()'s signature
        if ".last.pt.tmp" in str(path):
            saves["n"] += 1
            if saves["n"] > 1:
                return _FullDisk(real_open(path, *a, **k))
        return real_open(path, *a, **k)

    monkeypatch.setattr(atomic, "open", full_after_first, raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(door.main)
    assert stop.value.code == 2
    ckpt = tmp_path / "s" / "full" / "ckpt"
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot write {ckpt / 'last.pt'}: No space left on device" in line
    assert checkpoint.load_latest(ckpt)[0]["step"] == 4 and not list(ckpt.glob(".*tmp*"))
    monkeypatch.undo()
    result = _train(args)
    assert result["steps"] == 12 and result["restarts"] == 1


# ------------------------------------------------------------------ a non-finite loss


def test_non_finite_loss_stops_before_saving_and_resumes_with_lower_lr(digits, tmp_path):
    common = [*FAST, "strategy=supervised", f"data={digits}", f"root={tmp_path}", "sweep=s", "name=nan", "lr=0.03"]
    _train(common)
    run_dir = tmp_path / "s" / "nan"
    (run_dir / "result.json").unlink()  # back to step 8, as a preemption after it would leave it
    os.replace(run_dir / "ckpt" / "prev.pt", run_dir / "ckpt" / "last.pt")
    good = (run_dir / "ckpt" / "last.pt").read_bytes()

    proc = run_door("jobs/train.py", *common[:-1], "lr=1e30")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert "NaN or infinite" in line or "loss is" in line
    assert "resume with a lower lr=" in line and "1e+30" in line
    assert (run_dir / "ckpt" / "last.pt").read_bytes() == good  # the bad weights were never saved
    assert not (run_dir / "result.json").exists()

    result = _train([*common[:-1], "lr=0.01"])
    assert result["steps"] == 12 and result["restarts"] == 1  # the NaN attempt saved nothing, not even its restart
    history = [json.loads(ln) for ln in (run_dir / "config-history.jsonl").read_text().splitlines()]
    assert [h["changed"]["lr"] for h in history] == [[0.03, 1e30], [1e30, 0.01]]
    assert "lr: 0.01" in (run_dir / "config.yaml").read_text()
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
           if r["kind"] == "train"}
    assert lrs[8] == pytest.approx(0.03) and lrs[12] == pytest.approx(0.01)  # the new lr took over at step 8
    assert _steps(run_dir, "train") == list(range(2, 13, 2))


# ---------------------------------------------------------------- damaged checkpoints


def test_truncated_last_checkpoint_falls_back_to_prev(digits, tmp_path):
    common = [*FAST, "strategy=supervised", f"data={digits}", f"root={tmp_path}", "sweep=s"]
    straight = _train([*common, "name=straight"])
    common.append("name=t")
    _train(common)
    ckpt = tmp_path / "s" / "t" / "ckpt"
    (tmp_path / "s" / "t" / "result.json").unlink()
    data = (ckpt / "last.pt").read_bytes()
    (ckpt / "last.pt").write_bytes(data[: len(data) // 2])
    state, note = checkpoint.load_latest(ckpt)
    assert state["step"] == 8 and "last.pt unreadable" in note
    result = _train(common)
    assert result["weights_sha256"] == straight["weights_sha256"] and result["restarts"] == 1


# ------------------------------------------------------------------------ hostile files


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims width x height pixels: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_by_the_builder(tmp_path):
    from sslrun.data.build import build_shards

    tree = _tree(tmp_path / "in", per_class=3)
    (tree / "a" / "bomb.png").write_bytes(_png_header_only(40000, 40000))
    m = build_shards(tmp_path / "out", labeled=tree)
    rejects = (tmp_path / "out" / "rejects.tsv").read_text()
    assert m["rejects"]["count"] == 1 and "bomb.png" in rejects and "decompression bomb" in rejects


@pytest.mark.parametrize("side", [10000, 40000])  # over our limit (64 Mpx), and over PIL's own (2 x 89 Mpx)
def test_decompression_bomb_is_refused_in_the_training_data_path(tmp_path, side):
    """A shard written by hand (not by the builder) with a bomb: refused from its header alone."""
    import resource

    from sslrun.data.loader import ShardImages
    from sslrun.data.manifest import FORMAT, read_manifest
    from sslrun.data.samples import load_split
    from shard_tools import ShardWriter
    from sslrun.atomic import write_atomic
    from sslrun.data.transforms import make_transform

    bomb = _png_header_only(side, side)  # 100 M or 1.6 G pixels: 0.3 or 4.8 GB as RGB
    with ShardWriter(tmp_path, "train") as w:
        w.write("bomb", {"png": bomb, "cls": b"0"})
    manifest = {"format": FORMAT, "classes": ["x"], "splits": {"train": {
        "count": 1, "labeled": True, "shards": [{"file": e.file, "count": e.count, "bytes": e.bytes, "sha256": e.sha256}
                                                for e in w.entries]}}}
    write_atomic(tmp_path / "manifest.json", json.dumps(manifest).encode())
    split = load_split(read_manifest(tmp_path), "train")
    ds = ShardImages([split], 32, {0: [make_transform("none")]})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UserError, match=r"train-000000.tar sample bomb: .*(pixels is over|pixel limit).*decompression bomb"):
        ds[(0, 0, 0, 0, 0)]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KB: nothing was decoded


def test_no_shell_commands_and_only_weights_only_loads():
    """Grep the sources: no shell built from strings, and every torch.load is weights_only=True."""
    files = [p for d in ("sslrun", "jobs", "shards") for p in (REPO / d).rglob("*.py")]
    text = {p: p.read_text() for p in files}
    assert not [p for p, t in text.items() if "shell=True" in t or "os.system(" in t or "os.popen(" in t]
    loads = [(p, ln) for p, t in text.items() for ln in t.splitlines() if "torch.load(" in ln]
    assert loads and all("weights_only=True" in ln for _, ln in loads), loads


# ----------------------------------------------------------------------------- signals


@pytest.mark.slow
def test_sigint_in_the_foreground_saves_and_resumes_exactly(digits, tmp_path):
    common = [*FAST, "strategy=supervised", f"data={digits}", f"root={tmp_path}", "sweep=s"]
    straight = _train([*common, "name=straight"])
    proc = start_door("jobs/train.py", *common, "name=int")
    run_dir = tmp_path / "s" / "int"
    metrics = run_dir / "metrics.jsonl"  # opened at the start: wait for its first line (step 2)
    signal_when(proc, lambda: metrics.exists() and metrics.stat().st_size > 0, signal.SIGINT, timeout=180)
    _, err = proc.communicate(timeout=180)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal landed")
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    assert "stopped by SIGINT" in err and "Traceback" not in err
    step = checkpoint.load_latest(run_dir / "ckpt")[0]["step"]
    assert 2 <= step < 12
    result = _train([*common, "name=int"])
    assert result["weights_sha256"] == straight["weights_sha256"] and result["restarts"] == 1
    assert _steps(run_dir, "train") == list(range(2, 13, 2))


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(digits, tmp_path):
    """Ten SIGKILLs (some while a checkpoint is being written), each followed by a restart:
    the final weights equal an uninterrupted run's, every step is logged once, no tmp file stays."""
    common = [*FAST, "strategy=supervised", "steps=30", "ckpt_every=3", "eval_every=10", f"data={digits}",
              f"root={tmp_path}", "sweep=s"]
    straight = _train([*common, "name=straight"])
    run_dir = tmp_path / "s" / "killed"
    ckpt = run_dir / "ckpt"
    rng = random.Random(8)
    cmd = [sys.executable, str(REPO / "jobs/train.py"), *common, "name=killed"]
    during_save = 0
    for kill in range(10):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        want_tmp = kill % 2 == 0
        start = checkpoint.load_latest(ckpt)[0]["step"] if (ckpt / "last.pt").exists() else 0
        target_step = start + rng.randint(1, 4)  # kill after this many more logged steps (or at a tmp file)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if want_tmp and ckpt.is_dir() and any(n.startswith(".last.pt.tmp") for n in os.listdir(ckpt)):
                during_save += 1
                break
            if not want_tmp and (run_dir / "metrics.jsonl").exists():
                logged = _steps(run_dir, "train")
                if logged and logged[-1] >= target_step:
                    time.sleep(rng.random() * 0.05)
                    break
            time.sleep(0.0005 if want_tmp else 0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = run_door("jobs/train.py", *common, "name=killed", check=True)
    result = json.loads(done.stdout)
    assert result["weights_sha256"] == straight["weights_sha256"]
    assert _steps(run_dir, "train") == list(range(2, 31, 2)), "every train step logged exactly once"
    assert _steps(run_dir, "val") == [10, 20, 30], "every val step logged exactly once"
    assert not [n for n in os.listdir(ckpt) if ".tmp" in n]
    print(f"{during_save} of 5 checkpoint-write kills landed while a .last.pt.tmp file existed; "
          f"restarts {result['restarts']}")
    assert during_save >= 1
