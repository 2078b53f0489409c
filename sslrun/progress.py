"""What `submit --wait` shows while it waits: each run's step, speed, latest val accuracy, ETA.

Read from the run folders (metrics.jsonl, through run_folder), not from the jobs, so it shows
the same thing for local and SLURM jobs, and a run resumed by a requeue picks up where it was.
In a terminal: one live tqdm line per run. Otherwise (a SLURM log, CI): a plain log line per
run when it moved, at most every `every_s` seconds, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sslrun import run_folder


@dataclass
class Snapshot:
    state: str
    step: int
    images_per_s: float | None
    val_acc: float | None


def snapshot(run_dir: Path) -> Snapshot:
    view = run_folder.read_run(run_dir, checkpoints=False)
    speed = acc = None
    for rec in view.metrics:
        if rec.get("kind") == "train" and isinstance(rec.get("images_per_s"), (int, float)):
            speed = float(rec["images_per_s"])
        elif rec.get("kind") == "val" and isinstance(rec.get("acc"), (int, float)):
            acc = float(rec["acc"])
    return Snapshot(view.state, view.step, speed, acc)


def _eta(first: tuple[float, int] | None, now: float, step: int, total: int) -> str:
    if first is None or step <= first[1] or now <= first[0]:
        return "?"
    left = (total - step) * (now - first[0]) / (step - first[1])
    return f"{int(left // 60)}:{int(left % 60):02d}"


class Progress:
    """One line per run; call update() at every poll and close() at the end."""

    def __init__(self, runs: list[tuple[str, Path, int]], stream: TextIO | None = None, live: bool | None = None,
                 every_s: float = 30.0) -> None:
        self.runs = runs
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.every_s = every_s
        self._first: dict[str, tuple[float, int]] = {}
        self._shown: dict[str, tuple[float, int, str]] = {}
        self._bars: dict[str, Any] = {}
        if self.live:
            from tqdm import tqdm

            width = max((len(n) for n, _, _ in runs), default=4)
            for i, (name, _, steps) in enumerate(runs):
                self._bars[name] = tqdm(total=steps, desc=name.ljust(width), position=i, file=self.stream,
                                        leave=True, dynamic_ncols=True, unit="step")

    def update(self) -> None:
        now = time.time()
        for name, run_dir, steps in self.runs:
            snap = snapshot(run_dir)
            if snap.step and name not in self._first:
                self._first[name] = (now, snap.step)
            speed = "-" if snap.images_per_s is None else f"{snap.images_per_s:.0f}"
            acc = "-" if snap.val_acc is None else f"{100 * snap.val_acc:.1f}%"
            if self.live:
                bar = self._bars[name]
                bar.n = min(snap.step, steps)
                bar.set_postfix_str(f"{snap.state} img/s {speed} val {acc}", refresh=False)
                bar.refresh()
                continue
            last = self._shown.get(name)
            moved = last is None or (snap.step, snap.state) != (last[1], last[2])
            if moved and (last is None or now - last[0] >= self.every_s or snap.state in ("done", "failed", "damaged")):
                print(f"{name}: {snap.state} step {snap.step}/{steps} images/s {speed} val acc {acc} "
                      f"eta {_eta(self._first.get(name), now, snap.step, steps)}", file=self.stream, flush=True)
                self._shown[name] = (now, snap.step, snap.state)

    def close(self) -> None:
        self.update()
        for bar in self._bars.values():
            bar.close()
