"""Every knob of a run in one dataclass, with `key=value` overrides and checked values.

A run is a function of its config and its data, so the config is the record of a run: it is
written to `config.yaml`, its overrides name the run folder (resubmitting a sweep finds the
same folders), and a typo must fail on the login node, not after six hours in the queue.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sslrun.errors import UserError
from sslrun.yaml_file import read_yaml_mapping

# Keys that locate a run rather than define it: they never enter the run's name.
PLACEMENT_KEYS = ("root", "sweep", "name", "data")
# `seeds=` reads naturally in `--array seeds=42,43,44`.
ALIASES = {"seeds": "seed", "strategies": "strategy", "models": "model"}


@dataclass
class Config:
    # where
    data: str = ""  # a shard set folder; "" = the embedded digits data set
    root: str = ""  # runs root; "" = $SSLRUN_ROOT or ./runs
    sweep: str = ""  # "" = the data set's folder name
    name: str = ""  # "" = derived from the overrides
    # what
    strategy: str = "fixmatch"
    model: str = "resnet50"
    pretrained: str = ""  # "" none; "timm" the timm default tag; a timm tag; or a weights file
    frozen: bool = False
    image_size: int = 96
    # optimisation (the report's defaults: SGD, momentum 0.9, lr 1e-3, batch 128)
    seed: int = 42
    steps: int = 10000
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    # semi-supervised
    mu: int = 7  # unlabeled batches per labeled batch
    lambda_u: float = 1.0
    threshold: str = "0.95"  # a number, or a schedule of `epoch`, e.g. 0.9+0.02*epoch
    epoch_steps: int = 0  # 0 = one pass over the unlabeled set (labeled set if none)
    budget_s: float = 0.0  # wall-clock seconds; the run stops at the first step boundary after (0 = off)
    ema_decay: float = 0.999  # 0 = no EMA model
    augment: str = "weak"  # labeled-view augmentation preset
    strong: str = "randaugment"  # strong-view preset
    # cadence
    eval_every: int = 500
    log_every: int = 50
    ckpt_every: int = 500
    # machine
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 on GPU) | off | bf16
    channels_last: str = "auto"  # auto (on GPU) | on | off
    compile: bool = False
    sync_bn: bool = False
    workers: int = -1  # -1 = from the CPUs SLURM gave (or the machine has)
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    verify_shards: str = "auto"  # at start: auto (sha256 for sets <= 256 MiB, else size) | full | size
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific knobs

    def run_dir(self) -> Path:
        return Path(self.root) / self.sweep / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("constant", "cosine"),
    "device": ("auto", "cpu", "cuda"),
    "amp": ("auto", "off", "bf16"),
    "channels_last": ("auto", "on", "off"),
    "verify_shards": ("auto", "full", "size"),
}
# Keys a resumed run may change (recorded in config-history.jsonl): they change how the rest of
# the run is computed or logged, not what its saved state means. `lr` is the way out of a
# non-finite loss: resume from the last good checkpoint with a lower one.
RESUME_KEYS = ("lr", "workers", "threads", "device", "eval_every", "log_every", "ckpt_every", "verify_shards")
POSITIVE = ("steps", "batch_size", "image_size", "mu", "eval_every", "log_every", "ckpt_every")

# Small settings that make the embedded digits data train in a minute or two on a laptop CPU.
EMBEDDED_DEFAULTS: dict[str, Any] = {
    "model": "test_resnet",
    "image_size": 32,
    "steps": 300,
    "batch_size": 16,
    "lr": 0.03,
    "nesterov": True,
    "schedule": "cosine",
    "eval_every": 100,
    "log_every": 20,
    "ckpt_every": 100,
    "ema_decay": 0.99,
    "workers": 0,
    "threads": 1,
}

_FIELDS = {f.name: f for f in fields(Config)}


def _parse_bool(key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise UserError(f"{key}={text}: expected true or false")


def _convert(key: str, text: Any) -> Any:
    kind = _FIELDS[key].type
    if not isinstance(text, str):
        text = str(text)
    try:
        if kind == "bool":
            return _parse_bool(key, text)
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise UserError(f"{key}={text}: expected {'an integer' if kind == 'int' else 'a number'}") from None
    return text


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`["seed=1", "x.y=2"]` -> ordered dict; unknown keys go to `extra` only as `extra.k=v`."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = ALIASES.get(key.strip(), key.strip())
        if key not in _FIELDS and not key.startswith("extra."):
            raise UserError(f"unknown key '{key}' in {item!r} (known: {', '.join(sorted(_FIELDS))})")
        out[key] = value
    return out


def make_config(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Config:
    """Build and check a Config from `key -> value` overrides (strings or typed values)."""
    overrides = dict(overrides or {})
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if not overrides.get("data"):
        values.update({k: v for k, v in EMBEDDED_DEFAULTS.items() if k not in overrides})
    for key, value in overrides.items():
        key = ALIASES.get(key, key)
        if key.startswith("extra."):
            extra[key[len("extra."):]] = yaml.safe_load(str(value))
        elif key == "extra" and isinstance(value, dict):
            extra.update(value)
        elif key in _FIELDS:
            values[key] = _convert(key, value)
        else:
            raise UserError(f"unknown key '{key}' (known: {', '.join(sorted(_FIELDS))})")
    cfg = Config(**values, extra=extra)
    if not cfg.root:
        cfg.root = env.get("SSLRUN_ROOT", "") or "runs"
    cfg.root = str(Path(cfg.root).expanduser().absolute())
    if cfg.data:
        cfg.data = str(Path(cfg.data).expanduser().absolute())
    if not cfg.sweep:
        cfg.sweep = Path(cfg.data).name if cfg.data else "digits"
    if not cfg.name:
        cfg.name = run_name(overrides)
    validate(cfg)
    return cfg


def run_name(overrides: dict[str, Any]) -> str:
    """The run's folder name: its defining overrides in the order given, `k=v` joined by `,`."""
    parts = [f"{ALIASES.get(k, k)}={v}" for k, v in overrides.items() if ALIASES.get(k, k) not in PLACEMENT_KEYS]
    name = ",".join(parts) or "default"
    return re.sub(r"[^A-Za-z0-9_.,=+\-]", "_", name)[:200]


