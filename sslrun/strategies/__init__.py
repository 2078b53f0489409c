"""Training strategies, one file each; importing this package registers them all."""

from sslrun.strategies import classical, fixmatch, flexmatch, freematch, local, permanent, supervised  # noqa: F401  (registration)
from sslrun.strategies.registry import STRATEGIES, check_strategy_name, create_strategy

__all__ = ["STRATEGIES", "check_strategy_name", "create_strategy"]
