"""One run in the foreground (also what srun/torchrun start): see sslrun/doors/train.py (also `sslrun-train`).

A thin launcher for a checkout where env/setup.sh installed sslrun (editable): nothing else here.
"""

from sslrun.doors.train import entry, main

__all__ = ["main"]

if __name__ == "__main__":
    entry()
