"""DDP across two SLURM nodes, on the two-node test cluster (slurm/test-cluster/up.sh --nodes 2).

The nodes sslnode1 and sslnode2 are network + UTS namespaces of this machine, each with its own
address, hostname and slurmd (partition `multi`): ranks on them talk over a real bridge, as on
two hosts. Run the tests inside the controller's namespace, where SLURM answers:

    nsenter --net=/run/netns/sslctl .venv/bin/python -m pytest -q tests/test_slurm_multinode.py

Tiny runs (test_resnet, 32 px, one thread): the point is the rendezvous, the ranks' placement,
signals and failures across nodes, and bit-exact weights, not speed. Timings are printed (`-s`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_door
from slurm_support import MULTI_NODES, MULTI_PARTITION, slurm_cluster, slurm_two_nodes, wait_until  # noqa: F401
from test_slurm_train import _resumed_at, _result, _sacct, _squeue_state, _task_pid, _train_steps

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = ["model=test_resnet", "image_size=32", "batch_size=8", "mu=2", "threads=1", "workers=0",
        "log_every=5", "eval_every=50", "ckpt_every=5"]
STEPS = 60
RUN = [*TINY, f"steps={STEPS}"]
JOINED = re.compile(r"rank (\d+)/(\d+) on host (\S+) joined \((\w+)\) via (\S+):(\d+)")


@pytest.fixture(autouse=True)
def jobs_import_this_checkout(monkeypatch):
    """sbatch passes the environment on: jobs then import sslrun from this checkout, wherever it is."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")


def _cluster_args(nodes: int, tasks: int) -> list[str]:
    return ["--cluster", "slurm", "--partition", MULTI_PARTITION, "--nodes", str(nodes), "--tasks-per-node",
            str(tasks), "--cpus-per-task", "1", "--time", "10", "--name", "sslrun-test"]


def _joined(text: str) -> dict[int, tuple[str, str]]:
    """rank -> (host, rendezvous address:port), from the ranks' 'joined' log lines."""
    return {int(m.group(1)): (m.group(3), f"{m.group(5)}:{m.group(6)}") for m in JOINED.finditer(text)}


def _job_logs(sweep: Path, job_id: str) -> str:
    """Every task's stderr of a submitit job (one file per task: <id>_<task>_log.err)."""
    return "".join(p.read_text() for p in sorted((sweep / ".submitit" / job_id).glob(f"{job_id}_*_log.err")))


def _submit(args: list[str], wait: bool, timeout: float = 300) -> tuple[subprocess.CompletedProcess, str]:
    proc = run_door("jobs/submit.py", *args, "--wait" if wait else "--no-wait", timeout=timeout, check=True)
    ids = re.findall(r"job (\d+(?:_\d+)?)", proc.stdout)
    assert ids, proc.stdout
    return proc, ids[0]


@pytest.fixture(scope="module")
def two_by_one(slurm_two_nodes, digits, tmp_path_factory) -> dict:
    """One uninterrupted run of 2 nodes x 1 task: the reference the other tests compare with."""
    root = tmp_path_factory.mktemp("ref")
    t0 = time.monotonic()
    proc, job_id = _submit([*_cluster_args(2, 1), *RUN, f"data={digits}", f"root={root}", "sweep=s", "name=ref"], True)
    took = time.monotonic() - t0
    run_dir = root / "s" / "ref"
    return {"result": _result(run_dir), "job_id": job_id, "logs": _job_logs(root / "s", job_id), "took": took,
            "run_dir": run_dir}


# ------------------------------------------------------------------ tests
def test_two_nodes_one_rank_each_on_two_hosts(two_by_one):
    result, joined = two_by_one["result"], _joined(two_by_one["logs"])
    print(f"\nTIMING 2 nodes x 1 task, {STEPS} steps, submit to result: {two_by_one['took']:.1f} s")
    assert result["world_size"] == 2 and result["steps"] == STEPS and result["restarts"] == 0, result
    assert sorted(joined) == [0, 1], two_by_one["logs"][-3000:]
    hosts = {joined[r][0] for r in joined}
    assert hosts == set(MULTI_NODES), joined  # two ranks, two different hosts
    assert joined[0][1] == joined[1][1] and joined[0][1].startswith(f"{joined[0][0]}:"), joined  # rank 0's host
    assert _train_steps(two_by_one["run_dir"]) == list(range(5, STEPS + 1, 5))


