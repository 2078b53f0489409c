"""The embedded default data set: scikit-learn's handwritten digits, as a shard set.

1,797 real 8x8 grayscale images in 10 classes ship inside scikit-learn, so the demo and the
tests run with no download. Made like the course challenge: 15 labeled images per class, a
fixed-seed validation split, the rest unlabeled (true class hidden in the manifest), and a
held-out labeled test split. Built once per runs root; concurrent jobs may race to build it,
so each builds in its own temporary folder and the first rename wins.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from sslrun.data.build import build_shards

log = logging.getLogger(__name__)

NAME = "digits-v1"
TEST_PER_CLASS = 30
VAL_PER_CLASS = 10
LABELS_PER_CLASS = 15
SPLIT_SEED = 0


def write_digits_tree(folder: Path) -> None:
    """`train/<digit>/*.png` (all but the test images) and `test/<digit>/*.png`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    taken: dict[int, int] = {}
    for i in order:
        label = int(digits.target[i])
        split = "test" if taken.get(label, 0) < TEST_PER_CLASS else "train"
        taken[label] = taken.get(label, 0) + 1
        out = folder / split / str(label)
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(out / f"digit{i:04d}.png")


def ensure_digits(cache: Path) -> Path:
    """The digits shard set under `cache`, built on first use."""
    final = cache / NAME
    if (final / "manifest.json").exists():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{NAME}.", dir=cache))
    try:
        write_digits_tree(work / "tree")
        build_shards(work / "shards", labeled=work / "tree" / "train", test=work / "tree" / "test",
                     val_per_class=VAL_PER_CLASS, labels_per_class=LABELS_PER_CLASS, seed=SPLIT_SEED,
                     shard_samples=500)
        try:
            os.rename(work / "shards", final)
            log.info("built the digits shard set in %s", final)
        except OSError:
            if not (final / "manifest.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
