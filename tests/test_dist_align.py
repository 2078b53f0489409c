"""FixMatch's distribution alignment (extra.dist_align): by hand on fixed logits, state, keys."""

from __future__ import annotations

import math

import pytest
import torch

from sslrun.config import make_config
from sslrun.errors import UserError
from sslrun.strategies import create_strategy
from sslrun.strategies.base import StepInfo


def _cfg(tmp_path, strategy="fixmatch", threshold="0.6", **extra):
    return make_config({"root": str(tmp_path), "strategy": strategy, "lambda_u": "1.0", "threshold": threshold,
                        **{f"extra.{k}": v for k, v in extra.items()}})


def _logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in row] for row in probs])


def _ce(row: list[float], target: int) -> float:
    e = [math.exp(v) for v in row]
    return -math.log(e[target] / sum(e))


def test_alignment_by_hand_flips_a_label_the_biased_model_would_keep(tmp_path):
    strat = create_strategy(_cfg(tmp_path, dist_align="true", da_momentum="0.5"), 2)
    logits_w = _logits([[0.9, 0.1], [0.6, 0.4]])
    logits_s = torch.tensor([[0.0, 1.0], [2.0, 0.0]], requires_grad=True)
    loss, logs = strat.loss_from_logits(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), logits_w, logits_s,
                                        torch.tensor([0, 1]), StepInfo(0, 0.0))
    # p_model starts at the first step's mean (0.75, 0.25); aligned rows: (0.9/0.75, 0.1/0.25) -> (0.75, 0.25)
    # and (0.6/0.75, 0.4/0.25) = (0.8, 1.6) -> (1/3, 2/3): sample 1 is now class 1 at 0.667 >= 0.6
    assert strat.da_p_model.tolist() == pytest.approx([0.75, 0.25])
    assert logs["mask_rate"].item() == 1.0
    assert logs["confidence"].item() == pytest.approx((0.75 + 2 / 3) / 2)
    assert logs["pl_acc"].item() == 1.0  # both pseudo-labels right; without alignment sample 1 would be class 0
    assert loss.item() == pytest.approx(_ce([1, 0], 0) + (_ce([0, 1], 0) + _ce([2, 0], 1)) / 2, rel=1e-5)
    # the next step moves the average: 0.5 * (0.75, 0.25) + 0.5 * (0.5, 0.5)
    strat.loss_from_logits(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), _logits([[0.5, 0.5], [0.5, 0.5]]),
                           torch.zeros(2, 2), None, StepInfo(1, 0.0))
    assert strat.da_p_model.tolist() == pytest.approx([0.625, 0.375])


def test_without_alignment_the_same_logits_keep_the_biased_label(tmp_path):
    strat = create_strategy(_cfg(tmp_path), 2)
    _, logs = strat.loss_from_logits(torch.tensor([[1.0, 0.0]]), torch.tensor([0]),
                                     _logits([[0.9, 0.1], [0.6, 0.4]]), torch.zeros(2, 2), torch.tensor([0, 1]),
                                     StepInfo(0, 0.0))
    assert logs["pl_acc"].item() == 0.5 and strat.da_p_model is None and strat.state_dict() == {}


@pytest.mark.parametrize("strategy", ["fixmatch", "flexmatch", "freematch"])
def test_alignment_state_survives_a_restart(tmp_path, strategy):
    cfg = _cfg(tmp_path, strategy=strategy, dist_align="true")
    strat = create_strategy(cfg, 3)
    strat.setup(4, 1)
    strat.loss_from_logits(torch.zeros(1, 3), torch.tensor([0]), torch.randn(4, 3), torch.randn(4, 3), None,
                           StepInfo(0, 0.0), u_index=torch.arange(4))
    state = strat.state_dict()
    again = create_strategy(cfg, 3)
    again.setup(4, 1)
    again.load_state_dict(state)
    assert torch.equal(again.da_p_model, strat.da_p_model)
    if strategy == "flexmatch":
        assert torch.equal(again.selected, strat.selected)


def test_alignment_keys_are_checked(tmp_path):
    with pytest.raises(UserError, match="extra.da_momentum=1"):
        create_strategy(_cfg(tmp_path, dist_align="true", da_momentum="1"), 3)
    with pytest.raises(UserError, match="extra.dist_align=maybe"):
        create_strategy(_cfg(tmp_path, dist_align="maybe"), 3)
