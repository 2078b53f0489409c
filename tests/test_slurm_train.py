"""sslrun's training jobs on the real one-node SLURM test cluster (slurm/test-cluster/up.sh).

Every way a job is stopped on a cluster (USR2 from scancel, the time limit, preemption by a
higher partition, `scontrol requeue`, a rank killed) is applied to a real training run; each
run must come back by itself (or on resubmission) and end with the same weights, bit for bit,
as a run nobody touched. Timings of signal -> requeued -> resumed are printed (`-s`).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import signal
import sys
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO, run_door
from slurm_support import slurm_cluster, wait_until  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# A real small workload: the digits data, a tiny ResNet, one thread; 150 steps last long enough
# (tens of seconds on 2 shared cores) for a signal to land mid-run, even SLURM's coarse time limit.
TINY = ["model=test_resnet", "image_size=32", "batch_size=8", "mu=2", "threads=1", "workers=0",
        "log_every=5", "eval_every=50", "ckpt_every=5"]
LONG = [*TINY, "steps=150"]
# The time-limited run must outlast the first limit signal (up to ~45 s after its start, see
# below) even on a quiet machine, where LONG takes ~40 s: it runs 4x longer, with its own reference.
LIMITED = [*TINY, "steps=600"]


@pytest.fixture(autouse=True)
def jobs_import_this_checkout(monkeypatch):
    """sbatch passes the environment on: jobs then import sslrun from this checkout, wherever it is."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def _train_steps(run_dir: Path) -> list[int]:
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [ln["step"] for ln in lines if ln["kind"] == "train"]


def _squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


_ACTIVE = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED")


