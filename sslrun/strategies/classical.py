"""Classical pseudo-labeling (Lee 2013), as the report ran it.

Every step: a labeled batch and `mu` unlabeled batches (weak view only) go through the model
together; an unlabeled sample whose top softmax reaches the threshold gets its argmax as a
hard target, taken from the same forward without gradient (Lee's targets are constants).

    loss = l_s + lambda_u * alpha(t) * l_u
    l_u  = sum over unlabeled samples with max softmax >= threshold of CE / (all unlabeled)

l_u is normalised by the whole unlabeled batch, as FixMatch's is, so the two losses compare.
alpha(t) is Lee's ramp in steps: 0 before extra.t1, linear up to extra.alpha_f at extra.t2,
alpha_f after. Without extra.t2 there is no ramp: alpha = alpha_f (default 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sslrun.config import Key
from sslrun.errors import UserError
from sslrun.strategies.base import Batch, LogValue, StepInfo, Strategy, labeled_ce, pseudo_label_stats
from sslrun.strategies.registry import register


def lee_ramp(step: int, t1: int, t2: int, alpha_f: float) -> float:
    """Lee (2013) eq. 16: 0 for t < T1, alpha_f (t - T1) / (T2 - T1) up to T2, then alpha_f."""
    if step < t1:
        return 0.0
    if step >= t2:
        return alpha_f
    return alpha_f * (step - t1) / (t2 - t1)


@register
class Classical(Strategy):
    name = "classical"
    extra_keys = {
        "alpha_f": Key("float", 0, 1e6, default=1.0),
        "t1": Key("int", 0, 2**31 - 1, default=0),
        "t2": Key("int", 0, 2**31 - 1, default=0),
    }
    unlabeled_views = ("weak",)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.alpha_f = self.extra_number("alpha_f", 1.0)
        self.t1 = int(self.extra_number("t1", 0, integer=True))
        self.t2 = int(self.extra_number("t2", 0, integer=True))
        if "t2" in self.cfg.extra and self.t2 <= self.t1:
            raise UserError(f"extra.t2={self.t2}: expected a step after extra.t1={self.t1}")

    def alpha(self, step: int) -> float:
        if "t2" not in self.cfg.extra:
            return self.alpha_f
        return lee_ramp(step, self.t1, self.t2, self.alpha_f)

    def compute_loss(self, model: nn.Module, batch: Batch, info: StepInfo) -> tuple[Tensor, dict[str, LogValue]]:
        assert batch.u_weak is not None
        n = batch.x.shape[0]
        x, mix = self.mix_labeled(batch.x)
        logits = model(torch.cat([x, batch.u_weak]))
        loss_s = labeled_ce(logits[:n], batch.y, mix)
        return self.loss_from_logits(loss_s, logits[n:], batch.u_truth, info)

    def loss_from_logits(self, loss_s: Tensor, logits_u: Tensor, truth: Tensor | None,
                         info: StepInfo) -> tuple[Tensor, dict[str, LogValue]]:
        tau = self.threshold_at(info.epoch, info.step)
        with torch.no_grad():
            conf, labels = torch.softmax(logits_u.detach().float(), dim=1).max(dim=1)
            mask = conf >= tau
        loss_u = (F.cross_entropy(logits_u, labels, reduction="none") * mask).mean()
        alpha = self.alpha(info.step)
        loss = loss_s + self.cfg.lambda_u * alpha * loss_u
        logs = {"loss_s": loss_s.detach(), "loss_u": loss_u.detach(), "threshold": torch.tensor(tau),
                "alpha": torch.tensor(alpha)}
        logs.update(pseudo_label_stats(conf, labels, mask, truth, self.num_classes))
        return loss, logs
