"""The run folder and the sweep folder: what they hold, how to read it, what state a run is in.

One room, because four modules used to answer these questions four ways with different file
tests (and `status` listed the sweep's `report/` folder as a run). Everything here reads plain
data only: JSON, JSON lines, YAML through `safe_load`, checkpoints with `weights_only=True`.
Nothing read from shared storage is ever unpickled or evaluated (submitit's `*.pkl` files
are never opened: a planted one would run its code).

A sweep folder `ROOT/SWEEP/` holds one folder per run, `.submitit/` (submitit's files and
`jobs.jsonl`, our record of which job runs which run) and `report/` (written by report).
A run folder holds `config.yaml`, `metrics.jsonl`, `restarts.jsonl`, `config-history.jsonl`,
`ckpt/{last,prev,best}.pt`, `tb/`, `result.json` when finished, `failure.json` when its job
raised. States, in the order they are decided:

- new: no `config.yaml` (the folder is absent, or was made but not claimed)
- damaged: a file that must be readable is not (named in `RunView.damage`)
- done: `result.json` is readable
- failed: `failure.json` is newer than the run's last progress (its job raised)
- partial: a checkpoint exists
- started: claimed, no checkpoint yet
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sslrun.atomic import write_atomic
from sslrun.errors import UserError, write_error
from sslrun.small_file import read_small
from sslrun.yaml_file import load_text
from sslrun.yaml_file import why as yaml_why

log = logging.getLogger(__name__)

CONFIG, RESULT, FAILURE = "config.yaml", "result.json", "failure.json"
METRICS, RESTARTS, HISTORY = "metrics.jsonl", "restarts.jsonl", "config-history.jsonl"
CKPT, LAST, PREV, BEST = "ckpt", "last.pt", "prev.pt", "best.pt"
SUBMITIT, JOBS, REPORT = ".submitit", "jobs.jsonl", "report"
STATES = ("new", "started", "partial", "done", "failed", "damaged")
# result.json keys every reader relies on; a file without them is damaged, not done.
RESULT_KEYS = ("steps", "val_acc")


class Damaged(UserError):
    """A run file that exists but cannot be read as what it should be; the message names it."""


# --- paths -------------------------------------------------------------------------------
def ckpt_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CKPT


def jobs_file(sweep_dir: Path) -> Path:
    """Where submit records which job runs which run: `status` reads it back."""
    return Path(sweep_dir) / SUBMITIT / JOBS


def report_dir(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / REPORT


def run_dirs(sweep_dir: Path) -> list[Path]:
    """The run folders of a sweep: sub-folders holding a config.yaml, never `report/` or a hidden one."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep folder {sweep_dir} does not exist")
    try:
        entries = sorted(sweep_dir.iterdir())
    except OSError as err:
        raise UserError(f"sweep folder {sweep_dir}: cannot read ({err.strerror or err})") from None
    return [p for p in entries if is_run_dir(p)]


def is_run_dir(path: Path) -> bool:
    # lexists, not is_file: a config.yaml that is a folder, a dangling link or unreadable makes
    # the run damaged (read_config says why), never a run that silently is not there.
    return (path.name != REPORT and not path.name.startswith(".") and path.is_dir()
            and os.path.lexists(path / CONFIG))


# --- tolerant readers --------------------------------------------------------------------
def _why(err: Exception) -> str:
    return " ".join(str(getattr(err, "strerror", None) or err).split())[:120] or type(err).__name__


def read_text(path: Path) -> str:
    """A run file's text; unreadable or not UTF-8 is Damaged, naming the file."""
    try:
        return read_small(path).decode("utf-8")  # a link to /dev/zero is damage, not a hang
    except OSError as err:
        raise Damaged(f"{path}: cannot read ({_why(err)})") from None
    except UnicodeDecodeError:
        raise Damaged(f"{path}: not UTF-8 text") from None


