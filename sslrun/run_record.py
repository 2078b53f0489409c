"""What a run writes about itself besides its training state: the best.pt weights and result.json.

Kept out of the training loop (engine.Trainer), which only says when: these say what is in them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sslrun import checkpoint
from sslrun.config import Config
from sslrun.evaluate import EvalResult


def best_state(model: nn.Module, ema: nn.Module | None, step: int, val_acc: float, model_name: str,
               classes: list[str]) -> dict[str, Any]:
    """best.pt: the weights (and EMA weights) of the best validation step, and what reads them
    needs (predict: the model, the classes)."""
    return {"step": step, "model": model.state_dict(), "num_classes": len(classes), "model_name": model_name,
            "classes": classes, "ema": ema.state_dict() if ema is not None else None, "val_acc": val_acc}


def result(cfg: Config, *, step: int, val: EvalResult | None, best: dict[str, Any], test_acc: float | None,
           model: nn.Module, restarts: int, world: int, device: str, elapsed_s: float, classes: list[str],
           budget_steps: int | None, ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """result.json: the run's outcome, as status, report and the seed table read it."""
    out: dict[str, Any] = {
        "strategy": cfg.strategy, "model": cfg.model, "seed": cfg.seed, "steps": step,
        "val_acc": val.acc if val else None, "val_loss": val.loss if val else None,
        "best_val_acc": best["val_acc"], "best_step": best["step"], "test_acc": test_acc,
        "weights_sha256": checkpoint.weights_sha256(model.state_dict()),
        "restarts": restarts, "world_size": world, "device": device,
        "elapsed_s": round(elapsed_s, 2),
        "classes": classes, "val_confusion": val.confusion.tolist() if val else None,
        "ranks": ranks,
    }
    if step < cfg.steps:
        out["stopped_by"] = "budget_s"
    if budget_steps is not None:
        out["budget_steps"] = budget_steps
    return out
