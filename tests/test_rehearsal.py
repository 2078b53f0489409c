"""bench/rehearsal.py at tiny scale, no SLURM: the challenge-shaped tree and its hidden truth,
the build keeping that truth, and the settings of the report's sweep (every one once)."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import rehearsal
from conftest import REPO
from sslrun.data.build import build_shards, read_truth
from sslrun.errors import UserError


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_tree_is_challenge_shaped_and_its_pixels_carry_the_class(tmp_path):
    counts = rehearsal.make_tree(tmp_path, n_unlabeled=200, n_test=60, workers=1)
    assert counts == {"train": 48 * 15, "unlabeled": 200, "test": 60}
    classes = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert classes == [rehearsal.class_name(c) for c in range(48)]
    assert all(len(list((tmp_path / "train" / c).iterdir())) == 15 for c in classes)
    loose = sorted(p.name for p in (tmp_path / "unlabelled").iterdir())
    assert len(loose) == 200 and all(p.endswith(".jpg") and p[:-4].isdigit() for p in loose)  # id names, one folder
    assert not any(p.is_dir() for p in (tmp_path / "unlabelled").iterdir())
    assert len(list((tmp_path / "test").iterdir())) == 60
    truth = list(csv.DictReader(open(tmp_path / "unlabelled_truth.csv")))
    assert sorted(r["id"] + ".jpg" for r in truth) == loose
    assert len(Counter(r["class"] for r in truth)) > 40  # spread over the classes
    # An unlabeled image shows one of its true class's pictures, and no other class's.
    row = truth[0]
    img = _pixels((tmp_path / "unlabelled" / f"{row['id']}.jpg").read_bytes())
    own = int(row["class"].split("_")[1])
    same = [p for p in rehearsal._pictures(own) if _pixels(p).shape == img.shape]
    assert any(np.array_equal(_pixels(p), img) for p in same)
    other = [p for p in rehearsal._pictures((own + 1) % 48) if _pixels(p).shape == img.shape]
    assert not any(np.array_equal(_pixels(p), img) for p in other)
    sides = {Image.open(p).size[0] for p in list((tmp_path / "unlabelled").iterdir())[:50]}
    assert sides <= set(rehearsal.SIDES) and len(sides) > 1  # 64-96 px


def test_build_keeps_the_unlabeled_truth_in_the_manifest(tmp_path):
    rehearsal.make_tree(tmp_path / "tree", n_unlabeled=100, n_test=10, workers=1)
    truth = read_truth(tmp_path / "tree" / "unlabelled_truth.csv")
    m = build_shards(tmp_path / "shards", tmp_path / "tree" / "train", tmp_path / "tree" / "unlabelled",
                     val_per_class=5, unlabeled_truth=truth)
    u = json.loads((tmp_path / "shards" / "manifest.json").read_text())["splits"]["unlabeled"]
    assert u["hidden_labels"] is True and m["splits"]["unlabeled"]["count"] == 100
    from sslrun.data.manifest import read_manifest
    from sslrun.data.samples import load_split

    split = load_split(read_manifest(tmp_path / "shards"), "unlabeled")
    got = {sid: m["classes"][h] for sid, h in zip(split.ids, split.hidden)}
    assert got == truth


def test_truth_file_mistakes_are_one_line(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("id,class\nnocomma\n")
    with pytest.raises(UserError, match="line 2: expected 'id,class'"):
        read_truth(bad)
    rehearsal.make_tree(tmp_path / "tree", n_unlabeled=10, n_test=0, workers=1)
    bad.write_text("0000000,no_such_class\n")
    with pytest.raises(UserError, match="class 'no_such_class' is not a class"):
        build_shards(tmp_path / "out", tmp_path / "tree" / "train", tmp_path / "tree" / "unlabelled",
                     val_per_class=5, unlabeled_truth=read_truth(bad))


def test_every_setting_of_the_report_sweep_once():
    rows = rehearsal.sweep_rows()
    assert len(rows) == 204
    settings = Counter(rehearsal.setting_of(r) for r in rows)
    assert len(settings) == 68 and set(settings.values()) == {3}  # 4x4x2x2 + 2x2 supervised, 3 seeds each
    hour = rehearsal.subset_rows(rows, "hour")
    assert len(hour) == 68 and Counter(rehearsal.setting_of(r) for r in hour) == Counter(dict.fromkeys(settings, 1))
    parts = [rehearsal.subset_rows(rows, f"seed={s}") for s in (42, 43, 44)]
    assert sum(len(p) for p in parts) == 204 and all(len(p) == 68 for p in parts)
    assert {r["strategy"] for r in hour} == {"classical", "permanent", "local", "fixmatch", "supervised"}


def test_hour_subset_plans_the_whole_sweeps_own_run_folders(tmp_path):
    """The subset's sweep file plans each setting once, under the whole sweep's names: the hour
    subset is a part of the 204-run sweep, which resumes past it."""
    from sslrun.launch import plan_runs
    from sslrun.sweeps import read_sweep_file

    rows = rehearsal.sweep_rows()
    common = [f"root={tmp_path}", "sweep=s", "pretrained=none", "image_size=32"]
    whole = {c.name for c in plan_runs([], common, rows)}
    part = rehearsal.write_subset_file(rehearsal.subset_rows(rows, "hour"), tmp_path / "hour.yaml")
    hour = plan_runs([], common, read_sweep_file(part))
    assert len(whole) == 204 and len(hour) == 68
    assert {c.name for c in hour} <= whole and all(c.seed == 42 for c in hour)


def test_script_lists_the_settings():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(REPO / "bench" / "rehearsal.py"), "settings", "--subset", "hour"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.startswith("204 runs in") and "68 distinct settings; subset hour: 68 runs" in out
    assert len(out.splitlines()) == 69
