"""Evaluation and labeling passes, split over ranks so that each sample is seen exactly once.

Each pass keeps only what its caller uses: evaluation sums a confusion matrix and a loss,
a labeling pass keeps (confidence, argmax) per sample, and only `predict` (submissions) keeps
whole softmax rows. At 10M unlabeled images and 48 classes the gathered softmax would be
about 2 GB per rank of GPU memory; (index, confidence, label) is a tenth of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from sslrun import distributed
from sslrun.data.loader import EVAL, ShardImages, eval_batches, make_loader
from sslrun.data.samples import SplitSamples
from sslrun.data.transforms import make_transform


@dataclass
class EvalResult:
    acc: float
    loss: float
    count: int
    confusion: np.ndarray  # (C, C): rows true class, columns predicted


@torch.no_grad()
def _forward(model: nn.Module, split: SplitSamples, prepare: Callable[[Tensor], Tensor], size: int, batch_size: int,
             workers: int, info: distributed.DistInfo, device: torch.device,
             indices: Sequence[int] | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(indices, labels, float logits) of this rank's batches of `split` (or of `indices` in it), in eval mode."""
    was_training = model.training
    model.eval()
    dataset = ShardImages([split], size, {EVAL: [make_transform("none")]})
    loader = make_loader(dataset, eval_batches(len(split), batch_size, info.rank, info.world, indices), workers,
                         device.type == "cuda")
    try:
        for raw in loader:
            yield raw["y_index"].to(device), raw["y"].to(device), model(prepare(raw["x"])).float()
    finally:
        model.train(was_training)
        dataset.close()


def predict(model: nn.Module, split: SplitSamples, prepare: Callable[[Tensor], Tensor], size: int, batch_size: int,
            workers: int, info: distributed.DistInfo, device: torch.device,
            num_classes: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """This rank's (indices, labels, softmax probabilities) over its share of `split`.

    A rank with no share (a split smaller than the world) returns (0, C) probabilities, C
    from `num_classes` or the model's head, so a gather of them has one shape on every rank.
    """
    idx, labels, probs = [], [], []
    for i, y, logits in _forward(model, split, prepare, size, batch_size, workers, info, device):
        idx.append(i)
        labels.append(y)
        probs.append(torch.softmax(logits, dim=1))
    if not probs:
        c = num_classes if num_classes is not None else int(getattr(model, "num_classes", 0))
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone(), torch.zeros((0, c), device=device)
    return torch.cat(idx), torch.cat(labels), torch.cat(probs)


def evaluate(model: nn.Module, split: SplitSamples, num_classes: int, prepare: Callable[[Tensor], Tensor], size: int,
             batch_size: int, workers: int, info: distributed.DistInfo, device: torch.device) -> EvalResult:
    """Accuracy, mean loss and confusion matrix over the whole split, summed across ranks."""
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for _, labels, logits in _forward(model, split, prepare, size, batch_size, workers, info, device):
        known = labels >= 0
        y, pred = labels[known], logits[known].argmax(1)
        confusion.index_put_((y, pred), torch.ones_like(y, dtype=torch.float64), accumulate=True)
        loss_sum += nn.functional.cross_entropy(logits[known], y, reduction="sum").double()
    distributed.all_sum(confusion)
    distributed.all_sum(loss_sum)
    total = int(confusion.sum().item())
    correct = float(confusion.diagonal().sum().item())
    return EvalResult(correct / max(1, total), float(loss_sum.item()) / max(1, total), total,
                      confusion.long().cpu().numpy())


def labeling_pass(model: nn.Module, split: SplitSamples, prepare: Callable[[Tensor], Tensor], size: int,
                  batch_size: int, workers: int, info: distributed.DistInfo, device: torch.device,
                  indices: Sequence[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(indices, confidence, predicted class) of every sample of `split`, or of `indices` in
    it, gathered on every rank, in index order."""
    idx, conf, pred = [], [], []
    for i, _, logits in _forward(model, split, prepare, size, batch_size, workers, info, device, indices):
        c, p = torch.softmax(logits, dim=1).max(dim=1)
        idx.append(i)
        conf.append(c)
        pred.append(p)
    empty = torch.zeros(0, dtype=torch.long, device=device)
    idx_t = distributed.all_gather_cat(torch.cat(idx) if idx else empty)
    conf_t = distributed.all_gather_cat(torch.cat(conf) if conf else torch.zeros(0, device=device))
    pred_t = distributed.all_gather_cat(torch.cat(pred) if pred else empty.clone())
    order = torch.argsort(idx_t)
    return idx_t[order].cpu(), conf_t[order].cpu(), pred_t[order].cpu()
