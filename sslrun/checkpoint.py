"""Atomic checkpoints on shared storage: write a temporary file, fsync, rename.

A job can be killed at any instant (preemption, time limit, SIGKILL), so a checkpoint is
either the old one or the new one, never half of each. The one before the last is kept as
`prev.pt`: if `last.pt` cannot be read, the run resumes from it rather than from scratch.
Files hold only tensors and plain values and load with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

from sslrun.atomic import write_atomic
from sslrun.errors import write_error

log = logging.getLogger(__name__)

LAST, PREV = "last.pt", "prev.pt"
# Temporary names a killed writer can leave behind: `.last.pt.tmp<pid>`, `.best.pt.tmp`, ...
TMP_PREFIXES = (f".{LAST}.tmp", f".{PREV}.tmp", ".best.pt.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all; a failed write (full disk) is a UserError naming it."""
    try:
        write_atomic(path, data)
    except OSError as err:
        raise write_error(path, err, "the file there before is unchanged") from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_bytes(state: dict[str, Any]) -> bytes:
    """Serialise in memory first: torch.save straight into a file turns a full disk into an
    obscure RuntimeError ("unexpected pos"), while a plain write raises OSError(ENOSPC)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def remove_stale_tmp(folder: Path) -> list[str]:
    """Remove the temporary files of a writer that was killed mid-save; returns their names.

    Only this run's process writes here (rank 0), so at start no temporary file is live."""
    if not folder.is_dir():
        return []
    gone = []
    for p in folder.iterdir():
        if p.name.startswith(TMP_PREFIXES):
            p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


def save(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` as last.pt; the previous last.pt becomes prev.pt (by hard link, atomically).

    A failed write (a full disk) leaves last.pt and prev.pt as they were and raises a
    UserError naming the file."""
    folder.mkdir(parents=True, exist_ok=True)
    last, prev = folder / LAST, folder / PREV
    data = to_bytes(state)

    def keep_previous() -> None:
        if not last.exists():
            return
        prev_tmp = folder / f".{PREV}.tmp{os.getpid()}"
        prev_tmp.unlink(missing_ok=True)
        try:
            os.link(last, prev_tmp)
            os.replace(prev_tmp, prev)
        finally:
            prev_tmp.unlink(missing_ok=True)

    try:
        write_atomic(last, data, before_replace=keep_previous)
    except OSError as err:
        raise write_error(last, err, f"the previous checkpoints in {folder} are kept") from None
    return last


def load_latest(folder: Path) -> tuple[dict[str, Any] | None, str]:
    """The newest readable checkpoint and a note on what was skipped; (None, "") when none exists."""
    notes = []
    for name in (LAST, PREV):
        path = folder / name
        if not path.exists():
            continue
        if not path.is_file():  # a FIFO would block the open forever; a link to /dev/zero is no file
            notes.append(f"{path} unreadable (not a regular file)")
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("not a sslrun checkpoint")
            return state, "; ".join(notes)
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped and reported
            why = " ".join(str(err).split())[:100] or "empty"  # one line, whatever torch says
            notes.append(f"{path} unreadable ({type(err).__name__}: {why})")
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
