"""classical, permanent, local, flexmatch and MixUp: losses, thresholds and tables by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslrun.config import make_config
from sslrun.errors import UserError
from sslrun.strategies import create_strategy
from sslrun.strategies.base import Batch, StepInfo
from sslrun.strategies.classical import lee_ramp
from sslrun.strategies.flexmatch import class_thresholds


def _cfg(tmp_path, **kw):
    return make_config({"root": str(tmp_path), **{k.replace("__", "."): v for k, v in kw.items()}})


def _ce(logits: list[float], target: int) -> float:
    return -math.log(math.exp(logits[target]) / sum(math.exp(v) for v in logits))


def _logit_for(conf: float) -> float:
    """Logit a of (a, 0) whose softmax max is `conf` (2 classes)."""
    return math.log(conf / (1 - conf))


# --- classical ---------------------------------------------------------------------------
def test_classical_loss_by_hand_targets_from_same_view_without_gradient(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="classical", threshold="0.9", lambda_u="0.5"), 3)
    logits_u = torch.tensor([[0.0, 5.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 4.0]], requires_grad=True)
    loss_s = torch.tensor(0.25)
    loss, logs = strat.loss_from_logits(loss_s, logits_u, torch.tensor([1, 0, 0]), StepInfo(0, 0.0))
    # samples 0 (conf 0.987) and 2 (conf 0.964) pass 0.9; sample 1 (0.42) does not; mean over all 3
    lu = (_ce([0, 5, 0], 1) + _ce([0, 0, 4], 2)) / 3
    assert loss.item() == pytest.approx(0.25 + 0.5 * lu, rel=1e-5)
    assert logs["loss_u"].item() == pytest.approx(lu, rel=1e-5)
    assert logs["mask_rate"].item() == pytest.approx(2 / 3)
    assert logs["pl_acc"].item() == 0.5  # sample 0 right (1), sample 2 wrong (truth 0)
    assert logs["pl_class_counts"].tolist() == [0.0, 1.0, 1.0]
    loss.backward()
    # the gradient is that of CE with a constant target: softmax - onehot, divided by 3, times 0.5
    p = torch.softmax(logits_u.detach(), 1)
    expected = 0.5 * (p[0] - torch.tensor([0.0, 1.0, 0.0])) / 3
    assert torch.allclose(logits_u.grad[0], expected, atol=1e-6)
    assert torch.count_nonzero(logits_u.grad[1]) == 0


def test_classical_forward_is_labeled_plus_weak_only(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="classical"), 4)
    assert strat.unlabeled_views == ("weak",)
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.shape[0])
            return torch.zeros(x.shape[0], 4)

    batch = Batch(x=torch.zeros(2, 3, 4, 4), y=torch.zeros(2, dtype=torch.long), u_weak=torch.zeros(6, 3, 4, 4))
    strat.compute_loss(Spy(), batch, StepInfo(0, 0.0))
    assert seen == [8]


def test_lee_ramp_and_its_config(tmp_path):
    assert [lee_ramp(t, 10, 30, 3.0) for t in (0, 9, 10, 20, 29, 30, 100)] == [0, 0, 0, 1.5, 2.85, 3.0, 3.0]
    strat = create_strategy(_cfg(tmp_path, strategy="classical", extra__t1="10", extra__t2="30", extra__alpha_f="3"), 2)
    assert [strat.alpha(t) for t in (5, 20, 40)] == [0.0, 1.5, 3.0]
    # the ramp multiplies l_u: at step 5 the unlabeled part is off, at 20 it counts 1.5 times
    conf = torch.tensor([[_logit_for(0.99), 0.0]])
    off, _ = strat.loss_from_logits(torch.tensor(0.0), conf, None, StepInfo(5, 0.0))
    half, logs = strat.loss_from_logits(torch.tensor(0.0), conf, None, StepInfo(20, 0.0))
    assert off.item() == 0.0 and half.item() == pytest.approx(1.5 * logs["loss_u"].item())
    no_ramp = create_strategy(_cfg(tmp_path, strategy="classical"), 2)
    assert no_ramp.alpha(0) == 1.0
    with pytest.raises(UserError, match="extra.t2=5"):
        create_strategy(_cfg(tmp_path, strategy="classical", extra__t1="10", extra__t2="5"), 2)
    with pytest.raises(UserError, match="extra.alpha_f=x"):
        create_strategy(_cfg(tmp_path, strategy="classical", extra__alpha_f="x"), 2)


def test_classical_threshold_schedule_of_epoch(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="classical", threshold="0.9+0.02*epoch"), 2)
    u = torch.tensor([[_logit_for(0.93), 0.0]])
    assert strat.loss_from_logits(torch.tensor(0.0), u, None, StepInfo(0, 1.0))[1]["mask_rate"].item() == 1.0
    assert strat.loss_from_logits(torch.tensor(0.0), u, None, StepInfo(0, 2.0))[1]["mask_rate"].item() == 0.0


# --- permanent ---------------------------------------------------------------------------
def _top(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, class) of softmax rows: what a labeling pass hands a strategy."""
    return torch.tensor(rows).max(dim=1)


