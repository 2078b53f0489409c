"""jobs/report.py over a real small sweep: the seed table, CSV, PNGs, states, cost, restarts."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

from PIL import Image

from conftest import run_door
from sslrun.report import make_report


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def test_report_table_csv_plots_and_unfinished_runs(small_sweep, tmp_path):
    sweep = tmp_path / "s"
    shutil.copytree(small_sweep, sweep)
    # A partial run (checkpoint, no result) and a started one (config only) of the fixmatch setting.
    shutil.copytree(sweep / "seed=43", sweep / "seed=44")
    (sweep / "seed=44" / "result.json").unlink()
    cfg = (sweep / "seed=44" / "config.yaml").read_text().replace("seed: 43", "seed: 44").replace("name: seed=43", "name: seed=44")
    (sweep / "seed=44" / "config.yaml").write_text(cfg)
    (sweep / "seed=45").mkdir()
    (sweep / "seed=45" / "config.yaml").write_text(cfg.replace("seed: 44", "seed: 45").replace("name: seed=44", "name: seed=45"))

    text, files = make_report(sweep, ("strategy", "threshold"))
    r42, r43 = _result(sweep / "seed=42"), _result(sweep / "seed=43")
    fix = next(ln for ln in text.splitlines() if ln.startswith("| fixmatch |"))
    cells = [c.strip() for c in fix.strip("|").split("|")]
    assert cells[:2] == ["fixmatch", "0.95"]
    assert cells[2:10] == [f"{100 * r42['val_acc']:.2f}", f"{r42['val_loss']:.4f}", f"{100 * r43['val_acc']:.2f}",
                           f"{r43['val_loss']:.4f}", "partial", "partial", "started", "started"]
    accs = [100 * r42["val_acc"], 100 * r43["val_acc"]]
    assert cells[10:12] == [f"{statistics.fmean(accs):.2f}", f"{statistics.stdev(accs):.2f}"]
    assert cells[16] == "2/4"
    assert "| supervised |" in text and "4 runs" not in text and "5 runs (3 done, 1 partial, 1 started)" in text

    rows = list(csv.DictReader((sweep / "report" / "runs.csv").open()))
    by_name = {r["run"]: r for r in rows}
    assert {r["state"] for r in rows} == {"done", "partial", "started"} and len(rows) == 5
    assert by_name["seed=44"]["steps"] == "12" and float(by_name["seed=44"]["elapsed s"]) > 0
    assert float(by_name["seed=42"]["elapsed s"]) == r42["elapsed_s"] and by_name["seed=42"]["device"] == "cpu"
    settings = list(csv.DictReader((sweep / "report" / "settings.csv").open()))
    assert len(settings) == 2 and float(settings[0]["CPU-h"]) > 0

    names = {f.name for f in files}
    assert names == {"settings.csv", "runs.csv", "val_acc.png", "confusion_best.png", "pseudo_labels.png"}
    for f in files:
        if f.suffix == ".png":
            with Image.open(f) as img:
                assert img.format == "PNG" and img.width > 300 and img.height > 300


def test_report_counts_work_redone_after_a_restart(small_sweep):
    resumed = small_sweep.parent / "resumed"
    restarts = [json.loads(ln) for ln in (resumed / "seed=42" / "restarts.jsonl").read_text().splitlines()]
    # Killed after step 12 was logged, resumed from the step-8 checkpoint: steps 9..12 were done twice.
    assert len(restarts) == 1 and restarts[0]["resumed_at_step"] == 8 and restarts[0]["redone_steps"] == 4
    assert restarts[0]["lines_dropped"] == 3 and restarts[0]["redone_s"] > 0  # train 10, 12 and val 12
    text, _ = make_report(resumed)
    row = next(ln for ln in text.splitlines() if ln.startswith("| seed=42 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "done" and cells[11] == "1" and cells[12] == "4"
    assert abs(float(cells[13]) - restarts[0]["redone_s"]) < 0.06


def test_report_door_prints_markdown_and_rejects_bad_input(small_sweep, tmp_path):
    out = tmp_path / "rep"
    proc = run_door("jobs/report.py", str(small_sweep), "--out", str(out), "--by", "strategy", check=True)
    assert proc.stdout.startswith("# s: 3 runs (3 done)") and "| fixmatch |" in proc.stdout
    assert (out / "settings.csv").exists() and (out / "val_acc.png").exists()
    (tmp_path / "empty").mkdir()
    for args, fragment in (([str(tmp_path / "empty")], "holds no runs"), ([str(tmp_path / "nope")], "does not exist"),
                           ([str(small_sweep), "--by", "strategy,colour"], "--by colour")):
        proc = run_door("jobs/report.py", *args)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and fragment in proc.stderr, proc.stderr