def validate(cfg: Config) -> None:
    from sslrun.models import check_model_name
    from sslrun.strategies import check_strategy_name
    from sslrun.strategies.thresholds import parse_threshold

    for key, allowed in CHOICES.items():
        value = getattr(cfg, key)
        if value not in allowed:
            raise UserError(f"{key}={value}: expected one of {', '.join(allowed)}")
    for key in POSITIVE:
        if getattr(cfg, key) <= 0:
            raise UserError(f"{key}={getattr(cfg, key)}: expected a positive integer")
    if cfg.lr <= 0:
        raise UserError(f"lr={cfg.lr}: expected a positive number")
    if cfg.budget_s < 0:
        raise UserError(f"budget_s={cfg.budget_s}: expected 0 (off) or a number of seconds")
    if not 0 <= cfg.ema_decay < 1:
        raise UserError(f"ema_decay={cfg.ema_decay}: expected 0 (off) or a number in (0, 1)")
    if "/" in cfg.sweep or "/" in cfg.name or cfg.sweep in ("", ".", "..") or cfg.name in (".", ".."):
        raise UserError(f"sweep={cfg.sweep!r} name={cfg.name!r}: expected plain folder names")
    check_strategy_name(cfg.strategy)
    check_model_name(cfg.model)
    parse_threshold(cfg.threshold)
    if cfg.data and not Path(cfg.data).is_dir():
        raise UserError(f"data={cfg.data}: folder does not exist (expected a shard set made by shards/build.py)")


def save_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    raw = read_yaml_mapping(path, "a mapping of config keys", label="config ")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}'")
    cfg = Config(**raw)
    validate(cfg)
    return cfg
