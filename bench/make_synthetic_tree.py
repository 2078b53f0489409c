"""Make a synthetic image tree for benchmarking the shard builder (not for training).

    python bench/make_synthetic_tree.py OUT [--images 300000] [--classes 48] [--side 96] [-j 2]

Writes OUT/train/class_NN/img_NNNNNNN.jpg. Why pre-encoded variants: encoding 300k JPEGs one
by one takes minutes; the packer only cares about file count, sizes and directory layout.
Each class gets a few dozen JPEGs (a smooth pattern plus noise, ~96 px, a few KB each, like
small real photos); every file is one of them with its index in a JPEG comment segment, so
no two files are byte-identical.
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = 32


def _variants(cls: int, side: int) -> list[bytes]:
    rng = np.random.default_rng(cls)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    out = []
    for v in range(VARIANTS):
        f = rng.uniform(1, 6, 3)
        base = np.stack([np.sin(f[c] * (xx + v * 0.1) * 6.28 + c) * np.cos(f[(c + 1) % 3] * yy * 6.28) for c in range(3)], -1)
        img = (base * 80 + 128 + rng.normal(0, 18, (side, side, 3))).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(80, 95)))
        out.append(buf.getvalue())
    return out


def _with_comment(jpeg: bytes, text: bytes) -> bytes:
    """Insert a COM segment after SOI: a different file, the same picture."""
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[2:]


def _make_class(args: tuple[str, int, int, int, int]) -> int:
    root, cls, start, count, side = args
    folder = Path(root) / "train" / f"class_{cls:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    var = _variants(cls, side)
    for i in range(start, start + count):
        data = _with_comment(var[i % VARIANTS], b"img %d" % i)
        with open(folder / f"img_{i:07d}.jpg", "wb") as f:
            f.write(data)
    return count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--images", type=int, default=300_000)
    p.add_argument("--classes", type=int, default=48)
    p.add_argument("--side", type=int, default=96)
    p.add_argument("-j", "--workers", type=int, default=os.cpu_count() or 1)
    a = p.parse_args()
    t0 = time.monotonic()
    per, extra = divmod(a.images, a.classes)
    jobs, start = [], 0
    for c in range(a.classes):
        n = per + (c < extra)
        jobs.append((str(a.out), c, start, n, a.side))
        start += n
    with Pool(a.workers) as pool:
        done = sum(pool.imap_unordered(_make_class, jobs))
    size = sum(f.stat().st_size for d in (a.out / "train").iterdir() for f in d.iterdir())
    print(f"{a.out}: {done} images in {a.classes} classes, {size / 1e9:.2f} GB, {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
