"""Every knob of a run in one dataclass, with `key=value` overrides and checked values.

A run is a function of its config and its data, so the config is the record of a run: it is
written to `config.yaml`, its overrides name the run folder (resubmitting a sweep finds the
same folders), and a typo must fail on the login node, not after six hours in the queue.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sslrun.errors import UserError
from sslrun.text import bad_char, shown
from sslrun.yaml_file import load_text, read_yaml_mapping
from sslrun.yaml_file import why as yaml_why

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
    augment_on: str = "auto"  # auto (trainer where both presets have a batched version) | loader (per sample, in the workers) | trainer (per batch, on the device)
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
    decode_cache_mb: int = 1024  # decoded training images kept in memory per rank, shared out over its loader processes; 0 = off
    verify_shards: str = "auto"  # at start: auto (sha256 for sets <= 256 MiB, else size) | full | size
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific knobs

    def run_dir(self) -> Path:
        return Path(self.root) / self.sweep / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Key:
    """A key's type and range: the one place a value is checked, for Config keys and for the
    `extra.*` keys a strategy declares (with their default)."""

    kind: str  # "int" | "float" | "bool" | "str"
    lo: float | None = None  # lower bound, included unless lo_open
    hi: float | None = None  # upper bound, included unless hi_open
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    default: Any = None  # extra keys only (Config keys take the dataclass default)
    doc: str = ""  # what the value means, for the error when the range is missed

    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.doc:
            return self.doc
        if self.kind == "bool":
            return "true or false"
        if self.kind == "str":
            return "a word"
        def show(x: float) -> str:
            return str(int(x)) if self.kind == "int" else f"{x:g}"

        if self.kind == "int" and self.lo == 1:
            return "a positive integer" + (f" up to {show(self.hi)}" if self.hi is not None else "")
        what = "an integer" if self.kind == "int" else "a number"
        if self.lo is not None:
            what += f" {'>' if self.lo_open else '>='} {show(self.lo)}"
        if self.hi is not None:
            what += f"{' and' if self.lo is not None else ''} {'<' if self.hi_open else '<='} {show(self.hi)}"
        return what

    def check(self, name: str, value: Any) -> Any:
        """`value` (text as typed, or a YAML scalar) as this key's type, in range, or a UserError."""
        if isinstance(value, (dict, list, tuple, set)) or value is None:
            raise UserError(f"{name}={value!r}: expected {self.expected()}")
        text = value if isinstance(value, str) else str(value)
        check_text(name, text)
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise UserError(f"{name}={text}: expected true or false")
        if self.kind == "str":
            if self.choices and text not in self.choices:
                raise UserError(f"{name}={text}: expected one of {', '.join(self.choices)}")
            return text
        number: float
        try:
            if isinstance(value, bool) or not text.isascii():
                # Python's int() and float() read Arabic-Indic and other Unicode digits: `seed=٤٢`
                # would be seed 42 in a folder named `seed=__`, a twin of `seed=42`'s run.
                raise ValueError(text)
            if self.kind == "int":
                number = value if isinstance(value, int) else int(text.strip())
            else:
                number = float(text)
        except (ValueError, OverflowError):
            kind = "an integer" if self.kind == "int" else "a number"
            raise UserError(f"{name}={text}: expected {kind} ({self.expected()})") from None
        if not math.isfinite(number):
            raise UserError(f"{name}={text}: expected {self.expected()}")
        low_bad = self.lo is not None and (number <= self.lo if self.lo_open else number < self.lo)
        high_bad = self.hi is not None and (number >= self.hi if self.hi_open else number > self.hi)
        if low_bad or high_bad:
            raise UserError(f"{name}={text}: expected {self.expected()}")
        return number


_INT_MAX = 2**31 - 1
_COUNT = Key("int", 1, _INT_MAX)  # a positive count of steps or samples
_STEPS0 = Key("int", 0, _INT_MAX)  # 0 allowed (off / default)
_STR = Key("str")

