"""Permanent pseudo-labeling: confident unlabeled samples join the training set for good.

Every `extra.label_every` steps (default: eval_every), from step `extra.label_start`
(default: label_every; 0 makes sense with pretrained weights), the engine runs a labeling
pass over the whole unlabeled set. A sample whose top softmax reaches the threshold is added
to the labeled set with that argmax as its label, and keeps this first label for the rest of
the run: later passes only add samples not yet taken. Training itself is supervised on the
labeled set plus the taken samples (the engine rebuilds its loader after each pass).

The table of taken labels (-1 = not taken) is the strategy's whole state and goes into the
checkpoint, as does the step of the last pass, so that a run stopped just after a pass does
not repeat it on resume.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from sslrun.config import Key
from sslrun.errors import UserError
from sslrun.strategies.base import Batch, LogValue, StepInfo, Strategy, supervised_loss
from sslrun.strategies.registry import register

log = logging.getLogger(__name__)


@register
class Permanent(Strategy):
    name = "permanent"
    extra_keys = {
        "label_every": Key("int", 1, 2**31 - 1, doc="a positive number of steps (default eval_every)"),
        "label_start": Key("int", 0, 2**31 - 1, doc="a step (default label_every)"),
    }
    labels_in_passes = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.every = int(self.extra_number("label_every", self.cfg.eval_every, integer=True))
        self.start = int(self.extra_number("label_start", self.every, integer=True))
        if self.every <= 0:
            raise UserError(f"extra.label_every={self.every}: expected a positive number of steps")
        self.table = torch.zeros(0, dtype=torch.long)
        self.last_pass = -1

    def setup(self, num_unlabeled: int, epoch_steps: int) -> None:
        super().setup(num_unlabeled, epoch_steps)
        if len(self.table) != num_unlabeled:
            self.table = torch.full((num_unlabeled,), -1, dtype=torch.long)

    def labeling_due(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.every == 0 and step != self.last_pass

    def labeling_candidates(self) -> Tensor | None:
        return torch.nonzero(self.table < 0).flatten()  # a taken sample keeps its first label

    def on_labeling(self, indices: Tensor, conf: Tensor, pred: Tensor, step: int) -> None:
        tau = self.threshold_at(step / self.epoch_steps, step)
        new = (conf >= tau) & (self.table[indices] < 0)
        self.table[indices[new]] = pred[new]
        self.last_pass = step
        log.info("labeling pass at step %d: %d new samples over threshold %.3g, %d in the pool",
                 step, int(new.sum()), tau, int((self.table >= 0).sum()))
        if tau > 1:
            log.warning("threshold=%s is %.3g at step %d (epoch %.2f): above 1, no sample can be selected from "
                        "here on", self.cfg.threshold, tau, step, step / self.epoch_steps)

    def labeled_extra(self) -> tuple[Tensor, Tensor] | None:
        idx = torch.nonzero(self.table >= 0).flatten()
        return idx, self.table[idx]

    def compute_loss(self, model: nn.Module, batch: Batch, info: StepInfo) -> tuple[Tensor, dict[str, LogValue]]:
        x, mix = self.mix_labeled(batch.x)
        loss, _ = supervised_loss(model, Batch(x=x, y=batch.y), mix)
        taken = (self.table >= 0).float()
        return loss, {"loss_s": loss.detach(), "pool_size": taken.sum(), "mask_rate": taken.mean()}

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.table.clone(), "last_pass": self.last_pass}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "table" in state:
            self.table = state["table"].clone().long()
            self.last_pass = int(state["last_pass"])
