"""A sweep's runs as rows, and the per-seed table with mean and standard deviation."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from sslrun import run_folder
from sslrun.errors import UserError


def collect(sweep_dir: Path, checkpoints: bool = False) -> list[dict[str, Any]]:
    """One row per run folder: its config, its result when finished, else its state (never
    stopped by one damaged run: that row's state is `damaged` and `damage` names the file)."""
    rows = []
    for run_dir in run_folder.run_dirs(sweep_dir):
        view = run_folder.read_run(run_dir, checkpoints=checkpoints)
        cfg = view.config
        row: dict[str, Any] = {"run": view.name, "dir": str(run_dir), "strategy": cfg.get("strategy"),
                               "seed": cfg.get("seed"), "config": cfg, **view.result, "state": view.state,
                               "damage": view.damage, "failure": view.failure, "view": view}
        rows.append(row)
    if not rows:
        raise UserError(f"sweep folder {sweep_dir} holds no runs")
    return rows


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}" if isinstance(v, float) else str(v)



def seed_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per run, then mean ± std of each accuracy over the finished runs."""
    lines = ["| run | strategy | seed | state | steps | val acc % | test acc % | restarts |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['strategy']} | {r['seed']} | {r['state']} | {r.get('steps', '-')} | "
                     f"{_fmt(r.get('val_acc'))} | {_fmt(r.get('test_acc'))} | {r.get('restarts', '-')} |")
    done = [r for r in rows if r["state"] == "done"]
    for key, label in (("val_acc", "val acc %"), ("test_acc", "test acc %")):
        vals = [100 * r[key] for r in done if r.get(key) is not None]
        if vals:
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            lines.append(f"\n{label}: mean {statistics.fmean(vals):.2f} ± {std:.2f} (std over {len(vals)} runs)")
    return "\n".join(lines)