def json_loads(text: str) -> Any:
    """json.loads for files sslrun did not necessarily write: `[[[[...` nested past the
    interpreter's recursion limit is a ValueError like any other bad JSON, not a crash."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file (result.json, failure.json); anything else is Damaged."""
    text = read_text(path)
    try:
        obj = json_loads(text)
    except ValueError as err:
        raise Damaged(f"{path}: not valid JSON ({_why(err)})") from None
    if not isinstance(obj, dict):
        raise Damaged(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


@dataclass
class JsonLines:
    records: list[dict[str, Any]]
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of lines that are no JSON object
    unreadable: str = ""  # why the file could not be read at all (then bad_lines is [0])

    def damage(self, path: Path) -> str:
        if not self.bad_lines:
            return ""
        if self.unreadable:
            return f"{path}: cannot read ({self.unreadable})"
        return f"{path}: line {self.bad_lines[0]} is not a JSON object ({len(self.bad_lines)} bad line(s))"


def read_jsonl(path: Path) -> JsonLines:
    """Every JSON-object line of `path` ([] when absent). A torn last line (no newline yet: a
    writer is at work) is skipped silently; any other line that is no JSON object is counted
    in `bad_lines`, so the caller can call the file damaged. Never raises for bad content."""
    path = Path(path)
    if not path.exists():
        return JsonLines([])
    try:
        raw = read_small(path, limit=4 << 30)  # a long run's metrics.jsonl is large, never endless
    except OSError as err:
        log.debug("%s unreadable: %s", path, err)  # the caller reports it as the run's damage
        return JsonLines([], [0], _why(err))
    lines = raw.split(b"\n")
    torn = lines[-1] if lines else b""
    out = JsonLines([])
    for number, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        try:
            rec = json_loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            rec = None
        if isinstance(rec, dict):
            out.records.append(rec)
        else:
            out.bad_lines.append(number)
    if torn.strip():
        try:
            rec = json_loads(torn.decode("utf-8"))
            if isinstance(rec, dict):
                out.records.append(rec)
        except (UnicodeDecodeError, ValueError):
            pass
    return out


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.yaml as a mapping (safe_load: no YAML object tags); else Damaged."""
    path = Path(run_dir) / CONFIG
    text = read_text(path)
    try:
        cfg = load_text(text)  # no object tags, aliases or duplicate keys (sslrun/yaml_file.py)
    except yaml.YAMLError as err:
        raise Damaged(f"{path}: not valid YAML ({yaml_why(err)})") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise Damaged(f"{path}: expected a mapping of config keys, found {type(cfg).__name__}")
    return cfg


def read_result(run_dir: Path) -> dict[str, Any]:
    """result.json of a finished run; one without its number fields is Damaged."""
    path = Path(run_dir) / RESULT
    res = read_json(path)
    for key in RESULT_KEYS:
        if key not in res:
            raise Damaged(f"{path}: no '{key}' field")
    for key in ("steps", "val_acc", "val_loss", "test_acc", "best_val_acc", "elapsed_s", "world_size", "restarts"):
        v = res.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise Damaged(f"{path}: '{key}' is {v!r}, expected a number")
    return res


def checkpoint_progress(run_dir: Path) -> tuple[int, float, str]:
    """(step, elapsed seconds, damage) of the newest readable checkpoint, memory-mapped (cheap).

    last.pt unreadable with prev.pt fine is no damage (resume takes prev.pt); every present
    checkpoint unreadable is."""
    import torch

    notes = []
    for name in (LAST, PREV):
        path = ckpt_dir(run_dir) / name
        if not path.exists():
            continue
        if not path.is_file():  # a FIFO would block status forever
            notes.append(f"{path}: unreadable checkpoint (not a regular file)")
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("not a sslrun checkpoint")
            return int(state["step"]), float(state.get("elapsed_s", 0.0)), ""
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, never raised
            notes.append(f"{path}: unreadable checkpoint ({type(err).__name__}: {_why(err)})")
    return 0, 0.0, "; ".join(notes)


def has_checkpoint(run_dir: Path) -> bool:
    return any((ckpt_dir(run_dir) / n).is_file() for n in (LAST, PREV))


# --- one run's state ---------------------------------------------------------------------
@dataclass
class RunView:
    """What a reader needs of one run folder, read once."""

    name: str
    dir: Path
    state: str
    config: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    elapsed_s: float = 0.0
    damage: str = ""  # "FILE: why" when state is damaged
    failure: str = ""  # the job's error line when state is failed


def read_run(run_dir: Path, checkpoints: bool = True) -> RunView:
    """Read a run folder once and decide its state; never raises for what is in the folder.

    `checkpoints=False` skips opening checkpoint files (a partial run then shows step from
    metrics.jsonl only)."""
    run_dir = Path(run_dir)
    view = RunView(run_dir.name, run_dir, "new")
    if not (run_dir / CONFIG).exists():
        return view
    try:
        view.config = read_config(run_dir)
    except Damaged as err:
        view.state, view.damage = "damaged", str(err)
        return view
    lines = read_jsonl(run_dir / METRICS)
    view.metrics = lines.records
    trains = [m for m in lines.records if m.get("kind") == "train" and isinstance(m.get("step"), int)]
    view.step = trains[-1]["step"] if trains else 0
    if lines.bad_lines:
        view.state, view.damage = "damaged", lines.damage(run_dir / METRICS)
        return view
    if (run_dir / RESULT).exists():
        try:
            view.result = read_result(run_dir)
        except Damaged as err:
            view.state, view.damage = "damaged", str(err)
            return view
        view.state = "done"
        view.step, view.elapsed_s = int(view.result["steps"]), float(view.result.get("elapsed_s") or 0.0)
        return view
    if checkpoints and has_checkpoint(run_dir):
        step, elapsed, damage = checkpoint_progress(run_dir)
        if damage:
            view.state, view.damage = "damaged", damage
            return view
        view.step, view.elapsed_s = max(step, view.step), elapsed
    failure = _failure(run_dir)
    if failure:
        view.state, view.failure = "failed", failure
    else:
        view.state = "partial" if has_checkpoint(run_dir) else "started"
    return view


def state(run_dir: Path) -> str:
    """new / started / partial / done / failed / damaged (see the module docstring)."""
    return read_run(run_dir).state


def _failure(run_dir: Path) -> str:
    """The job's error line when failure.json is newer than every sign of progress after it."""
    path = run_dir / FAILURE
    if not path.exists():
        return ""
    try:
        rec = read_json(path)
        stamp = path.stat().st_mtime
    except (Damaged, OSError) as err:
        return f"{path} unreadable ({err})"
    later = [p for p in (run_dir / METRICS, ckpt_dir(run_dir) / LAST) if p.exists() and p.stat().st_mtime > stamp]
    if later:
        return ""  # a new job has made progress since: the failure is history
    return " ".join(str(rec.get("error") or "error").split())[:300]


# --- writers (rank 0 of the run's own job) ----------------------------------------------
def _write(path: Path, data: bytes, kept: str = "the file there before is unchanged") -> None:
    try:
        write_atomic(path, data)
    except OSError as err:
        raise write_error(path, err, kept) from None


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    """result.json, whole or not at all: its presence is what makes a run done."""
    _write(Path(run_dir) / RESULT, (json.dumps(result, indent=2) + "\n").encode("utf-8"))


def write_best(run_dir: Path, state_bytes: bytes) -> None:
    folder = ckpt_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / BEST, state_bytes)


