"""Training end to end in the foreground: results, exact resume after a stop signal, errors."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from conftest import FAST, run_door, signal_when, start_door


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def _steps_logged(run_dir: Path, kind: str = "train") -> list[int]:
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [ln["step"] for ln in lines if ln["kind"] == kind]


@pytest.mark.slow
def test_fixmatch_run_writes_result_and_resumes_exactly_after_sigterm(digits, tmp_path):
    common = [*FAST, f"data={digits}", f"root={tmp_path}", "sweep=s"]
    run_door("jobs/train.py", *common, "name=straight", check=True)
    straight = _result(tmp_path / "s" / "straight")
    assert straight["steps"] == 12 and straight["restarts"] == 0
    assert 0 <= straight["val_acc"] <= 1 and straight["test_acc"] is not None
    run_dir = tmp_path / "s" / "straight"
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "tb", "ckpt", "metrics.jsonl", "result.json"}
    assert any((run_dir / "tb").iterdir())

    # The same run, stopped by SIGTERM once its first checkpoint exists, then started again.
    proc = start_door("jobs/train.py", *common, "name=stopped")
    ckpt = tmp_path / "s" / "stopped" / "ckpt" / "last.pt"
    signal_when(proc, ckpt.exists, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal landed (machine too fast for this timing)")
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "run the same command to resume" in err
    assert not (tmp_path / "s" / "stopped" / "result.json").exists()
    run_door("jobs/train.py", *common, "name=stopped", check=True)
    resumed = _result(tmp_path / "s" / "stopped")
    assert resumed["restarts"] == 1
    assert resumed["weights_sha256"] == straight["weights_sha256"]
    steps = _steps_logged(tmp_path / "s" / "stopped")
    assert steps == sorted(set(steps)) == list(range(2, 13, 2)), "every logged step appears exactly once"


def test_finished_run_is_not_trained_again(digits, tmp_path):
    common = [*FAST, "steps=2", f"data={digits}", f"root={tmp_path}", "strategy=supervised", "name=once"]
    first = run_door("jobs/train.py", *common, check=True)
    result = tmp_path / digits.name / "once" / "result.json"
    stamp = result.stat().st_mtime_ns
    second = run_door("jobs/train.py", *common, check=True)
    assert json.loads(first.stdout) == json.loads(second.stdout)
    assert result.stat().st_mtime_ns == stamp


def test_same_name_with_another_config_is_refused(digits, tmp_path):
    base = [*FAST, "steps=2", f"data={digits}", f"root={tmp_path}", "name=x", "strategy=supervised"]
    run_door("jobs/train.py", *base, check=True)
    before = (tmp_path / digits.name / "x" / "config.yaml").read_text()
    proc = run_door("jobs/train.py", *base, "momentum=0.5")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "momentum=" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "or give momentum=0.9 to resume it" in proc.stderr
    assert (tmp_path / digits.name / "x" / "config.yaml").read_text() == before


def test_a_run_made_under_an_older_default_says_how_to_resume_it(digits, tmp_path):
    """A run folder whose config.yaml holds a default that has since changed (augment_on was
    `loader` before `auto`): the refusal names the value that resumes it, and that value does."""
    base = [*FAST, "steps=2", f"data={digits}", f"root={tmp_path}", "name=old", "strategy=supervised"]
    run_door("jobs/train.py", *base, check=True)
    config = tmp_path / digits.name / "old" / "config.yaml"
    text = config.read_text()
    assert "augment_on: auto" in text
    config.write_text(text.replace("augment_on: auto", "augment_on: loader"))
    proc = run_door("jobs/train.py", *base)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "augment_on='loader', not 'auto'" in proc.stderr and "or give augment_on=loader to resume it" in proc.stderr
    run_door("jobs/train.py", *base, "augment_on=loader", check=True)


@pytest.mark.parametrize("args, fragment", [
    (["strategy=nope"], "strategy=nope"),
    (["model=notamodel"], "model=notamodel"),
    (["data=/no/such/folder"], "data=/no/such/folder"),
])
def test_train_bad_input_is_one_line_exit_2_and_no_run_folder(args, fragment, tmp_path):
    proc = run_door("jobs/train.py", *args, f"root={tmp_path}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("strategy", ["fixmatch", "permanent"])
def test_strategy_needing_unlabeled_data_says_so(strategy, tmp_path):
    from PIL import Image

    from sslrun.data.build import build_shards

    for c in ("a", "b"):
        for i in range(3):
            (tmp_path / "tree" / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "tree" / c / f"{c}{i}.png")
    build_shards(tmp_path / "shards", labeled=tmp_path / "tree")
    proc = run_door("jobs/train.py", f"data={tmp_path / 'shards'}", f"root={tmp_path / 'runs'}", f"strategy={strategy}")
    assert proc.returncode == 2 and "needs an 'unlabeled' split" in proc.stderr
    assert not (tmp_path / "runs").exists()
