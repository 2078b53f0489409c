"""What `epoch` means, once for every strategy: one pass over the unlabeled set.

Threshold schedules (`0.9+0.02*epoch`), `epoch_steps` and the logged `train/epoch` all count
in this unit. Before it was one definition per strategy, and permanent / local counted passes
over the 720 labeled images: a schedule rising 0.02 an epoch passed 1 within 30 steps and those
runs selected nothing. A pass over the unlabeled set is read at the global unlabeled batch
(batch_size x mu x ranks), whether or not the strategy reads unlabeled batches every step, so
the same schedule selects at the same steps in every strategy of a sweep.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sslrun.config import Config
    from sslrun.data.manifest import Manifest


def steps_per_epoch(epoch_steps: int, batch_size: int, mu: int, world: int, num_train: int, num_unlabeled: int) -> int:
    """Steps in one epoch: `epoch_steps` when set, else one pass over the unlabeled set at the
    global unlabeled batch, else (no unlabeled split) one pass over the labeled set."""
    if epoch_steps > 0:
        return epoch_steps
    if num_unlabeled > 0:
        return max(1, math.ceil(num_unlabeled / (batch_size * mu * world)))
    return max(1, math.ceil(num_train / (batch_size * world)))


# Strategies that never read `threshold=` (supervised has no unlabeled loss; FreeMatch derives its
# thresholds from the model's confidence): a schedule passing 1 changes nothing there.
THRESHOLD_FREE = ("supervised", "freematch")


def run_epoch_steps(cfg: Config, manifest: Manifest, world: int) -> int:
    """steps_per_epoch of a run from its config and its data set's counts, on `world` ranks."""
    counts = {name: split.count for name, split in manifest.splits.items()}
    return steps_per_epoch(cfg.epoch_steps, cfg.batch_size, cfg.mu, world, counts.get("train", 0),
                           counts.get("unlabeled", 0))


def threshold_warning(cfg: Config, epoch_steps: int) -> str | None:
    """One line when the run's threshold passes 1 before its last step, else None.

    Above 1 no softmax can pass it, so from there the unlabeled data adds nothing, and the run
    still ends with exit 0 (issue 13, fault 1): said at submit time and when the run starts.
    Whole epochs are scanned (strategies.thresholds.first_epoch_above_one), then the step of the
    crossing is found by bisection inside its epoch: strategies read the schedule at
    epoch = step / epoch_steps, a fraction, so 0.9+0.02*epoch passes 1 just after epoch 5."""
    from sslrun.strategies.thresholds import first_epoch_above_one, parse_threshold

    if cfg.strategy in THRESHOLD_FREE:
        return None
    at = parse_threshold(cfg.threshold)

    def over(step: int) -> bool:
        return at(step / epoch_steps, step) > 1

    last = max(0, cfg.steps - 1)
    epoch = first_epoch_above_one(cfg.threshold, last / epoch_steps, epoch_steps)
    if epoch is None:  # not at a whole epoch: perhaps within the last, partial one
        hi, lo = last, (last // epoch_steps) * epoch_steps
    else:
        hi, lo = epoch * epoch_steps, (epoch - 1) * epoch_steps
    if not over(hi):
        return None
    if lo < 0 or over(lo):
        lo = -1
    while hi - lo > 1:  # over(hi), not over(lo)
        mid = (lo + hi) // 2
        hi, lo = (mid, lo) if over(mid) else (hi, mid)
    return (f"warning: run {cfg.name}: threshold={cfg.threshold} passes 1 at epoch {hi / epoch_steps:.4g} (step {hi} "
            f"of {cfg.steps}; {epoch_steps} steps an epoch): from there no sample is selected")
