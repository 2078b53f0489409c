"""Fetch a timm model's pretrained weights on a login node: see sslrun/doors/prefetch.py (also `sslrun-prefetch`).

A thin launcher for a checkout where env/setup.sh installed sslrun (editable): nothing else here.
"""

from sslrun.doors.prefetch import entry, main

__all__ = ["main"]

if __name__ == "__main__":
    entry()
