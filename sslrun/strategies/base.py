"""The small base class every strategy extends (one file per strategy, as in USB).

A strategy turns one step's batch into a loss and a few numbers to log. It may keep state
(pseudo-label tables) that goes into the checkpoint, and may ask the engine for a labeling
pass over the unlabeled set. It does no I/O and knows nothing of SLURM or of ranks, so its
loss can be checked by hand on fixed logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sslrun.config import Config, Key
from sslrun.strategies.thresholds import parse_threshold


@dataclass
class Batch:
    """One step's tensors, already on the device and normalised."""

    x: Tensor  # labeled images (B, C, H, W)
    y: Tensor  # their classes (B,)
    u_weak: Tensor | None = None  # unlabeled, weak view (mu*B, C, H, W)
    u_strong: Tensor | None = None  # unlabeled, strong view
    u_index: Tensor | None = None  # unlabeled samples' indices in their split
    u_truth: Tensor | None = None  # hidden true class for diagnostics, -1 where unknown
    y_index: Tensor | None = None  # labeled samples' indices (or pseudo-labeled ones')
    # augment_on=trainer, for a strategy that wants the strong views of some rows only
    # (Strategy.strong_on_demand): rows -> their strong views, made when asked; u_strong is None.
    make_strong: Callable[[Tensor], Tensor] | None = None

    def strong_rows(self, rows: Tensor | None) -> Tensor:
        """The strong views of `rows` (every row where None), sliced from u_strong or made now."""
        if self.make_strong is not None:
            assert self.u_weak is not None
            return self.make_strong(torch.arange(self.u_weak.shape[0], device=self.u_weak.device) if rows is None else rows)
        assert self.u_strong is not None
        return self.u_strong if rows is None else self.u_strong[rows]

    def views_drawn(self) -> int:
        """Images the step's views count for: a strong view made on demand counts for every
        unlabeled row, as if all were made, so images/s compares across `strong_pass` settings."""
        strong = self.u_weak if self.make_strong is not None else self.u_strong
        return sum(v.shape[0] for v in (self.x, self.u_weak, strong) if v is not None)


@dataclass
class Mix:
    """How a labeled batch was mixed: x' = lam * x + (1 - lam) * x[perm]."""

    lam: float
    perm: Tensor


@dataclass(frozen=True)
class Ratio:
    """A logged ratio kept as numerator and denominator, so ranks pool it as sum / sum.

    A mean of per-rank ratios weighs a rank that kept 1 sample like one that kept 100, and a
    ratio left out where a rank's denominator is 0 makes ranks log different key sets (a
    collective of mismatched size: gloo errors, NCCL hangs). A Ratio is always logged; the
    pooled value is left out only when the denominator summed over every rank is 0.
    """

    num: Tensor
    den: Tensor

    def item(self) -> float:
        den = float(self.den)
        return float(self.num) / den if den else float("nan")


LogValue = Tensor | Ratio


@dataclass
class StepInfo:
    step: int
    epoch: float