# Every Config key, its type and range. Names, paths and presets are words here; the checks that
# need the file system or the registries (strategy, model, augmentation presets) are in run_check.
KEYS: dict[str, Key] = {
    "data": _STR,
    "root": _STR,
    "sweep": _STR,
    "name": _STR,
    "strategy": _STR,
    "model": _STR,
    "pretrained": _STR,
    "frozen": Key("bool"),
    "image_size": Key("int", 16, 4096),
    "seed": Key("int", 0, 2**32 - 1),
    "steps": _COUNT,
    "batch_size": Key("int", 1, 1 << 20),
    "optimizer": Key("str", choices=("sgd", "adamw")),
    "lr": Key("float", 0, 1e300, lo_open=True),  # finite and > 0: a huge lr is how the NaN stop is tested
    "momentum": Key("float", 0, 1, hi_open=True),
    "nesterov": Key("bool"),
    "weight_decay": Key("float", 0, 1),
    "schedule": Key("str", choices=("constant", "cosine")),
    "warmup_steps": _STEPS0,
    "mu": Key("int", 1, 1024),
    "lambda_u": Key("float", 0, 1e6),
    "threshold": _STR,
    "epoch_steps": _STEPS0,
    "budget_s": Key("float", 0, 1e9, doc="0 (off) or a finite number of seconds"),
    "ema_decay": Key("float", 0, 1, hi_open=True, doc="0 (off) or a number in (0, 1)"),
    "augment": _STR,
    "strong": _STR,
    "augment_on": Key("str", choices=("auto", "loader", "trainer")),
    "eval_every": _COUNT,
    "log_every": _COUNT,
    "ckpt_every": _COUNT,
    "device": Key("str", choices=("auto", "cpu", "cuda")),
    "amp": Key("str", choices=("auto", "off", "bf16")),
    "channels_last": Key("str", choices=("auto", "on", "off")),
    "compile": Key("bool"),
    "sync_bn": Key("bool"),
    "workers": Key("int", -1, 1024, doc="-1 (from the CPUs) or a number of loader processes up to 1024"),
    "threads": Key("int", 0, 1024),
    "decode_cache_mb": Key("int", 0, 1 << 24, doc="0 (off) or megabytes of decoded images per rank, up to 16777216"),
    "verify_shards": Key("str", choices=("auto", "full", "size")),
}
CHOICES: dict[str, tuple[str, ...]] = {k: v.choices for k, v in KEYS.items() if v.choices}
MAX_NAME = 200  # a run or sweep folder name; file systems stop at 255 bytes


def check_text(name: str, text: str) -> None:
    """Refuse control characters (a newline, a tab, ESC, U+2028, a bidi override, a lone surrogate
    from a non-UTF-8 argv byte; see sslrun/text.py): values reach job scripts, command lines and
    file names, where a newline is a new line of the sbatch script."""
    bad = bad_char(text)
    if bad is not None:
        raise UserError(f"{name}: contains the control character '{shown(bad)}'; expected printable text")


def closest(name: str, known: list[str]) -> str:
    """` (did you mean X?)` for the nearest known name, or ""."""
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if not match:  # `t1_typo` is far from `t1` by ratio, but starts with it
        match = sorted((k for k in known if name.startswith(k) or k.startswith(name)), key=len, reverse=True)[:1]
    return f" (did you mean {match[0]}?)" if match else ""


# Keys a resumed run may change (recorded in config-history.jsonl): they change how the rest of
# the run is computed or logged, not what its saved state means. `lr` is the way out of a
# non-finite loss: resume from the last good checkpoint with a lower one.
RESUME_KEYS = ("lr", "workers", "threads", "decode_cache_mb", "device", "eval_every", "log_every", "ckpt_every", "verify_shards")

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
assert set(KEYS) == set(_FIELDS) - {"extra"}, "every Config key needs a row in KEYS"


def _unknown(key: str) -> UserError:
    return UserError(f"unknown key '{key}'{closest(key, list(KEYS))} (known: {', '.join(sorted(KEYS))}, extra.NAME)")


def _extra_value(key: str, text: Any) -> Any:
    """An `extra.KEY=` value as YAML (a number, true/false, a word); its type is checked by the
    strategy's declaration in run_check."""
    if not isinstance(text, str):
        return text
    check_text(key, text)
    try:
        value = load_text(text)
    except yaml.YAMLError as err:
        raise UserError(f"{key}={text}: not a YAML value ({yaml_why(err)})") from None
    if isinstance(value, (dict, list)):
        raise UserError(f"{key}={text}: expected a number, true/false or a word")
    return value


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`["seed=1", "extra.t1=2"]` -> ordered dict; unknown keys go to `extra` only as `extra.k=v`."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        check_text(f"override {key!r}", item)
        key = ALIASES.get(key.strip(), key.strip())
        if key.startswith("extra."):
            if not re.fullmatch(r"extra\.[A-Za-z_][A-Za-z0-9_]*", key):
                raise UserError(f"override {item!r}: expected extra.NAME=value with NAME a word")
        elif key not in KEYS:
            raise _unknown(key)
        out[key] = value
    return out


