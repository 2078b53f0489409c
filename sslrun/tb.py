"""Run logging: TensorBoard events and `metrics.jsonl`, written by rank 0 alone.

After a resume from a checkpoint of step s, TensorBoard is told to purge events after s
(`purge_step=s+1`) and metrics.jsonl loses its lines after s, so every step appears once in
both even when the job died between a log line and the next checkpoint. Lines of step s itself
stay: they were written before the checkpoint of step s, and the resumed loop starts at s+1.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter


class RunLog:
    def __init__(self, run_dir: Path, start_step: int) -> None:
        self.path = run_dir / "metrics.jsonl"
        _truncate_from(self.path, start_step + 1)
        self._file = open(self.path, "a", encoding="utf-8")
        self.tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=start_step + 1 if start_step > 0 else None)

    def scalars(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        for k, v in values.items():
            self.tb.add_scalar(f"{kind}/{k}", v, step)
        self._file.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        self._file.flush()

    def histogram(self, step: int, name: str, values: torch.Tensor) -> None:
        self.tb.add_histogram(name, values, step)

    def confusion(self, step: int, matrix: np.ndarray, classes: list[str]) -> None:
        self.tb.add_image("val/confusion_matrix", confusion_image(matrix, classes), step, dataformats="HWC")

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        self.tb.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        self.tb.flush()
        self.tb.close()
        self._file.close()


def _truncate_from(path: Path, step: int) -> None:
    """Drop lines logged at or after `step` (they will be logged again); rewrite atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] < step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a kill mid-write
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    os.replace(tmp, path)


def confusion_image(matrix: np.ndarray, classes: list[str]) -> np.ndarray:
    """A labelled confusion-matrix picture (rows: true class, columns: predicted) as an RGB array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    side = min(12.0, 2.5 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(side, side), dpi=80)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="raw")
    w, h = fig.canvas.get_width_height()
    plt.close(fig)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(h, w, 4)[..., :3].copy()
