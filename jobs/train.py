"""One run in the foreground: see sslrun/doors/train.py (also `sslrun-train`)."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/train.py` from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sslrun.doors.train import entry, main  # noqa: E402

__all__ = ["main"]

if __name__ == "__main__":
    entry()
