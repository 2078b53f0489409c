"""Atomic checkpoints on shared storage: write a temporary file, fsync, rename.

A job can be killed at any instant (preemption, time limit, SIGKILL), so a checkpoint is
either the old one or the new one, never half of each. The one before the last is kept as
`prev.pt`: if `last.pt` cannot be read, the run resumes from it rather than from scratch.
Files hold only tensors and plain values and load with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

LAST, PREV = "last.pt", "prev.pt"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` as last.pt; the previous last.pt becomes prev.pt (by hard link, atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{LAST}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        last = folder / LAST
        if last.exists():
            prev_tmp = folder / f".{PREV}.tmp{os.getpid()}"
            if prev_tmp.exists():
                prev_tmp.unlink()
            os.link(last, prev_tmp)
            os.replace(prev_tmp, folder / PREV)
        os.replace(tmp, last)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(folder)
    return folder / LAST


def load_latest(folder: Path) -> tuple[dict[str, Any] | None, str]:
    """The newest readable checkpoint and a note on what was skipped; (None, "") when none exists."""
    notes = []
    for name in (LAST, PREV):
        path = folder / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("not a sslrun checkpoint")
            return state, "; ".join(notes)
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped and reported
            notes.append(f"{path} unreadable ({type(err).__name__}: {str(err)[:100]})")
            log.warning("checkpoint %s unreadable: %s", path, err)
    return None, "; ".join(notes)


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' bytes in key order: equal hashes mean bit-identical weights."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