def make_config(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Config:
    """Build and check a Config from `key -> value` overrides (strings or typed values).

    Only the table's checks are made here (types, ranges, names); those that need the file
    system, the strategy registry or timm are in `sslrun.run_check.check_run`.
    """
    overrides = dict(overrides or {})
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if not overrides.get("data"):
        values.update({k: v for k, v in EMBEDDED_DEFAULTS.items() if k not in overrides})
    for key, value in overrides.items():
        key = ALIASES.get(key, key)
        if key.startswith("extra."):
            extra[key[len("extra."):]] = _extra_value(key, value)
        elif key == "extra":
            if not isinstance(value, dict):
                raise UserError(f"extra={value!r}: expected a mapping of strategy keys")
            extra.update({str(k): _extra_value(f"extra.{k}", v) for k, v in value.items()})
        elif key in KEYS:
            values[key] = KEYS[key].check(key, value)
        else:
            raise _unknown(key)
    cfg = Config(**values, extra=extra)
    if not cfg.root:
        cfg.root = env.get("SSLRUN_ROOT", "") or "runs"
        check_text("$SSLRUN_ROOT", cfg.root)
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
    """The run's folder name: its defining overrides in the order given, `k=v` joined by `,`.

    Names longer than MAX_NAME end in a hash of the whole, so two long names never meet.
    """
    parts = [f"{ALIASES.get(k, k)}={v}" for k, v in overrides.items() if ALIASES.get(k, k) not in PLACEMENT_KEYS]
    name = re.sub(r"[^A-Za-z0-9_.,=+\-]", "_", ",".join(parts) or "default")
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 17] + "-" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return name


def validate(cfg: Config) -> None:
    """The checks that need neither the file system's data nor a registry: the table, and the keys
    that only make sense together."""
    for key, spec in KEYS.items():
        spec.check(key, getattr(cfg, key))
    for key in ("sweep", "name"):
        value = getattr(cfg, key)
        if not value or "/" in value or value in (".", "..") or value.startswith("-") or len(value) > MAX_NAME:
            raise UserError(f"{key}={value!r}: expected plain folder names (1 to {MAX_NAME} characters, "
                            "no '/', not starting with '-')")
    if Path(cfg.root).exists() and not Path(cfg.root).is_dir():
        raise UserError(f"root={cfg.root}: is a file; expected a folder for the runs (it is made if missing)")
    if cfg.nesterov and (cfg.optimizer != "sgd" or cfg.momentum == 0):
        raise UserError(f"nesterov=true: needs optimizer=sgd with momentum > 0 (got optimizer={cfg.optimizer}, "
                        f"momentum={cfg.momentum})")
    if cfg.warmup_steps >= cfg.steps and cfg.warmup_steps:
        raise UserError(f"warmup_steps={cfg.warmup_steps}: expected fewer than steps={cfg.steps}")
    for key, value in cfg.extra.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise UserError(f"extra.{key}: expected a word as the key")
        if isinstance(value, str):
            check_text(f"extra.{key}", value)
        elif not isinstance(value, (bool, int, float)) and value is not None:
            raise UserError(f"extra.{key}={value!r}: expected a number, true/false or a word")


def save_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def load_config(path: str | Path) -> Config:
    """A config.yaml back as a Config, every value through the table (a wrong type is one line)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "a mapping of config keys", label="config ")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "extra":
            if value is not None and not isinstance(value, dict):
                raise UserError(f"{path}: extra: expected a mapping of strategy keys")
            values["extra"] = dict(value or {})
            continue
        if key not in KEYS:
            raise UserError(f"{path}: unknown key '{key}'{closest(str(key), list(KEYS))}")
        try:
            values[key] = KEYS[key].check(key, value)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
    cfg = Config(**values)
    try:
        # sweep and name may be left out of a hand-written file: make_config derives them
        validate(dataclasses.replace(cfg, sweep=cfg.sweep or "sweep", name=cfg.name or "name"))
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    return cfg
