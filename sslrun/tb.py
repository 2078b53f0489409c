"""Run logging: TensorBoard events and `metrics.jsonl`, written by rank 0 alone.

A checkpoint at step s holds s finished steps, and the lines logged at step s describe them.
After a resume from step s, TensorBoard is told to purge events after s (`purge_step` s+1)
and metrics.jsonl loses its lines after s, so every step appears once in both even when the
job died between a log line and the next checkpoint. The lines dropped are work done twice:
each restart appends how much to `restarts.jsonl` (steps, and seconds from the `wall` clock
of the lines), which the report counts as time lost to restarts.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter


class RunLog:
    def __init__(self, run_dir: Path, start_step: int) -> None:
        self.path = run_dir / "metrics.jsonl"
        restarted = self.path.exists()
        if restarted:
            kept, dropped = _truncate_from(self.path, start_step + 1)
            _record_restart(run_dir / "restarts.jsonl", start_step, kept, dropped)
        self._file = open(self.path, "a", encoding="utf-8")
        # TensorBoard takes a run's first SessionLog.START for the session's start and purges only
        # at later ones: a fresh run writes one at step 0 so that its first restart purges too.
        self.tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=start_step + 1 if restarted else 0)

    def scalars(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        for k, v in values.items():
            self.tb.add_scalar(f"{kind}/{k}", v, step)
        self._file.write(json.dumps({"step": step, "kind": kind, **values, "wall": round(time.time(), 3)}) + "\n")
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


def _truncate_from(path: Path, step: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Drop lines logged at or after `step` (they will be logged again); rewrite atomically.

    Returns the rows kept and the rows dropped."""
    keep: list[str] = []
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            if row["step"] < step:
                keep.append(line)
                kept.append(row)
            else:
                dropped.append(row)
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a kill mid-write
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    os.replace(tmp, path)
    return kept, dropped


def _record_restart(path: Path, start_step: int, kept: list[dict[str, Any]], dropped: list[dict[str, Any]]) -> None:
    """Append one line per restart: the steps and seconds done again since the checkpoint.

    Seconds run from the last line kept (the checkpoint's neighbourhood) to the last line
    dropped; the time between that line and the kill is unknown, so both are lower bounds."""
    last = max((r["step"] for r in dropped), default=start_step)
    walls = [r["wall"] for r in dropped if "wall" in r]
    since = max((r["wall"] for r in kept if "wall" in r), default=min(walls, default=0.0))
    lost_s = round(max(walls) - since, 3) if walls else 0.0
    line = {"resumed_at_step": start_step, "redone_steps": last - start_step, "redone_s": lost_s,
            "lines_dropped": len(dropped), "wall": round(time.time(), 3)}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def confusion_figure(matrix: np.ndarray, classes: list[str], title: str = "") -> Any:
    """A labelled confusion-matrix figure (rows: true class, columns: predicted); also report.py's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, n = np.asarray(matrix), len(classes)
    side = min(14.0, 3.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side), dpi=80)
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def confusion_image(matrix: np.ndarray, classes: list[str]) -> np.ndarray:
    """The confusion-matrix figure as an RGB array, for TensorBoard's image dashboard."""
    import matplotlib.pyplot as plt

    fig = confusion_figure(matrix, classes)
    buf = io.BytesIO()
    fig.savefig(buf, format="raw")
    w, h = fig.canvas.get_width_height()
    plt.close(fig)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(h, w, 4)[..., :3].copy()
