"""Random numbers for augmenting whole batches, drawn from each sample's own seed.

Why: a batch augmented from one generator seeded by (seed, step, rank) gives a sample pixels
that depend on which rank read it and where in the batch it sat, so 2 ranks did not train what
1 rank trains, and a strong view made later for a few kept rows was not the view the full pass
would have made. Here draw k of a sample is splitmix64's output for (its seed, its view, k): a
counter-based stream, computed with int64 tensor ops on whatever device the batch is on, that
no other sample's presence changes. The seed is the one the loader gives each sample
(`StepSampler.items`, fixed by the run seed, the role and the stream position), so a resumed
step also draws the same pixels.

int64 tensor arithmetic wraps modulo 2**64 (checked against numpy's uint64 in
tests/test_batch_augment.py); the right shifts are made logical with a mask.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _signed(v: int) -> int:
    """An integer modulo 2**64, as the int64 a tensor op takes."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


# splitmix64's constants (also sslrun/data/loader.py's mix_seed): its increment, its two multipliers
SPLITMIX_GAMMA, SPLITMIX_MUL1, SPLITMIX_MUL2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_GAMMA = _signed(SPLITMIX_GAMMA)  # one per draw
_VIEW = _signed(0xD1B54A32D192ED03)  # separates the streams of one sample's views
_M1, _M2 = _signed(SPLITMIX_MUL1), _signed(SPLITMIX_MUL2)
BITS = 24  # a float32 uniform holds 24 bits exactly


def _shr(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def finalize(z: Tensor) -> Tensor:
    """splitmix64's output function (Stafford's mix 13) on int64, wrapping."""
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


class SampleDraws:
    """One stream of draws per row: `seeds` (int64, one a row) and `view` (which of the sample's
    views this is) fix it. Each call takes the next draws of every row; a row's draws are the same
    whatever rows are beside it, so `rows(idx)` gives the same streams for a subset."""

    def __init__(self, seeds: Tensor, view: int, taken: int = 0) -> None:
        self.seeds, self.view, self.taken = seeds, view, taken
        self.key = finalize(seeds.to(torch.int64) + _signed((view + 1) * _VIEW))

    def __len__(self) -> int:
        return self.seeds.shape[0]

    def rows(self, idx: Tensor) -> SampleDraws:
        """The streams of rows `idx`, at the same point."""
        return SampleDraws(self.seeds[idx], self.view, self.taken)

    def bits(self, k: int = 1) -> Tensor:
        """The next `k` draws of each row as (k, n) int64 in [0, 2**BITS)."""
        counter = torch.arange(self.taken + 1, self.taken + k + 1, device=self.key.device, dtype=torch.int64)
        self.taken += k
        return _shr(finalize(self.key.unsqueeze(0) + counter.unsqueeze(1) * _GAMMA), 64 - BITS)

    def uniform(self, k: int = 1) -> Tensor:
        """(k, n) float32 in [0, 1)."""
        return self.bits(k).to(torch.float32) * (1.0 / (1 << BITS))

    def integers(self, high: int, k: int = 1) -> Tensor:
        """(k, n) int64 in [0, high): the top of bits * high, so every value is reachable."""
        if not 0 < high < 1 << 39:
            raise ValueError(f"integers: high={high} outside 1..2**39")
        return (self.bits(k) * high) >> BITS
