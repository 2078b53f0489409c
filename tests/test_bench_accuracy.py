"""The accuracy benchmark's harness (bench/accuracy.py) on the embedded digits, not CIFAR-10:
budget-stopped runs side by side, each its own jobs/train.py, and a rerun that collects them."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO


def _bench():
    spec = importlib.util.spec_from_file_location("bench_accuracy", REPO / "bench" / "accuracy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_side_by_side_stop_on_budget_and_a_rerun_collects_them(digits, tmp_path, capsys):
    bench = _bench()
    args = argparse.Namespace(budget_min=0.05, parallel=2, work=tmp_path, threads=1, workers=0,
                              extra=["batch_size=8", "mu=2", "log_every=5"])
    jobs = [("supervised", 42), ("fixmatch", 42)]
    results = bench.run_group(jobs, args, digits)
    assert [(r["strategy"], r["seed"]) for r in results] == jobs
    for r in results:
        assert r["stopped_by"] == "budget_s" and 0 < r["steps"] < 1_000_000 and 0 <= r["val_acc"] <= 1
        assert r["elapsed_s"] >= 3
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["strategy"], line["val_acc"]) for line in lines] == [(r["strategy"], r["val_acc"]) for r in results]
    sweep = tmp_path / "runs" / "budget0.05min-x2"
    assert sorted(p.name for p in sweep.iterdir()) == ["fixmatch,seed=42", "supervised,seed=42"]
    assert (tmp_path / "logs" / "budget0.05min-x2" / "fixmatch,seed=42.log").stat().st_size > 0

    # A second call finds result.json in each folder and trains nothing.
    again = bench.run_group(jobs, args, digits)
    assert [r["weights_sha256"] for r in again] == [r["weights_sha256"] for r in results]
    assert [r["steps"] for r in again] == [r["steps"] for r in results]


def test_a_failing_run_names_its_log(digits, tmp_path):
    bench = _bench()
    args = argparse.Namespace(budget_min=0.05, parallel=1, work=tmp_path, threads=1, workers=0, extra=["model=no_such_net"])
    with pytest.raises(SystemExit, match=r"supervised seed 42 exited 2; see .*supervised,seed=42\.log"):
        bench.run_group([("supervised", 42)], args, digits)


@pytest.mark.parametrize("args, fragment", [
    (["--seeds", "42,x"], "--seeds 42,x: expected integers"),
    (["--parallel", "0"], "expected positive numbers"),
    (["--strategies", "fixmatch,fixmach"], "--strategies: unknown 'fixmach'"),
])
def test_bad_arguments_are_one_line_before_any_work(args, fragment, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "accuracy.py"), *args, "--work", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and fragment in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "w").exists()
