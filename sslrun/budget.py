"""A cosine schedule sized to a wall-clock budget (`budget_s` with `schedule=cosine`).

With a time budget the run stops when the time is spent, which on its own cuts the cosine
short: the learning rate is still high at the end and the last steps are wasted. So the
schedule's length K is estimated from the measured step rate: the first `skip` steps of an
attempt are left out (start-up, compilation, loader warm-up), the next `window` steps are timed,
and K = step + safety * remaining_budget * rate, capped at `steps`. The run then ends at K (or
earlier, when the time is spent anyway).

One estimate from the first minute missed by 8-19 % on CIFAR-10 FixMatch runs (the rate drifts
as a run goes: other processes, the page cache, the CPU's clock), and a run stopped by the time
ends with its learning rate still up. So K is estimated again when the cosine is a quarter, half,
three quarters and 90 % through, from the rate since the last estimate, and the cosine is
re-anchored there: its progress p runs linearly from where it was to 1 at the new K, so the
learning rate never jumps. The last refit is close to the end, where little time is left to
misjudge.

Every estimate is the smallest one over ranks (so every rank ends at the same step; the refit
points are counted in steps, so every rank meets them together) and goes into the checkpoint
with its anchor: a resumed run keeps its K and its learning rates, and refits from its own timing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

REFITS = (0.25, 0.5, 0.75, 0.9)  # cosine progress at which K is estimated again


class BudgetSchedule:
    """The estimated number of steps of a budgeted run (`steps` until the estimate is made) and
    the cosine's progress at each step."""

    def __init__(self, budget_s: float, max_steps: int, skip: int = 10, window: int = 50,
                 safety: float = 0.95, refits: tuple[float, ...] = REFITS) -> None:
        self.budget_s, self.max_steps = budget_s, max_steps
        self.skip, self.window, self.safety, self.refits = skip, window, safety, refits
        self.estimate = 0  # 0: not yet made
        self.anchor_step, self.anchor_progress = 0, 0.0  # progress is linear from here to 1 at `steps`
        self.refits_done = 0
        self._mark: tuple[int, float] | None = None  # (step, elapsed_s) the next rate is measured from
        self._first_step = -1  # the first step this attempt ran

    @property
    def steps(self) -> int:
        return self.estimate or self.max_steps

    def progress(self, step: int) -> float:
        """How far through the cosine `step` is, 0 to 1."""
        span = max(self.steps - self.anchor_step, 1)
        return min(1.0, self.anchor_progress + (1.0 - self.anchor_progress) * (step - self.anchor_step) / span)

    def observe(self, step: int, elapsed_s: float, agree: Callable[[int], int] = lambda n: n) -> None:
        """Called after each completed `step` with the run's elapsed seconds (over all attempts).

        `agree` turns this rank's estimate into the one all ranks use (the minimum under DDP); it is
        called at the same step on every rank, since the window and the refit points are counted in steps.
        """
        if self._first_step < 0:
            self._first_step = step
        if step - self._first_step == self.skip:
            self._mark = (step, elapsed_s)
            return
        if self._mark is None or step - self._mark[0] < self.window:
            return
        if self.estimate and (self.refits_done >= len(self.refits)
                              or self.progress(step) < self.refits[self.refits_done]):
            return
        rate = (step - self._mark[0]) / max(elapsed_s - self._mark[1], 1e-9)
        left = max(self.budget_s - elapsed_s, 0.0)
        mine = min(self.max_steps, step + max(1, math.floor(self.safety * left * rate)))
        if self.estimate:
            while self.refits_done < len(self.refits) and self.progress(step) >= self.refits[self.refits_done]:
                self.refits_done += 1  # a point passed while no rate was measured is not made up later
        self.anchor_step, self.anchor_progress = step, self.progress(step)
        self.estimate = int(agree(mine))
        self._mark = (step, elapsed_s)

    def state_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "anchor_step": self.anchor_step,
                "anchor_progress": self.anchor_progress, "refits_done": self.refits_done}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Also reads a checkpoint from before the refits ({"estimate": K}: a cosine from step 0 to K)."""
        self.estimate = int(state.get("estimate", 0))
        self.anchor_step = int(state.get("anchor_step", 0))
        self.anchor_progress = float(state.get("anchor_progress", 0.0))
        self.refits_done = int(state.get("refits_done", 0))


def plan_for(budget_s: float, schedule: str, max_steps: int) -> BudgetSchedule | None:
    """A schedule sized to the budget when both a budget and a cosine are asked for, else None."""
    return BudgetSchedule(budget_s, max_steps) if budget_s > 0 and schedule == "cosine" else None
