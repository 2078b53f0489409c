"""Build a shard set from image folders: see sslrun/doors/build.py (also `sslrun-build`).

A thin launcher for a checkout where env/setup.sh installed sslrun (editable): nothing else here.
"""

from sslrun.doors.build import entry, main

__all__ = ["main"]

if __name__ == "__main__":
    entry()
