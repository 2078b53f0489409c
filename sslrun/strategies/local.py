"""Local pseudo-labeling in rounds (the report's section 2.6).

The run is cut into phases by step ranges:

    [0, warmup)                        train on the labeled set
    then rounds of pseudo + retrain steps:
      a labeling pass at the round's first step picks the unlabeled samples over threshold;
      `pseudo` steps train on those pseudo-labeled samples alone;
      `retrain` steps train on the labeled set alone.

Unlike `permanent`, each round labels afresh: the pool is what the current model is sure of,
and the labeled set corrects it afterwards. Config: extra.local_warmup (default steps // 4),
extra.pseudo_steps and extra.retrain_steps (default steps // 8 each). If a pass selects
nothing, the pseudo phase trains on the labeled set (the engine falls back to it).
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

WARMUP, PSEUDO, RETRAIN = "warmup", "pseudo", "retrain"


@register
class Local(Strategy):
    name = "local"
    extra_keys = {
        "local_warmup": Key("int", 0, 2**31 - 1, doc="a number of steps (default steps // 4)"),
        "pseudo_steps": Key("int", 1, 2**31 - 1, doc="a positive number of steps (default steps // 8)"),
        "retrain_steps": Key("int", 0, 2**31 - 1, doc="a number of steps (default steps // 8)"),
    }
    labels_in_passes = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        steps = self.cfg.steps
        self.warmup = int(self.extra_number("local_warmup", steps // 4, integer=True))
        self.pseudo = int(self.extra_number("pseudo_steps", max(1, steps // 8), integer=True))
        self.retrain = int(self.extra_number("retrain_steps", max(1, steps // 8), integer=True))
        if self.pseudo <= 0:
            raise UserError(f"extra.pseudo_steps={self.pseudo}: expected a positive number of steps")
        self.pool_index = torch.zeros(0, dtype=torch.long)
        self.pool_label = torch.zeros(0, dtype=torch.long)
        self.last_pass = -1

    def phase(self, step: int) -> tuple[str, int, int]:
        """(phase, round, step within the round) at `step`; round -1 during warm-up."""
        if step < self.warmup:
            return WARMUP, -1, step
        r, within = divmod(step - self.warmup, self.pseudo + self.retrain)
        return (PSEUDO if within < self.pseudo else RETRAIN), r, within

    def labeling_due(self, step: int) -> bool:
        phase, _, within = self.phase(step)
        return phase == PSEUDO and within == 0 and step != self.last_pass

    def loader_due(self, step: int) -> bool:
        phase, _, within = self.phase(step)
        return phase == RETRAIN and within == self.pseudo

    def labeled_mode(self, step: int) -> str:
        return "extra" if self.phase(step)[0] == PSEUDO else "labeled"

    def on_labeling(self, indices: Tensor, conf: Tensor, pred: Tensor, step: int) -> None:
        tau = self.threshold_at(step / self.epoch_steps, step)
        keep = conf >= tau
        self.pool_index, self.pool_label = indices[keep].clone(), pred[keep].clone()
        self.last_pass = step
        log.info("round %d at step %d: %d samples over threshold %.3g", self.phase(step)[1], step, int(keep.sum()), tau)
        if not keep.any():
            log.warning("no unlabeled sample reached threshold %.3g at step %d: this round's pseudo phase "
                        "trains on the labeled set", tau, step)

    def labeled_extra(self) -> tuple[Tensor, Tensor] | None:
        return self.pool_index, self.pool_label

    def compute_loss(self, model: nn.Module, batch: Batch, info: StepInfo) -> tuple[Tensor, dict[str, LogValue]]:
        x, mix = self.mix_labeled(batch.x)
        loss, _ = supervised_loss(model, Batch(x=x, y=batch.y), mix)
        phase = self.phase(info.step)[0]
        logs = {"loss_s" if phase != PSEUDO else "loss_u": loss.detach(),
                "pool_size": torch.tensor(float(len(self.pool_index))),
                "phase": torch.tensor(float((WARMUP, PSEUDO, RETRAIN).index(phase)))}
        if self.num_unlabeled:
            logs["mask_rate"] = torch.tensor(len(self.pool_index) / self.num_unlabeled)
        return loss, logs

    def state_dict(self) -> dict[str, Any]:
        return {"pool_index": self.pool_index.clone(), "pool_label": self.pool_label.clone(), "last_pass": self.last_pass}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "pool_index" in state:
            self.pool_index = state["pool_index"].clone().long()
            self.pool_label = state["pool_label"].clone().long()
            self.last_pass = int(state["last_pass"])
