"""submitit glue: expand a sweep, check every run, and send them as one job array.

Everything that can be wrong with a run (a typo in a key, a model timm does not know, a data
folder that is not a shard set) is found here, on the login node, before anything waits in
a queue. Resubmitting the same sweep is safe: finished runs are skipped, unfinished ones
resume from their checkpoints, and nothing is ever deleted.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import submitit

from sslrun import run_folder
from sslrun.config import ALIASES, Config, check_text, closest, make_config, parse_overrides, run_name
from sslrun.data.manifest import Manifest, read_manifest
from sslrun.epochs import run_epoch_steps, threshold_warning
from sslrun.errors import UserError, one_line
from sslrun.run_check import check_run


def parse_array(items: list[str]) -> list[dict[str, str]]:
    """`["seeds=42,43", "strategy=a,b"]` -> the cartesian product, in the order given."""
    axes: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        key = ALIASES.get(key.strip(), key.strip())
        vals = [v.strip() for v in values.split(",")]
        if not sep or not key or not values or any(v == "" for v in vals):
            raise UserError(f"--array {item!r}: expected key=v1,v2,... with no empty value")
        if key in (k for k, _ in axes):
            raise UserError(f"--array {item!r}: key '{key}' is given twice")
        parse_overrides([f"{key}={vals[0]}"])  # the key must exist
        axes.append((key, vals))
    if not axes:
        return [{}]
    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]


def run_state(cfg: Config) -> str:
    """The run folder's state (run_folder.state): new, started, partial, done, failed or damaged."""
    return run_folder.state(cfg.run_dir())


def plan_runs(array: list[str], overrides: list[str], sweep_overrides: list[dict[str, str]] | None = None) -> list[Config]:
    """Every run's Config, checked; the data set is read once to catch a bad folder early."""
    base = parse_overrides(overrides)
    combos = parse_array(array)
    both = [k for k in combos[0] if k in base]
    if both:  # the --array value would replace the override in every run without a word
        raise UserError(f"{both[0]}= is given both as an override and as an --array axis; give it once")
    rows = sweep_overrides or [{}]
    many = len(rows) * len(combos) > 1
    configs: list[Config] = []
    seen: dict[str, dict[str, Any]] = {}
    strategy_keys = _strategy_extra_keys() if many else {}
    used: set[str] = set()
    for row in rows:
        for combo in combos:
            items = {**row, **base, **combo}
            if many:
                # A command-line extra.K laid over a sweep of several strategies (extra.label_every
                # over the report's ablation) applies to the rows whose strategy declares it; a key
                # that no planned row declares is still the typo error check_extra gives.
                declared = strategy_keys.get(str(items.get("strategy", Config.strategy)), set())
                for key in [k for k in base if k.startswith("extra.") and k not in row and k not in combo]:
                    if key[len("extra."):] in declared:
                        used.add(key)
                    else:
                        del items[key]
            if many and "name" in base:
                # `name=myrun --array seeds=42,43`: one name for several runs would plan one run;
                # the given name becomes a prefix, followed by what tells the runs apart.
                own = {k: v for k, v in {**row, **combo}.items() if k != "name"}
                items["name"] = f"{base['name']},{run_name(own)}" if own else base["name"]
            cfg = make_config(items)
            key = f"{cfg.sweep}/{cfg.name}"
            if key in seen:
                if seen[key] == cfg.to_dict():
                    # `--array seeds=1,1`, or a command-line seed=3 over a sweep file's seeds: the
                    # grid would quietly shrink; a sweep never plans fewer runs than it lists.
                    shown = ", ".join(f"{k}={v}" for k, v in items.items())
                    raise UserError(f"the run {{{shown}}} is planned twice (a value repeated in --array, or an "
                                    "override that replaces a key the sweep varies); remove the repeat")
                raise UserError(f"two different runs would share the folder {cfg.run_dir()}: give each "
                                f"run its own name= (or leave name= out to derive names from the overrides)")
            seen[key] = cfg.to_dict()
            configs.append(cfg)
    unused = [k for k in base if k.startswith("extra.") and many and k not in used]
    if unused:
        planned = sorted({c.strategy for c in configs})
        known = sorted({k for name in planned for k in strategy_keys.get(name, set())})
        hint = closest(unused[0][len("extra."):], known).replace("mean ", "mean extra.")
        raise UserError(f"{unused[0]}: not a key of any strategy in this sweep ({', '.join(planned)}){hint} "
                        f"(known: {', '.join('extra.' + k for k in known) or 'none'})")
    for cfg in configs:
        check_run(cfg)
    return configs


