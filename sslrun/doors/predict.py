"""Leaderboard CSV (`id,label`) of one run, or of several runs averaged in softmax space.

    sslrun-predict RUN [RUN ...] (or python jobs/predict.py) [--split test] [--checkpoint best|last] [--out FILE.csv [--overwrite]]

Without --out the CSV goes to RUN/submission-SPLIT-CKPT.csv (rewritten each time); an --out
file that exists is replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sslrun.cli import OneLineParser, console_script


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (several: an ensemble, e.g. the seeds)")
    parser.add_argument("--split", default="test", help="split of the run's data set (default: test)")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"), help="weights to use (default: best)")
    parser.add_argument("--out", type=Path, help="CSV path (default: RUN/submission-SPLIT-CKPT.csv, or next to the runs)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--workers", type=int, default=0, help="loader processes (default: 0)")
    args = parser.parse_args(argv)

    from sslrun.predict import write_predictions

    path, pred = write_predictions(args.runs, args.split, args.checkpoint, args.out, args.workers,
                                   args.overwrite)
    ema = "EMA" if all(pred.used_ema) else "raw" if not any(pred.used_ema) else "EMA where kept"
    print(f"{len(pred.ids)} predictions of {len(pred.runs)} run(s), {args.checkpoint} checkpoint, {ema} weights: {path}")
    if pred.accuracy is not None:
        print(f"{args.split} accuracy: {100 * pred.accuracy:.2f}% ({int((pred.labels >= 0).sum())} labeled samples)")
    return 0


entry = console_script(main)  # `sslrun-predict`
