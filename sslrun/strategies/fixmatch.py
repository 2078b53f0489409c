"""FixMatch (Sohn et al. 2020): pseudo-label the weak view, learn it on the strong view.

One forward over labeled + weak + strong together, so batch-norm statistics see all three
(the reference implementation does the same); targets come from the weak view's logits
under no_grad, so no gradient flows through the pseudo-labels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sslrun.strategies.base import Batch, StepInfo, Strategy, pseudo_label_stats
from sslrun.strategies.registry import register


@register
class FixMatch(Strategy):
    name = "fixmatch"
    unlabeled_views = ("weak", "strong")

    def compute_loss(self, model: nn.Module, batch: Batch, info: StepInfo) -> tuple[Tensor, dict[str, Tensor]]:
        assert batch.u_weak is not None and batch.u_strong is not None
        n, m = batch.x.shape[0], batch.u_weak.shape[0]
        logits = model(torch.cat([batch.x, batch.u_weak, batch.u_strong]))
        logits_x, logits_w, logits_s = logits[:n], logits[n:n + m], logits[n + m:]
        return self.loss_from_logits(logits_x, batch.y, logits_w, logits_s, batch.u_truth, info)

    def loss_from_logits(self, logits_x: Tensor, y: Tensor, logits_w: Tensor, logits_s: Tensor,
                         truth: Tensor | None, info: StepInfo) -> tuple[Tensor, dict[str, Tensor]]:
        loss_s = F.cross_entropy(logits_x, y)
        tau = self.threshold_at(info.epoch, info.step)
        with torch.no_grad():
            probs = torch.softmax(logits_w.detach().float(), dim=1)
            conf, labels = probs.max(dim=1)
            mask = conf >= tau
        loss_u = (F.cross_entropy(logits_s, labels, reduction="none") * mask).mean()
        loss = loss_s + self.cfg.lambda_u * loss_u
        logs = {"loss_s": loss_s.detach(), "loss_u": loss_u.detach(), "threshold": torch.tensor(tau)}
        logs.update(pseudo_label_stats(conf, labels, mask, truth, self.num_classes))
        return loss, logs
