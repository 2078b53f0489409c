"""Where every run of a sweep stands: SLURM's state and restarts, training progress, accuracy, log.

Two sources, because neither knows everything: the run folders (metrics.jsonl, result.json)
say how far training got; SLURM (sacct, else squeue) says whether a job is waiting, running,
requeued or dead. The link between them is `.submitit/jobs.jsonl`, written at submit time.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from sslrun import run_folder
from sslrun.errors import UserError, one_line


def submitted_jobs(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Run name -> its latest submission record (a resubmission supersedes the earlier one)."""
    return run_folder.submitted_jobs(sweep_dir)[0]


# squeue retries a controller that does not answer for 20-40 s before it gives up; a busy one may
# answer slowly. Past this, the states shown are the run folders' own, and the table says why.
SLURM_TIMEOUT_S = 90.0


def _ask(cmd: list[str]) -> tuple[str | None, str]:
    """stdout of a SLURM query, or None and why it did not answer."""
    if not shutil.which(cmd[0]):
        return None, f"{cmd[0]} is not on PATH"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"{cmd[0]} gave no answer in {SLURM_TIMEOUT_S:g} s"
    except OSError as err:
        return None, f"{cmd[0]}: {err.strerror or err}"
    if proc.returncode != 0:
        said = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        return None, one_line(f"{cmd[0]}: {said[-1] if said else f'exit {proc.returncode}'}", 200)
    return proc.stdout, ""


def slurm_states(job_ids: list[str]) -> tuple[dict[str, tuple[str, int]], str]:
    """Job id -> (state, restarts), and '' or why SLURM could not be asked. sacct -D lists one line
    per start, so restarts = lines - 1; without accounting, squeue knows the queued and running jobs."""
    if not job_ids:
        return {}, ""
    text, _ = _ask(["sacct", "-n", "-X", "-D", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)])
    lines: dict[str, list[str]] = {}
    for line in (text or "").splitlines():
        job, _, state = line.partition("|")
        lines.setdefault(job, []).append(state.split()[0] if state else "?")
    out = {job: (states[-1], len(states) - 1) for job, states in lines.items() if job in job_ids}
    rest = [j for j in job_ids if j not in out]
    if not rest:
        return out, ""
    text, why = _ask(["squeue", "-h", "-o", "%i|%T", "-j", ",".join(rest)])
    for job, _, state in (ln.partition("|") for ln in (text or "").splitlines()):
        out[job] = (state, -1)
    return out, why if text is None and not out else ""


def progress(run_dir: Path) -> dict[str, Any]:
    """State, step, epoch, latest and best val accuracy, restarts and damage of one run folder."""
    view = run_folder.read_run(run_dir)
    row: dict[str, Any] = {"state": view.state, "step": view.step or None, "epoch": None, "val_acc": None,
                           "best_val_acc": None, "restarts": None, "damage": view.damage or view.failure}
    for rec in view.metrics:
        if rec.get("kind") == "train":
            row["epoch"] = rec.get("epoch")
        elif rec.get("kind") == "val":
            row["val_acc"], row["best_val_acc"] = rec.get("acc"), rec.get("best_acc")
    if view.state == "done":
        res = view.result
        row.update(step=res["steps"], val_acc=res["val_acc"], best_val_acc=res.get("best_val_acc"),
                   restarts=res.get("restarts"))
    return row


def sweep_status(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per run (submitted, or found on disk): state, progress, accuracy, restarts, log.

    A damaged file (jobs.jsonl, or a run's config.yaml, result.json, metrics.jsonl or checkpoint)
    shows as that run's state `damaged` with the file named; the other runs are listed as usual."""
    on_disk = {p.name for p in run_folder.run_dirs(sweep_dir)}
    jobs, jobs_damage = run_folder.submitted_jobs(sweep_dir)
    names = sorted(set(jobs) | on_disk)
    if not names:
        if jobs_damage:
            raise UserError(jobs_damage)
        raise UserError(f"sweep folder {sweep_dir} holds no runs and no submitted jobs")
    slurm_ids = [str(rec.get("job_id")) for rec in jobs.values() if rec.get("cluster", "slurm") == "slurm"]
    states, unanswered = slurm_states(slurm_ids)
    rows = []
    for name in names:
        run_dir = Path(sweep_dir) / name
        rec = jobs.get(name, {})
        row: dict[str, Any] = {"run": name, "job_id": rec.get("job_id"), "log": rec.get("stderr"), **progress(run_dir),
                               "note": None}
        job_id = str(rec.get("job_id"))
        state, restarts = states.get(job_id, ("", -1))
        unfinished = row["state"] in ("new", "started", "partial")  # done/failed/damaged are the folder's
        if unfinished and state:
            row["state"] = state  # SLURM knows whether it waits, runs or died
        elif unfinished and unanswered and rec and job_id in slurm_ids:
            row["note"] = f"SLURM did not answer ({unanswered}): this state is the run folder's; the job may still wait or run"
        if restarts >= 0 and row["restarts"] is None:
            row["restarts"] = restarts
        rows.append(row)
    if jobs_damage:
        for row in rows:
            if row["state"] != "done" and not row["damage"]:
                row["damage"] = jobs_damage
    return rows


def _fmt(v: Any, percent: bool = False) -> str:
    if v is None:
        return "-"
    if percent and isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{100 * v:.2f}"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def status_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | job | state | step | epoch | val acc % | best val % | restarts | log | why |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r['run'], r['job_id'] or '-', r['state'], _fmt(r['step']), _fmt(r['epoch']), _fmt(r['val_acc'], True),
                 _fmt(r['best_val_acc'], True), _fmt(r['restarts']), r['log'] or '-', r.get('damage') or r.get('note') or '-']
        # A folder made by hand can be named `a\nb` or `a|b`: one run stays one row of the table.
        lines.append("| " + " | ".join(one_line(str(c), 10_000).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)
