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

`extra.strong_pass=kept` (with `weak_pass` ema or no_grad, where the pseudo-labels exist before the
student's forward) forwards the student on the labeled batch and only those strong views whose
pseudo-label passed the threshold. Why: a strong view under the threshold is multiplied by 0 in
the loss, so its forward and backward buy nothing but batch statistics, and in the CIFAR-10 runs
of bench/RESULTS-accuracy.md 50-100 % of them are under 0.95 (all at the start). The loss and its
gradient are the same (the kept rows' sum over the whole unlabeled count, as the masked mean);
what changes is that batch norm takes its statistics from labeled + kept rows. `all` (the
default) is the published algorithm. With `augment_on=trainer` the strong views are then made for
the kept rows only (Batch.make_strong), so RandAugment's cost, like the forward's, follows the
mask rate; they come from their own generator, seeded by (seed, step, rank), so a resumed step
draws the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sslrun import distributed
from sslrun.config import Key
from sslrun.errors import UserError
from sslrun.strategies.base import Batch, LogValue, Mix, StepInfo, Strategy, labeled_ce, pseudo_label_stats
from sslrun.strategies.registry import register


@dataclass
class PseudoLabels:
    """One step's targets from the weak view: top softmax, its class, the threshold, kept or not."""

    conf: Tensor
    labels: Tensor
    tau: Tensor
    mask: Tensor


def masked_ce(logits_s: Tensor, labels: Tensor, mask: Tensor, rows: Tensor | None = None) -> Tensor:
    """FixMatch's l_u: the mean over all unlabeled samples of CE x mask. `logits_s` holds every
    row (rows None) or only the kept rows `rows`, whose summed CE over the whole count is the same."""
    if rows is None:
        return (F.cross_entropy(logits_s, labels, reduction="none") * mask).mean()
    return F.cross_entropy(logits_s, labels[rows], reduction="sum") / max(1, labels.shape[0])


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
        "strong_pass": Key("str", choices=("all", "kept"), default="all"),
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
        self.strong_pass = str(self.extra_value("strong_pass"))
        if self.strong_pass == "kept" and self.weak_pass == "joint":
            raise UserError("extra.strong_pass=kept needs the pseudo-labels before the student's forward, "
                            "which extra.weak_pass=joint computes in it: set extra.weak_pass=ema or no_grad")

    def strong_on_demand(self) -> bool:
        return self.strong_pass == "kept"

    def compute_loss(self, model: nn.Module, batch: Batch, info: StepInfo) -> tuple[Tensor, dict[str, LogValue]]:
        assert batch.u_weak is not None
        n, m = batch.x.shape[0], batch.u_weak.shape[0]
        x, mix = self.mix_labeled(batch.x)
        if self.weak_pass == "joint":
            logits = model(torch.cat([x, batch.u_weak, batch.strong_rows(None)]))
            logits_x, logits_w, logits_s = logits[:n], logits[n:n + m], logits[n + m:]
            return self.loss_from_logits(logits_x, batch.y, logits_w, logits_s, batch.u_truth, info, mix, batch.u_index)
        with torch.no_grad():
            teacher = self.teacher if self.weak_pass == "ema" else model
            assert teacher is not None, "the engine sets the EMA teacher"
            logits_w = teacher(batch.u_weak)
        pl = self.pseudo_labels(logits_w, info, batch.u_index)
        rows = pl.mask.nonzero().squeeze(1) if self.strong_pass == "kept" else None
        logits = model(torch.cat([x, batch.strong_rows(rows)]))
        return self.loss_from_labels(logits[:n], batch.y, pl, logits[n:], rows, batch.u_truth, mix)

    def loss_from_logits(self, logits_x: Tensor, y: Tensor, logits_w: Tensor, logits_s: Tensor,
                         truth: Tensor | None, info: StepInfo, mix: Mix | None = None,
                         u_index: Tensor | None = None) -> tuple[Tensor, dict[str, LogValue]]:
        """The loss from the three views' logits (every strong row present)."""
        pl = self.pseudo_labels(logits_w, info, u_index)
        return self.loss_from_labels(logits_x, y, pl, logits_s, None, truth, mix)

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

    @torch.no_grad()
    def pseudo_labels(self, logits_w: Tensor, info: StepInfo, u_index: Tensor | None) -> PseudoLabels:
        """The step's pseudo-labels and which pass; moves the strategy's running state once."""
        probs = self.weak_probs(logits_w)
        conf, labels = probs.max(dim=1)
        tau = self.thresholds(conf, labels, info, u_index)
        return PseudoLabels(conf, labels, tau, conf >= tau)

    def loss_from_labels(self, logits_x: Tensor, y: Tensor, pl: PseudoLabels, logits_s: Tensor, rows: Tensor | None,
                         truth: Tensor | None, mix: Mix | None = None) -> tuple[Tensor, dict[str, LogValue]]:
        """l_s + lambda_u * l_u; `logits_s` holds every strong row (rows None) or only rows `rows`."""
        loss_s = labeled_ce(logits_x, y, mix)
        loss_u = masked_ce(logits_s, pl.labels, pl.mask, rows)
        loss = loss_s + self.cfg.lambda_u * loss_u
        logs = {"loss_s": loss_s.detach(), "loss_u": loss_u.detach(), "threshold": pl.tau.float().mean()}
        logs.update(pseudo_label_stats(pl.conf, pl.labels, pl.mask, truth, self.num_classes))
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
