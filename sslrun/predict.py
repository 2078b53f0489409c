"""Predictions of one run or an ensemble of runs on a split, as the leaderboard's `id,label` CSV.

A run is its folder: config.yaml says which data set it learned, the checkpoint holds the
weights (the EMA weights when the run kept them, since those are what it was evaluated with).
Several runs (typically the seeds of one setting) are averaged in softmax space. Everything a
user can get wrong (a folder that is no run, a missing checkpoint, a checkpoint of another
model or class count, runs of different data sets) is a one-line UserError.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from sslrun import checkpoint as ckpt_io
from sslrun.data.manifest import Manifest, read_manifest
from sslrun.data.samples import load_split
from sslrun.distributed import DistInfo
from sslrun.errors import UserError
from sslrun.evaluate import predict
from sslrun.models import create_model, data_config

CHECKPOINTS = ("best", "last")


@dataclass
class Predictions:
    split: str
    ids: list[str]
    labels: np.ndarray  # int64, -1 where the split has no label
    probs: np.ndarray  # (N, C) averaged softmax, in split order
    classes: list[str]
    runs: list[str]
    used_ema: list[bool]

    @property
    def accuracy(self) -> float | None:
        """Accuracy over the labeled samples; None when the split has no labels (a leaderboard test set)."""
        known = self.labels >= 0
        if not known.any():
            return None
        return float((self.probs[known].argmax(1) == self.labels[known]).mean())


def run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = yaml.safe_load(path.read_text()) or {}
    if not isinstance(cfg, dict) or not cfg.get("data") or not cfg.get("model"):
        raise UserError(f"{path}: expected a run's config with data= and model=")
    return cfg


def load_checkpoint(run_dir: Path, which: str) -> dict[str, Any]:
    """best.pt or last.pt of a run, read as plain tensors (weights_only)."""
    if which not in CHECKPOINTS:
        raise UserError(f"--checkpoint {which}: expected one of {', '.join(CHECKPOINTS)}")
    path = run_dir / "ckpt" / f"{which}.pt"
    if not path.is_file():
        other = [c for c in CHECKPOINTS if c != which and (run_dir / "ckpt" / f"{c}.pt").is_file()]
        hint = f" (it has {other[0]}.pt: --checkpoint {other[0]})" if other else " (the run has saved no weights yet)"
        raise UserError(f"{run_dir}: no checkpoint ckpt/{which}.pt{hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported in one line
        raise UserError(f"{path}: unreadable checkpoint ({type(err).__name__}: {' '.join(str(err).split())[:120]})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path}: not a sslrun checkpoint (no 'model' weights)")
    return state


def load_model(run_dir: Path, cfg: dict[str, Any], state: dict[str, Any], manifest: Manifest) -> tuple[torch.nn.Module, bool]:
    """The run's network with the checkpoint's weights (EMA when present); refuses a mismatch."""
    name, classes = state.get("model_name", cfg["model"]), state.get("num_classes")
    if name != cfg["model"]:
        raise UserError(f"{run_dir}: checkpoint is of model {name}, the run's config says model={cfg['model']}")
    if classes != manifest.num_classes:
        raise UserError(f"{run_dir}: checkpoint has {classes} classes, data {manifest.root} has {manifest.num_classes}")
    model = create_model(name, manifest.num_classes, frozen=bool(cfg.get("frozen")))  # the same layers as trained
    ema = state.get("ema")
    weights = ema if isinstance(ema, dict) else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:160]
        raise UserError(f"{run_dir}: checkpoint weights do not fit model {name} ({first})") from None
    return model.eval(), isinstance(ema, dict)


def predict_runs(run_dirs: list[Path], split: str = "test", which: str = "best", batch_size: int = 256,
                 workers: int = 0, device: str = "cpu") -> Predictions:
    """Softmax of every sample of `split`, averaged over the runs; samples in the split's order."""
    if not run_dirs:
        raise UserError("give at least one run folder")
    configs = [run_config(Path(r)) for r in run_dirs]
    data = {str(Path(c["data"]).resolve()) for c in configs}
    if len(data) > 1:
        raise UserError(f"runs of different data sets cannot be ensembled: {', '.join(sorted(data))}")
    manifest = read_manifest(configs[0]["data"])
    if split not in manifest.splits:
        raise UserError(f"--split {split}: data {manifest.root} has splits {', '.join(manifest.splits)}")
    samples = load_split(manifest, split)
    dev = torch.device(device)
    total = np.zeros((len(samples), manifest.num_classes), dtype=np.float64)
    used_ema = []
    states = [load_checkpoint(Path(r), which) for r in run_dirs]  # every run checked before any work
    for run_dir, cfg, state in zip(run_dirs, configs, states):
        model, ema = load_model(Path(run_dir), cfg, state, manifest)
        used_ema.append(ema)
        model.to(dev)
        mean, std = data_config(model)
        m = torch.tensor(mean, device=dev).view(1, 3, 1, 1) * 255
        s = torch.tensor(std, device=dev).view(1, 3, 1, 1) * 255

        def prepare(x: torch.Tensor, m: torch.Tensor = m, s: torch.Tensor = s) -> torch.Tensor:
            return x.to(dev).float().sub_(m).div_(s)

        idx, _, probs = predict(model, samples, prepare, int(cfg.get("image_size", 96)), batch_size, workers,
                                DistInfo(), dev)
        if len(idx):
            total[idx.cpu().numpy()] += probs.double().cpu().numpy()
    return Predictions(split, list(samples.ids), samples.label.copy(), total / len(run_dirs), list(manifest.classes),
                       [str(r) for r in run_dirs], used_ema)


def submission_csv(pred: Predictions) -> str:
    """`id,label` with the class name of the highest averaged probability, one line per sample."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "label"])
    for sid, k in zip(pred.ids, pred.probs.argmax(1)):
        w.writerow([sid, pred.classes[int(k)]])
    return buf.getvalue()


def default_out(run_dirs: list[Path], split: str, which: str) -> Path:
    """RUN/submission-test-best.csv for one run; next to the runs, named by their hash, for an ensemble."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / f"submission-{split}-{which}.csv"
    digest = hashlib.sha256("\n".join(sorted(str(Path(r).resolve()) for r in run_dirs)).encode()).hexdigest()[:8]
    return Path(run_dirs[0]).resolve().parent / f"ensemble-{len(run_dirs)}runs-{digest}-{split}-{which}.csv"


def write_predictions(run_dirs: list[Path], split: str = "test", which: str = "best", out: Path | None = None,
                      workers: int = 0) -> tuple[Path, Predictions]:
    """Predict and write the CSV atomically (a reader never sees half a submission)."""
    pred = predict_runs(run_dirs, split, which, workers=workers)
    path = Path(out) if out else default_out(run_dirs, split, which)
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: folder {path.parent} does not exist")
    ckpt_io.atomic_write_text(path, submission_csv(pred))
    return path, pred
