"""Every run of a sweep: state, step, val accuracy, restarts: see sslrun/doors/status.py (also `sslrun-status`).

A thin launcher for a checkout where env/setup.sh installed sslrun (editable): nothing else here.
"""

from sslrun.doors.status import entry, main

__all__ = ["main"]

if __name__ == "__main__":
    entry()
