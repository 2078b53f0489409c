"""Where every run of a sweep stands: SLURM's state and restarts, training progress, accuracy, log.

Two sources, because neither knows everything: the run folders (metrics.jsonl, result.json)
say how far training got; SLURM (sacct, else squeue) says whether a job is waiting, running,
requeued or dead. The link between them is `.submitit/jobs.jsonl`, written at submit time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sslrun.errors import UserError
from sslrun.launch import jobs_file


def submitted_jobs(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Run name -> its latest submission record (a resubmission supersedes the earlier one)."""
    path = jobs_file(sweep_dir)
    latest: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                latest[rec["run"]] = rec
    return latest


def slurm_states(job_ids: list[str]) -> dict[str, tuple[str, int]]:
    """Job id -> (state, restarts). sacct -D lists one line per start, so restarts = lines - 1."""
    if not job_ids or not shutil.which("sacct"):
        return _squeue_states(job_ids)
    proc = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return _squeue_states(job_ids)
    lines: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        job, _, state = line.partition("|")
        lines.setdefault(job, []).append(state.split()[0] if state else "?")
    out = {job: (states[-1], len(states) - 1) for job, states in lines.items()}
    for job, (state, restarts) in _squeue_states([j for j in job_ids if j not in out]).items():
        out[job] = (state, restarts)
    return out


def _squeue_states(job_ids: list[str]) -> dict[str, tuple[str, int]]:
    """Without accounting, squeue knows the jobs still queued or running (restarts unknown: -1)."""
    if not job_ids or not shutil.which("squeue"):
        return {}
    proc = subprocess.run(["squeue", "-h", "-o", "%i|%T", "-j", ",".join(job_ids)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    return {job: (state, -1) for job, _, state in (ln.partition("|") for ln in proc.stdout.splitlines())}


def progress(run_dir: Path) -> dict[str, Any]:
    """Step, epoch, latest and best val accuracy from metrics.jsonl; result.json when finished."""
    row: dict[str, Any] = {"step": None, "epoch": None, "val_acc": None, "best_val_acc": None, "restarts": None}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line being written right now
                continue
            if rec.get("kind") == "train":
                row["step"], row["epoch"] = rec["step"], rec.get("epoch")
            elif rec.get("kind") == "val":
                row["val_acc"], row["best_val_acc"] = rec.get("acc"), rec.get("best_acc")
    result = run_dir / "result.json"
    if result.exists():
        res = json.loads(result.read_text())
        row.update(step=res["steps"], val_acc=res["val_acc"], best_val_acc=res["best_val_acc"], restarts=res["restarts"])
    return row


def sweep_status(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per run (submitted, or found on disk): state, progress, accuracy, restarts, log."""
    if not sweep_dir.is_dir():
        raise UserError(f"sweep folder {sweep_dir} does not exist")
    jobs = submitted_jobs(sweep_dir)
    on_disk = {p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    names = sorted(set(jobs) | on_disk)
    if not names:
        raise UserError(f"sweep folder {sweep_dir} holds no runs and no submitted jobs")
    slurm_ids = [rec["job_id"] for rec in jobs.values() if rec.get("cluster", "slurm") == "slurm"]
    states = slurm_states(slurm_ids)
    rows = []
    for name in names:
        run_dir = sweep_dir / name
        rec = jobs.get(name, {})
        row: dict[str, Any] = {"run": name, "job_id": rec.get("job_id"), "log": rec.get("stderr"), **progress(run_dir)}
        state, restarts = states.get(str(rec.get("job_id")), ("", -1))
        if (run_dir / "result.json").exists():
            row["state"] = "done"  # whatever SLURM says: its record lags the job's last seconds
        else:
            row["state"] = state or ("partial" if (run_dir / "ckpt" / "last.pt").exists() else "new")
        if restarts >= 0 and row["restarts"] is None:
            row["restarts"] = restarts
        rows.append(row)
    return rows


def _fmt(v: Any, percent: bool = False) -> str:
    if v is None:
        return "-"
    if percent:
        return f"{100 * v:.2f}"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def status_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | job | state | step | epoch | val acc % | best val % | restarts | log |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['job_id'] or '-'} | {r['state']} | {_fmt(r['step'])} | {_fmt(r['epoch'])} | "
                     f"{_fmt(r['val_acc'], True)} | {_fmt(r['best_val_acc'], True)} | {_fmt(r['restarts'])} | "
                     f"{r['log'] or '-'} |")
    return "\n".join(lines)
