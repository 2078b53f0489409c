"""Helpers for tests that need the SLURM test cluster (slurm/test-cluster/up.sh [--nodes 2]).

Use in a test module::

    import pytest
    from slurm_support import slurm_cluster, wait_done  # noqa: F401  (fixture import)

    pytestmark = pytest.mark.slurm

    def test_something(slurm_cluster, tmp_path):
        ex = slurm_cluster.executor(tmp_path / "sub", timeout_min=5)
        job = ex.submit(pow, 2, 3)
        assert wait_done(job, timeout=60).result() == 8

The fixture skips the test when no cluster answers, except when the environment variable
CI is set: then a missing cluster is a failure, so CI can never pass by skipping.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import time
import typing as tp
from pathlib import Path

import pytest

UP_STATES = {"idle", "mix", "alloc"}
START_HINT = "start it with: bash slurm/test-cluster/up.sh (as root)"


def node_name() -> str:
    """This machine's SLURM node name (`hostname -s`)."""
    return socket.gethostname().split(".")[0]


# What `up.sh --nodes 2` makes: the controller's network namespace and the two namespaced nodes.
CTL_NETNS = Path("/run/netns/sslctl")
MODE_FILE = Path("/run/sslrun-test-cluster.nodes")
MULTI_NODES = ("sslnode1", "sslnode2")
MULTI_PARTITION = "multi"
IN_CTL_HINT = "run the tests inside its namespace: nsenter --net=/run/netns/sslctl <command>"


def two_node_mode() -> bool:
    """True when the cluster was brought up with `up.sh --nodes 2`."""
    try:
        return MODE_FILE.read_text().strip() == "2"
    except OSError:
        return False


def in_ctl_netns() -> bool:
    """True when this process is in the controller's network namespace (where SLURM answers)."""
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat(CTL_NETNS).st_ino
    except OSError:
        return False


def node_state(timeout: float = 5.0, node: tp.Optional[str] = None) -> tp.Optional[str]:
    """A node's compact state as `sinfo %t` prints it, or None when sinfo does not answer.

    With the two-node cluster up, SLURM's controller address exists only inside its namespace:
    from outside, sinfo is not even tried (its packets would go to the machine's real network).
    """
    if shutil.which("sinfo") is None or (two_node_mode() and not in_ctl_netns()):
        return None
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-n", node or node_name(), "-o", "%t"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = out.stdout.split()
    if out.returncode != 0 or not states:
        return None
    return states[0]


def slurm_available() -> bool:
    """True when sinfo answers and this machine's node is idle, mix or alloc."""
    return node_state() in UP_STATES


@dataclasses.dataclass
class SlurmCluster:
    node: str
    partitions: tp.List[str]

    def executor(self, folder: tp.Union[str, Path], max_num_timeout: int = 100, **params: tp.Any):
        """A submitit executor on this cluster with test-friendly defaults.

        Defaults: partition `debug`, 1 CPU, timeout_min=10, and slurm_max_num_timeout=100
        (submitit counts every interruption of a job with a time limit under ~50 min as a
        timeout; its default of 3 would end requeue tests early). `params` go to
        `update_parameters` as submitit.AutoExecutor takes them (`slurm_partition=...`).
        """
        import submitit

        ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm",
                                   slurm_max_num_timeout=max_num_timeout)
        defaults = {"slurm_partition": "debug", "cpus_per_task": 1, "timeout_min": 10}
        defaults.update(params)
        ex.update_parameters(**defaults)
        return ex


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The running one-node test cluster; skips without one, fails without one under CI."""
    state = node_state()
    if state not in UP_STATES:
        why = "sinfo does not answer" if state is None else f"node {node_name()} is {state!r}"
        hint = IN_CTL_HINT if two_node_mode() and not in_ctl_netns() else START_HINT
        _missing(f"no usable SLURM test cluster ({why}); {hint}")
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True)
    partitions = [p.rstrip("*") for p in out.stdout.split()]
    return SlurmCluster(node=node_name(), partitions=partitions)


def _missing(msg: str) -> tp.NoReturn:
    """Skip, or fail under CI: CI can never pass by skipping."""
    if os.environ.get("CI"):
        pytest.fail(f"{msg}. CI is set, so this is a failure, not a skip.", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def slurm_two_nodes(slurm_cluster: SlurmCluster) -> SlurmCluster:
    """The two-node test cluster (`up.sh --nodes 2`): partition `multi` over sslnode1 and sslnode2."""
    states = {n: node_state(node=n) for n in MULTI_NODES}
    down = {n: st for n, st in states.items() if st not in UP_STATES}
    if down or MULTI_PARTITION not in slurm_cluster.partitions:
        _missing(f"no two-node SLURM test cluster (nodes {down or states}, partitions {slurm_cluster.partitions}); "
                 "start it with: bash slurm/test-cluster/up.sh --nodes 2 (as root)")
    return slurm_cluster


def wait_until(predicate: tp.Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> float:
    """Poll `predicate` until true; return the seconds it took, or pytest.fail after `timeout`."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)
        time.sleep(poll)
    return time.monotonic() - t0


def wait_done(job, timeout: float, poll: float = 0.1):
    """Wait for a submitit job with a time limit (submitit's own wait has none).

    On timeout the job is cancelled and the test fails with its SLURM state and log tail.
    Returns the job, so `wait_done(job, 60).result()` reads naturally.
    """
    t0 = time.monotonic()
    while not job.done():
        if time.monotonic() - t0 > timeout:
            state = job.watcher.get_state(job.job_id, mode="force")
            err = job.stderr() or ""
            job.cancel(check=False)
            pytest.fail(
                f"job {job.job_id} not done after {timeout:.0f} s (state {state}); "
                f"stderr tail:\n{err[-2000:]}",
                pytrace=False,
            )
        time.sleep(poll)
    return job
