"""Build a shard set from image folders: the command-line door to sslrun.data.build.

    sslrun-build (or python shards/build.py) --labeled train/ [--unlabeled unl/] [--test test/] --out shards/ \
        [--val-per-class K | --val-fraction F] [--labels-per-class N] [--seed S] \
        [--shard-samples N | --shard-bytes 1G] [-j N] [--max-side PX] [--no-progress]

Rerun the same command after a crash or Ctrl-C: it finishes the build without redoing
complete shards.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from pathlib import Path

from sslrun.cli import OneLineParser, console_script


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(description="Pack image folders into WebDataset tar shards with a manifest.")
    p.add_argument("--labeled", required=True, type=Path, help="folder with one sub-folder of images per class")
    p.add_argument("--unlabeled", type=Path, help="folder of loose unlabeled images")
    p.add_argument("--test", type=Path, help="test images: loose (keyed by file id) or in class sub-folders")
    p.add_argument("--out", required=True, type=Path, help="new (or empty) folder for the shard set")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-per-class", type=int, metavar="K", help="hold out K labeled images per class as 'val'")
    val.add_argument("--val-fraction", type=float, metavar="F", help="hold out this fraction of each class as 'val'")
    p.add_argument("--labels-per-class", type=int, metavar="N",
                   help="keep N labeled per class; the rest become unlabeled (true class only in the manifest)")
    p.add_argument("--seed", type=int, default=0, help="fixes the split and the shuffle (default 0)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shard-samples", type=int, default=10000, metavar="N", help="samples per shard (default 10000)")
    size.add_argument("--shard-bytes", metavar="SIZE", help="bytes per shard, e.g. 500M or 1G (binary units)")
    p.add_argument("-j", "--workers", type=int, default=1, metavar="N", help="parallel worker processes (default 1)")
    p.add_argument("--max-side", type=int, metavar="PX", help="shrink images whose longer side is over PX (re-encodes them)")
    p.add_argument("--unlabeled-truth", type=Path, metavar="CSV",
                   help="id,class lines: hidden true classes of the loose unlabeled images (kept in the manifest only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    from sslrun.data.build import build_shards, parse_size, read_truth

    signal.signal(signal.SIGTERM, _interrupt)  # SLURM's time limit, kill: stop cleanly like Ctrl-C
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.monotonic()
    m = build_shards(
        a.out, a.labeled, a.unlabeled, a.test,
        val_per_class=a.val_per_class, val_fraction=a.val_fraction, labels_per_class=a.labels_per_class,
        seed=a.seed, shard_samples=a.shard_samples,
        shard_bytes=None if a.shard_bytes is None else parse_size(a.shard_bytes),
        workers=a.workers, max_side=a.max_side, progress=not a.no_progress,
        unlabeled_truth=None if a.unlabeled_truth is None else read_truth(a.unlabeled_truth),
    )
    dt = time.monotonic() - t0
    total = sum(s["count"] for s in m["splits"].values())
    print(f"{a.out}: {len(m['classes'])} classes, {total} samples in {dt:.1f} s")
    for name, s in m["splits"].items():
        size = sum(x["bytes"] for x in s["shards"])
        print(f"  {name:10s} {s['count']:>9d} samples  {len(s['shards']):>5d} shards  {size / 2**20:>9.1f} MiB")
    if m["rejects"]["count"]:
        print(f"  rejected {m['rejects']['count']} files: see {a.out / m['rejects']['file']}")
    return 0


entry = console_script(main)  # `sslrun-build`