def test_one_node_two_tasks_gives_the_same_weights(two_by_one, digits, tmp_path):
    """Same world size, same data order: ranks on one host or two make no difference to the weights."""
    _, job_id = _submit([*_cluster_args(1, 2), *RUN, f"data={digits}", f"root={tmp_path}", "sweep=s", "name=one"], True)
    result = _result(tmp_path / "s" / "one")
    joined = _joined(_job_logs(tmp_path / "s", job_id))
    assert result["world_size"] == 2 and len({h for h, _ in joined.values()}) == 1, joined
    assert result["weights_sha256"] == two_by_one["result"]["weights_sha256"]


def test_usr2_on_two_nodes_requeues_and_resumes_exactly(two_by_one, digits, tmp_path):
    run_dir = tmp_path / "s" / "usr2"
    t_submit = time.time()
    _, job_id = _submit([*_cluster_args(2, 1), *RUN, f"data={digits}", f"root={tmp_path}", "sweep=s", "name=usr2"],
                        False)
    wait_until(lambda: (run_dir / "metrics.jsonl").exists(), 120, "the first logged step")
    first_step = time.time()
    wait_until(lambda: (run_dir / "ckpt" / "last.pt").exists(), 120, "the first checkpoint")
    assert not (run_dir / "result.json").exists(), "the run ended before it could be interrupted"
    t_signal = time.time()
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    wait_until(lambda: (run_dir / "result.json").exists() and _squeue_state(job_id) == "", 300, "the resumed run")
    result = _result(run_dir)
    logs = _job_logs(tmp_path / "s", job_id)
    resumed = _resumed_at(logs)
    states = [s["State"] for s in _sacct(job_id)]
    print(f"\nTIMING 2 nodes: submit -> first logged step {first_step - t_submit:.1f} s; USR2 -> resumed "
          f"{resumed[0] - t_signal:.1f} s; states {states}" if resumed else "\nTIMING no resume line")
    assert resumed, logs[-3000:]
    assert "REQUEUED" in states, states
    assert result["restarts"] >= 1 and result["world_size"] == 2, result
    assert result["weights_sha256"] == two_by_one["result"]["weights_sha256"]
    assert _train_steps(run_dir) == list(range(5, STEPS + 1, 5))


def _slurmd_pid(node: str) -> int:
    return int(Path(f"/run/slurmd-{node}.pid").read_text().strip())


def test_rank_and_slurmd_of_node2_killed_job_ends_and_resubmission_resumes(two_by_one, digits, tmp_path):
    args = [*_cluster_args(2, 1), *RUN, f"data={digits}", f"root={tmp_path}", "sweep=s", "name=killed"]
    run_dir = tmp_path / "s" / "killed"
    _, job_id = _submit(args, False)
    wait_until(lambda: (run_dir / "ckpt" / "last.pt").exists(), 120, "the first checkpoint")
    assert not (run_dir / "result.json").exists(), "the run ended before it could be interrupted"
    pid = _task_pid(job_id, 1)
    assert pid is not None, "rank 1 of the job not found"
    t_kill = time.monotonic()
    try:
        os.kill(pid, signal.SIGKILL)
        os.kill(_slurmd_pid(MULTI_NODES[1]), signal.SIGKILL)
        waited = wait_until(lambda: _squeue_state(job_id) in ("", "COMPLETING"), 60,
                            "the job to end after rank 1 and node 2's slurmd were killed")
        left = [p for p in (_task_pid(job_id, 0), _task_pid(job_id, 1)) if p is not None]
        print(f"\nTIMING SIGKILL of rank 1 + slurmd of {MULTI_NODES[1]} -> job ended {waited:.1f} s "
              f"(squeue '{_squeue_state(job_id)}'), ranks left: {left}")
        wait_until(lambda: not [p for p in (_task_pid(job_id, 0),) if p is not None], 30, "rank 0 to exit")
        assert not (run_dir / "result.json").exists()
    finally:
        # Bring node 2 back (its slurmd restarted, the node resumed) for the tests that follow.
        up = subprocess.run(["bash", str(REPO / "slurm/test-cluster/up.sh"), "--nodes", "2"], capture_output=True,
                            text=True, timeout=180)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    wait_until(lambda: _squeue_state(job_id) == "", 120, "the killed job to leave the queue")
    t0 = time.monotonic()
    again = run_door("jobs/submit.py", *args, "--wait", timeout=300, check=True)
    assert "partial" in again.stdout or "failed" in again.stdout, again.stdout
    result = _result(run_dir)
    print(f"TIMING resubmitted 2-node run resumed and done in {time.monotonic() - t0:.1f} s")
    assert result["restarts"] >= 1 and result["world_size"] == 2, result
    assert result["weights_sha256"] == two_by_one["result"]["weights_sha256"]
    assert _train_steps(run_dir) == list(range(5, STEPS + 1, 5))


