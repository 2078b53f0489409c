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

from sslrun import checkpoint as ckpt_io
from sslrun import run_folder
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
    path = run_dir / run_folder.CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = run_folder.read_config(run_dir)
    for key in ("data", "model"):
        if not isinstance(cfg.get(key), str) or not cfg[key]:
            raise UserError(f"{path}: expected a run's config with {key}= (a name or path), found {cfg.get(key)!r}")
    size = cfg.get("image_size", 96)
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096:
        raise UserError(f"{path}: image_size={size!r}, expected a whole number of pixels from 8 to 4096")
    return cfg


def load_checkpoint(run_dir: Path, which: str) -> dict[str, Any]:
    """best.pt or last.pt of a run, read as plain tensors (weights_only)."""
    if which not in CHECKPOINTS:
        raise UserError(f"--checkpoint {which}: expected one of {', '.join(CHECKPOINTS)}")
    folder = run_folder.ckpt_dir(run_dir)
    path = folder / f"{which}.pt"
    if not path.is_file():
        other = [c for c in CHECKPOINTS if c != which and (folder / f"{c}.pt").is_file()]
        hint = f" (it has {other[0]}.pt: --checkpoint {other[0]})" if other else " (the run has saved no weights yet)"
        raise UserError(f"{run_dir}: no checkpoint ckpt/{which}.pt{hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported in one line
        raise UserError(f"{path}: unreadable checkpoint ({type(err).__name__}: {' '.join(str(err).split())[:120]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or not state["model"]:
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
    weights = ema if isinstance(ema, dict) and ema else state["model"]
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise UserError(f"{run_dir}: checkpoint weights do not fit model {name} ({first})") from None
    return model.eval(), weights is ema


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


def check_out(path: Path, overwrite: bool) -> None:
    """An explicit --out never replaces an existing file unless asked (--overwrite), and never a
    folder or a file of a run folder (config.yaml, a checkpoint...): those are data, not outputs."""
    if path.is_dir():
        raise UserError(f"--out {path}: is a folder; expected a CSV file name")
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: folder {path.parent} does not exist")
    if path.suffix.lower() != ".csv":
        raise UserError(f"--out {path}: expected a file name ending in .csv")
    if path.exists() and not overwrite:
        raise UserError(f"--out {path}: exists; give --overwrite to replace it (nothing was written)")


def write_predictions(run_dirs: list[Path], split: str = "test", which: str = "best", out: Path | None = None,
                      workers: int = 0, overwrite: bool = False) -> tuple[Path, Predictions]:
    """Predict and write the CSV atomically (a reader never sees half a submission).

    The default path (RUN/submission-SPLIT-CKPT.csv, or ensemble-...csv beside the runs) is this
    command's own output and is rewritten; an explicit `out` that exists needs `overwrite`.
    Every check runs before the predictions are computed."""
    if workers < 0:
        raise UserError(f"--workers {workers}: expected 0 or more loader processes")
    path = Path(out) if out else default_out(run_dirs, split, which)
    if out:
        check_out(path, overwrite)
    elif not path.parent.is_dir():
        raise UserError(f"--out {path}: folder {path.parent} does not exist")
    pred = predict_runs(run_dirs, split, which, workers=workers)
    ckpt_io.atomic_write_text(path, submission_csv(pred))
    return path, pred
