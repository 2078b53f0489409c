"""Evaluation and labeling passes, split over ranks so that each sample is seen exactly once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from sslrun import distributed
from sslrun.data.loader import ShardImages, eval_batches, make_loader
from sslrun.data.samples import SplitSamples
from sslrun.data.transforms import make_transform


@dataclass
class EvalResult:
    acc: float
    loss: float
    count: int
    confusion: np.ndarray  # (C, C): rows true class, columns predicted


def _passes(split: SplitSamples, size: int, batch_size: int, workers: int, info: distributed.DistInfo, pin: bool):
    dataset = ShardImages([split], size, {2: [make_transform("none")]})
    return make_loader(dataset, eval_batches(len(split), batch_size, info.rank, info.world), workers, pin)


@torch.no_grad()
def predict(model: nn.Module, split: SplitSamples, prepare: Callable[[Tensor], Tensor], size: int, batch_size: int,
            workers: int, info: distributed.DistInfo, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """This rank's (indices, labels, softmax probabilities) over its share of `split`."""
    was_training = model.training
    model.eval()
    idx, labels, probs = [], [], []
    for raw in _passes(split, size, batch_size, workers, info, device.type == "cuda"):
        logits = model(prepare(raw["x"])).float()
        probs.append(torch.softmax(logits, dim=1))
        idx.append(raw["y_index"].to(device))
        labels.append(raw["y"].to(device))
    model.train(was_training)
    if not probs:
        return (torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, dtype=torch.long, device=device),
                torch.zeros((0, 0), device=device))
    return torch.cat(idx), torch.cat(labels), torch.cat(probs)


def evaluate(model: nn.Module, split: SplitSamples, num_classes: int, prepare: Callable[[Tensor], Tensor], size: int,
             batch_size: int, workers: int, info: distributed.DistInfo, device: torch.device) -> EvalResult:
    """Accuracy, mean loss and confusion matrix over the whole split, summed across ranks."""
    _, labels, probs = predict(model, split, prepare, size, batch_size, workers, info, device)
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    if probs.numel():
        known = labels >= 0
        pred = probs.argmax(1)
        confusion.index_put_((labels[known], pred[known]), torch.ones_like(labels[known], dtype=torch.float64), accumulate=True)
        loss_sum += -torch.log(probs[known, labels[known]].clamp_min(1e-12)).double().sum()
    distributed.all_sum(confusion)
    distributed.all_sum(loss_sum)
    total = int(confusion.sum().item())
    correct = float(confusion.diagonal().sum().item())
    return EvalResult(correct / max(1, total), float(loss_sum.item()) / max(1, total), total,
                      confusion.long().cpu().numpy())


def labeling_pass(model: nn.Module, split: SplitSamples, prepare: Callable[[Tensor], Tensor], size: int,
                  batch_size: int, workers: int, info: distributed.DistInfo, device: torch.device) -> tuple[Tensor, Tensor]:
    """Softmax of every sample of `split`, gathered on every rank, in index order."""
    idx, _, probs = predict(model, split, prepare, size, batch_size, workers, info, device)
    idx, probs = distributed.all_gather_cat(idx), distributed.all_gather_cat(probs)
    order = torch.argsort(idx)
    return idx[order].cpu(), probs[order].cpu()
