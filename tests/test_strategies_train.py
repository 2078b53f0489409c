"""The new strategies inside the engine: loader pools, labeling passes (1 vs 2 ranks), end-to-end
runs on the digits, exact resume of a stateful strategy, pretrained=FILE and budget_s."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST, REPO
from sslrun.config import make_config, parse_overrides


def _config(digits: Path, tmp_path: Path, *items: str):
    return make_config(parse_overrides([*FAST, f"data={digits}", f"root={tmp_path}", "sweep=s", "workers=0",
                                            "model=test_resnet", "image_size=32", "lr=0.03", *items]))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _run(cfg):
    from sslrun.engine import run

    return run(cfg)


LOCAL = ["strategy=local", "threshold=0", "extra.local_warmup=4", "extra.pseudo_steps=3", "extra.retrain_steps=2"]


def test_loader_draws_from_the_pool_the_phase_asks_for(digits, tmp_path):
    from sslrun.engine import Trainer

    trainer = Trainer(_config(digits, tmp_path, *LOCAL, "batch_size=16"))
    strat = trainer.strategy
    strat.pool_index, strat.pool_label = torch.tensor([3, 5, 8]), torch.tensor([7, 7, 2])
    strat.last_pass = 4
    pseudo = next(trainer._loader(4))  # phase "pseudo": the pseudo-labeled samples alone
    pairs = set(zip(pseudo["y_index"].tolist(), pseudo["y"].tolist()))
    assert pairs <= {(3, 7), (5, 7), (8, 2)} and len(pseudo["y"]) == 16
    train_label = torch.from_numpy(trainer.train.label)
    for step in (0, 7):  # warm-up and retrain: the labeled set alone, with its true labels
        raw = next(trainer._loader(step))
        assert (raw["y_index"] < len(trainer.train)).all()
        assert torch.equal(raw["y"], train_label[raw["y_index"]])
    assert "u_weak" not in pseudo, "local needs no unlabeled stream in its training steps"


def test_permanent_loader_adds_pool_to_the_labeled_set(digits, tmp_path):
    from sslrun.engine import Trainer

    trainer = Trainer(_config(digits, tmp_path, "strategy=permanent", "batch_size=64"))
    n = len(trainer.train)
    trainer.strategy.table[:] = -1
    trainer.strategy.table[:n] = 9  # as many pseudo-labeled samples as labeled ones, all class 9
    seen = set()
    it = trainer._loader(0)
    for _ in range(6):
        raw = next(it)
        seen |= set(zip(raw["y_index"].tolist(), raw["y"].tolist()))
    assert any(lab == 9 and idx < n and trainer.train.label[idx] != 9 for idx, lab in seen), "pseudo-labeled drawn"
    assert any(trainer.train.label[idx] == lab != 9 for idx, lab in seen), "labeled samples drawn too"


_WORKER = r"""
import sys, torch
from sslrun import distributed
from sslrun.data.manifest import read_manifest
from sslrun.data.samples import load_split
from sslrun.evaluate import labeling_pass
from sslrun.models import create_model
info = distributed.from_environment()
distributed.init(info, torch.device("cpu"))
torch.set_num_threads(1)
torch.manual_seed(0)
model = create_model("test_resnet", 10)
split = load_split(read_manifest(sys.argv[1]), "unlabeled")
prep = lambda x: x.float().div(255)
idx, conf, pred = labeling_pass(model, split, prep, 32, 64, 0, info, torch.device("cpu"))
torch.save({"idx": idx, "conf": conf, "pred": pred}, sys.argv[2] + f".{info.rank}")
distributed.shutdown()
"""


@pytest.mark.slow
def test_labeling_pass_over_two_ranks_equals_one(digits, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = []
    for rank in (0, 1):
        env = {**base, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, str(digits), str(tmp_path / "two")], cwd=REPO,
                                      env=env))
    # the single-rank pass runs here meanwhile, with the same model and inputs as the workers'
    from sslrun import distributed
    from sslrun.data.manifest import read_manifest
    from sslrun.data.samples import load_split
    from sslrun.evaluate import labeling_pass
    from sslrun.models import create_model

    torch.manual_seed(0)
    model = create_model("test_resnet", 10)
    split = load_split(read_manifest(digits), "unlabeled")
    idx, conf, pred = labeling_pass(model, split, lambda x: x.float().div(255), 32, 64, 0, distributed.DistInfo(),
                                    torch.device("cpu"))
    one = {"idx": idx, "conf": conf, "pred": pred}
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    for rank in (0, 1):
        two = torch.load(tmp_path / f"two.{rank}", weights_only=True)
        assert torch.equal(two["idx"], one["idx"]) and torch.equal(one["idx"], torch.arange(len(one["idx"])))
        assert torch.allclose(two["conf"], one["conf"], atol=1e-6) and torch.equal(two["pred"], one["pred"])


@pytest.mark.slow
@pytest.mark.parametrize("strategy, extra, expect", [
    ("classical", ["extra.t1=2", "extra.t2=8", "threshold=0.5"], {"loss_s", "loss_u", "mask_rate", "alpha"}),
    ("flexmatch", [], {"loss_s", "loss_u", "mask_rate", "pl_acc", "class_threshold_min", "unused_rate"}),
    ("permanent", ["threshold=0", "extra.label_every=4", "extra.mixup=0.5"], {"loss_s", "pool_size", "mask_rate"}),
])
def test_strategy_trains_end_to_end_and_logs(digits, tmp_path, strategy, extra, expect):
    cfg = _config(digits, tmp_path, f"strategy={strategy}", *extra, "name=run")
    result = _run(cfg)
    assert result["steps"] == 12 and result["strategy"] == strategy and 0 <= result["val_acc"] <= 1
    lines = _metrics(cfg.run_dir())
    train_keys = set().union(*(set(ln) for ln in lines if ln["kind"] == "train"))
    assert expect <= train_keys, expect - train_keys
    labeling = [ln for ln in lines if ln["kind"] == "labeling"]
    if strategy == "permanent":
        # threshold 0: the first pass (step 4) takes every unlabeled sample; later passes add nothing new
        assert [ln["step"] for ln in labeling] == [4, 8]
        assert all(ln["selected_rate"] == 1.0 and 0 <= ln["pl_acc"] <= 1 for ln in labeling)
    else:
        assert not labeling


@pytest.mark.slow
def test_a_labeling_pass_that_selects_nothing_says_so(digits, tmp_path, caplog):
    """threshold=1: no softmax reaches it, the pool stays empty and the run is supervised; a
    warning with the highest confidence says so (before: one INFO line, '0 selected')."""
    caplog.set_level(logging.WARNING, logger="sslrun.engine")
    cfg = _config(digits, tmp_path, "strategy=permanent", "threshold=1", "extra.label_every=4", "name=none")
    _run(cfg)
    labeling = [ln for ln in _metrics(cfg.run_dir()) if ln["kind"] == "labeling"]
    assert [ln["selected"] for ln in labeling] == [0, 0] and all(0 < ln["max_conf"] < 1 for ln in labeling)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "selected none" in r.getMessage()]
    assert len(said) == 2 and "most confident scored" in said[0] and "threshold=1" in said[0], said


@pytest.mark.slow
def test_local_runs_its_phases_and_resumes_exactly_after_sigterm(digits, tmp_path, monkeypatch):
    from sslrun.engine import Interrupted
    from sslrun.strategies.local import Local

    straight = _run(_config(digits, tmp_path, *LOCAL, "name=straight", "ckpt_every=5"))
    lines = _metrics(tmp_path / "s" / "straight")
    assert [ln["step"] for ln in lines if ln["kind"] == "labeling"] == [4, 9]
    phases = {ln["step"]: ln["phase"] for ln in lines if ln["kind"] == "train"}
    assert phases == {2: 0.0, 4: 0.0, 6: 1.0, 8: 2.0, 10: 1.0, 12: 1.0}  # logged after steps 1, 3, 5, ...

    # The same run, stopped by SIGTERM during step 9, just after that step's labeling pass.
    real = Local.compute_loss

    def stop_at_9(self, model, batch, info):
        if info.step == 9:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, model, batch, info)

    cfg = _config(digits, tmp_path, *LOCAL, "name=stopped", "ckpt_every=5")
    monkeypatch.setattr(Local, "compute_loss", stop_at_9)
    with pytest.raises(Interrupted) as stop:
        _run(cfg)
    assert stop.value.step == 10  # the step under way when the signal came is finished first
    state = torch.load(tmp_path / "s" / "stopped" / "ckpt" / "last.pt", weights_only=True)
    assert state["step"] == 10 and state["strategy"]["last_pass"] == 9
    monkeypatch.setattr(Local, "compute_loss", real)
    resumed = _run(cfg)
    assert resumed["restarts"] == 1
    assert resumed["weights_sha256"] == straight["weights_sha256"]


@pytest.mark.slow
def test_pretrained_file_is_loaded(digits, tmp_path):
    """What jobs/prefetch_weights.py --out writes (a state_dict file) trains as pretrained=FILE."""
    import timm

    torch.manual_seed(123)
    source = timm.create_model("test_resnet", num_classes=10).state_dict()
    path = tmp_path / "weights.pt"
    torch.save(source, path)
    cfg = _config(digits, tmp_path, "strategy=supervised", f"pretrained={path}", "frozen=true", "steps=2",
                  "ema_decay=0", "name=pre")
    _run(cfg)
    trained = torch.load(cfg.run_dir() / "ckpt" / "last.pt", weights_only=True)["model"]
    convs = [k for k, v in source.items() if v.ndim == 4]
    assert convs and all(torch.equal(trained[k], source[k]) for k in convs), "frozen backbone = the file's weights"
    torch.manual_seed(42)
    fresh = timm.create_model("test_resnet", num_classes=10).state_dict()
    assert not torch.equal(fresh[convs[0]], source[convs[0]])


def test_budget_stops_at_a_step_boundary_and_evaluates(digits, tmp_path):
    cfg = _config(digits, tmp_path, "strategy=supervised", "steps=1000", "budget_s=0.001", "name=budget")
    result = _run(cfg)
    assert result["steps"] == 1 and result["stopped_by"] == "budget_s" and result["val_acc"] is not None
    assert any(ln["kind"] == "val" and ln["step"] == 1 for ln in _metrics(cfg.run_dir()))
    assert torch.load(cfg.run_dir() / "ckpt" / "last.pt", weights_only=True)["step"] == 1