def schedule_warnings(configs: list[Config], world: int) -> list[str]:
    """One line for each planned run whose threshold passes 1 before it ends, on `world` ranks
    (the unlabeled batch of an epoch is global, so the rank count moves the epoch's steps)."""
    manifests: dict[str, Manifest] = {}
    lines = []
    for cfg in configs:
        if cfg.data not in manifests:
            manifests[cfg.data] = read_manifest(cfg.data)
        line = threshold_warning(cfg, run_epoch_steps(cfg, manifests[cfg.data], world))
        if line:
            lines.append(line)
    return lines


def _strategy_extra_keys() -> dict[str, set[str]]:
    """strategy name -> the extra.* keys it declares."""
    from sslrun.strategies import STRATEGIES

    return {name: set(cls.declared_extra()) for name, cls in STRATEGIES.items()}


def check_devices(configs: list[Config], opts: ClusterOptions, cluster: str) -> None:
    """Refuse, before queueing, runs that need CUDA (`device=cuda`, `sync_bn=true`: SyncBatchNorm
    has no CPU kernel) where the job will have no GPU: a SLURM job asking for none (unless GPUs
    are asked through --sbatch, which this cannot read), or a local run on a machine without one."""
    if cluster == "slurm":
        if opts.gpus_per_node or opts.sbatch_asks("gres", "gpu"):
            return
        where = "the job asks for no GPU (--gpus-per-node 0)"
    else:
        import torch

        if torch.cuda.is_available():
            return
        where = "this machine has no GPU for the local executor"
    for cfg in configs:
        if cfg.device == "cuda":
            raise UserError(f"run {cfg.name}: device=cuda, but {where}")
        if cfg.sync_bn and cfg.device == "auto":
            raise UserError(f"run {cfg.name}: sync_bn=true needs a GPU (SyncBatchNorm has no CPU kernel), but {where}")


class TrainJob(submitit.helpers.Checkpointable):
    """What each task of a SLURM array element runs; requeued with its arguments on USR2."""

    def __call__(self, cfg_dict: dict[str, Any]) -> dict[str, Any]:
        from sslrun.engine import Interrupted, run

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        cfg = Config(**cfg_dict)
        try:
            return run(cfg)
        except Interrupted as stop:
            if stop.signum == signal.SIGTERM and "SLURM_JOB_ID" in os.environ:
                # SLURM sends SIGTERM when it ends the job: scancel, `scontrol requeue`, or the end of
                # a grace time. The state is saved; returning or raising would make submitit record a
                # result, and a requeued job would read as finished. Wait for SLURM's SIGKILL instead.
                time.sleep(3600)
            raise
        except Exception as err:
            if env.global_rank == 0:
                run_folder.write_failure(cfg.run_dir(), err)  # JSON for status/report: no pickle is read
            raise