def _sacct(job_id: str, settle_s: float = 30) -> list[dict[str, str]]:
    """One dict per start of the job (sacct -D keeps the requeued ones): State, Start, End.

    Called once a job has left squeue; slurmdbd records its end a moment later (seen: a job
    gone from the queue still RUNNING in sacct). So wait up to `settle_s` for the last start
    to show a final state, and return what sacct has then (the caller's assertion says more).
    """
    deadline = time.monotonic() + settle_s
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "State,Start,End"],
                             capture_output=True, text=True, check=True)
        rows = [ln.split("|") for ln in out.stdout.splitlines() if ln.strip()]
        found = [{"State": r[0].split()[0], "Start": r[1], "End": r[2]} for r in rows]
        if (found and found[-1]["State"] not in _ACTIVE) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _resumed_at(log: str) -> list[float]:
    """Wall-clock times of the engine's 'resumed ... at step' lines in a job's log."""
    times = []
    for m in re.finditer(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO sslrun.engine: resumed ", log, re.M):
        stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
        times.append(stamp + int(m.group(2)) / 1000)
    return times


def _caught_at(log: str) -> float | None:
    """When submitit's handler saw the first USR2 (its log line), for signals SLURM sends itself."""
    m = re.search(r"submitit WARNING \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\) - Caught signal SIGUSR2", log)
    if m is None:
        return None
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000


def _timeline(name: str, job, t_signal: float | None) -> str:
    """signal -> requeued (end of the first start, from sacct) -> resumed (engine log), in seconds."""
    starts = _sacct(job.job_id)
    first_end = datetime.datetime.strptime(starts[0]["End"], "%Y-%m-%dT%H:%M:%S").timestamp()
    log = Path(job.paths.stderr).read_text()
    resumed = _resumed_at(log)
    t0 = t_signal if t_signal is not None else (_caught_at(log) or first_end)
    return (f"TIMING {name}: job {job.job_id} states {[s['State'] for s in starts]}; signal -> requeued "
            f"{first_end - t0:+.0f} s (sacct, whole seconds) -> resumed {resumed[0] - t0:+.1f} s after the signal"
            if resumed else f"TIMING {name}: no resume line")


def _wait_jobs(jobs: list, timeout: float) -> None:
    from sslrun import launch

    outcome = launch.wait(jobs, poll_s=1.0, timeout_s=timeout)
    bad = {k: v for k, v in outcome.items() if v != "ok"}
    if bad:
        for cfg, job in jobs:
            if cfg.name in bad:
                job.cancel(check=False)
        pytest.fail(f"jobs did not finish: {bad}", pytrace=False)


def _submit(digits: Path, root: Path, names: list[str], extra: list[str], **opts):
    from sslrun import launch

    configs = launch.plan_runs([f"name={','.join(names)}"], [*extra, f"data={digits}", f"root={root}", "sweep=s"])
    options = {"cluster": "slurm", "partition": "debug", "time": "10", "cpus_per_task": 1, "name": "sslrun-test", **opts}
    cluster = launch.ClusterOptions(**options)
    return launch.submit(configs, cluster)


def _wait_ckpt(run_dir: Path, job, timeout: float = 90) -> None:
    wait_until(lambda: (run_dir / "ckpt" / "last.pt").exists() or job.done(), timeout=timeout,
               what=f"a checkpoint in {run_dir}", poll=0.1)
    assert not (run_dir / "result.json").exists(), f"{run_dir} finished before it could be interrupted"


def _check_exact(run_dir: Path, reference: dict, steps: int, min_restarts: int = 1) -> dict:
    result = _result(run_dir)
    assert result["restarts"] >= min_restarts, (run_dir, result)
    assert result["weights_sha256"] == reference["weights_sha256"], f"{run_dir.name} differs from the reference"
    logged = _train_steps(run_dir)
    assert logged == list(range(5, steps + 1, 5)), f"{run_dir.name}: every step logged once, got {logged}"
    return result


# ------------------------------------------------------------------ tests
def test_array_of_seeds_and_strategies_then_status_and_resubmit(slurm_cluster, digits, tmp_path):
    args = ["--cluster", "slurm", "--partition", "debug", "--cpus-per-task", "1", "--time", "10", "--name", "sslrun-test",
            "--array", "seeds=42,43,44", "--array", "strategy=fixmatch,supervised",
            *TINY, "steps=10", f"data={digits}", f"root={tmp_path}", "sweep=arr"]
    t0 = time.monotonic()
    proc = run_door("jobs/submit.py", *args, "--wait", timeout=240, check=True)
    print(f"\nTIMING array of 6 runs through jobs/submit.py --wait: {time.monotonic() - t0:.1f} s")
    sweep = tmp_path / "arr"
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 6
    got = {(_result(r)["seed"], _result(r)["strategy"]) for r in runs}
    assert got == {(s, k) for s in (42, 43, 44) for k in ("fixmatch", "supervised")}
    assert all(_result(r)["steps"] == 10 for r in runs)
    ids = re.findall(r"job (\d+_\d)", proc.stdout)
    assert len(ids) == 6 and len({i.split("_")[0] for i in ids}) == 1, proc.stdout  # one array
    assert f"tensorboard --logdir {sweep}" in proc.stdout

    status = run_door("jobs/status.py", str(sweep), "--json", check=True)
    rows = [json.loads(ln) for ln in status.stdout.splitlines()]
    assert len(rows) == 6 and {r["job_id"] for r in rows} == set(ids)
    for row in rows:
        assert row["state"] == "done" and row["step"] == 10 and row["restarts"] == 0, row
        assert row["val_acc"] is not None and row["best_val_acc"] is not None and Path(row["log"]).exists(), row
    table = run_door("jobs/status.py", str(sweep), check=True).stdout
    assert table.count("| done |") == 6

    again = run_door("jobs/submit.py", *args, "--no-wait", check=True)
    assert "nothing submitted" in again.stdout and again.stdout.count("| done |") == 6


def test_usr2_time_limit_preemption_and_requeue_resume_exactly(slurm_cluster, digits, tmp_path):
    """Four copies of one run side by side, each stopped in its own way, and a reference nobody stops.

    CPUs are laid out so that preemption is real: 3 debug jobs of 1 CPU and the `low` job on the
    rest of the node, so the `high` job of 2 CPUs fits only by preempting it.
    """
    from slurm_support import node_name

    # Idle CPUs before our jobs, not all of them: other jobs on a shared test cluster keep theirs.
    idle = int(subprocess.run(["sinfo", "-h", "-n", node_name(), "-o", "%C"], capture_output=True, text=True,
                              check=True).stdout.split("/")[1])
    low_cpus = max(1, idle - 3)
    sweep = tmp_path / "s"
    ref_proc = subprocess.Popen([sys.executable, str(REPO / "jobs/train.py"), *LONG, f"data={digits}",
                                 f"root={tmp_path / 'fg'}", "sweep=s", "name=reference"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ref_limited = subprocess.Popen([sys.executable, str(REPO / "jobs/train.py"), *LIMITED, f"data={digits}",
                                    f"root={tmp_path / 'fg'}", "sweep=s", "name=reference-limited"], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    jobs = _submit(digits, tmp_path, ["usr2", "requeue"], LONG)
    # SLURM's time limit: 1 minute. slurmctld checks limits every ~30 s and signals early by that
    # much: with 15 s the USR2 comes 15 to 45 s after each start, after the restart's start-up.
    jobs += _submit(digits, tmp_path, ["timelimit"], LIMITED, time="1", signal_delay_s=15)
    jobs += _submit(digits, tmp_path, ["preempted"], LONG, partition="low", cpus_per_task=low_cpus)
    by_name = {cfg.name: job for cfg, job in jobs}
    t_signal: dict[str, float | None] = {"timelimit": None}
    for name in ("usr2", "requeue", "preempted"):
        _wait_ckpt(sweep / name, by_name[name])

    # The node is full (one CPU may be free while the time-limited job waits to restart): the
    # high job, 2 CPUs, starts only by preempting the low one.
    high = slurm_cluster.executor(tmp_path / "high", slurm_partition="high", cpus_per_task=2,
                                  slurm_job_name="sslrun-test")
    t_signal["preempted"] = time.time()
    high_job = high.submit(time.sleep, 1.0)
    # Signal the others only once the high job runs: CPUs they free must not let it in unpreempting.
    wait_until(lambda: _squeue_state(high_job.job_id) in ("RUNNING", "COMPLETING", ""), 60, "the high job to start")
    t_signal["usr2"] = time.time()
    subprocess.run(["scancel", "--signal=USR2", by_name["usr2"].job_id], check=True)
    t_signal["requeue"] = time.time()
    subprocess.run(["scontrol", "requeue", by_name["requeue"].job_id], check=True)

    _wait_jobs(jobs, timeout=240)
    for proc in (ref_proc, ref_limited):
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
    print(f"\nTIMING reference + USR2 + requeue + time limit + preemption, submit to all done: "
          f"{time.monotonic() - t0:.1f} s")
    reference = _result(tmp_path / "fg" / "s" / "reference")
    assert reference["restarts"] == 0 and reference["steps"] == 150
    references = {"timelimit": (_result(tmp_path / "fg" / "s" / "reference-limited"), 600)}
    for name, job in by_name.items():
        ref, steps = references.get(name, (reference, 150))
        result = _check_exact(sweep / name, ref, steps)
        print(f"{_timeline(name, job, t_signal[name])}; restarts {result['restarts']}; "
              f"weights_sha256 {result['weights_sha256'][:16]} == reference")
    for name in ("usr2", "requeue", "preempted"):
        states = [s["State"] for s in _sacct(by_name[name].job_id)]
        assert "REQUEUED" in states or "PREEMPTED" in states, (name, states)
    high_start = datetime.datetime.strptime(_sacct(high_job.job_id)[0]["Start"], "%Y-%m-%dT%H:%M:%S").timestamp()
    print(f"TIMING the high job started {high_start - t_signal['preempted']:+.0f} s after its submit (sacct)")
    assert high_start - t_signal["preempted"] < 20, "the high job preempted the low one rather than waiting"
    timelimit_log = Path(by_name["timelimit"].paths.stderr).read_text()
    assert "Caught signal SIGUSR2" in timelimit_log and "timed-out" in timelimit_log
    # scontrol requeue sends SIGTERM, no USR2: no checkpoint() call, the run resumed from its own save.
    assert "Caught signal SIGUSR2" not in Path(by_name["requeue"].paths.stderr).read_text()


def _task_pid(job_id: str, procid: int) -> int | None:
    """The pid of task `procid` of a submitit job on this node (read from /proc, as root)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            if b"submitit.core._submit" not in cmd:
                continue
            env = dict(kv.split("=", 1) for kv in (proc / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in kv)
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job_id and env.get("SLURM_PROCID") == str(procid):
            return int(proc.name)
    return None


def test_two_rank_job_killed_rank_fails_fast_and_resubmission_resumes(slurm_cluster, digits, tmp_path):
    args = ["--cluster", "slurm", "--partition", "debug", "--cpus-per-task", "1", "--tasks-per-node", "2",
            "--time", "10", "--name", "sslrun-test", *TINY, "steps=30", f"data={digits}", f"root={tmp_path}",
            "sweep=ddp", "name=two"]
    proc = run_door("jobs/submit.py", *args, "--no-wait", check=True)
    job_id = re.search(r"job (\d+)", proc.stdout).group(1)
    run_dir = tmp_path / "ddp" / "two"
    wait_until(lambda: (run_dir / "ckpt" / "last.pt").exists(), timeout=90, what="the first checkpoint")
    pid = _task_pid(job_id, 1)
    assert pid is not None, "rank 1 of the job not found"
    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    waited = wait_until(lambda: _squeue_state(job_id) == "", timeout=60, what="the job to end after a rank died")
    final = _sacct(job_id)[-1]["State"]  # waits for sacct's final state
    print(f"\nTIMING SIGKILL of rank 1 -> job {job_id} gone from squeue {waited:.1f} s ({final}, "
          f"{time.monotonic() - t_kill:.1f} s incl. sacct)")
    assert final in ("FAILED", "CANCELLED", "NODE_FAIL"), final
    assert not (run_dir / "result.json").exists()

    t0 = time.monotonic()
    again = run_door("jobs/submit.py", *args, "--wait", timeout=240, check=True)
    assert "partial" in again.stdout or "failed" in again.stdout
    result = _result(run_dir)
    print(f"TIMING resubmitted 2-rank run resumed and done in {time.monotonic() - t0:.1f} s; restarts "
          f"{result['restarts']}")
    assert result["world_size"] == 2 and result["steps"] == 30 and result["restarts"] == 1
    assert _train_steps(run_dir) == list(range(5, 31, 5))
    # Only rank 0 writes: every file in the run folder is one rank 0 is meant to write, tb events once.
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    events = [f for f in files if f.startswith("tb/")]
    # Rank 0 opens one events file per start, and one more for the hparams at the end.
    assert len(events) == result["restarts"] + 2, events
    # failure.json: the first job's error, written by the job itself for status and report (no pickle read)
    assert set(files) - set(events) - {"failure.json"} == {"config.yaml", "metrics.jsonl", "result.json", "ckpt/last.pt",
                                                          "ckpt/prev.pt", "ckpt/best.pt", "restarts.jsonl"}, files


def test_dry_run_and_bad_input_submit_nothing(slurm_cluster, digits, tmp_path):
    name = f"sslrun-dry-{uuid.uuid4().hex[:8]}"
    common = ["--cluster", "slurm", "--name", name, *TINY, "steps=10", f"data={digits}", f"root={tmp_path}"]
    dry = run_door("jobs/submit.py", *common, "--array", "seeds=1,2", "--dry-run", "--nodes", "2",
                   "--gpus-per-node", "4", check=True)
    assert "#SBATCH --nodes=2" in dry.stdout and "#SBATCH --ntasks-per-node=4" in dry.stdout
    assert "#SBATCH --array=0-1%2" in dry.stdout and "dry run: nothing submitted" in dry.stdout
    bad = run_door("jobs/submit.py", *common, "strategy=nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "strategy=nope" in bad.stderr
    bad_time = run_door("jobs/submit.py", *common, "--time", "soon")
    assert bad_time.returncode == 2 and "--time 'soon'" in bad_time.stderr
    # sbatch itself refuses (a partition this cluster lacks): one line with sbatch's reason, exit 2,
    # submitit's pickles and sbatch file removed, and what the sweep folder held before left alone
    earlier = tmp_path / "old" / ".submitit" / "earlier.pkl"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"a job of this sweep sent before")
    for sweep in ("old", "new"):
        refused = run_door("jobs/submit.py", *common, f"sweep={sweep}", "--partition", "nosuchpart", "--array", "seeds=1,2")
        last = refused.stderr.strip().splitlines()[-1]
        assert refused.returncode == 2 and "internal" not in refused.stderr, refused.stderr
        assert last.startswith(f"error: sbatch refused the 2 runs of {tmp_path / sweep}: ") and "nosuchpart" in last, last
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["old", "old/.submitit", "old/.submitit/earlier.pkl"]
    queued = subprocess.run(["squeue", "-h", "-n", name], capture_output=True, text=True, check=True).stdout
    known = subprocess.run(["sacct", "-n", "-X", "--name", name, "-S", "now-1hour"], capture_output=True, text=True,
                           check=True).stdout
    assert queued.strip() == "" and known.strip() == ""
    assert not (tmp_path / "s").exists() and not (tmp_path / "new").exists()
    missing = run_door("jobs/status.py", str(tmp_path / "nosuch"))
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: sweep folder {tmp_path / 'nosuch'} does not exist"]


def test_plain_sbatch_template_array_with_usr2(slurm_cluster, digits, tmp_path):
    """slurm/train-array.sbatch without submitit: 2 runs; the first gets USR2, requeues itself, resumes."""
    runs = tmp_path / "runs.txt"
    run_door("jobs/submit.py", "--cluster", "slurm", "--write-runs", str(runs), "--array", "seeds=1,2", *TINY,
             "steps=30", f"data={digits}", f"root={tmp_path}", "sweep=tpl", check=True)
    assert len(runs.read_text().splitlines()) == 2
    env = {**os.environ, "SSLRUN_HOME": str(REPO), "SSLRUN_PYTHON": sys.executable}
    out = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", "--partition=debug",
                          "--job-name=sslrun-test", f"--output={tmp_path}/slurm-%A_%a.out",
                          str(REPO / "slurm/train-array.sbatch"), str(runs)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    array = out.stdout.strip().split(";")[0]
    wait_until(lambda: any((d / "ckpt" / "last.pt").exists() for d in (tmp_path / "tpl").glob("*seed=1")), 90,
               "the first run's first checkpoint")
    first = next((tmp_path / "tpl").glob("*seed=1"))
    t_signal = time.time()
    subprocess.run(["scancel", "--batch", "--signal=USR2", f"{array}_0"], check=True)
    wait_until(lambda: _squeue_state(array) == "", 180, "the array to end")
    dirs = sorted((tmp_path / "tpl").glob("*seed=*"))
    assert len(dirs) == 2 and all((d / "result.json").exists() for d in dirs), dirs
    log0 = (tmp_path / f"slurm-{array}_0.out").read_text()
    assert "USR2: saving, then requeueing" in log0, log0[-2000:]
    resumed = _result(first)
    assert resumed["restarts"] >= 1 and _train_steps(first) == list(range(5, 31, 5))
    states = [s["State"] for s in _sacct(f"{array}_0")]
    assert "REQUEUED" in states, states
    # Bit-exact against the same run trained in the foreground here.
    line = runs.read_text().splitlines()[0].replace(f"root={tmp_path}", f"root={tmp_path / 'fg'}")
    run_door("jobs/train.py", *shlex.split(line), timeout=240, check=True)
    straight = _result(tmp_path / "fg" / "tpl" / first.name)
    assert resumed["weights_sha256"] == straight["weights_sha256"]
    print(f"\nTIMING sbatch template: USR2 -> resumed "
          f"{_resumed_at(log0)[0] - t_signal:.1f} s; restarts {resumed['restarts']}; weights equal the foreground run")
