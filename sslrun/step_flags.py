"""What every rank must agree on at the end of a step, in one all_reduce: stop, bad loss, budget.

Each rank may see a different thing (a signal reaches one rank, one rank's loss goes NaN), and
acting on it alone would leave the others waiting in the next collective. The three flags are
pooled by MAX in one small tensor built on the device and read once: the step's only host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sslrun import distributed


@dataclass(frozen=True)
class StepFlags:
    signum: int  # the stop signal seen on some rank (the largest number), 0 for none
    bad_loss: bool  # the loss was NaN or infinite on some rank
    over_budget: bool  # budget_s is spent on some rank

    @classmethod
    def agree(cls, signum: int, loss: Tensor, over_budget: bool) -> StepFlags:
        """This rank's view pooled over every rank (the same values everywhere afterwards)."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        host = torch.tensor([float(signum), float(over_budget)], device=bad.device)
        pooled_signum, pooled_bad, pooled_over = distributed.all_max(torch.cat([host[:1], bad, host[1:]])).tolist()
        return cls(int(pooled_signum), pooled_bad > 0, pooled_over > 0)