@dataclass
class ClusterOptions:
    cluster: str = "auto"  # auto | slurm | local
    partition: str = ""
    account: str = ""
    qos: str = ""
    time: str = "24:00:00"
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0  # 0 = gpus_per_node (one rank per GPU), or 1 without GPUs
    cpus_per_task: int = 0
    mem: str = ""
    constraint: str = ""
    exclude: str = ""
    array_parallelism: int = 0
    name: str = "sslrun"
    signal_delay_s: int = 120
    max_requeues: int = 1000
    sbatch: list[str] = field(default_factory=list)  # extra sbatch options, key=value

    def check(self) -> None:
        """Every option's type and range, and no control character in any value that reaches the
        sbatch script (a newline there is a line of its own: a command). Called before planning."""
        for f in fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if f.name == "sbatch":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise UserError(f"{flag}: expected a list of option=value texts, got {value!r}")
                for item in value:
                    check_text(f"{flag} {item!r}", item)
            elif isinstance(f.default, int):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise UserError(f"{flag} {value!r}: expected an integer")
                low = 1 if f.name == "nodes" else 0
                if not low <= value <= 100_000:
                    raise UserError(f"{flag} {value}: expected an integer from {low} to 100000")
            else:
                if not isinstance(value, str):
                    raise UserError(f"{flag} {value!r}: expected a word")
                check_text(flag, value)
                if value.startswith("-"):
                    raise UserError(f"{flag} {value!r}: expected a value, not an option")
        if self.cluster not in ("auto", "slurm", "local"):
            raise UserError(f"--cluster {self.cluster}: expected auto, slurm or local")
        if self.name and not re.fullmatch(r"[A-Za-z0-9_.+=,\-]{1,100}", self.name):
            raise UserError(f"--name {self.name!r}: expected 1 to 100 letters, digits or _.+=,-")
        parse_minutes(self.time)
        for item in self.sbatch:
            key, sep, _ = item.partition("=")
            if not sep or not re.fullmatch(r"-{0,2}[A-Za-z][A-Za-z0-9_-]*", key):
                raise UserError(f"--sbatch {item!r}: expected option=value, e.g. --sbatch mail-type=END")

    def tasks(self) -> int:
        """Tasks (ranks) a node: --tasks-per-node, else one a GPU, else one."""
        return self.tasks_per_node or max(1, self.gpus_per_node)

    def sbatch_asks(self, *prefixes: str) -> bool:
        """Whether an --sbatch option starts with one of these prefixes (`gres`, `cpus-`) or is one
        of them where it is a single letter (`c`, sbatch's short --cpus-per-task)."""
        keys = [item.partition("=")[0].lstrip("-").replace("_", "-") for item in self.sbatch]
        return any(k == p if len(p) == 1 else k.startswith(p) for k in keys for p in prefixes)

    def resolved_cluster(self) -> str:
        if self.cluster == "auto":
            return "slurm" if shutil.which("sbatch") else "local"
        if self.cluster not in ("slurm", "local"):
            raise UserError(f"--cluster {self.cluster}: expected auto, slurm or local")
        if self.cluster == "slurm" and not shutil.which("sbatch"):
            raise UserError("--cluster slurm: sbatch is not on PATH")
        return self.cluster


