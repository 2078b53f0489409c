"""Whole-or-nothing file writes on shared storage: temporary name, fsync, os.replace.

A job can die at any instant; a reader must see the old file or the new one, never half of
each. Used for manifests, configs, results, checkpoints and reports alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, before_replace: Callable[[], None] | None = None) -> None:
    """Write `path` whole or not at all; an OSError (a full disk) names `path`, and no temporary is left.

    `before_replace` runs once the new bytes are safely on disk, just before they take the
    name (checkpoint.save keeps the old file as prev.pt there): a write that fails changes nothing."""
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as err:  # name the file: a failed write() (a full disk) names none
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
