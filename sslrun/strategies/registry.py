"""Strategies by name, so `strategy=NAME` picks one and a typo lists the known names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sslrun.errors import UserError

if TYPE_CHECKING:
    from sslrun.config import Config
    from sslrun.strategies.base import Strategy

STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


def check_strategy_name(name: str) -> None:
    if name not in STRATEGIES:
        raise UserError(f"strategy={name}: unknown (expected one of {', '.join(sorted(STRATEGIES))})")


def create_strategy(cfg: Config, num_classes: int) -> Strategy:
    check_strategy_name(cfg.strategy)
    return STRATEGIES[cfg.strategy](cfg, num_classes)
