"""FreeMatch (Wang et al. 2023): FixMatch whose thresholds follow the model's own confidence.

A fixed tau is too high early (few pseudo-labels, slow start) and arguably too low late. FreeMatch
keeps three exponential moving averages (momentum m = extra.ema_p, 0.999) of the weak view's
softmax, over every unlabeled sample of the step (gathered over ranks, so every rank holds the
same numbers):

    tau_t     = m * tau_{t-1}  + (1 - m) * mean_b max_c p_b(c)     (global: "how sure is the model")
    p_t       = m * p_{t-1}    + (1 - m) * mean_b p_b              (class-wise mean probability)
    h_t       = m * h_{t-1}    + (1 - m) * hist(argmax p_b) / B    (class-wise histogram)
    T_c       = tau_t * p_t(c) / max_c' p_t(c')                     (the local threshold of class c)

all three starting at 1/C, as in the paper (so early on nearly every pseudo-label passes). As in
the reference code the averages are updated with the current batch before the mask is taken.
The self-adaptive fairness loss, weighted by extra.fair_weight (0.01, USB's default), is the
paper's

    L_f = -H(SumNorm(p_t / h_t), SumNorm(pbar_s / hbar_s))

where pbar_s and hbar_s are the mean softmax and the argmax histogram of the strong view over
the samples that passed the mask (L_f = 0 when none did). It is written with masked sums, not
boolean indexing, so a step costs no host sync. `threshold=` is not used by this strategy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sslrun import distributed
from sslrun.config import Key
from sslrun.errors import UserError
from sslrun.strategies.base import LogValue, Mix, StepInfo
from sslrun.strategies.fixmatch import FixMatch, PseudoLabels
from sslrun.strategies.registry import register

_EPS = 1e-12


def fairness_loss(logits_s: Tensor, mask: Tensor, p_model: Tensor, label_hist: Tensor) -> Tensor:
    """L_f = sum_c a_c log b_c, a = SumNorm(p/h) (constant), b = SumNorm(pbar_s/hbar_s) over kept samples.

    A class with an empty histogram gets a scale of 0, not infinity (as USB's replace_inf_to_zero).
    """
    probs_s = torch.softmax(logits_s.float(), dim=1)
    keep = mask.float()
    kept = keep.sum()
    mean_s = (probs_s * keep[:, None]).sum(0) / kept.clamp_min(1.0)
    hist_s = torch.zeros_like(mean_s).index_add_(0, probs_s.detach().argmax(1), keep) / kept.clamp_min(1.0)
    scale_s = torch.where(hist_s > 0, 1.0 / hist_s.clamp_min(_EPS), torch.zeros_like(hist_s))
    b = mean_s * scale_s
    b = b / b.sum().clamp_min(_EPS)
    a = p_model * torch.where(label_hist > 0, 1.0 / label_hist.clamp_min(_EPS), torch.zeros_like(label_hist))
    a = a / a.sum().clamp_min(_EPS)
    return (kept > 0).float() * (a * torch.log(b + _EPS)).sum()


@register
class FreeMatch(FixMatch):
    name = "freematch"
    extra_keys = {
        "ema_p": Key("float", 0, 1, default=0.999, doc="momentum of FreeMatch's EMAs, in [0, 1)"),
        "fair_weight": Key("float", 0, 1e6, default=0.01, doc="weight of the self-adaptive fairness loss"),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ema_p = self.extra_number("ema_p", 0.999)
        if not self.ema_p < 1:
            raise UserError(f"extra.ema_p={self.ema_p}: expected a number in [0, 1)")
        self.fair_weight = self.extra_number("fair_weight", 0.01)
        c = self.num_classes
        self.time_p = torch.tensor(1.0 / c)
        self.p_model = torch.full((c,), 1.0 / c)
        self.label_hist = torch.full((c,), 1.0 / c)

    def update(self, probs_w: Tensor) -> None:
        """Move the three averages with this step's weak-view softmax, gathered over all ranks."""
        probs = distributed.all_gather_cat(probs_w.float())
        dev = probs.device
        m = self.ema_p
        conf, labels = probs.max(dim=1)
        hist = torch.bincount(labels, minlength=self.num_classes).float() / probs.shape[0]
        self.time_p = m * self.time_p.to(dev) + (1 - m) * conf.mean()
        self.p_model = m * self.p_model.to(dev) + (1 - m) * probs.mean(0)
        self.label_hist = m * self.label_hist.to(dev) + (1 - m) * hist

    def class_thresholds(self) -> Tensor:
        return self.time_p * self.p_model / self.p_model.max()

    def weak_probs(self, logits_w: Tensor) -> Tensor:
        """FixMatch's (aligned when extra.dist_align); as the reference, the averages move with this
        batch before FixMatch's `pseudo_labels` takes the mask through `thresholds`."""
        probs = super().weak_probs(logits_w)
        self.update(probs)
        return probs

    def thresholds(self, conf: Tensor, labels: Tensor, info: StepInfo, u_index: Tensor | None) -> Tensor:
        return self.class_thresholds()[labels]

    def loss_from_labels(self, logits_x: Tensor, y: Tensor, pl: PseudoLabels, logits_s: Tensor, rows: Tensor | None,
                         truth: Tensor | None, mix: Mix | None = None) -> tuple[Tensor, dict[str, LogValue]]:
        loss, logs = super().loss_from_labels(logits_x, y, pl, logits_s, rows, truth, mix)
        loss_f = fairness_loss(logits_s, pl.mask if rows is None else pl.mask[rows], self.p_model, self.label_hist)
        logs["loss_fair"] = loss_f.detach()
        return loss + self.fair_weight * loss_f, logs

    def extra_logs(self) -> dict[str, Tensor]:
        class_tau = self.class_thresholds()
        return {"global_threshold": self.time_p.detach().float(), "class_threshold_min": class_tau.min(),
                "class_threshold_max": class_tau.max()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "time_p": self.time_p.detach().cpu().clone(), "p_model": self.p_model.detach().cpu().clone(),
                "label_hist": self.label_hist.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for key in ("time_p", "p_model", "label_hist"):
            if key in state:
                setattr(self, key, state[key].clone().float())
