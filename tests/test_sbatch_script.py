"""`--dry-run`'s sbatch script is rendered by sslrun (submitit's renderer is private API): it must
match what submitit itself would write. The private function is used here only as the oracle,
and the test is skipped when a submitit release drops it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from sslrun.launch import ClusterOptions, executor_parameters, sbatch_script


def _submitits_own(folder: Path, opts: ClusterOptions, runs: int) -> str:
    slurm = pytest.importorskip("submitit.slurm.slurm")
    if not hasattr(slurm, "_make_sbatch_string"):
        pytest.skip("this submitit has no _make_sbatch_string to compare with")
    equivalent = slurm.SlurmExecutor._equivalence_dict()
    params = {}
    for key, value in executor_parameters(opts).items():
        params[key[len("slurm_"):] if key.startswith("slurm_") else equivalent.get(key, key)] = value
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder / '%j'))}"
    return slurm._make_sbatch_string(command=command, folder=folder / "%j", map_count=runs if runs > 1 else None,
                                     **params)


@pytest.mark.parametrize("opts, runs", [
    (ClusterOptions(), 1),
    (ClusterOptions(partition="gpu", gpus_per_node=2, sbatch=["mail-type=END"]), 3),
    (ClusterOptions(nodes=2, gpus_per_node=4, cpus_per_task=8, mem="64G", account="a", qos="q", constraint="h100",
                    exclude="n1", array_parallelism=2, time="2-00:00:00", signal_delay_s=300), 5),
])
def test_our_rendering_is_submitits(opts, runs, tmp_path):
    folder = tmp_path / ".submitit"
    assert sbatch_script(folder, opts, runs) == _submitits_own(folder, opts, runs)


def test_launch_uses_no_private_submitit_function():
    text = (Path(__file__).resolve().parent.parent / "sslrun" / "launch.py").read_text()
    assert "_make_sbatch_string" not in text and "submitit.slurm" not in text