def test_permanent_keeps_the_first_label_and_only_adds(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="permanent", threshold="0.8", extra__label_every="5"), 2)
    strat.setup(4, 10)
    assert [s for s in range(21) if strat.labeling_due(s)] == [5, 10, 15, 20]
    idx = torch.arange(4)
    strat.on_labeling(idx, *_top([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9], [0.6, 0.4]]), 5)
    assert strat.labeled_extra()[0].tolist() == [0, 2] and strat.labeled_extra()[1].tolist() == [0, 1]
    assert not strat.labeling_due(5), "a pass already done at this step is not repeated on resume"
    # second pass: sample 0 now confidently class 1, sample 1 and 3 cross the threshold
    strat.on_labeling(idx, *_top([[0.05, 0.95], [0.85, 0.15], [0.1, 0.9], [0.1, 0.9]]), 10)
    sel, lab = strat.labeled_extra()
    assert sel.tolist() == [0, 1, 2, 3] and lab.tolist() == [0, 0, 1, 1], "sample 0 keeps its first label"
    # the table survives a checkpoint round trip (tensors and ints only)
    state = strat.state_dict()
    again = create_strategy(_cfg(tmp_path, strategy="permanent", threshold="0.8", extra__label_every="5"), 2)
    again.load_state_dict(state)
    again.setup(4, 10)
    assert again.labeled_extra()[1].tolist() == [0, 0, 1, 1] and not again.labeling_due(10)
    assert again.labeled_mode(12) == "both"


def test_permanent_threshold_schedule_uses_the_epoch_of_the_pass(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="permanent", threshold="0.9+0.02*epoch"), 2)
    strat.setup(1, 10)  # 10 steps per epoch: tau 0.92 at step 10, 0.94 at step 20
    p = _top([[0.93, 0.07]])
    strat.on_labeling(torch.arange(1), *p, 20)
    assert len(strat.labeled_extra()[0]) == 0
    strat.on_labeling(torch.arange(1), *p, 10)
    assert len(strat.labeled_extra()[0]) == 1


def test_every_strategy_but_supervised_needs_unlabeled_data(tmp_path):
    needs = {name: create_strategy(_cfg(tmp_path, strategy=name), 2).needs_unlabeled
             for name in ("supervised", "classical", "fixmatch", "flexmatch", "permanent", "local")}
    assert needs == {"supervised": False, "classical": True, "fixmatch": True, "flexmatch": True,
                     "permanent": True, "local": True}


# --- local -------------------------------------------------------------------------------
def test_local_phases_by_step(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="local", steps="40", extra__local_warmup="10",
                                 extra__pseudo_steps="3", extra__retrain_steps="2"), 2)
    strat.setup(5, 10)
    phases = [strat.phase(s)[0][0] for s in range(22)]
    assert "".join(phases) == "wwwwwwwwww" + "ppprr" + "ppprr" + "pp"
    assert [s for s in range(25) if strat.labeling_due(s)] == [10, 15, 20]
    assert [s for s in range(25) if strat.loader_due(s)] == [13, 18, 23]
    assert [strat.labeled_mode(s) for s in (0, 10, 12, 13, 14, 15)] == ["labeled", "extra", "extra", "labeled",
                                                                          "labeled", "extra"]
    # each round labels afresh: a sample over threshold in round 1 but not in round 2 leaves the pool
    strat.on_labeling(torch.arange(2), *_top([[0.99, 0.01], [0.5, 0.5]]), 10)
    assert strat.labeled_extra()[0].tolist() == [0]
    strat.on_labeling(torch.arange(2), *_top([[0.5, 0.5], [0.01, 0.99]]), 15)
    assert strat.labeled_extra()[0].tolist() == [1] and strat.labeled_extra()[1].tolist() == [1]
    assert not strat.labeling_due(15)
    state = strat.state_dict()
    assert set(state) == {"pool_index", "pool_label", "last_pass"}


def test_local_defaults_split_the_run(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="local", steps="800"), 2)
    assert (strat.warmup, strat.pseudo, strat.retrain) == (200, 100, 100)


