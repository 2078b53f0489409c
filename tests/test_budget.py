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


def test_refit_keeps_the_cosine_continuous_and_follows_a_slower_rate():
    plan = BudgetSchedule(100.0, 10_000, skip=2, window=4)
    for step in range(1, 8):  # as above: K = 190 at step 7, anchored at progress 7/10000
        plan.observe(step, 0.5 * step)
    assert (plan.steps, plan.anchor_step, plan.anchor_progress) == (190, 7, pytest.approx(7 / 10_000))
    elapsed = 3.5
    for step in range(8, 53):  # the run slows to 1 s a step; progress 0.0007 + 0.9993 (step - 7) / 183
        elapsed += 1.0
        plan.observe(step, elapsed)
        assert plan.steps == 190
    p53 = 7 / 10_000 + (1 - 7 / 10_000) * 46 / 183  # 0.2519: the first step past a quarter
    assert plan.progress(53) == pytest.approx(p53)
    plan.observe(53, elapsed + 1.0)  # 46 steps in 46 s since step 7: 1 step/s, 50.5 s left
    assert plan.steps == 53 + math.floor(0.95 * 50.5 * 1.0) == 100 and plan.refits_done == 1
    assert plan.progress(53) == pytest.approx(p53) and plan.progress(100) == pytest.approx(1.0)  # no jump, ends at K
    assert plan.progress(76) == pytest.approx(p53 + (1 - p53) * 23 / 47)
    again = BudgetSchedule(100.0, 10_000)
    again.load_state_dict(plan.state_dict())
    assert again.steps == 100 and again.progress(76) == plan.progress(76)
    old = BudgetSchedule(100.0, 10_000)
    old.load_state_dict({"estimate": 190})  # a checkpoint from before the refits: a cosine from 0 to K
    assert old.progress(95) == pytest.approx(0.5)


def test_refit_points_passed_inside_a_window_are_not_made_up():
    plan = BudgetSchedule(10.0, 10_000, skip=0, window=4, safety=1.0)
    for step in range(1, 6):  # mark at step 1, K at step 5: 4 steps in 4 s, 5 s left -> 10
        plan.observe(step, float(step))
    assert plan.steps == 10
    plan.observe(6, 6.0)  # progress 0.2, 0.4, 0.6 at steps 6-8: past 0.25 and 0.5, but under a window since step 5
    for step in range(7, 9):
        plan.observe(step, float(step))
    assert plan.steps == 10 and plan.refits_done == 0
    plan.observe(9, 9.0)  # 4 steps since step 5 and past 0.25, 0.5, 0.75 (progress 0.8): one refit
    assert plan.refits_done == 3 and plan.steps == 10 and plan.anchor_step == 9


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
    # every estimate is logged, the last one the K in result.json
    plans = [r.getMessage() for r in caplog.records if "the cosine now ends at step" in r.getMessage()]
    assert plans and plans[0].startswith("budget_s=4: the cosine now ends at step") and "(was 100000)" in plans[0]
    assert f"ends at step {k} (was" in plans[-1]
    # the cosine ran to the estimate, not to steps=100000 (where the last lr would still be ~0.05)
    state = torch.load(cfg.run_dir() / "ckpt" / "last.pt", weights_only=True)
    assert state["budget"]["estimate"] == k
    plan = BudgetSchedule(4.0, 100_000)
    plan.load_state_dict(state["budget"])
    assert _last_lr(cfg.run_dir()) == pytest.approx(0.05 * math.cos(7 * math.pi * plan.progress(n) / 16), rel=1e-6)
    assert n < k or plan.progress(n) == pytest.approx(1.0)


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
    saved = torch.load(cfg.run_dir() / "ckpt" / "last.pt", weights_only=True)["budget"]
    k = saved["estimate"]
    assert k > 9
    monkeypatch.setattr(Supervised, "compute_loss", real)
    # a resumed attempt would time a new window and find another K: the saved one must win
    monkeypatch.setattr(budget.BudgetSchedule, "observe", lambda self, *a: self.estimate or setattr(self, "estimate", 7))
    result = run(cfg)
    assert result["restarts"] == 1 and result["budget_steps"] == k
    plan = BudgetSchedule(4.0, 100_000)
    plan.load_state_dict(saved)
    assert _last_lr(cfg.run_dir()) == pytest.approx(0.05 * math.cos(7 * math.pi * plan.progress(result["steps"]) / 16),
                                                    rel=1e-6)
