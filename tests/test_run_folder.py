"""The run folder's one room: states, tolerant readers, the claim, and the readers that ask it
(status, report) on folders written here by hand, so no training is needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_door
from sslrun import run_folder
from sslrun.errors import UserError


def make_run(sweep: Path, name: str, *, result: dict | None = None, ckpt_step: int | None = None,
             metrics: str = "", **cfg: object) -> Path:
    run = sweep / name
    run.mkdir(parents=True)
    config = {"strategy": "fixmatch", "seed": 42, "model": "test_resnet", "data": str(sweep.parent / "data"),
              "threshold": "0.95", "frozen": False, "name": name, **cfg}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics:
        (run / "metrics.jsonl").write_text(metrics)
    if ckpt_step is not None:
        (run / "ckpt").mkdir()
        torch.save({"step": ckpt_step, "elapsed_s": 1.5}, run / "ckpt" / "last.pt")
    if result is not None:
        (run / "result.json").write_text(json.dumps(result))
    return run


DONE = {"steps": 10, "val_acc": 0.5, "best_val_acc": 0.5, "val_loss": 1.0, "test_acc": 0.4, "elapsed_s": 2.0, "world_size": 1,
        "device": "cpu", "restarts": 0}


def test_states(tmp_path):
    sweep = tmp_path / "s"
    assert run_folder.state(sweep / "absent") == "new"
    assert run_folder.state(make_run(sweep, "started")) == "started"
    assert run_folder.state(make_run(sweep, "partial", ckpt_step=3)) == "partial"
    assert run_folder.state(make_run(sweep, "done", result=DONE)) == "done"
    failed = make_run(sweep, "failed")
    run_folder.write_failure(failed, RuntimeError("boom\nthe last line"))
    view = run_folder.read_run(failed)
    assert view.state == "failed" and "the last line" in view.failure
    damaged = {
        "bad-result": make_run(sweep, "bad-result", result=None),
        "bad-config": make_run(sweep, "bad-config"),
        "bad-metrics": make_run(sweep, "bad-metrics", metrics='{"kind": "train", "step": 1}\n{oops\n{"kind": "x"}\n'),
        "bad-ckpt": make_run(sweep, "bad-ckpt"),
        "result-no-number": make_run(sweep, "result-no-number", result={**DONE, "val_acc": "high"}),
    }
    (damaged["bad-result"] / "result.json").write_bytes(b'{"steps": 3, "val_')
    (damaged["bad-config"] / "config.yaml").write_text("a: [1, 2\n")
    (damaged["bad-ckpt"] / "ckpt").mkdir()
    (damaged["bad-ckpt"] / "ckpt" / "last.pt").write_bytes(b"not a zip")
    expect = {"bad-result": "result.json", "bad-config": "config.yaml", "bad-metrics": "metrics.jsonl: line 2",
              "bad-ckpt": "last.pt", "result-no-number": "'val_acc'"}
    for name, run in damaged.items():
        view = run_folder.read_run(run)
        assert view.state == "damaged", name
        assert expect[name] in view.damage and "\n" not in view.damage, (name, view.damage)


def test_torn_last_line_is_a_writer_at_work_not_damage(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"kind": "train", "step": 1}\n{"kind": "train", "st')
    lines = run_folder.read_jsonl(path)
    assert [r["step"] for r in lines.records] == [1] and lines.bad_lines == []
    path.write_bytes(b'{"a": 1}\n\xff\xfe\n[1]\n')
    assert run_folder.read_jsonl(path).bad_lines == [2, 3]


def test_yaml_object_tags_are_never_built(tmp_path):
    marker = tmp_path / "ran"
    run = make_run(tmp_path / "s", "r")
    (run / "config.yaml").write_text(f"a: !!python/object/apply:os.system ['touch {marker}']\n")
    view = run_folder.read_run(run)
    assert view.state == "damaged" and "config.yaml" in view.damage
    assert not marker.exists()


def test_claim_refuses_a_damaged_config_in_one_line_and_changes_nothing(tmp_path):
    run = make_run(tmp_path / "s", "r")
    (run / "config.yaml").write_bytes(b"\xff\xfe: [")
    with pytest.raises(UserError) as err:
        run_folder.claim(run, "seed: 42\n", ("lr",))
    assert "config.yaml" in str(err.value) and "\n" not in str(err.value)
    assert (run / "config.yaml").read_bytes() == b"\xff\xfe: ["


def test_claim_records_resume_keys_and_refuses_others(tmp_path):
    run = tmp_path / "s" / "r"
    run_folder.claim(run, "seed: 42\nlr: 0.1\n", ("lr",))
    run_folder.claim(run, "seed: 42\nlr: 0.2\n", ("lr",))
    assert json.loads((run / "config-history.jsonl").read_text())["changed"] == {"lr": [0.1, 0.2]}
    with pytest.raises(UserError, match="seed=42"):
        run_folder.claim(run, "seed: 43\nlr: 0.2\n", ("lr",))


def test_status_does_not_list_the_report_folder_as_a_run(tmp_path):
    """Regression: jobs/status.py listed SWEEP/report/ as a run in state `new`."""
    from sslrun.status import sweep_status

    sweep = tmp_path / "s"
    make_run(sweep, "seed=42", result=DONE)
    (sweep / "report").mkdir()
    (sweep / "report" / "runs.csv").write_text("run\n")
    assert [r["run"] for r in sweep_status(sweep)] == ["seed=42"]


def planted_pickles(sweep: Path, marker: Path) -> None:
    """submitit-like job files whose unpickling would create `marker`."""
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    folder = sweep / ".submitit" / "123"
    folder.mkdir(parents=True)
    for name in ("123_submitted.pkl", "123_0_result.pkl", "123_result.pkl"):
        (folder / name).write_bytes(evil)


def test_readers_never_unpickle_submitit_files(tmp_path):
    """Regression: report unpickled .submitit/<id>/<id>_submitted.pkl, so a planted one ran its code."""
    from sslrun.report import make_report
    from sslrun.status import sweep_status

    sweep = tmp_path / "s"
    make_run(sweep, "seed=42", result=DONE)
    make_run(sweep, "seed=43", ckpt_step=2)
    marker = tmp_path / "code-ran"
    planted_pickles(sweep, marker)
    make_report(sweep)
    sweep_status(sweep)
    for door in ("jobs/report.py", "jobs/status.py"):
        proc = run_door(door, str(sweep))
        assert proc.returncode == 0, proc.stderr
    assert not marker.exists()


def test_one_damaged_run_never_stops_the_others(tmp_path):
    from sslrun.report import make_report
    from sslrun.status import sweep_status

    sweep = tmp_path / "s"
    make_run(sweep, "seed=42", result=DONE)
    make_run(sweep, "seed=43", result=DONE, seed=43)
    (sweep / "seed=43" / "result.json").write_text("{not json")
    make_run(sweep, "seed=44", seed=44)
    (sweep / "seed=44" / "config.yaml").write_text("- a list\n")
    (sweep / ".submitit").mkdir()
    (sweep / ".submitit" / "jobs.jsonl").write_text('{"run": "seed=42", "job_id": "1", "cluster": "local"}\n'
                                                    'garbage\n{"run": "../../etc", "job_id": "2"}\n')
    rows = {r["run"]: r for r in sweep_status(sweep)}
    assert set(rows) == {"seed=42", "seed=43", "seed=44"}
    assert rows["seed=42"]["state"] == "done"
    assert rows["seed=43"]["state"] == "damaged" and "result.json" in rows["seed=43"]["damage"]
    assert rows["seed=44"]["state"] == "damaged" and "config.yaml" in rows["seed=44"]["damage"]
    text, _ = make_report(sweep)
    assert "damaged" in text and "result.json" in text and "50.00" in text
    for door in ("jobs/status.py", "jobs/report.py"):
        proc = run_door(door, str(sweep))
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "damaged" in proc.stdout


def test_report_never_pools_different_data_or_other_keys(tmp_path):
    """Regression: two sweeps' runs of different data sets were averaged as seeds of one setting."""
    from sslrun.report import make_report

    sweep = tmp_path / "s"
    make_run(sweep, "a42", result={**DONE, "val_acc": 0.9}, data="/data/one")
    make_run(sweep, "a43", result={**DONE, "val_acc": 0.8}, seed=43, data="/data/one")
    make_run(sweep, "b42", result={**DONE, "val_acc": 0.1}, data="/data/two")
    make_run(sweep, "c42", result={**DONE, "val_acc": 0.3}, data="/data/one", lr=0.5, workers=3)
    text, files = make_report(sweep)
    settings = (sweep / "report" / "settings.csv").read_text().splitlines()
    assert settings[0].split(",")[4] == "other keys"
    assert len(settings) == 4, settings  # a42+a43 pooled; b42 and c42 alone (workers does not split)
    pooled = next(line for line in settings if "data=/data/one" in line and "lr=" in line and "1/1" not in line)
    assert "85.00" in pooled and "2/2" in pooled
    assert "data=/data/two" in text


