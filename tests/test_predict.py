"""jobs/predict.py: leaderboard CSV of a run or an ensemble, EMA weights, unlabeled splits, errors."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import run_door
from sslrun.data.manifest import read_manifest
from sslrun.data.samples import load_split
from sslrun.errors import UserError
from sslrun.predict import predict_runs, write_predictions


def test_single_run_csv_matches_the_runs_own_test_accuracy(small_sweep, digits, tmp_path):
    run = small_sweep / "seed=42"
    out = tmp_path / "sub.csv"
    proc = run_door("jobs/predict.py", str(run), "--checkpoint", "last", "--out", str(out), check=True)
    result = json.loads((run / "result.json").read_text())
    # last.pt holds the final weights; with their EMA they give exactly the accuracy the run reported.
    assert "EMA weights" in proc.stdout and f"test accuracy: {100 * result['test_acc']:.2f}%" in proc.stdout
    rows = list(csv.reader(out.open()))
    test = load_split(read_manifest(digits), "test")
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == test.ids
    classes = read_manifest(digits).classes
    assert {r[1] for r in rows[1:]} <= set(classes)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary file


def test_ensemble_averages_softmax_and_unlabeled_split_works(small_sweep, tmp_path):
    runs = [small_sweep / "seed=42", small_sweep / "seed=43"]
    each = [predict_runs([r], "val", "best") for r in runs]
    both = predict_runs(runs, "val", "best")
    assert all(both.used_ema) and np.allclose(both.probs, (each[0].probs + each[1].probs) / 2)
    assert both.accuracy == pytest.approx(float((both.probs.argmax(1) == both.labels).mean()))
    path, pred = write_predictions(runs, "unlabeled", "best", tmp_path / "u.csv")
    assert pred.accuracy is None and len(path.read_text().splitlines()) == len(pred.ids) + 1


def test_bad_input_is_one_line_and_exit_2(small_sweep, tmp_path):
    from PIL import Image

    from sslrun.data.build import build_shards

    for c in ("a", "b"):
        for i in range(3):
            (tmp_path / "tree" / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "tree" / c / f"{c}{i}.png")
    shutil.copytree(tmp_path / "tree", tmp_path / "tree-test")  # overlapping inputs are refused
    build_shards(tmp_path / "other", labeled=tmp_path / "tree", test=tmp_path / "tree-test")
    good = small_sweep / "seed=42"
    other_data = tmp_path / "other-data-run"
    shutil.copytree(good, other_data)
    cfg = other_data / "config.yaml"
    data_line = next(ln for ln in cfg.read_text().splitlines() if ln.startswith("data:"))
    cfg.write_text(cfg.read_text().replace(data_line, f"data: {tmp_path / 'other'}"))
    other_model = tmp_path / "other-model-run"
    shutil.copytree(good, other_model)
    state = torch.load(other_model / "ckpt" / "best.pt", weights_only=True)
    torch.save({**state, "model_name": "resnet18"}, other_model / "ckpt" / "best.pt")
    no_ckpt = tmp_path / "no-ckpt-run"
    shutil.copytree(good, no_ckpt, ignore=shutil.ignore_patterns("ckpt"))
    cases = [
        ([no_ckpt], "test", "no checkpoint ckpt/best.pt"),
        ([tmp_path], "test", "not a run folder"),
        ([other_model], "test", "checkpoint is of model resnet18"),
        ([other_data], "test", "checkpoint has 10 classes"),
        ([good, other_data], "test", "different data sets"),
        ([good], "nosuch", "--split nosuch"),
    ]
    for runs, split, fragment in cases:
        with pytest.raises(UserError) as err:
            predict_runs(runs, split)
        assert fragment in str(err.value) and "\n" not in str(err.value)
    # The door turns them into one line and exit code 2.
    proc = run_door("jobs/predict.py", str(good), str(other_model))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "resnet18" in lines[0]


def test_out_checkpoint_and_config_mistakes_are_one_line_and_nothing_is_overwritten(small_sweep, tmp_path):
    good = small_sweep / "seed=42"
    taken = tmp_path / "taken.csv"
    taken.write_text("keep me")
    config = good / "config.yaml"
    no_weights = tmp_path / "no-weights"
    shutil.copytree(good, no_weights)
    torch.save({"step": 3, "model": {}}, no_weights / "ckpt" / "best.pt")
    bad_yaml = tmp_path / "bad-yaml"
    shutil.copytree(good, bad_yaml, ignore=shutil.ignore_patterns("ckpt"))
    (bad_yaml / "config.yaml").write_text("data: [unclosed\n")
    marker = tmp_path / "code-ran"
    tagged = tmp_path / "tagged"
    shutil.copytree(good, tagged, ignore=shutil.ignore_patterns("ckpt"))
    (tagged / "config.yaml").write_text(f"data: !!python/object/apply:os.system ['touch {marker}']\nmodel: x\n")
    cases = [
        ([str(good), "--out", str(taken)], "exists; give --overwrite"),
        ([str(good), "--out", str(tmp_path)], "is a folder"),
        ([str(good), "--out", str(config)], "ending in .csv"),
        ([str(no_weights)], "no 'model' weights"),
        ([str(bad_yaml)], "not valid YAML"),
        ([str(tagged)], "not valid YAML"),
        ([str(good), "--workers", "-1"], "--workers -1"),
    ]
    before = config.read_bytes()
    for args, fragment in cases:
        proc = run_door("jobs/predict.py", *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], (args, proc.stderr[-500:])
    assert taken.read_text() == "keep me" and config.read_bytes() == before and not marker.exists()
    proc = run_door("jobs/predict.py", str(good), "--out", str(taken), "--overwrite")
    assert proc.returncode == 0 and taken.read_text().startswith("id,label\n")
