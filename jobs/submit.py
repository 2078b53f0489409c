"""Send a sweep of runs as one job array: see sslrun/doors/submit.py (also `sslrun-submit`).

A thin launcher for a checkout where env/setup.sh installed sslrun (editable): nothing else here.
"""

from sslrun.doors.submit import entry, main

__all__ = ["main"]

if __name__ == "__main__":
    entry()
