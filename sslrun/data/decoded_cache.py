"""Decoded images kept in memory, up to a byte budget (`decode_cache_mb`).

Why: a training run draws every image of a small set many times (CIFAR-sized FixMatch at 32 px
draws each unlabeled image about 25 times in 15 minutes), and decoding the same JPEG again each
time was two thirds of the loader's work: 10 of the 15 ms a 256-image step spent in the loader on
this 2-core machine, time the trainer waits when it decodes itself (`workers=0`) or a core the
trainer's second thread loses to a worker.

Why first come, first kept, and no eviction: the step sampler draws every sample of a role equally
often (a fresh permutation each epoch), so a least-recently-used policy would hold no more of the
next draws than the first images that fitted, and would only copy memory around.

What is kept is the image after `decode` and `fit` (uint8, 3 x size x size), before any random
view: a hit gives the same pixels a decode would, so runs, their resumes and their seeds are
unchanged by the cache. Callers must not write into what `get` returns (the views are new
tensors: tests/test_decoded_cache.py checks every preset leaves the cached pixels alone).
"""

from __future__ import annotations

from torch import Tensor

MB = 1 << 20


class DecodedCache:
    """A dict of (split id, index) -> uint8 image that stops taking images at `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._images: dict[tuple[int, int], Tensor] = {}

    def get(self, key: tuple[int, int]) -> Tensor | None:
        img = self._images.get(key)
        if img is None:
            self.misses += 1
        else:
            self.hits += 1
        return img

    def put(self, key: tuple[int, int], img: Tensor) -> None:
        size = img.numel() * img.element_size()
        if self.bytes + size > self.max_bytes or key in self._images:
            return
        self._images[key] = img.contiguous()
        self.bytes += size

    def __len__(self) -> int:
        return len(self._images)

    def emptied(self) -> DecodedCache:
        """A cache with the same budget and nothing in it: what a worker started by pickling
        (spawn, forkserver) gets, rather than a copy of everything the parent holds."""
        return DecodedCache(self.max_bytes)
