"""A sweep's runs as rows, and the per-seed table with mean and standard deviation."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from sslrun.errors import UserError
from sslrun.yaml_file import read_yaml_mapping


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per run folder: its config, its result when finished, else its state."""
    if not sweep_dir.is_dir():
        raise UserError(f"sweep folder {sweep_dir} does not exist")
    rows = []
    for run_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.exists():
            continue
        cfg = read_yaml_mapping(cfg_path, "a mapping of config keys", empty_ok=True)
        row: dict[str, Any] = {"run": run_dir.name, "dir": str(run_dir), "strategy": cfg.get("strategy"),
                               "seed": cfg.get("seed"), "config": cfg}
        result = run_dir / "result.json"
        if result.exists():
            try:
                row.update(json.loads(result.read_text()))
            except (ValueError, TypeError) as err:
                raise UserError(f"{result}: not a valid result file ({err})") from None
            row["state"] = "done"
        else:
            row["state"] = "partial" if (run_dir / "ckpt" / "last.pt").exists() else "started"
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
