"""The end-of-step agreement, by name (issue 17: the trainer kept them as positions in a tensor),
and the run's records built outside the loop."""

from __future__ import annotations

import math

import torch

from sslrun.step_flags import StepFlags


def test_flags_by_name_on_one_rank():
    assert StepFlags.agree(0, torch.tensor(1.5), False) == StepFlags(0, False, False)
    assert StepFlags.agree(12, torch.tensor(math.nan), True) == StepFlags(12, True, True)
    assert StepFlags.agree(0, torch.tensor([math.inf]), False).bad_loss


def test_run_record_result_says_a_budget_stop():
    from sslrun.config import make_config
    from sslrun.run_record import best_state, result

    model = torch.nn.Linear(2, 3)
    cfg = make_config({"steps": 10})
    common = dict(val=None, best={"val_acc": 0.5, "step": 4}, test_acc=None, model=model, restarts=0, world=1,
                  device="cpu", elapsed_s=1.234, classes=["a", "b", "c"], budget_steps=None)
    done = result(cfg, step=10, **common)
    assert "stopped_by" not in done and done["elapsed_s"] == 1.23 and done["best_step"] == 4
    assert result(cfg, step=6, **{**common, "budget_steps": 6})["stopped_by"] == "budget_s"
    best = best_state(model, None, 4, 0.5, "m", ["a", "b", "c"])
    assert best["num_classes"] == 3 and best["ema"] is None and torch.equal(best["model"]["weight"], model.weight)
