"""What submit says and checks before anything is queued (issue 13, faults 1, 8 and 9): a threshold
schedule that passes 1 before the run ends, a cpus_per_task default, and every check that needs
no GPU made for every run of a sweep."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import FAST, run_door
from sslrun.config import make_config
from sslrun.data.manifest import read_manifest
from sslrun.epochs import run_epoch_steps, threshold_warning
from sslrun.errors import UserError
from sslrun.launch import ClusterOptions, default_cpus_per_task, node_cpus, parse_sinfo_cpus, plan_runs, sbatch_reason

SCHEDULE = "threshold=0.9+0.02*epoch"


# --- fault 1: the threshold schedule -------------------------------------------------------
def test_warning_names_the_epoch_and_step_where_the_schedule_passes_one():
    cfg = make_config({"strategy": "permanent", "threshold": "0.9+0.02*epoch", "steps": 5000, "name": "r"})
    line = threshold_warning(cfg, 200)
    # the strategies read epoch = step / 200: tau is 1 at step 1000 and over it from step 1001
    assert line == ("warning: run r: threshold=0.9+0.02*epoch passes 1 at epoch 5.005 (step 1001 of 5000; 200 steps "
                    "an epoch): from there no sample is selected")
    assert threshold_warning(make_config({"threshold": "0.9+0.02*epoch", "steps": 1000}), 200) is None  # ends at 4.995
    assert threshold_warning(make_config({"threshold": "0.95", "steps": 10**6}), 1) is None


def test_warning_sees_a_step_schedule_that_passes_one_within_the_last_epoch():
    cfg = make_config({"threshold": "0.5+step/1000", "steps": 800, "name": "r"})
    assert "passes 1 at epoch 0.0501 (step 501 of 800;" in threshold_warning(cfg, 10_000)
    assert threshold_warning(make_config({"threshold": "0.5+step/1000", "steps": 501}), 10_000) is None
    assert "(step 0 of 3;" in threshold_warning(make_config({"threshold": "1.5", "steps": 3}), 10)


def test_no_warning_where_the_strategy_ignores_the_threshold():
    for strategy in ("supervised", "freematch"):
        assert threshold_warning(make_config({"strategy": strategy, "threshold": "2", "steps": 10}), 1) is None
    assert threshold_warning(make_config({"strategy": "fixmatch", "threshold": "2", "steps": 10}), 1) is not None


def test_an_epoch_is_a_pass_over_the_unlabeled_set_for_every_strategy(digits):
    """Regression: permanent and local counted passes over the labeled set (150 images here)."""
    manifest = read_manifest(digits)
    for strategy in ("permanent", "local", "fixmatch", "classical"):
        cfg = make_config({"strategy": strategy, "batch_size": 8, "mu": 2})
        assert run_epoch_steps(cfg, manifest, 1) == 78  # ceil(1247 unlabeled / (8 x 2))
        assert run_epoch_steps(cfg, manifest, 2) == 39  # the unlabeled batch is global


def _dry_run(digits, tmp_path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": path} if path is not None else None
    return run_door("jobs/submit.py", "--dry-run", "--cluster", "local", f"data={digits}", f"root={tmp_path}",
                    *args, env=env, check=True)


def test_submit_warns_once_a_run_on_the_ranks_it_will_have(digits, tmp_path):
    proc = _dry_run(digits, tmp_path, "--gpus-per-node", "2", "strategy=permanent", SCHEDULE, "batch_size=8", "mu=2",
                    "steps=1000", "--array", "seeds=1,2")
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2, proc.stderr
    assert all("passes 1 at epoch 5.026 (step 196 of 1000; 39 steps an epoch)" in w for w in warnings), warnings
    quiet = _dry_run(digits, tmp_path, "strategy=permanent", SCHEDULE, "batch_size=8", "mu=2", "steps=391")
    assert "warning:" not in quiet.stderr  # 391 steps at 78 an epoch: the last, step 390, is epoch 5 (tau 1.0)


def test_train_start_warns(digits, tmp_path):
    proc = run_door("jobs/train.py", *FAST, "strategy=fixmatch", SCHEDULE, "epoch_steps=1", f"data={digits}",
                    f"root={tmp_path}", "sweep=s", "name=w", check=True)
    assert "run w: threshold=0.9+0.02*epoch passes 1 at epoch 6 (step 6 of 12; 1 steps an epoch)" in proc.stderr


# --- fault 8: cpus_per_task ----------------------------------------------------------------
def test_sinfo_cpus_is_the_smallest_node():
    assert parse_sinfo_cpus("64\n32+\n128\n") == 32
    assert parse_sinfo_cpus("") is None and parse_sinfo_cpus("n/a\n") is None


def test_default_cpus_per_task_shares_the_node_between_its_ranks():
    assert default_cpus_per_task(ClusterOptions(gpus_per_node=4), 64)[0] == 16
    assert default_cpus_per_task(ClusterOptions(gpus_per_node=4, tasks_per_node=2), 64)[0] == 32
    assert default_cpus_per_task(ClusterOptions(), 48)[0] == 48  # CPU only: one task a node
    assert default_cpus_per_task(ClusterOptions(gpus_per_node=8), 4)[0] == 1
    cpus, why = default_cpus_per_task(ClusterOptions(gpus_per_node=2, partition="gpu"), None)
    assert cpus == 8 and "sinfo cannot tell" in why and "partition gpu" in why


def test_dry_run_script_gets_a_cpus_per_task_and_says_so(digits, tmp_path):
    no_sinfo = str(tmp_path / "empty-bin")
    (tmp_path / "empty-bin").mkdir()
    proc = _dry_run(digits, tmp_path, "--gpus-per-node", "2", "steps=10", path=no_sinfo)
    assert "#SBATCH --cpus-per-task=8" in proc.stdout
    notes = [ln for ln in proc.stdout.splitlines() if ln.startswith("cpus_per_task=")]
    assert len(notes) == 1 and "sinfo cannot tell" in notes[0], proc.stdout
    given = _dry_run(digits, tmp_path, "--gpus-per-node", "2", "--cpus-per-task", "3", "steps=10", path=no_sinfo)
    assert "#SBATCH --cpus-per-task=3" in given.stdout and "not given" not in given.stdout


def test_default_from_the_real_sinfo_where_there_is_one(digits, tmp_path):
    cpus = node_cpus("")
    if shutil.which("sinfo") is None or cpus is None:
        pytest.skip("no answering sinfo here")
    proc = _dry_run(digits, tmp_path, "--gpus-per-node", "1", "steps=10")
    assert f"#SBATCH --cpus-per-task={cpus}" in proc.stdout and "(sinfo)" in proc.stdout


# --- fault 9: every run of a sweep checked before anything is queued ------------------------
@pytest.mark.parametrize("axis, fragment", [
    ("augment=weak,nosuch", "nosuch"),
    ("strong=randaugment,nosuch", "nosuch"),
    ("pretrained=none,nosuchtag", "pretrained=nosuchtag"),
    ("sync_bn=false,true", "sync_bn=true"),
    ("threshold=0.9,0.9+x", "threshold=0.9+x"),
])
def test_a_bad_second_run_of_a_sweep_is_refused_at_planning(axis, fragment, digits, tmp_path):
    with pytest.raises(UserError, match=fragment.replace("+", r"\+")):
        plan_runs([axis], [f"data={digits}", f"root={tmp_path}", "device=cpu", "model=resnet18"])
    assert not (tmp_path / digits.name).exists()


def test_a_bad_model_or_tag_of_a_later_run_is_refused_at_planning(digits, tmp_path):
    common = [f"data={digits}", f"root={tmp_path}"]
    with pytest.raises(UserError, match="model=vit_small_patch16_2244"):
        plan_runs(["model=resnet18,vit_small_patch16_2244"], common)
    with pytest.raises(UserError, match="pretrained=a1_in1k: not a timm tag of model=vit_small_patch16_224"):
        plan_runs(["model=resnet18,vit_small_patch16_224"], [*common, "pretrained=a1_in1k", "image_size=96"])
    assert not (tmp_path / digits.name).exists()


def test_runs_needing_cuda_are_refused_where_the_job_has_no_gpu():
    from sslrun.launch import check_devices

    sync = [make_config({"sync_bn": "true", "name": "s"})]
    with pytest.raises(UserError, match="run s: sync_bn=true needs a GPU .*gpus-per-node 0"):
        check_devices(sync, ClusterOptions(), "slurm")
    with pytest.raises(UserError, match="run c: device=cuda, but the job asks for no GPU"):
        check_devices([make_config({"device": "cuda", "name": "c"})], ClusterOptions(), "slurm")
    check_devices(sync, ClusterOptions(gpus_per_node=1), "slurm")
    check_devices(sync, ClusterOptions(sbatch=["gres=gpu:2"]), "slurm")  # asked another way: not second-guessed
    check_devices([make_config({"name": "plain"})], ClusterOptions(), "slurm")


def test_sync_bn_on_a_local_machine_without_gpu_is_one_line_at_submit(digits, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the local executor can run sync_bn")
    proc = run_door("jobs/submit.py", "--dry-run", "--cluster", "local", f"data={digits}", f"root={tmp_path}",
                    "sync_bn=true")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "sync_bn=true needs a GPU" in lines[0], proc.stderr


def test_cpus_or_gpus_asked_through_sbatch_options_are_left_alone(digits, tmp_path):
    assert ClusterOptions(sbatch=["c=4"]).sbatch_asks("cpus", "mincpus", "c")
    assert ClusterOptions(sbatch=["cpus_per_gpu=4"]).sbatch_asks("cpus", "mincpus", "c")
    assert not ClusterOptions(sbatch=["constraint=h100", "comment=x"]).sbatch_asks("cpus", "mincpus", "c")
    assert ClusterOptions(sbatch=["--gres=gpu:2"]).sbatch_asks("gres", "gpu")
    proc = _dry_run(digits, tmp_path, "--sbatch", "cpus-per-gpu=6", "--gpus-per-node", "2", "steps=10")
    assert "cpus-per-task" not in proc.stdout and "#SBATCH --cpus-per-gpu=6" in proc.stdout


def test_sbatch_reason_is_one_line_of_its_distinct_errors():
    err = ("sbatch: error: invalid partition specified: nosuch\n"
           "sbatch: error: Batch job submission failed: Invalid partition name specified\n\n"
           "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    assert sbatch_reason(err) == ("invalid partition specified: nosuch; "
                                  "Batch job submission failed: Invalid partition name specified")
    assert sbatch_reason("") == "no message"
    assert "\n" not in sbatch_reason("sbatch: error: a\x1b[31m\nb")
