"""FixMatch (Sohn et al. 2020): pseudo-label the weak view, learn it on the strong view.

One forward over labeled + weak + strong together, so batch-norm statistics see all three
(the reference implementation does the same); targets come from the weak view's logits
under no_grad, so no gradient flows through the pseudo-labels.

`extra.dist_align=true` adds ReMixMatch's distribution alignment (Berthelot et al. 2020) to the
weak view's softmax before the threshold: p <- Normalize(p * p_target / p_model), p_model the
moving average (momentum `extra.da_momentum`) of the weak-view softmax over every unlabeled
sample of the step (gathered over ranks, so every rank holds the same average), started at the
first step's mean, p_target uniform. Why: with 25 labels a class, an early model piles its
confident predictions on a few classes, and the fixed 0.95 threshold then teaches it those
classes; alignment divides that bias out before anything is kept.

`extra.weak_pass=no_grad` forwards the weak view on its own under no_grad, and labeled + strong
together with gradients. Why: the weak view's logits are only targets, yet in the joint forward
autograd still runs the backward pass over its 7 x batch rows (gradient zero, cost not); apart,
a step does 3 forwards and 2 backwards' worth of work instead of 3 and 3. Batch norm then takes
the weak view's statistics from the weak view alone, which is why `joint`, the reference's way,
stays the default. `extra.weak_pass=ema` is the same saving with the targets taken from the EMA
model (eval mode, its running statistics), as Mean Teacher does: the average of the last ~1/(1-d)
steps' weights labels the unlabeled batch, which is steadier than the student it teaches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sslrun import distributed
from sslrun.config import Key
from sslrun.errors import UserError
from sslrun.strategies.base import Batch, LogValue, Mix, StepInfo, Strategy, labeled_ce, pseudo_label_stats
from sslrun.strategies.registry import register


def align_distribution(probs: Tensor, p_model: Tensor) -> Tensor:
    """ReMixMatch's alignment to a uniform target: each row times 1 / p_model, renormalised."""
    aligned = probs / p_model.clamp_min(1e-6)
    return aligned / aligned.sum(dim=1, keepdim=True)


@register
class FixMatch(Strategy):
    name = "fixmatch"
    unlabeled_views = ("weak", "strong")
    extra_keys = {
        "dist_align": Key("bool", default=False),
        "da_momentum": Key("float", 0, 1, hi_open=True, default=0.999,
                           doc="momentum of distribution alignment's moving average, in [0, 1)"),
        "weak_pass": Key("str", choices=("joint", "no_grad", "ema"), default="joint"),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dist_align = bool(self.extra_value("dist_align"))
        self.da_momentum = float(self.extra_number("da_momentum"))
        self.da_p_model: Tensor | None = None  # None until the first step
        self.weak_pass = str(self.extra_value("weak_pass"))
        if self.weak_pass == "ema" and not self.cfg.ema_decay > 0:
            raise UserError(f"extra.weak_pass=ema takes the targets from the EMA model, but ema_decay={self.cfg.ema_decay:g}: "
                            f"set ema_decay in (0, 1), or extra.weak_pass=no_grad")

    def compute_loss(self, model: nn.Module, batch: Batch, info: StepInfo) -> tuple[Tensor, dict[str, LogValue]]:
        assert batch.u_weak is not None and batch.u_strong is not None
        n, m = batch.x.shape[0], batch.u_weak.shape[0]
        x, mix = self.mix_labeled(batch.x)
        if self.weak_pass != "joint":
            with torch.no_grad():
                teacher = self.teacher if self.weak_pass == "ema" else model
                assert teacher is not None, "the engine sets the EMA teacher"
                logits_w = teacher(batch.u_weak)
            logits = model(torch.cat([x, batch.u_strong]))
            logits_x, logits_s = logits[:n], logits[n:]
        else:
            logits = model(torch.cat([x, batch.u_weak, batch.u_strong]))
            logits_x, logits_w, logits_s = logits[:n], logits[n:n + m], logits[n + m:]
        return self.loss_from_logits(logits_x, batch.y, logits_w, logits_s, batch.u_truth, info, mix, batch.u_index)

    def weak_probs(self, logits_w: Tensor) -> Tensor:
        """The weak view's softmax the pseudo-labels come from (aligned when extra.dist_align)."""
        probs = torch.softmax(logits_w.detach().float(), dim=1)
        if not self.dist_align:
            return probs
        mean = distributed.all_gather_cat(probs).mean(0)
        if self.da_p_model is None:
            self.da_p_model = mean
        else:
            m = self.da_momentum
            self.da_p_model = m * self.da_p_model.to(mean.device) + (1 - m) * mean
        return align_distribution(probs, self.da_p_model)

    def loss_from_logits(self, logits_x: Tensor, y: Tensor, logits_w: Tensor, logits_s: Tensor,
                         truth: Tensor | None, info: StepInfo, mix: Mix | None = None,
                         u_index: Tensor | None = None) -> tuple[Tensor, dict[str, LogValue]]:
        loss_s = labeled_ce(logits_x, y, mix)
        with torch.no_grad():
            probs = self.weak_probs(logits_w)
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

    def state_dict(self) -> dict[str, Any]:
        return {} if self.da_p_model is None else {"da_p_model": self.da_p_model.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "da_p_model" in state:
            self.da_p_model = state["da_p_model"].clone().float()