class Strategy:
    """Base: override `compute_loss`; the hooks below have no-op defaults."""

    name: ClassVar[str] = ""
    # Views of each unlabeled sample the data pipeline must produce: (), ("weak",) or ("weak", "strong").
    unlabeled_views: ClassVar[tuple[str, ...]] = ()
    # True for strategies that label the unlabeled set in passes (permanent, local).
    labels_in_passes: ClassVar[bool] = False
    # The `extra.*` keys this strategy reads, with type and range (run_check refuses any other key,
    # naming the closest). A subclass adds its own; `declared_extra()` merges them along the MRO.
    extra_keys: ClassVar[dict[str, Key]] = {
        "mixup": Key("float", 0, 1e3, default=0.0, doc="0 (off) or a MixUp alpha > 0"),
    }

    @classmethod
    def declared_extra(cls) -> dict[str, Key]:
        out: dict[str, Key] = {}
        for klass in reversed(cls.__mro__):
            out.update(vars(klass).get("extra_keys", {}))
        return out

    def __init__(self, cfg: Config, num_classes: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.threshold_at = parse_threshold(cfg.threshold)
        self.mixup_alpha = self.extra_number("mixup", 0.0)
        self.num_unlabeled = 0
        self.epoch_steps = 1
        # The EMA model, set by the engine when ema_decay > 0: a strategy may take targets from it.
        self.teacher: nn.Module | None = None

    def strong_on_demand(self) -> bool:
        """Whether compute_loss asks for the strong views of some rows only (Batch.strong_rows), so
        that an engine augmenting whole batches (augment_on=trainer) makes just those."""
        return False

    @property
    def needs_unlabeled(self) -> bool:
        """Whether the run cannot start without a non-empty 'unlabeled' split."""
        return bool(self.unlabeled_views) or self.labels_in_passes

    def extra_number(self, key: str, default: float | None = None, integer: bool = False) -> float:
        """`extra.KEY` checked by this strategy's declaration (`extra_keys`); `default` overrides the
        declared one where it depends on the config (e.g. steps // 4). `integer` is kept for old callers:
        the declaration decides the type."""
        spec = self.declared_extra()[key]
        if key not in self.cfg.extra:
            return spec.default if default is None else default
        return spec.check(f"extra.{key}", self.cfg.extra[key])

    def extra_value(self, key: str) -> Any:
        """Any declared `extra.KEY` (a bool, a word), checked, or its declared default."""
        spec = self.declared_extra()[key]
        return spec.check(f"extra.{key}", self.cfg.extra[key]) if key in self.cfg.extra else spec.default

    def setup(self, num_unlabeled: int, epoch_steps: int) -> None:
        """Learn the data sizes the engine knows: per-sample tables need the unlabeled count,
        schedules of `epoch` outside a training step need the steps per epoch."""
        self.num_unlabeled = num_unlabeled
        self.epoch_steps = max(1, epoch_steps)

    def compute_loss(self, model: nn.Module, batch: Batch, info: StepInfo) -> tuple[Tensor, dict[str, LogValue]]:
        """The step's loss and what to log: scalars (averaged over ranks), Ratios (pooled as
        sum / sum) and vectors (summed). Every rank must return the same keys."""
        raise NotImplementedError

    # --- state that must survive a restart ---------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # --- labeling passes (permanent, local) --------------------------------------------
    def labeling_due(self, step: int) -> bool:
        """True when the engine should run a labeling pass before this step."""
        return False

    def labeling_candidates(self) -> Tensor | None:
        """The unlabeled samples a labeling pass must infer (None: all of them); samples whose
        outcome cannot change are left out, which at 300k images is most of a pass's cost."""
        return None

    def on_labeling(self, indices: Tensor, conf: Tensor, pred: Tensor, step: int) -> None:
        """Receive the top softmax and its class for every candidate (gathered over all ranks)."""

    def labeled_extra(self) -> tuple[Tensor, Tensor] | None:
        """(unlabeled indices, pseudo-labels) to train on as labeled samples, or None."""
        return None

    def labeled_mode(self, step: int) -> str:
        """What the labeled stream draws from from this step on: "both" (labeled set plus
        `labeled_extra`), "extra" (the extra samples alone; the labeled set if there are none)
        or "labeled" (the labeled set alone). Read whenever the engine (re)builds its loader."""
        return "both"

    def loader_due(self, step: int) -> bool:
        """True when `labeled_mode` changes at this step without a labeling pass: the engine
        rebuilds its loader before the step (a labeling pass always rebuilds it)."""
        return False

    # --- MixUp on the labeled part (extra.mixup=alpha) ------------------------------------
    def mix_labeled(self, x: Tensor) -> tuple[Tensor, Mix | None]:
        """MixUp (Zhang et al. 2018) of the labeled images, off unless extra.mixup > 0.

        Draws from torch's global generator, which the engine reseeds every step, so a
        resumed run mixes the same pairs with the same weights.
        """
        if self.mixup_alpha <= 0 or x.shape[0] < 2:
            return x, None
        lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
        perm = torch.randperm(x.shape[0]).to(x.device)
        return lam * x + (1 - lam) * x[perm], Mix(lam, perm)


def labeled_ce(logits: Tensor, y: Tensor, mix: Mix | None = None) -> Tensor:
    """Cross-entropy on the labeled batch; with MixUp, the same mix of both targets' losses."""
    if mix is None:
        return nn.functional.cross_entropy(logits, y)
    return mix.lam * nn.functional.cross_entropy(logits, y) + (1 - mix.lam) * nn.functional.cross_entropy(logits, y[mix.perm])


def supervised_loss(model: nn.Module, batch: Batch, mix: Mix | None = None) -> tuple[Tensor, Tensor]:
    logits = model(batch.x)
    return labeled_ce(logits, batch.y, mix), logits


def pseudo_label_stats(conf: Tensor, labels: Tensor, mask: Tensor, truth: Tensor | None, num_classes: int) -> dict[str, LogValue]:
    """Mask rate, pseudo-label accuracy on the hidden truth, per-class counts of kept labels.

    The same keys whatever this rank's batch held: `pl_acc` (over kept samples with known truth)
    and `pl_acc_all` (over all samples with known truth) are Ratios even when their denominator
    is 0 here, because another rank may have kept samples in the same step.
    """
    maskf = mask.float()
    out: dict[str, LogValue] = {"mask_rate": Ratio(maskf.sum(), torch.tensor(float(mask.numel()), device=mask.device)),
                                "confidence": conf.mean()}
    if truth is not None:
        known = truth >= 0
        kept = mask & known
        hit = labels == truth  # masked sums, not boolean indexing: no host sync for a nonzero() size
        out["pl_acc"] = Ratio((hit & kept).sum().float(), kept.sum().float())
        out["pl_acc_all"] = Ratio((hit & known).sum().float(), known.sum().float())
    out["pl_class_counts"] = torch.zeros(num_classes, device=labels.device).index_add_(0, labels, maskf)
    return out
