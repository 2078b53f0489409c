"""A sweep's report: table over seeds, CSV, PNG plots: see sslrun/doors/report.py (also `sslrun-report`).

A thin launcher for a checkout where env/setup.sh installed sslrun (editable): nothing else here.
"""

from sslrun.doors.report import entry, main

__all__ = ["main"]

if __name__ == "__main__":
    entry()
