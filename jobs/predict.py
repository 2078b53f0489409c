"""Leaderboard CSV of a run or an ensemble: see sslrun/doors/predict.py (also `sslrun-predict`).

A thin launcher for a checkout where env/setup.sh installed sslrun (editable): nothing else here.
"""

from sslrun.doors.predict import entry, main

__all__ = ["main"]

if __name__ == "__main__":
    entry()
