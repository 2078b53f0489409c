"""Labeled data only: the baseline every semi-supervised method must beat."""

from __future__ import annotations

from torch import Tensor, nn

from sslrun.strategies.base import Batch, LogValue, StepInfo, Strategy, labeled_ce
from sslrun.strategies.registry import register


@register
class Supervised(Strategy):
    name = "supervised"

    def compute_loss(self, model: nn.Module, batch: Batch, info: StepInfo) -> tuple[Tensor, dict[str, LogValue]]:
        x, mix = self.mix_labeled(batch.x)
        loss = labeled_ce(model(x), batch.y, mix)
        return loss, {"loss_s": loss.detach()}
