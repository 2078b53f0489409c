"""What every command-line door shares: an argument parser whose mistakes are one line.

argparse prints a usage block and then the message (two lines or more, exit 2); the project
promises one line `error: ...` naming what was wrong, the same as every other user mistake,
so a bad flag raises UserError and exit_on_user_error prints it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

from sslrun.errors import UserError, exit_on_user_error


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is a one-line UserError (exit 2), not usage + message."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UserError(f"{message} (see --help)")


def console_script(main: Callable[[], int | None]) -> Callable[[], NoReturn]:
    """A door's console script (pyproject.toml) and its jobs/ or shards/ launcher: `main()` inside
    the one error boundary (errors.exit_on_user_error: one line, exit 2 or 3)."""

    def entry() -> NoReturn:
        exit_on_user_error(main)

    entry.__doc__ = f"{main.__module__}.main() inside the error boundary"
    return entry
