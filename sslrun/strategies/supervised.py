"""Labeled data only: the baseline every semi-supervised method must beat."""

from __future__ import annotations

from torch import Tensor, nn

from sslrun.strategies.base import Batch, StepInfo, Strategy, supervised_loss
from sslrun.strategies.registry import register


@register
class Supervised(Strategy):
    name = "supervised"

    def compute_loss(self, model: nn.Module, batch: Batch, info: StepInfo) -> tuple[Tensor, dict[str, Tensor]]:
        loss, _ = supervised_loss(model, batch)
        return loss, {"loss_s": loss.detach()}