def write_failure(run_dir: Path, error: BaseException) -> None:
    """failure.json: the job's own record of why it raised, as JSON (never read from a pickle).

    Best effort: a job that cannot write it still raises its own error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    lines = [ln for ln in str(error).strip().splitlines() if ln.strip()]
    rec = {"error": f"{type(error).__name__}: {lines[-1][:300] if lines else ''}".rstrip(": "),
           "wall": round(time.time(), 3), "job_id": os.environ.get("SLURM_JOB_ID", "")}
    try:
        write_atomic(run_dir / FAILURE, (json.dumps(rec) + "\n").encode("utf-8"))
    except OSError as err:
        log.warning("cannot write %s: %s", run_dir / FAILURE, err)


def claim(run_dir: Path, mine: str, resume_keys: tuple[str, ...]) -> None:
    """Create the run folder with `mine` as its config.yaml, or check that the one there holds
    this same run. Keys in `resume_keys` may change on resume (recorded in config-history.jsonl);
    any other difference, or a damaged config.yaml, is one line and nothing is changed."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    ours = yaml.safe_load(mine)
    if path.exists():
        try:
            theirs = read_config(run_dir)
        except Damaged as err:
            raise Damaged(f"{err}; cannot resume {run_dir}: repair or move the folder away (nothing was changed)") from None
        changed = {k: [theirs.get(k), ours[k]] for k in ours if theirs.get(k) != ours[k]}
        differ = [k for k in changed if k not in resume_keys]
        if differ:
            k = differ[0]
            was = theirs.get(k)
            resume = f" or give {k}={str(was).lower() if isinstance(was, bool) else was} to resume it" \
                if isinstance(was, (str, int, float)) else ""
            raise UserError(f"{run_dir} holds a run with {k}={was!r}, not {ours[k]!r}; "
                            f"choose another sweep= or name={resume} (nothing was changed)")
        if changed and not (run_dir / RESULT).exists():
            line = {"wall": round(time.time(), 3), "changed": changed}
            with open(run_dir / HISTORY, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            _write(path, mine.encode("utf-8"))
            log.warning("resuming with %s", ", ".join(f"{k}={v[1]!r} (was {v[0]!r})" for k, v in changed.items()))
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    _write(path, mine.encode("utf-8"))


def submitted_jobs(sweep_dir: Path) -> tuple[dict[str, dict[str, Any]], str]:
    """Run name -> its latest submission record, and the damage of jobs.jsonl ("" when sound)."""
    path = jobs_file(sweep_dir)
    lines = read_jsonl(path)
    latest: dict[str, dict[str, Any]] = {}
    bad = list(lines.bad_lines)
    for rec in lines.records:
        name = rec.get("run")
        if isinstance(name, str) and name and "/" not in name and "\\" not in name and not name.startswith("."):
            latest[name] = rec
        else:
            bad.append(0)
    damage = lines.damage(path) if lines.bad_lines else (f"{path}: a record without a valid 'run' name" if bad else "")
    return latest, damage
