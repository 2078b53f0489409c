"""Every run of a sweep: SLURM state, step, epoch, val accuracy, restarts, log.

    python jobs/status.py SWEEP          # a sweep folder, or a sweep name under $SSLRUN_ROOT or ./runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sslrun.cli import OneLineParser  # noqa: E402
from sslrun.errors import exit_on_user_error  # noqa: E402


def main() -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep folder, or sweep name under $SSLRUN_ROOT (default ./runs)")
    parser.add_argument("--json", action="store_true", help="one JSON object per run instead of the table")
    args = parser.parse_args()

    from sslrun.status import status_table, sweep_status

    sweep = Path(args.sweep)
    if not sweep.is_dir() and not sweep.is_absolute():
        sweep = Path(os.environ.get("SSLRUN_ROOT", "") or "runs") / args.sweep
    rows = sweep_status(sweep)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(status_table(rows))
    return 0


if __name__ == "__main__":
    exit_on_user_error(main)
