"""Ranks and rendezvous of a 2-node x 4-GPU SLURM allocation, as sslrun and submitit derive them.

The variables are those SLURM sets for task 5 of `--nodes 2 --ntasks-per-node 4` on
gpu[003-004]: global rank 5 is the second task (local rank 1) of the second node (node 1).
"""

from __future__ import annotations

import pytest

from sslrun.distributed import first_host, from_environment

TASK_5_OF_8 = {
    "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[003-004]", "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1", "SLURM_GPUS_PER_NODE": "4",
}


def test_sslrun_reads_rank_world_and_master_from_slurm():
    info = from_environment(TASK_5_OF_8)
    assert (info.rank, info.world, info.local_rank, info.master_addr) == (5, 8, 1, "gpu003")
    assert not info.is_main
    # Every task of the job computes the same port from the job id.
    assert from_environment({**TASK_5_OF_8, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}).master_port == info.master_port


def test_torchrun_variables_win_over_slurm():
    env = {**TASK_5_OF_8, "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "MASTER_ADDR": "gpu003", "MASTER_PORT": "29400"}
    info = from_environment(env)
    assert (info.rank, info.world, info.local_rank, info.master_addr, info.master_port) == (3, 8, 3, "gpu003", 29400)


@pytest.mark.parametrize("nodelist, first", [
    ("gpu[003-004]", "gpu003"), ("gpu[003-004,007],cpu1", "gpu003"), ("node7", "node7"), ("a1,a2", "a1"),
])
def test_first_host(nodelist, first):
    assert first_host(nodelist) == first


def test_submitit_exports_the_same_ranks(monkeypatch):
    """What TrainJob exports through submitit's TorchDistributedEnvironment inside such a task."""
    import os

    import submitit

    # export() writes RANK, MASTER_ADDR, ... into os.environ itself: give it a copy to write into,
    # which monkeypatch swaps back afterwards, so no later test inherits rank 5 of 8.
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in keys})
    for key, value in {**TASK_5_OF_8, "SUBMITIT_EXECUTOR": "slurm"}.items():
        monkeypatch.setenv(key, value)
    dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    assert (dist_env.rank, dist_env.world_size, dist_env.local_rank, dist_env.local_world_size) == (5, 8, 1, 4)
    assert dist_env.master_addr == "gpu003"
    info = from_environment(dict(os.environ))
    assert (info.rank, info.world, info.local_rank, info.master_addr, info.master_port) == (
        5, 8, 1, "gpu003", dist_env.master_port)


def test_dry_run_shows_two_nodes_of_four_gpus(tmp_path):
    from conftest import run_door

    proc = run_door("jobs/submit.py", "--dry-run", "--cluster", "local", "--nodes", "2", "--gpus-per-node", "4",
                    "--partition", "gpu", f"root={tmp_path}", check=True)
    out = proc.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --signal=USR2@120", "--kill-on-bad-exit=1"):
        assert line in out, out
    assert "dry run: nothing submitted" in out


def test_two_array_tasks_on_the_same_nodes_get_different_ports():
    """Array tasks share SLURM_ARRAY_JOB_ID but each has its own SLURM_JOB_ID; "12"+"3" == "1"+"23" once collided."""
    a = from_environment({**TASK_5_OF_8, "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "13"})
    b = from_environment({**TASK_5_OF_8, "SLURM_ARRAY_JOB_ID": "1", "SLURM_ARRAY_TASK_ID": "23", "SLURM_JOB_ID": "24"})
    assert a.master_port != b.master_port


def test_batch_script_rendezvous_wins():
    """slurm/train-array.sbatch exports the address and port it took from the allocation."""
    info = from_environment({**TASK_5_OF_8, "MASTER_ADDR": "gpu004", "MASTER_PORT": "31234"})
    assert (info.master_addr, info.master_port, info.rank, info.world) == ("gpu004", 31234, 5, 8)
