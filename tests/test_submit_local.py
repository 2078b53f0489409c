"""jobs/submit.py through submitit's local executor: the demo path, dry runs, bad input."""

from __future__ import annotations

import json

import pytest

from conftest import run_door


@pytest.mark.slow
def test_seed_array_runs_to_the_end_and_prints_the_table(digits, tmp_path):
    proc = run_door("jobs/submit.py", "--array", "seeds=42,43,44", "--cluster", "local", f"data={digits}",
                    f"root={tmp_path}", "model=test_resnet", "image_size=32", "steps=6", "batch_size=8", "mu=2", "eval_every=3",
                    "log_every=3", "threads=1", "workers=0",
                    check=True)
    sweep = tmp_path / digits.name
    for seed in (42, 43, 44):
        name = f"model=test_resnet,image_size=32,steps=6,batch_size=8,mu=2,eval_every=3,log_every=3,threads=1,workers=0,seed={seed}"
        result = json.loads((sweep / name / "result.json").read_text())
        assert result["seed"] == seed and result["steps"] == 6 and result["strategy"] == "fixmatch"
    assert "val acc %: mean" in proc.stdout and f"tensorboard --logdir {sweep}" in proc.stdout
    # Resubmitting the same sweep finds it finished and submits nothing.
    again = run_door("jobs/submit.py", "--array", "seeds=42,43,44", "--cluster", "local", f"data={digits}",
                     f"root={tmp_path}", "model=test_resnet", "image_size=32", "steps=6", "batch_size=8", "mu=2", "eval_every=3",
                    "log_every=3", "threads=1", "workers=0",
                     check=True)
    assert "nothing submitted" in again.stdout and again.stdout.count("| done |") == 3


def test_dry_run_lists_runs_and_submits_nothing(digits, tmp_path):
    proc = run_door("jobs/submit.py", "--array", "seeds=1,2", "--array", "strategy=fixmatch,supervised", "--dry-run",
                    "--cluster", "local", "--nodes", "2", "--gpus-per-node", "4", f"data={digits}", f"root={tmp_path}",
                    check=True)
    assert "4 runs" in proc.stdout and "dry run: nothing submitted" in proc.stdout
    assert "nodes=2" in proc.stdout and "tasks_per_node=4" in proc.stdout and "gpus_per_node=4" in proc.stdout
    assert not (tmp_path / digits.name).exists()


@pytest.mark.parametrize("args, fragment", [
    (["--array", "seeds"], "--array 'seeds'"),
    (["--array", "seeds=1,,2"], "no empty value"),
    (["--array", "colour=red,blue"], "unknown key 'colour'"),
    (["strategy=nope"], "strategy=nope"),
    (["model=notamodel"], "model=notamodel"),
    (["data=/no/such/folder"], "data=/no/such/folder"),
    (["--time", "soon"], "--time 'soon'"),
])
def test_submit_bad_input_is_one_line_exit_2_and_nothing_created(args, fragment, tmp_path):
    proc = run_door("jobs/submit.py", "--cluster", "local", f"root={tmp_path / 'runs'}", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists() or not any(p.name != ".data" for p in (tmp_path / "runs").iterdir())
