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
    args = argparse.Namespace(budget_min=0.05, parallel=2, work=tmp_path, threads=1, workers=0, model="cifar_cnn", amp="off",
                              extra=["batch_size=8", "mu=2", "log_every=5"])
    jobs = [("supervised", 42), ("fixmatch", 42)]
    results = bench.run_group(jobs, args, digits)
    assert [(r["strategy"], r["seed"]) for r in results] == jobs
    for r in results:
        assert r["stopped_by"] == "budget_s" and 0 < r["steps"] < 1_000_000 and 0 <= r["val_acc"] <= 1
        assert r["elapsed_s"] >= 3 and r["images_per_s"] > 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["strategy"], line["val_acc"]) for line in lines] == [(r["strategy"], r["val_acc"]) for r in results]
    sweep = tmp_path / "runs" / "budget0.05min-x2-t1w0-cifar_cnn-off,batch_size=8,mu=2,log_every=5"
    assert sorted(p.name for p in sweep.iterdir()) == ["fixmatch,seed=42", "supervised,seed=42"]
    assert (tmp_path / "logs" / "budget0.05min-x2-t1w0-cifar_cnn-off,batch_size=8,mu=2,log_every=5" / "fixmatch,seed=42.log").stat().st_size > 0

    # A second call finds result.json in each folder and trains nothing, and keeps the training log.
    log = tmp_path / "logs" / "budget0.05min-x2-t1w0-cifar_cnn-off,batch_size=8,mu=2,log_every=5" / "fixmatch,seed=42.log"
    trained = log.read_text()
    again = bench.run_group(jobs, args, digits)
    assert log.read_text().startswith(trained)
    assert [r["weights_sha256"] for r in again] == [r["weights_sha256"] for r in results]
    assert [r["steps"] for r in again] == [r["steps"] for r in results]


def test_a_failing_run_names_its_log(digits, tmp_path):
    bench = _bench()
    args = argparse.Namespace(budget_min=0.05, parallel=1, work=tmp_path, threads=1, workers=0, model="no_such_net",
                              amp="off", extra=[])
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


def test_carved_test_split_is_disjoint_seeded_and_resumable(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    from make_synthetic_tree import _make_class

    from sslrun.data.build import build_shards
    from sslrun.data.manifest import read_manifest
    from sslrun.data.samples import load_split

    bench = _bench()
    for c in range(3):
        _make_class((str(tmp_path / "a"), c, c * 30, 30, 16))
        _make_class((str(tmp_path / "b"), c, c * 30, 30, 16))
    # one carve in one go; the other killed after its first class's moves, then run again
    bench.carve_test(tmp_path / "a" / "train", tmp_path / "a" / "test", per_class=10)
    first = sorted((tmp_path / "b" / "train").iterdir())[0]
    bench.carve_test(tmp_path / "b" / "train", tmp_path / "b" / "test", per_class=10)
    moved = sorted((tmp_path / "b" / "test" / first.name).iterdir())
    for f in moved[:5]:  # put half of one class back: as if interrupted
        f.rename(first / f.name)
    bench.carve_test(tmp_path / "b" / "train", tmp_path / "b" / "test", per_class=10)
    listing = {r: sorted(str(p.relative_to(tmp_path / r)) for p in (tmp_path / r).rglob("*.jpg")) for r in "ab"}
    assert listing["a"] == listing["b"]
    for d in (tmp_path / "a" / "test").iterdir():
        assert len(list(d.iterdir())) == 10 and len(list((tmp_path / "a" / "train" / d.name).iterdir())) == 20
    out = tmp_path / "shards"
    build_shards(out, labeled=tmp_path / "a" / "train", test=tmp_path / "a" / "test", val_per_class=2,
                 labels_per_class=3)
    manifest = read_manifest(out)
    ids = {s: set(load_split(manifest, s).ids) for s in ("train", "val", "unlabeled", "test")}
    assert len(ids["test"]) == 30 and (load_split(manifest, "test").label >= 0).all()
    assert not ids["test"] & (ids["train"] | ids["val"] | ids["unlabeled"])
    assert len(ids["train"] | ids["val"] | ids["unlabeled"]) == 60


def test_auto_precision_picks_the_net_that_suits_it():
    bench = _bench()
    assert isinstance(bench.cpu_has_bf16(), bool)
    args = argparse.Namespace(amp="off", model="auto")
    bench.resolve_auto(args)
    assert (args.amp, args.model) == ("off", "cifar_cnn")
    args = argparse.Namespace(amp="bf16", model="auto")
    bench.resolve_auto(args)
    assert (args.amp, args.model) == ("bf16", "cifar_cnn_wide")
    args = argparse.Namespace(amp="auto", model="test_resnet")  # a named model is kept
    bench.resolve_auto(args)
    assert args.model == "test_resnet" and args.amp == ("bf16" if bench.cpu_has_bf16() else "off")
