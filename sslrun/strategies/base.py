"""The small base class every strategy extends (one file per strategy, as in USB).

A strategy turns one step's batch into a loss and a few numbers to log. It may keep state
(pseudo-label tables) that goes into the checkpoint, and may ask the engine for a labeling
pass over the unlabeled set. It does no I/O and knows nothing of SLURM or of ranks, so its
loss can be checked by hand on fixed logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sslrun.config import Config
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


@dataclass
class StepInfo:
    step: int
    epoch: float


class Strategy:
    """Base: override `compute_loss`; the hooks below have no-op defaults."""

    name: ClassVar[str] = ""
    # Views of each unlabeled sample the data pipeline must produce: (), ("weak",) or ("weak", "strong").
    unlabeled_views: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Config, num_classes: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.threshold_at = parse_threshold(cfg.threshold)

    def compute_loss(self, model: nn.Module, batch: Batch, info: StepInfo) -> tuple[Tensor, dict[str, Tensor]]:
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

    def on_labeling(self, indices: Tensor, probs: Tensor, step: int) -> None:
        """Receive the softmax of every unlabeled sample (gathered over all ranks)."""

    def labeled_extra(self) -> tuple[Tensor, Tensor] | None:
        """(unlabeled indices, pseudo-labels) to train on as labeled samples, or None."""
        return None


def supervised_loss(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    logits = model(batch.x)
    return nn.functional.cross_entropy(logits, batch.y), logits


def pseudo_label_stats(conf: Tensor, labels: Tensor, mask: Tensor, truth: Tensor | None, num_classes: int) -> dict[str, Tensor]:
    """Mask rate, pseudo-label accuracy on the hidden truth, per-class counts of kept labels."""
    out = {"mask_rate": mask.float().mean(), "confidence": conf.mean()}
    if truth is not None:
        known = truth >= 0
        kept = mask & known
        hit = labels == truth  # masked sums, not boolean indexing: no host sync for a nonzero() size
        if kept.any():
            out["pl_acc"] = (hit & kept).sum().float() / kept.sum()
        if known.any():
            out["pl_acc_all"] = (hit & known).sum().float() / known.sum()
    out["pl_class_counts"] = torch.zeros(num_classes, device=labels.device).index_add_(0, labels, mask.float())
    return out
