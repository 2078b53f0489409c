"""FlexMatch (Zhang et al. 2021): FixMatch with class-wise thresholds that follow learning.

Classes the model already predicts confidently get the full threshold; classes it rarely
predicts get a lower one, so they collect pseudo-labels early instead of starving. The
learning effect of class c is sigma_c, the number of unlabeled samples whose latest
confident prediction (confidence >= tau) is c. That needs one entry per unlabeled sample,
the `selected` table (-1 = never confidently predicted), which goes into the checkpoint.

    beta_c = sigma_c / max(max_c' sigma_c', n_unused)   (warm-up, the default)
    beta_c = sigma_c / max_c' sigma_c'                   (extra.flex_warmup=false)
    T_c    = tau * M(beta_c),  M(x) = x / (2 - x)        (the paper's convex mapping)

As in the reference code (TorchSSL, USB), the table is updated with the current batch before
the thresholds are computed, and beta is 0 for every class while no sample was ever selected
(so early on every pseudo-label passes). Under DDP each rank gathers every rank's indices
and predictions and applies the same update, so all ranks hold the same table.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sslrun import distributed
from sslrun.config import Key
from sslrun.strategies.base import StepInfo
from sslrun.strategies.fixmatch import FixMatch
from sslrun.strategies.registry import register


def convex_map(x: Tensor) -> Tensor:
    return x / (2 - x)


def class_thresholds(selected: Tensor, num_classes: int, tau: float, warmup: bool = True) -> Tensor:
    """T_c for every class from the table of latest confident predictions (-1 = none)."""
    sigma = torch.bincount(selected[selected >= 0], minlength=num_classes).float()
    unused = float((selected < 0).sum())
    top = float(sigma.max()) if sigma.numel() else 0.0
    denom = max(top, unused) if warmup else top
    if top == 0 or denom == 0:
        beta = torch.zeros(num_classes)
    else:
        beta = sigma / denom
    return tau * convex_map(beta)


@register
class FlexMatch(FixMatch):
    name = "flexmatch"
    extra_keys = {"flex_warmup": Key("bool", default=True)}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.warmup = bool(self.extra_value("flex_warmup"))
        self.selected = torch.zeros(0, dtype=torch.long)
        self._class_tau = torch.zeros(self.num_classes)

    def setup(self, num_unlabeled: int, epoch_steps: int) -> None:
        super().setup(num_unlabeled, epoch_steps)
        if len(self.selected) != num_unlabeled:
            self.selected = torch.full((num_unlabeled,), -1, dtype=torch.long)

    def thresholds(self, conf: Tensor, labels: Tensor, info: StepInfo, u_index: Tensor | None) -> Tensor:
        tau = self.threshold_at(info.epoch, info.step)
        if u_index is None:
            raise ValueError("flexmatch needs the unlabeled samples' indices (batch.u_index)")
        if len(self.selected) == 0:
            raise ValueError("flexmatch: setup(num_unlabeled, ...) was not called")
        self.update(u_index, conf, labels, tau)
        self._class_tau = class_thresholds(self.selected, self.num_classes, tau, self.warmup)
        return self._class_tau.to(conf.device)[labels]

    def update(self, u_index: Tensor, conf: Tensor, labels: Tensor, tau: float) -> None:
        """Record the batch's confident predictions, gathered over all ranks, in the table."""
        idx = distributed.all_gather_cat(u_index.long())
        conf = distributed.all_gather_cat(conf.float())
        labels = distributed.all_gather_cat(labels.long())
        keep = conf >= tau
        self.selected[idx[keep].cpu()] = labels[keep].cpu()

    def extra_logs(self) -> dict[str, Tensor]:
        # scalars only: the engine sums vector logs over ranks, which suits counts, not thresholds
        return {"class_threshold_min": self._class_tau.min(), "class_threshold_max": self._class_tau.max(),
                "unused_rate": (self.selected < 0).float().mean()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "selected": self.selected.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "selected" in state:
            self.selected = state["selected"].clone().long()
