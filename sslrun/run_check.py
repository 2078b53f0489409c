"""The one check of a run that needs more than its config: the data set, the strategy registry, timm.

`config.make_config` checks every key against its table and imports nothing heavy; what needs
the strategy classes, timm or the data folder is checked here, once, by `launch.plan_runs` on
the login node before anything is queued and by the engine before any run folder is made. It
is also the one place the embedded digits data set is resolved into `cfg.data`.
"""

from __future__ import annotations

from pathlib import Path

from sslrun.config import Config, closest
from sslrun.data.manifest import Manifest, read_manifest
from sslrun.errors import UserError


def resolve_data(cfg: Config) -> None:
    """`data=` empty means the embedded digits set: build it once under the runs root."""
    if not cfg.data:
        from sslrun.data.digits import ensure_digits

        cfg.data = str(ensure_digits(Path(cfg.root) / ".data"))


def check_extra(cfg: Config) -> None:
    """Strategy name and its declared `extra.*` keys (a typo -> the closest name)."""
    from sslrun.strategies import STRATEGIES, check_strategy_name

    check_strategy_name(cfg.strategy)
    declared = STRATEGIES[cfg.strategy].declared_extra()
    for key, value in cfg.extra.items():
        if key not in declared:
            known = ", ".join(f"extra.{k}" for k in sorted(declared)) or "none"
            hint = closest(key, list(declared))
            hint = hint.replace("mean ", "mean extra.") if hint else ""
            raise UserError(f"extra.{key}: not a key of strategy={cfg.strategy}{hint} (known: {known})")
        declared[key].check(f"extra.{key}", value)


def check_strategy(cfg: Config, manifest: Manifest) -> None:
    """Cross-key checks made at the strategy's construction, and the unlabeled split it needs."""
    from sslrun.strategies import create_strategy

    strategy = create_strategy(cfg, manifest.num_classes)
    unlabeled = manifest.splits.get("unlabeled")
    if strategy.needs_unlabeled and (unlabeled is None or unlabeled.count == 0):
        raise UserError(f"strategy={cfg.strategy} needs an 'unlabeled' split with samples, and {cfg.data} has none")


def check_machine(cfg: Config) -> None:
    """Settings that cannot work on the device asked for."""
    if cfg.sync_bn and cfg.device == "cpu":
        raise UserError("sync_bn=true: needs device=cuda (or auto on a GPU node); SyncBatchNorm has no CPU kernel")


def check_run(cfg: Config) -> Manifest:
    """Every check that needs no GPU and no run folder; returns the data set's manifest."""
    from sslrun.data.batch_augment import check_presets
    from sslrun.models import check_model
    from sslrun.strategies.thresholds import parse_threshold

    parse_threshold(cfg.threshold)
    check_extra(cfg)
    check_presets(cfg.augment, cfg.strong, cfg.augment_on)
    check_machine(cfg)
    check_model(cfg.model, cfg.pretrained, cfg.image_size)
    resolve_data(cfg)
    if not Path(cfg.data).is_dir():
        raise UserError(f"data={cfg.data}: folder does not exist (expected a shard set made by shards/build.py)")
    manifest = read_manifest(cfg.data)
    check_strategy(cfg, manifest)
    return manifest
