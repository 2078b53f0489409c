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


def steps_per_epoch(epoch_steps: int, batch_size: int, mu: int, world: int, num_train: int, num_unlabeled: int) -> int:
    """Steps in one epoch: `epoch_steps` when set, else one pass over the unlabeled set at the
    global unlabeled batch, else (no unlabeled split) one pass over the labeled set."""
    if epoch_steps > 0:
        return epoch_steps
    if num_unlabeled > 0:
        return max(1, math.ceil(num_unlabeled / (batch_size * mu * world)))
    return max(1, math.ceil(num_train / (batch_size * world)))
