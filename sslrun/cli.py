"""What every command-line door shares: an argument parser whose mistakes are one line.

argparse prints a usage block and then the message (two lines or more, exit 2); the project
promises one line `error: ...` naming what was wrong, the same as every other user mistake,
so a bad flag raises UserError and exit_on_user_error prints it.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from sslrun.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is a one-line UserError (exit 2), not usage + message."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UserError(f"{message} (see --help)")
