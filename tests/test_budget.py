"""budget_s with schedule=cosine: the cosine's length estimated from the step rate, kept on resume."""

from __future__ import annotations

import logging
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from conftest import FAST
from sslrun import budget
from sslrun.budget import BudgetSchedule, plan_for
from sslrun.config import make_config, parse_overrides


def test_estimate_from_the_timed_window_by_hand():
    plan = BudgetSchedule(100.0, 10_000, skip=2, window=4)
    seen = []

    def agree(n: int) -> int:
        seen.append(n)
        return n - 5  # another rank was slower

    for step in range(1, 8):  # 0.5 s per step from the start
        assert plan.steps == 10_000
        plan.observe(step, 0.5 * step, agree)
    # timing starts after 2 steps (step 3, 1.5 s) and ends 4 steps later (step 7, 3.5 s): 2 steps/s;
    # 96.5 s left -> 7 + floor(0.95 * 96.5 * 2) = 190, and the ranks agree on the smallest
    assert seen == [190] and plan.steps == 185
    plan.observe(8, 99.0, agree)  # made once
    assert plan.steps == 185 and seen == [190]
    again = BudgetSchedule(100.0, 10_000)
    again.load_state_dict(plan.state_dict())
    assert again.steps == 185


def test_estimate_is_capped_at_steps_and_starts_after_a_resume():
    plan = BudgetSchedule(1000.0, 50, skip=1, window=2)
    for step in range(21, 25):  # a resumed attempt: its first step is 21
        plan.observe(step, 10.0 + step)
    assert plan.steps == 50
    assert plan_for(0.0, "cosine", 10) is None and plan_for(5.0, "constant", 10) is None
    assert plan_for(5.0, "cosine", 10).steps == 10


def _config(digits: Path, tmp_path: Path, *items: str):
    return make_config(parse_overrides([*FAST, f"data={digits}", f"root={tmp_path}", "sweep=s", "lr=0.05",
                                        "strategy=supervised", "schedule=cosine", "steps=100000", "budget_s=4",
                                        "eval_every=100000", "ckpt_every=100000", "log_every=100000", *items]))


def _short_window(monkeypatch):
    monkeypatch.setattr("sslrun.engine.plan_for",
                        lambda b, s, n: BudgetSchedule(b, n, skip=2, window=3) if b > 0 and s == "cosine" else None)


def _last_lr(run_dir: Path) -> float:
    return torch.load(run_dir / "ckpt" / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"]


@pytest.mark.slow
def test_budgeted_cosine_runs_to_its_estimate(digits, tmp_path, monkeypatch, caplog):
    from sslrun.engine import run

    _short_window(monkeypatch)
    caplog.set_level(logging.INFO, logger="sslrun.engine")
    cfg = _config(digits, tmp_path, "name=b")
    result = run(cfg)
    k, n = result["budget_steps"], result["steps"]
    assert 5 < k < 100_000 and n <= k and result["stopped_by"] == "budget_s"
    # the stop line says which of the two ended the run: the time, or the estimated step count
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("budget_s=4: stopping")]
    assert len(said) == 1 and f"at step {n} of 100000 after" in said[0]
    assert said[0].endswith("the time is spent") or (n == k and said[0].endswith(f"the {k} steps estimated to fit it are done"))
    # the cosine ran to the estimate, not to steps=100000 (where the last lr would still be ~0.05)
    assert _last_lr(cfg.run_dir()) == pytest.approx(0.05 * math.cos(7 * math.pi * n / (16 * k)), rel=1e-6)
    state = torch.load(cfg.run_dir() / "ckpt" / "last.pt", weights_only=True)
    assert state["budget"] == {"estimate": k}


@pytest.mark.slow
def test_budget_estimate_survives_a_restart(digits, tmp_path, monkeypatch):
    from sslrun.engine import Interrupted, run
    from sslrun.strategies.supervised import Supervised

    _short_window(monkeypatch)
    real = Supervised.compute_loss

    def stop_at_8(self, model, batch, info):
        if info.step == 8:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, model, batch, info)

    cfg = _config(digits, tmp_path, "name=r")
    monkeypatch.setattr(Supervised, "compute_loss", stop_at_8)
    with pytest.raises(Interrupted):
        run(cfg)
    k = torch.load(cfg.run_dir() / "ckpt" / "last.pt", weights_only=True)["budget"]["estimate"]
    assert k > 9
    monkeypatch.setattr(Supervised, "compute_loss", real)
    # a resumed attempt would time a new window and find another K: the saved one must win
    monkeypatch.setattr(budget.BudgetSchedule, "observe", lambda self, *a: self.estimate or setattr(self, "estimate", 7))
    result = run(cfg)
    assert result["restarts"] == 1 and result["budget_steps"] == k
    assert _last_lr(cfg.run_dir()) == pytest.approx(0.05 * math.cos(7 * math.pi * result["steps"] / (16 * k)), rel=1e-6)