# --- flexmatch ---------------------------------------------------------------------------
def test_flexmatch_class_thresholds_by_hand():
    # 10 unlabeled samples, 3 classes: class 0 predicted 4 times, class 1 twice, class 2 never, 4 unused
    table = torch.tensor([0, 0, 0, 0, 1, 1, -1, -1, -1, -1])
    tau = 0.9
    # warm-up: denominator max(4, 4) = 4; beta = (1, 0.5, 0); M(x) = x / (2 - x) = (1, 1/3, 0)
    assert class_thresholds(table, 3, tau, warmup=True).tolist() == pytest.approx([0.9, 0.3, 0.0])
    # more unused samples than the top class: denominator is n_unused = 6
    table2 = torch.tensor([0, 0, 0, 1, -1, -1, -1, -1, -1, -1])
    b = torch.tensor([3 / 6, 1 / 6, 0.0])
    assert class_thresholds(table2, 3, tau, warmup=True).tolist() == pytest.approx((tau * b / (2 - b)).tolist())
    # without warm-up the denominator is the top class's count, 3
    b = torch.tensor([1.0, 1 / 3, 0.0])
    assert class_thresholds(table2, 3, tau, warmup=False).tolist() == pytest.approx((tau * b / (2 - b)).tolist())
    # nothing selected yet: every threshold is 0 (the reference code's start)
    assert class_thresholds(torch.full((5,), -1), 3, tau).tolist() == [0.0, 0.0, 0.0]


def test_flexmatch_loss_updates_table_then_masks_per_class(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="flexmatch", threshold="0.9"), 2)
    strat.setup(6, 10)
    strat.selected = torch.tensor([0, 0, 0, -1, -1, -1])
    # batch: sample 3 confidently class 0 (0.95), sample 4 class 1 at 0.6, sample 5 class 0 at 0.7
    logits_w = torch.tensor([[_logit_for(0.95), 0.0], [0.0, _logit_for(0.6)], [_logit_for(0.7), 0.0]])
    logits_s = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.5, 0.0]])
    logits_x = torch.tensor([[1.0, 0.0]])
    loss, logs = strat.loss_from_logits(logits_x, torch.tensor([0]), logits_w, logits_s, torch.tensor([0, 1, 1]),
                                        StepInfo(0, 0.0), None, torch.tensor([3, 4, 5]))
    # table after update: [0,0,0,0,-1,-1]: sigma = (4, 0), unused 2 -> beta = (1, 0) -> T = (0.9, 0)
    assert strat.selected.tolist() == [0, 0, 0, 0, -1, -1]
    # mask: sample 3 (0.95 >= 0.9) yes; sample 4 class 1 (0.6 >= 0) yes; sample 5 class 0 (0.7 < 0.9) no
    lu = (_ce([0, 1], 0) + _ce([2, 0], 1)) / 3
    assert loss.item() == pytest.approx(_ce([1, 0], 0) + lu, rel=1e-5)
    assert logs["mask_rate"].item() == pytest.approx(2 / 3)
    assert logs["pl_acc"].item() == 1.0
    assert logs["unused_rate"].item() == pytest.approx(2 / 6)
    # the table is the checkpointed state
    again = create_strategy(_cfg(tmp_path, strategy="flexmatch", threshold="0.9"), 2)
    again.load_state_dict(strat.state_dict())
    again.setup(6, 10)
    assert again.selected.tolist() == strat.selected.tolist()


# --- MixUp -------------------------------------------------------------------------------
def test_mixup_supervised_loss_by_hand(tmp_path):
    strat = create_strategy(_cfg(tmp_path, strategy="supervised", extra__mixup="0.4"), 3)
    x = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    y = torch.tensor([0, 2])
    torch.manual_seed(5)
    loss, _ = strat.compute_loss(nn.Identity(), Batch(x=x, y=y), StepInfo(0, 0.0))
    torch.manual_seed(5)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(2)
    mixed = lam * x + (1 - lam) * x[perm]
    by_hand = sum(lam * _ce(mixed[i].tolist(), int(y[i])) + (1 - lam) * _ce(mixed[i].tolist(), int(y[perm][i]))
                  for i in range(2)) / 2
    assert 0 < lam < 1 and loss.item() == pytest.approx(by_hand, rel=1e-5)
    plain = create_strategy(_cfg(tmp_path, strategy="supervised"), 3)
    assert plain.compute_loss(nn.Identity(), Batch(x=x, y=y), StepInfo(0, 0.0))[0].item() == pytest.approx(
        (_ce([3, 0, 0], 0) + _ce([0, 0, 2], 2)) / 2, rel=1e-6)
    with pytest.raises(UserError, match="extra.mixup=-1"):
        create_strategy(_cfg(tmp_path, strategy="supervised", extra__mixup="-1"), 3)
