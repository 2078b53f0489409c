"""FreeMatch: its averages, thresholds and fairness loss by hand on fixed logits; exact resume."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch

from conftest import FAST
from sslrun.config import make_config, parse_overrides
from sslrun.errors import UserError
from sslrun.strategies import create_strategy
from sslrun.strategies.base import StepInfo
from sslrun.strategies.freematch import FreeMatch


def _cfg(tmp_path, **extra):
    return make_config({"root": str(tmp_path), "strategy": "freematch", "lambda_u": "1.0",
                        **{f"extra.{k}": v for k, v in extra.items()}})


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _ce(row: list[float], target: int) -> float:
    return -math.log(_softmax(row)[target])


def _logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in row] for row in probs])


def test_freematch_thresholds_and_loss_by_hand(tmp_path):
    strat = create_strategy(_cfg(tmp_path, ema_p="0.5", fair_weight="0.5"), 2)
    # weak-view softmax: class 0 at 0.9, class 1 at 0.7, class 0 at 0.6
    logits_w = _logits([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    logits_s = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.5, 0.0]], requires_grad=True)
    logits_x = torch.tensor([[1.0, 0.0]])
    loss, logs = strat.loss_from_logits(logits_x, torch.tensor([0]), logits_w, logits_s, torch.tensor([0, 1, 1]),
                                        StepInfo(0, 0.0))
    # averages from 1/C = 0.5 with m = 0.5, updated before the mask
    time_p = 0.5 * 0.5 + 0.5 * (0.9 + 0.7 + 0.6) / 3
    p_model = [0.5 * 0.5 + 0.5 * 0.6, 0.5 * 0.5 + 0.5 * 0.4]  # [0.55, 0.45]
    hist = [0.5 * 0.5 + 0.5 * 2 / 3, 0.5 * 0.5 + 0.5 * 1 / 3]
    assert float(strat.time_p) == pytest.approx(time_p)
    assert strat.p_model.tolist() == pytest.approx(p_model)
    assert strat.label_hist.tolist() == pytest.approx(hist)
    tau = [time_p, time_p * 0.45 / 0.55]  # [0.6167, 0.5045]
    # sample 0: 0.9 >= tau_0 kept; sample 1: 0.7 >= tau_1 kept; sample 2: 0.6 < tau_0 = 0.6167 dropped
    assert logs["mask_rate"].item() == pytest.approx(2 / 3)
    assert logs["class_threshold_max"].item() == pytest.approx(tau[0])
    assert logs["class_threshold_min"].item() == pytest.approx(tau[1])
    lu = (_ce([0, 1], 0) + _ce([2, 0], 1)) / 3
    # fairness: kept strong views predict class 1 and class 0 -> hbar_s = (1/2, 1/2)
    ps = [_softmax([0, 1]), _softmax([2, 0])]
    mean_s = [(ps[0][c] + ps[1][c]) / 2 for c in range(2)]
    b = [mean_s[c] / 0.5 for c in range(2)]
    b = [v / sum(b) for v in b]
    a = [p_model[c] / hist[c] for c in range(2)]
    a = [v / sum(a) for v in a]
    lf = sum(a[c] * math.log(b[c]) for c in range(2))
    assert logs["loss_fair"].item() == pytest.approx(lf, rel=1e-5)
    assert loss.item() == pytest.approx(_ce([1, 0], 0) + lu + 0.5 * lf, rel=1e-5)
    loss.backward()
    assert torch.count_nonzero(logits_s.grad[2]) == 0  # a dropped sample teaches nothing
    assert torch.isfinite(logits_s.grad).all()


def test_freematch_fairness_with_an_empty_class_and_with_nothing_kept(tmp_path):
    strat = create_strategy(_cfg(tmp_path, ema_p="0"), 2)  # m = 0: the averages are this batch's own
    logits_w = _logits([[0.9, 0.1], [0.8, 0.2]])
    logits_s = torch.tensor([[1.0, 0.0], [3.0, 0.0]], requires_grad=True)
    _, logs = strat.loss_from_logits(torch.zeros(1, 2), torch.tensor([0]), logits_w, logits_s, None, StepInfo(0, 0.0))
    # tau = mean conf 0.85, class 0's mean prob is the max: T_0 = 0.85; only sample 0 passes
    assert logs["mask_rate"].item() == 0.5
    # h = (1, 0) and hbar_s = (1, 0): class 1's scales are 0, not inf (USB's replace_inf_to_zero),
    # so a = b = (1, 0) and L_f = 1 * log(1) + 0 = 0
    assert logs["loss_fair"].item() == pytest.approx(0.0, abs=1e-6)
    # nothing kept: the fairness term is exactly 0 and gradients stay finite
    strat = create_strategy(_cfg(tmp_path), 2)
    strat.time_p = torch.tensor(0.99)
    logits_s = torch.tensor([[1.0, 0.0], [3.0, 0.0]], requires_grad=True)
    loss, logs = strat.loss_from_logits(torch.zeros(1, 2), torch.tensor([0]), logits_w, logits_s, None,
                                        StepInfo(0, 0.0))
    assert logs["mask_rate"].item() == 0.0 and logs["loss_fair"].item() == 0.0
    loss.backward()
    assert torch.isfinite(logits_s.grad).all() and torch.count_nonzero(logits_s.grad) == 0


def test_freematch_state_round_trip_and_bad_extras(tmp_path):
    strat = create_strategy(_cfg(tmp_path, ema_p="0.9"), 3)
    strat.update(torch.softmax(torch.randn(5, 3), 1))
    again = create_strategy(_cfg(tmp_path, ema_p="0.9"), 3)
    state = strat.state_dict()
    assert all(v.device.type == "cpu" for v in state.values())
    again.load_state_dict(state)
    for key in ("time_p", "p_model", "label_hist"):
        assert torch.equal(getattr(again, key), getattr(strat, key))
    with pytest.raises(UserError, match="extra.ema_p=1"):
        create_strategy(_cfg(tmp_path, ema_p="1"), 3)
    with pytest.raises(UserError, match="extra.fair_weight=x"):
        create_strategy(_cfg(tmp_path, fair_weight="x"), 3)


def _config(digits: Path, tmp_path: Path, *items: str):
    return make_config(parse_overrides([*FAST, f"data={digits}", f"root={tmp_path}", "sweep=s", "lr=0.03",
                                        "strategy=freematch", "extra.ema_p=0.9", *items]))


@pytest.mark.slow
def test_freematch_trains_and_resumes_exactly_after_sigterm(digits, tmp_path, monkeypatch):
    from sslrun.engine import Interrupted, run

    straight = run(_config(digits, tmp_path, "name=straight"))
    assert straight["steps"] == 12 and 0 <= straight["val_acc"] <= 1
    real = FreeMatch.compute_loss

    def stop_at_6(self, model, batch, info):
        if info.step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, model, batch, info)

    cfg = _config(digits, tmp_path, "name=stopped")
    monkeypatch.setattr(FreeMatch, "compute_loss", stop_at_6)
    with pytest.raises(Interrupted):
        run(cfg)
    state = torch.load(cfg.run_dir() / "ckpt" / "last.pt", weights_only=True)
    assert state["step"] == 7 and float(state["strategy"]["time_p"]) != 0.1  # moved from 1/C
    monkeypatch.setattr(FreeMatch, "compute_loss", real)
    resumed = run(cfg)
    assert resumed["restarts"] == 1 and resumed["weights_sha256"] == straight["weights_sha256"]