def test_sbatch_template_two_array_tasks_on_the_same_two_nodes(slurm_two_nodes, digits, tmp_path):
    """slurm/train-array.sbatch, 2 nodes a task: both tasks at once on sslnode1+2, each its own port."""
    runs = tmp_path / "runs.txt"
    run_door("jobs/submit.py", "--cluster", "slurm", "--write-runs", str(runs), "--array", "seeds=1,2", *TINY,
             "steps=20", f"data={digits}", f"root={tmp_path}", "sweep=tpl", check=True)
    env = {**os.environ, "SSLRUN_HOME": str(REPO), "SSLRUN_PYTHON": sys.executable}
    out = subprocess.run(["sbatch", "--parsable", "--array=0-1", f"--partition={MULTI_PARTITION}", "--nodes=2",
                          "--ntasks-per-node=1", "--cpus-per-task=1", "--job-name=sslrun-test",
                          f"--output={tmp_path}/slurm-%A_%a.out", str(REPO / "slurm/train-array.sbatch"), str(runs)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    array = out.stdout.strip().split(";")[0]
    wait_until(lambda: _squeue_state(array) == "", 300, "the array to end")
    dirs = sorted((tmp_path / "tpl").glob("*seed=*"))
    assert len(dirs) == 2 and all((d / "result.json").exists() for d in dirs), dirs
    ports, spans = set(), []
    for task in (0, 1):
        log = (tmp_path / f"slurm-{array}_{task}.out").read_text()
        m = re.search(r"rendezvous (\S+):(\d+) for 2 task\(s\) on 2 node\(s\)", log)
        assert m and m.group(1) == MULTI_NODES[0], log[-2000:]
        joined = _joined(log)
        assert {h for h, _ in joined.values()} == set(MULTI_NODES), log[-2000:]
        assert {a for _, a in joined.values()} == {f"{m.group(1)}:{m.group(2)}"}, joined
        ports.add(m.group(2))
        row = _sacct(f"{array}_{task}")[-1]
        assert row["State"] == "COMPLETED", row
        spans.append((row["Start"], row["End"]))
    assert len(ports) == 2, ports  # the two tasks never share a port
    assert spans[0][0] <= spans[1][1] and spans[1][0] <= spans[0][1], spans  # ... and ran at the same time
    print(f"\nsbatch template over 2 nodes: ports {sorted(ports)}, task spans {spans}")
    assert all(_result(d)["world_size"] == 2 for d in dirs)


def test_array_of_seeds_and_strategies_on_two_nodes(slurm_two_nodes, digits, tmp_path):
    args = [*_cluster_args(2, 1), "--array", "seeds=42,43", "--array", "strategy=fixmatch,supervised", *TINY,
            "steps=10", f"data={digits}", f"root={tmp_path}", "sweep=arr"]
    t0 = time.monotonic()
    proc, _ = _submit(args, True, timeout=400)
    print(f"\nTIMING 2-node array of 4 runs through jobs/submit.py --wait: {time.monotonic() - t0:.1f} s")
    runs = sorted(p for p in (tmp_path / "arr").iterdir() if p.is_dir() and not p.name.startswith("."))
    got = {(_result(r)["seed"], _result(r)["strategy"], _result(r)["world_size"]) for r in runs}
    assert got == {(s, k, 2) for s in (42, 43) for k in ("fixmatch", "supervised")}, got
    ids = re.findall(r"job (\d+_\d)", proc.stdout)
    assert len(ids) == 4 and len({i.split("_")[0] for i in ids}) == 1, proc.stdout  # one array
    for job_id in ids:
        joined = _joined(_job_logs(tmp_path / "arr", job_id))
        assert {h for h, _ in joined.values()} == set(MULTI_NODES), (job_id, joined)
