"""A sweep's report: per-setting table over seeds (Markdown on stdout, CSV), PNG plots, cost.

    sslrun-report SWEEP (or python jobs/report.py) [--by strategy,threshold,frozen,model] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sslrun.cli import OneLineParser, console_script


def main(argv: list[str] | None = None) -> int:
    from sslrun.report import DEFAULT_BY, make_report

    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="sweep folder (ROOT/SWEEP, holding one folder per run)")
    parser.add_argument("--by", default=",".join(DEFAULT_BY), help="config keys that define a setting (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="folder for the CSV and PNG files (default: SWEEP/report)")
    args = parser.parse_args(argv)
    by = tuple(k.strip() for k in args.by.split(",") if k.strip())
    text, _ = make_report(args.sweep, by, args.out)
    print(text)
    return 0


entry = console_script(main)  # `sslrun-report`
