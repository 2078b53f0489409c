"""Each strategy's loss against a hand computation on fixed logits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslrun.config import make_config
from sslrun.strategies import create_strategy
from sslrun.strategies.base import Batch, StepInfo


def _cfg(tmp_path, **kw):
    return make_config({"root": str(tmp_path), **kw})


def _ce(logits: list[float], target: int) -> float:
    return -math.log(math.exp(logits[target]) / sum(math.exp(v) for v in logits))


def test_fixmatch_loss_by_hand(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="fixmatch", threshold="0.9", lambda_u="0.5"), 3)
    logits_x = torch.tensor([[2.0, 0.0, 0.0]])
    y = torch.tensor([0])
    # weak view: the first sample is confident (softmax of 5,0,0 is 0.987), the second is not
    logits_w = torch.tensor([[0.0, 5.0, 0.0], [1.0, 1.0, 0.0]])
    logits_s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    truth = torch.tensor([1, 2])
    loss, logs = strat.loss_from_logits(logits_x, y, logits_w, logits_s, truth, StepInfo(0, 0.0))
    ls = _ce([2, 0, 0], 0)
    lu = (_ce([1, 0, 0], 1) + 0.0) / 2  # mean over all unlabeled samples, masked ones count as 0
    assert loss.item() == pytest.approx(ls + 0.5 * lu, rel=1e-5)
    assert logs["mask_rate"].item() == 0.5
    assert logs["pl_acc"].item() == 1.0
    assert logs["pl_class_counts"].tolist() == [0.0, 1.0, 0.0]


def test_fixmatch_takes_targets_from_the_weak_view_without_gradient(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="fixmatch", threshold="0.0"), 3)
    logits_w = torch.tensor([[0.0, 5.0, 0.0]], requires_grad=True)
    logits_s = torch.tensor([[0.0, 0.0, 1.0]], requires_grad=True)
    logits_x = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    loss, _ = strat.loss_from_logits(logits_x, torch.tensor([0]), logits_w, logits_s, None, StepInfo(0, 0.0))
    loss.backward()
    assert logits_w.grad is None or torch.count_nonzero(logits_w.grad) == 0
    assert logits_s.grad[0, 1] < 0, "the strong view is pushed towards the weak view's class 1"


def test_fixmatch_forward_concatenates_labeled_weak_strong(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="fixmatch"), 4)
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.shape[0])
            return torch.zeros(x.shape[0], 4)

    batch = Batch(x=torch.zeros(2, 3, 4, 4), y=torch.zeros(2, dtype=torch.long), u_weak=torch.zeros(6, 3, 4, 4),
                  u_strong=torch.zeros(6, 3, 4, 4))
    strat.compute_loss(Spy(), batch, StepInfo(0, 0.0))
    assert seen == [14]


def test_threshold_schedule_reaches_the_loss(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="fixmatch", threshold="0.9+0.02*epoch"), 2)
    logits_w = torch.tensor([[0.0, math.log(0.93 / 0.07)]])  # confidence 0.93
    args = (torch.zeros(1, 2), torch.tensor([0]), logits_w, torch.zeros(1, 2), None)
    assert strat.loss_from_logits(*args, StepInfo(0, 1.0))[1]["mask_rate"].item() == 1.0  # tau 0.92
    assert strat.loss_from_logits(*args, StepInfo(0, 2.0))[1]["mask_rate"].item() == 0.0  # tau 0.94


def test_supervised_is_plain_cross_entropy(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="supervised"), 3)
    model = nn.Identity()
    batch = Batch(x=torch.tensor([[0.0, 1.0, 2.0]]), y=torch.tensor([2]))
    loss, _ = strat.compute_loss(model, batch, StepInfo(0, 0.0))
    assert loss.item() == pytest.approx(_ce([0, 1, 2], 2), rel=1e-6)