def parse_minutes(text: str) -> int:
    """SLURM's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S -> whole minutes."""
    try:
        if "-" in text:
            days, rest = text.split("-", 1)
            h, m, s = ([int(p) for p in rest.split(":")] + [0, 0])[:3]
            seconds = ((int(days) * 24 + h) * 60 + m) * 60 + s
        else:
            parts = [int(p) for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError(text)
            seconds = {1: lambda: parts[0] * 60, 2: lambda: parts[0] * 60 + parts[1],
                       3: lambda: (parts[0] * 60 + parts[1]) * 60 + parts[2]}[len(parts)]()
    except ValueError:
        raise UserError(f"--time {text!r}: expected minutes, HH:MM:SS or D-HH:MM:SS") from None
    if seconds <= 0:
        raise UserError(f"--time {text!r}: expected a positive duration")
    return -(-seconds // 60)


# CPUs a task when sinfo cannot tell the nodes' (no sinfo, a controller that does not answer):
# enough loader workers to feed one GPU rank at these image sizes, and a request most nodes meet.
FALLBACK_CPUS_PER_TASK = 8


def parse_sinfo_cpus(text: str) -> int | None:
    """The smallest node's CPUs in `sinfo -h -o %c` output (one line per node group, e.g. `64` or
    `32+`), so the request fits every node of the partition; None when no line holds a count."""
    counts = [int(m.group(1)) for line in text.splitlines() if (m := re.match(r"\s*(\d+)", line))]
    return min(counts) if counts else None


def node_cpus(partition: str, timeout_s: float = 10.0) -> int | None:
    """CPUs of the smallest node of `partition` (of every partition when empty), or None."""
    exe = shutil.which("sinfo")
    if exe is None:
        return None
    cmd = [exe, "-h", "-o", "%c", *(["-p", partition] if partition else [])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_sinfo_cpus(proc.stdout) if proc.returncode == 0 else None


def default_cpus_per_task(opts: ClusterOptions, cpus_on_node: int | None) -> tuple[int, str]:
    """(cpus_per_task, why) for a job that does not say (issue 13, fault 8): without it SLURM gives
    a task one CPU and the loader has no worker. The node's CPUs shared by its tasks (one a GPU)."""
    tasks = opts.tasks()
    where = f"partition {opts.partition}" if opts.partition else "the cluster"
    if cpus_on_node:
        return max(1, cpus_on_node // tasks), f"{cpus_on_node} CPUs on the smallest node of {where} (sinfo) / {tasks} tasks a node"
    return FALLBACK_CPUS_PER_TASK, f"sinfo cannot tell the CPUs of {where}'s nodes"


def executor_parameters(opts: ClusterOptions) -> dict[str, Any]:
    opts.check()
    tasks = opts.tasks()
    params: dict[str, Any] = {
        "name": opts.name,
        "timeout_min": parse_minutes(opts.time),
        "nodes": opts.nodes,
        "tasks_per_node": tasks,
        "gpus_per_node": opts.gpus_per_node,
        "slurm_signal_delay_s": opts.signal_delay_s,
    }
    if opts.cpus_per_task:
        params["cpus_per_task"] = opts.cpus_per_task
    if opts.mem:
        params["slurm_mem"] = opts.mem
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if getattr(opts, key):
            params[f"slurm_{key}"] = getattr(opts, key)
    if opts.array_parallelism:
        params["slurm_array_parallelism"] = opts.array_parallelism
    # One rank that dies ends the whole step at once, instead of leaving its peers in a collective.
    params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    extra = {}
    for item in opts.sbatch:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--sbatch {item!r}: expected option=value, e.g. --sbatch mail-type=END")
        extra[key.lstrip("-").replace("-", "_")] = value
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def make_executor(folder: Path, opts: ClusterOptions) -> submitit.Executor:
    cluster = opts.resolved_cluster()
    # Every preemption or time limit counts against max_num_timeout: a week-long sweep needs many.
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster, slurm_max_num_timeout=opts.max_requeues)
    executor.update_parameters(**executor_parameters(opts))
    return executor


def sbatch_script(folder: Path, opts: ClusterOptions, runs: int) -> str:
    """The sbatch file for `runs` runs, shown by `--dry-run` before anything is sent.

    Rendered here from the same executor parameters that `make_executor` hands to submitit
    (its renderer is private API, which may change in any release), in submitit 1.5's layout:
    sorted `#SBATCH` lines, then the srun line that starts submitit's job runner.
    """
    params = executor_parameters(opts)
    array = runs > 1
    logs = folder / ("%A_%a" if array else "%j")
    stem = "%A_%a" if array else "%j"
    lines: dict[str, str] = {
        "job-name": params["name"],
        "nodes": str(params["nodes"]),
        "ntasks-per-node": str(params["tasks_per_node"]),
        "time": str(params["timeout_min"]),
        "signal": f"USR2@{params['slurm_signal_delay_s']}",
        "open-mode": "append",
        "wckey": "submitit",
        "output": str(logs / f"{stem}_0_log.out"),
        "error": str(logs / f"{stem}_0_log.err"),
    }
    lines["gpus-per-node"] = str(params["gpus_per_node"])
    if "cpus_per_task" in params:
        lines["cpus-per-task"] = str(params["cpus_per_task"])
    if "slurm_mem" in params:
        lines["mem"] = params["slurm_mem"]
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if f"slurm_{key}" in params:
            lines[key] = params[f"slurm_{key}"]
    if array:
        lines["array"] = f"0-{runs - 1}%{min(runs, params.get('slurm_array_parallelism', 256))}"
    for key, value in params.get("slurm_additional_parameters", {}).items():
        lines[key.replace("_", "-")] = str(value)
    srun = " ".join(["srun", "--unbuffered", "--output", shlex.quote(str(logs / f"{stem}_%t_log.out")), "--error",
                     shlex.quote(str(logs / f"{stem}_%t_log.err")), *params["slurm_srun_args"]])
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder / '%j'))}"
    body = "\n".join(f"#SBATCH --{k}={v}" for k, v in sorted(lines.items()))
    return f"#!/bin/bash\n\n# Parameters\n{body}\n\n# command\nexport SUBMITIT_EXECUTOR=slurm\n{srun} {command}\n"


jobs_file = run_folder.jobs_file


