"""Check a shard set: see sslrun/doors/verify.py (also `sslrun-verify`).

A thin launcher for a checkout where env/setup.sh installed sslrun (editable): nothing else here.
"""

from sslrun.doors.verify import entry, main

__all__ = ["main"]

if __name__ == "__main__":
    entry()