def test_report_out_that_is_a_file_is_one_line(tmp_path):
    sweep = tmp_path / "s"
    make_run(sweep, "seed=42", result=DONE)
    out = tmp_path / "taken"
    out.write_text("keep me")
    proc = run_door("jobs/report.py", str(sweep), "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.startswith("error: --out") and len(proc.stderr.splitlines()) == 1
    assert out.read_text() == "keep me"


def test_hostile_values_in_result_and_metrics_do_not_crash_the_readers(tmp_path):
    from sslrun.report import make_report
    from sslrun.status import status_table, sweep_status

    sweep = tmp_path / "s"
    make_run(sweep, "r1", result={**DONE, "val_confusion": [[1, "x"]], "classes": ["a", "b"], "val_loss": None},
             metrics='{"kind": "val", "step": "7", "acc": "high"}\n{"kind": "train", "step": 2, "mask_rate": "x"}\n'
                     '[]\n')
    make_run(sweep, "r2", result={**DONE, "val_acc": None}, seed=True, strategy=["x"])
    (sweep / "r3").mkdir()
    (sweep / "r3" / "config.yaml").write_bytes(b"")
    (sweep / "r1" / "restarts.jsonl").write_text('{"redone_steps": "x"}\n{"redone_s": 1e999}\n')
    make_report(sweep)
    status_table(sweep_status(sweep))


def test_report_shows_the_gain_over_supervised(tmp_path):
    from sslrun.report import GAIN, make_report

    sweep = tmp_path / "s"
    for strategy, accs in (("fixmatch", (0.8, 0.9)), ("supervised", (0.5, 0.7))):
        for seed, acc in zip((42, 43), accs):
            make_run(sweep, f"{strategy}{seed}", result={**DONE, "val_acc": acc}, strategy=strategy, seed=seed)
    text, _ = make_report(sweep)
    rows = (sweep / "report" / "settings.csv").read_text().splitlines()
    assert rows[0].endswith(GAIN)
    assert rows[1].startswith("fixmatch") and rows[1].endswith(",+25.00")
    assert rows[2].startswith("supervised") and rows[2].endswith(",+0.00")
    assert GAIN in text


def test_progress_plain_lines_when_not_a_terminal(tmp_path):
    import io

    from sslrun.progress import Progress

    run = make_run(tmp_path / "s", "r", metrics='{"kind": "train", "step": 20, "images_per_s": 123.4}\n'
                                                '{"kind": "val", "step": 20, "acc": 0.5}\n')
    out = io.StringIO()
    progress = Progress([("r", run, 100), ("gone", tmp_path / "s" / "gone", 100)], stream=out, every_s=0)
    progress.update()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 40, "images_per_s": 130}\n')
    progress.update()
    (run / "result.json").write_text(json.dumps({**DONE, "steps": 100}))
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "r: started step 20/100 images/s 123 val acc 50.0% eta ?"
    assert lines[1] == "gone: new step 0/100 images/s - val acc - eta ?"
    assert lines[2].startswith("r: started step 40/100 images/s 130 val acc 50.0% eta ")
    assert lines[-1].startswith("r: done step 100/100")