def submit(configs: list[Config], opts: ClusterOptions) -> list[tuple[Config, submitit.Job]]:
    """Send the runs that are not finished as one array; finished runs are left alone."""
    todo = [c for c in configs if run_state(c) != "done"]
    if not todo:
        return []
    folder = Path(todo[0].root) / todo[0].sweep / ".submitit"
    before = _submitit_files(folder)
    made, up = [], folder  # the folders this call creates, innermost first
    while not up.exists() and up != up.parent:
        made.append(up)
        up = up.parent
    jobs: list[submitit.Job] = []
    try:
        executor = make_executor(folder, opts)
        with executor.batch():
            for cfg in todo:
                jobs.append(executor.submit(TrainJob(), cfg.to_dict()))
    except submitit.core.utils.FailedJobError as err:
        _remove_new(folder, before, made)
        runs = f"{len(todo)} run" + ("s" if len(todo) > 1 else "")
        raise UserError(f"sbatch refused the {runs} of {folder.parent}: {sbatch_reason(str(err))}; "
                        f"nothing was submitted (check --partition, --account, --qos and --sbatch options and that "
                        f"`sinfo` answers, or run them here with --cluster local)") from None
    with open(jobs_file(folder.parent), "a") as f:
        for cfg, job in zip(todo, jobs):
            f.write(json.dumps({"run": cfg.name, "job_id": str(job.job_id), "cluster": opts.resolved_cluster(),
                                "submitted": round(time.time(), 1), "stdout": str(job.paths.stdout),
                                "stderr": str(job.paths.stderr)}) + "\n")
    return list(zip(todo, jobs))


def sbatch_reason(stderr: str) -> str:
    """sbatch's error lines as one line, without their `sbatch: error:` prefixes."""
    lines = [re.sub(r"^sbatch:\s*error:\s*", "", ln.strip()) for ln in stderr.splitlines() if ln.strip()]
    return one_line("; ".join(dict.fromkeys(lines)) or "no message", 400)


def _submitit_files(folder: Path) -> set[Path]:
    """What submitit writes in the sweep's `.submitit` folder before it calls sbatch."""
    return {*folder.glob("*.pkl"), *folder.glob(".submission_file_*.sh")} if folder.is_dir() else set()


def _remove_new(folder: Path, before: set[Path], made: list[Path]) -> None:
    """Remove what a failed submission left: submitit's new pickles and sbatch file in `folder`
    (only those: jobs of the sweep that still run write beside them), then the folders in `made`
    (created by this call), where empty."""
    for path in _submitit_files(folder) - before:
        path.unlink(missing_ok=True)
    for path in made:
        try:
            path.rmdir()
        except OSError:
            pass


def run_overrides(cfg: Config) -> list[str]:
    """`key=value` items that rebuild `cfg` with make_config: every key that differs from the default.

    Written by `--write-runs`, one run per line, for the plain sbatch template: `data`, `root`,
    `sweep` and `name` are included, so the line needs nothing else to find the same folder.
    """
    defaults = Config().to_dict()
    items = []
    for key, value in cfg.to_dict().items():
        if key == "extra":
            items += [f"extra.{k}={json.dumps(v)}" for k, v in value.items()]
        elif value != defaults[key]:
            items.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return items


def wait(jobs: list[tuple[Config, submitit.Job]], poll_s: float = 2.0, timeout_s: float | None = None,
         on_poll: Callable[[], None] | None = None) -> dict[str, str]:
    """Wait for every job to end; returns run name -> "ok" or the job's error, one line.
    `on_poll` (progress.Progress.update) runs at every poll."""
    start = time.time()
    outcome: dict[str, str] = {}
    pending = list(jobs)
    while pending:
        still = []
        for cfg, job in pending:
            if job.done():
                try:
                    job.results()  # every task's: result() refuses a job of several tasks (DDP)
                    outcome[cfg.name] = "ok"
                except Exception as err:  # noqa: BLE001 - the job's failure, reported per run
                    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
                    outcome[cfg.name] = lines[-1][:300] if lines else type(err).__name__
            else:
                still.append((cfg, job))
        pending = still
        if on_poll is not None:
            on_poll()
        if pending:
            if timeout_s is not None and time.time() - start > timeout_s:
                for cfg, job in pending:
                    outcome[cfg.name] = f"still running after {timeout_s:.0f} s (job {job.job_id})"
                break
            time.sleep(poll_s)
    return outcome
