"""Sweep files: the shipped ablation, a small file through submit.py, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, run_door
from sslrun.config import run_name
from sslrun.errors import UserError
from sslrun.sweeps import read_sweep_file


def test_report_ablation_has_every_setting_once_with_readable_unique_names():
    rows = read_sweep_file(REPO / "sweeps" / "report-ablation.yaml")
    assert len(rows) == 4 * 4 * 2 * 2 * 3 + 2 * 2 * 3 == 204
    names = [run_name(r) for r in rows]
    assert len(set(names)) == len(names)
    assert names[0] == "strategy=classical,threshold=0,frozen=true,model=resnet50,seed=42,pretrained=timm"
    assert {r["strategy"] for r in rows} == {"classical", "permanent", "local", "fixmatch", "supervised"}
    assert {r.get("threshold") for r in rows} == {"0", "0.9", "0.95", "0.9+0.02*epoch", None}
    vit = [r for r in rows if r["model"] == "vit_small_patch16_224"]
    assert len(vit) == 102 and all(r["image_size"] == "224" for r in vit)
    assert all("image_size" not in r for r in rows if r["model"] == "resnet50")


def test_small_sweep_file_with_array_and_overrides_in_a_dry_run(digits, tmp_path):
    sweep = tmp_path / "small.yaml"
    sweep.write_text("base: {steps: 20}\n"
                     "grid:\n  strategy: [fixmatch]\n  threshold: [0.9, 0.9+0.02*epoch]\n"
                     "runs:\n  - {strategy: supervised}\n")
    proc = run_door("jobs/submit.py", "--sweep-file", str(sweep), "--array", "seeds=42,43", "--dry-run",
                    "--cluster", "local", f"data={digits}", f"root={tmp_path}", "lr=0.01", check=True)
    assert "6 runs in" in proc.stdout
    for name in ("strategy=fixmatch,threshold=0.9,steps=20,lr=0.01,seed=42",
                 "strategy=fixmatch,threshold=0.9+0.02_epoch,steps=20,lr=0.01,seed=43",
                 "strategy=supervised,steps=20,lr=0.01,seed=43"):
        assert name in proc.stdout
    assert "nothing submitted" in proc.stdout and not (tmp_path / digits.name).exists()


@pytest.mark.parametrize("text, fragment", [
    ("grid: {strategy: [fixmatch]}\nextra_key: 1\n", "unknown key 'extra_key'"),
    ("grid: {stratgy: [fixmatch]}\n", "grid.stratgy"),
    ("grid: {seed: 42}\n", "grid.seed: expected a non-empty list"),
    ("runs: [{seed: [1, 2]}]\n", "runs[0].seed"),
    ("base: {lr: 0.1}\n", "no runs"),
    ("grid: [oops\n", "not valid YAML"),
    ("grid: {seed: [42, 42]}\n", "listed twice"),
    ("grid: {seed: [1]}\nruns: [{seed: 1}]\n", "listed twice"),
])
def test_bad_sweep_file_is_one_line_naming_file_and_key(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=None) as err:
        read_sweep_file(path)
    assert fragment in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_submit_with_a_missing_or_bad_sweep_file_exits_2(tmp_path):
    proc = run_door("jobs/submit.py", "--sweep-file", str(tmp_path / "nope.yaml"), "--dry-run", "--cluster", "local")
    assert proc.returncode == 2 and proc.stderr.startswith("error: sweep file") and len(proc.stderr.splitlines()) == 1
    bad = Path(tmp_path / "bad.yaml")
    bad.write_text("grid: {strategy: [nope]}\n")
    proc = run_door("jobs/submit.py", "--sweep-file", str(bad), "--dry-run", "--cluster", "local", f"root={tmp_path}")
    assert proc.returncode == 2 and "strategy=nope" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_one_name_for_an_array_becomes_a_prefix_and_every_run_is_planned(digits, tmp_path):
    from sslrun.launch import plan_runs

    configs = plan_runs(["seeds=42,43,44"], ["name=myrun", f"data={digits}", f"root={tmp_path}"])
    assert [c.name for c in configs] == ["myrun,seed=42", "myrun,seed=43", "myrun,seed=44"]
    assert [c.seed for c in configs] == [42, 43, 44]
    assert plan_runs([], ["name=myrun", f"data={digits}", f"root={tmp_path}"])[0].name == "myrun"


def test_two_different_runs_in_one_folder_is_an_error(digits, tmp_path):
    from sslrun.launch import plan_runs

    # `*` and `/` both become `_` in a derived name: two thresholds, one folder name.
    with pytest.raises(UserError, match="would share the folder"):
        plan_runs(["threshold=0.5*2,0.5/2"], [f"data={digits}", f"root={tmp_path}"])


def test_overrides_anywhere_on_the_command_line(digits, tmp_path):
    proc = run_door("jobs/submit.py", "--array", "seeds=1,2", "steps=5", "--cluster", "local", f"root={tmp_path}",
                    f"data={digits}", "--dry-run", check=True)
    assert "2 runs in" in proc.stdout and "steps=5,seed=1" in proc.stdout


def test_a_command_line_extra_key_applies_to_the_sweep_rows_whose_strategy_has_it(digits, tmp_path):
    """`extra.label_every=2` laid over the report's ablation (classical, permanent, local, fixmatch,
    supervised) was refused for the first classical row: no sweep of several strategies could
    set a strategy's key from the command line. It now applies where declared; a typo is still one line."""
    from sslrun.launch import plan_runs

    rows = [{"strategy": "classical"}, {"strategy": "permanent"}, {"strategy": "local"}]
    common = [f"data={digits}", f"root={tmp_path}", "model=test_resnet", "image_size=32"]
    configs = {c.strategy: c for c in plan_runs([], [*common, "extra.label_every=2", "extra.local_warmup=3"], rows)}
    assert configs["permanent"].extra == {"label_every": 2}
    assert configs["local"].extra == {"local_warmup": 3}
    assert configs["classical"].extra == {} and "extra" not in configs["classical"].name
    with pytest.raises(UserError, match=r"extra.label_evry: not a key of any strategy in this sweep .*did you mean extra.label_every"):
        plan_runs([], [*common, "extra.label_evry=2"], rows)
    with pytest.raises(UserError, match="extra.label_every: not a key of strategy=classical"):
        plan_runs([], [*common, "extra.label_every=2", "strategy=classical"])  # one run: as before
