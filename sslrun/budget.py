"""A cosine schedule sized to a wall-clock budget (`budget_s` with `schedule=cosine`).

With a time budget the run stops when the time is spent, which on its own cuts the cosine
short: the learning rate is still high at the end and the last steps are wasted. So the
schedule's length K is estimated from the measured step rate: the first `skip` steps of an
attempt are left out (start-up, compilation, loader warm-up), the next `window` steps are timed,
and K = step + safety * remaining_budget * rate, capped at `steps`. The run then ends at K (or
earlier, when the time is spent anyway).

The estimate is made once, is the smallest one over ranks (so every rank ends at the same step),
and goes into the checkpoint: a resumed run keeps its K and its learning rates. Until it is
made, K is `steps`; its cosine barely moves in the first steps (cos(7 pi k / 16 K), k << K).
"""

from __future__ import annotations

import math
from collections.abc import Callable


class BudgetSchedule:
    """The estimated number of steps of a budgeted run (`steps` until the estimate is made)."""

    def __init__(self, budget_s: float, max_steps: int, skip: int = 10, window: int = 50,
                 safety: float = 0.95) -> None:
        self.budget_s, self.max_steps = budget_s, max_steps
        self.skip, self.window, self.safety = skip, window, safety
        self.estimate = 0  # 0: not yet made
        self._start: tuple[int, float] | None = None  # (step, elapsed_s) when timing began
        self._first_step = -1  # the first step this attempt ran

    @property
    def steps(self) -> int:
        return self.estimate or self.max_steps

    def observe(self, step: int, elapsed_s: float, agree: Callable[[int], int] = lambda n: n) -> None:
        """Called after each completed `step` with the run's elapsed seconds (over all attempts).

        `agree` turns this rank's estimate into the one all ranks use (the minimum under DDP); it is
        called at the same step on every rank, since the window is counted in steps.
        """
        if self.estimate:
            return
        if self._first_step < 0:
            self._first_step = step
        done = step - self._first_step
        if done == self.skip:
            self._start = (step, elapsed_s)
        elif self._start is not None and done == self.skip + self.window:
            rate = (step - self._start[0]) / max(elapsed_s - self._start[1], 1e-9)
            left = max(self.budget_s - elapsed_s, 0.0)
            mine = min(self.max_steps, step + max(1, math.floor(self.safety * left * rate)))
            self.estimate = int(agree(mine))

    def state_dict(self) -> dict[str, int]:
        return {"estimate": self.estimate}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.estimate = int(state.get("estimate", 0))


def plan_for(budget_s: float, schedule: str, max_steps: int) -> BudgetSchedule | None:
    """A schedule sized to the budget when both a budget and a cosine are asked for, else None."""
    return BudgetSchedule(budget_s, max_steps) if budget_s > 0 and schedule == "cosine" else None
