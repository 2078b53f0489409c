"""Check a shard set: `sslrun-verify DIR` (or `python shards/verify.py DIR`); exit 0 when all is fine, 1 with a list of
problems otherwise, 2 when DIR is not a shard set at all."""

from __future__ import annotations

import time
from pathlib import Path

from sslrun.cli import OneLineParser, console_script


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description="Check checksums, counts, labels and that every image decodes.")
    p.add_argument("folder", type=Path, help="a shard set made by shards/build.py")
    p.add_argument("--no-decode", action="store_true", help="skip decoding images (checksums and counts only)")
    a = p.parse_args(argv)
    from sslrun.data.manifest import read_manifest
    from sslrun.data.verify import verify_shards

    t0 = time.monotonic()
    problems = verify_shards(a.folder, decode=not a.no_decode)
    m = read_manifest(a.folder)
    total = sum(s.count for s in m.splits.values())
    for line in problems:
        print(line)
    dt = time.monotonic() - t0
    if problems:
        print(f"{a.folder}: {len(problems)} problem(s) in {total} samples ({dt:.1f} s)")
        return 1
    print(f"{a.folder}: ok, {total} samples in {sum(len(s.shards) for s in m.splits.values())} shards ({dt:.1f} s)")
    return 0


entry = console_script(main)  # `sslrun-verify`
