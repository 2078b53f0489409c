"""FixMatch (Sohn et al. 2020): pseudo-label the weak view, learn it on the strong view.

One forward over labeled + weak + strong together, so batch-norm statistics see all three
(the reference implementation does the same); targets come from the weak view's logits
under no_grad, so no gradient flows through the pseudo-labels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sslrun.strategies.base import Batch, LogValue, Mix, StepInfo, Strategy, labeled_ce, pseudo_label_stats
from sslrun.strategies.registry import register


@register
class FixMatch(Strategy):
    name = "fixmatch"
    unlabeled_views = ("weak", "strong")

    def compute_loss(self, model: nn.Module, batch: Batch, info: StepInfo) -> tuple[Tensor, dict[str, LogValue]]:
        assert batch.u_weak is not None and batch.u_strong is not None
        n, m = batch.x.shape[0], batch.u_weak.shape[0]
        x, mix = self.mix_labeled(batch.x)
        logits = model(torch.cat([x, batch.u_weak, batch.u_strong]))
        logits_x, logits_w, logits_s = logits[:n], logits[n:n + m], logits[n + m:]
        return self.loss_from_logits(logits_x, batch.y, logits_w, logits_s, batch.u_truth, info, mix, batch.u_index)

    def loss_from_logits(self, logits_x: Tensor, y: Tensor, logits_w: Tensor, logits_s: Tensor,
                         truth: Tensor | None, info: StepInfo, mix: Mix | None = None,
                         u_index: Tensor | None = None) -> tuple[Tensor, dict[str, LogValue]]:
        loss_s = labeled_ce(logits_x, y, mix)
        with torch.no_grad():
            probs = torch.softmax(logits_w.detach().float(), dim=1)
            conf, labels = probs.max(dim=1)
            tau = self.thresholds(conf, labels, info, u_index)
            mask = conf >= tau
        loss_u = (F.cross_entropy(logits_s, labels, reduction="none") * mask).mean()
        loss = loss_s + self.cfg.lambda_u * loss_u
        logs = {"loss_s": loss_s.detach(), "loss_u": loss_u.detach(), "threshold": tau.float().mean()}
        logs.update(pseudo_label_stats(conf, labels, mask, truth, self.num_classes))
        logs.update(self.extra_logs())
        return loss, logs

    def thresholds(self, conf: Tensor, labels: Tensor, info: StepInfo, u_index: Tensor | None) -> Tensor:
        """Each unlabeled sample's confidence threshold: FixMatch's is one fixed (or scheduled) tau."""
        return torch.full_like(conf, self.threshold_at(info.epoch, info.step))

    def extra_logs(self) -> dict[str, Tensor]:
        return {}