def test_progress_live_bars_in_a_terminal(tmp_path):
    import io

    from sslrun.progress import Progress

    run = make_run(tmp_path / "s", "r", metrics='{"kind": "train", "step": 30, "images_per_s": 99}\n')
    out = io.StringIO()
    progress = Progress([("r", run, 60)], stream=out, live=True)
    progress.update()
    progress.close()
    assert "30/60" in out.getvalue() and "img/s 99" in out.getvalue()


def _sweep_with_a_slurm_job_unfinished(tmp_path: Path) -> Path:
    sweep = tmp_path / "s"
    make_run(sweep, "seed=42", result=DONE)
    make_run(sweep, "seed=43", ckpt_step=2, seed=43)
    make_run(sweep, "seed=44", ckpt_step=2, seed=44)  # a folder with no job record: SLURM was never asked of it
    (sweep / ".submitit").mkdir()
    (sweep / ".submitit" / "jobs.jsonl").write_text('{"run": "seed=42", "job_id": "7_0", "cluster": "slurm"}\n'
                                                    '{"run": "seed=43", "job_id": "7_1", "cluster": "slurm"}\n')
    return sweep


def test_status_says_when_slurm_cannot_be_asked(tmp_path):
    """A sweep sent to SLURM, looked at where SLURM's tools are missing (a laptop with a copy of the
    folder): the unfinished run keeps its folder's state, and its row says why no job state is shown."""
    sweep = _sweep_with_a_slurm_job_unfinished(tmp_path)
    import sys

    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}  # python, and no squeue or sacct
    proc = run_door("jobs/status.py", str(sweep), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {r["run"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert rows["seed=42"]["state"] == "done" and rows["seed=42"]["note"] is None
    assert rows["seed=43"]["state"] == "partial"
    assert rows["seed=43"]["note"].startswith("SLURM did not answer (squeue is not on PATH)")
    assert rows["seed=44"]["state"] == "partial" and rows["seed=44"]["note"] is None  # never sent to SLURM
    table = run_door("jobs/status.py", str(sweep), env=env).stdout
    (row43,) = [ln for ln in table.splitlines() if ln.startswith("| seed=43 |")]
    assert "SLURM did not answer (squeue is not on PATH)" in row43


@pytest.mark.slow
def test_status_says_when_the_controller_does_not_answer(tmp_path):
    """The real squeue, pointed by SLURM_CONF at a controller port where nothing listens, fails after
    its own retries (~20 s): the row says so with squeue's words instead of a state it guessed."""
    import os
    import shutil

    if shutil.which("squeue") is None:
        if os.environ.get("CI"):
            pytest.fail("squeue is not on PATH under CI (slurm/test-cluster/up.sh installs it)")
        pytest.skip("no squeue here")
    sweep = _sweep_with_a_slurm_job_unfinished(tmp_path)
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=gone\nSlurmctldHost=localhost\nSlurmctldPort=6999\nAuthType=auth/munge\n"
                    "NodeName=n1 CPUs=1\nPartitionName=p Nodes=n1\n")
    proc = run_door("jobs/status.py", str(sweep), "--json", env={**os.environ, "SLURM_CONF": str(conf)})
    assert proc.returncode == 0, proc.stderr
    rows = {r["run"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert rows["seed=43"]["state"] == "partial", rows
    assert rows["seed=43"]["note"].startswith("SLURM did not answer (squeue: "), rows
    assert "Unable to contact slurm controller" in rows["seed=43"]["note"]
