"""The one-node SLURM test cluster does what sslrun needs from SLURM, driven by submitit.

Needs `bash slurm/test-cluster/up.sh`; skipped without a cluster, failed without one under CI.
Timings (submit to result) are printed; run with `-s` to see them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

from slurm_support import slurm_cluster, wait_done, wait_until  # noqa: F401  (fixture)

pytestmark = pytest.mark.slurm

# The jobs below unpickle this module's functions in a fresh interpreter whose sys.path does
# not hold tests/: pickle them by value instead of by module name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ------------------------------------------------------------------ job functions
def add(a, b):
    return a + b


def square_with_env(x):
    return x * x, os.environ.get("SLURM_ARRAY_TASK_ID")


def rank_info():
    env = submitit.JobEnvironment()
    return {"global_rank": env.global_rank, "local_rank": env.local_rank,
            "num_tasks": env.num_tasks, "job_id": env.job_id}


class Resumable(submitit.helpers.Checkpointable):
    """Counts ticks until interrupted; after the requeue it reports where it resumed from.

    `checkpoint()` (inherited) pickles `self`, so the resumed job starts with the ticks the
    first run had counted when the USR2 signal arrived.
    """

    def __init__(self) -> None:
        self.ticks = 0
        self.resumed_from = None

    def __call__(self, marker: str, max_wait_s: float = 120.0):
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if restarts == 0:
            Path(marker).write_text(str(time.time()))
            deadline = time.time() + max_wait_s
            while time.time() < deadline:
                self.ticks += 1
                time.sleep(0.05)
            raise RuntimeError(f"not interrupted within {max_wait_s} s")
        if self.resumed_from is None:
            self.resumed_from = self.ticks
        return {"restarts": restarts, "resumed_from": self.resumed_from,
                "partition": os.environ.get("SLURM_JOB_PARTITION"), "end": time.time()}


def stamp(seconds):
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "partition": os.environ.get("SLURM_JOB_PARTITION")}


# ------------------------------------------------------------------ helpers
def sacct_states(job_id: str) -> list:
    """Every state SLURM recorded for the job, requeued runs included (sacct -D)."""
    out = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "State"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def node_cpus(node: str) -> int:
    out = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%c"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


# ------------------------------------------------------------------ tests
def test_function_job(slurm_cluster, tmp_path):
    ex = slurm_cluster.executor(tmp_path / "sub")
    t0 = time.monotonic()
    job = ex.submit(add, 2, 3)
    assert wait_done(job, timeout=60).result() == 5
    print(f"\nTIMING function job submit-to-result {time.monotonic() - t0:.2f} s")
    # Accounting is real: sacct knows the job, so submitit's state is not UNKNOWN.
    wait_until(lambda: job.watcher.get_state(job.job_id, mode="force") == "COMPLETED",
               timeout=15, what="sacct to report COMPLETED")


def test_map_array(slurm_cluster, tmp_path):
    ex = slurm_cluster.executor(tmp_path / "sub", slurm_array_parallelism=3)
    t0 = time.monotonic()
    jobs = ex.map_array(square_with_env, [1, 2, 3])
    for job in jobs:
        wait_done(job, timeout=60)
    print(f"\nTIMING map_array of 3 submit-to-all-results {time.monotonic() - t0:.2f} s")
    results = [job.result() for job in jobs]
    assert [r[0] for r in results] == [1, 4, 9]
    assert [r[1] for r in results] == ["0", "1", "2"]
    array_id = jobs[0].job_id.split("_")[0]
    assert [job.job_id for job in jobs] == [f"{array_id}_{i}" for i in range(3)]


def test_two_tasks_get_ranks_0_and_1(slurm_cluster, tmp_path):
    ex = slurm_cluster.executor(tmp_path / "sub", tasks_per_node=2)
    t0 = time.monotonic()
    job = ex.submit(rank_info)
    results = wait_done(job, timeout=60).results()
    print(f"\nTIMING tasks_per_node=2 submit-to-result {time.monotonic() - t0:.2f} s")
    assert sorted(r["global_rank"] for r in results) == [0, 1]
    assert sorted(r["local_rank"] for r in results) == [0, 1]
    assert {r["num_tasks"] for r in results} == {2}


def test_checkpointable_requeued_by_usr2(slurm_cluster, tmp_path):
    ex = slurm_cluster.executor(tmp_path / "sub")
    marker = tmp_path / "running"
    t0 = time.monotonic()
    job = ex.submit(Resumable(), str(marker))
    wait_until(marker.exists, timeout=60, what="the job to start")
    time.sleep(0.5)  # let it count some ticks
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    result = wait_done(job, timeout=60).result()
    print(f"\nTIMING USR2 checkpoint+requeue submit-to-result {time.monotonic() - t0:.2f} s")
    assert result["restarts"] == 1, result  # SLURM_RESTART_COUNT in the resumed job
    assert result["resumed_from"] > 0, result  # state saved by checkpoint() came back
    assert "REQUEUED" in sacct_states(job.job_id)


def test_high_partition_preempts_low(slurm_cluster, tmp_path):
    cpus = node_cpus(slurm_cluster.node)
    marker = tmp_path / "running"
    low = slurm_cluster.executor(tmp_path / "low", slurm_partition="low", cpus_per_task=cpus)
    t0 = time.monotonic()
    low_job = low.submit(Resumable(), str(marker))
    wait_until(marker.exists, timeout=60, what="the low-partition job to start")
    time.sleep(0.5)
    # The low job holds every CPU of the node: the high job fits only by preempting it.
    high = slurm_cluster.executor(tmp_path / "high", slurm_partition="high")
    t_high = time.time()
    high_job = high.submit(stamp, 1.0)
    high_result = wait_done(high_job, timeout=60).result()
    low_result = wait_done(low_job, timeout=90).result()
    print(f"\nTIMING preemption: high job started {high_result['start'] - t_high:.2f} s after "
          f"submit; low job resumed and done {time.monotonic() - t0:.2f} s after its submit")
    assert high_result["partition"] == "high"
    # It did not wait for the low job (up to 120 s) nor its GraceTime (30 s): it preempted it.
    assert high_result["start"] - t_high < 20, high_result
    assert low_result["partition"] == "low"
    assert low_result["restarts"] == 1, low_result
    assert low_result["resumed_from"] > 0, low_result  # checkpointed on the preemption signal
    assert low_result["end"] > high_result["start"]
    states = sacct_states(low_job.job_id)
    assert "PREEMPTED" in states or "REQUEUED" in states, states
