"""One exception type for mistakes a user can fix.

Library code raises UserError with a one-line message that names the file or key and what
was expected; the command-line doors catch it, print `error: <message>` and exit with code 2,
so a user never has to read a traceback to learn that a path was wrong.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


class UserError(Exception):
    """A problem with the user's input (a path, a key, a value), not a bug."""


# Errors of the storage rather than of the program: a full disk, a quota, a read-only mount.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def write_error(path: str | Path, err: OSError, kept: str = "") -> UserError:
    """A failed write as one line naming the file: what happened and what was kept."""
    why = err.strerror or type(err).__name__
    return UserError(f"cannot write {path}: {why}" + (f"; {kept}" if kept else ""))


def exit_on_user_error(main: Callable[[], int | None]) -> NoReturn:
    """Run a door's main(); turn UserError into one line on stderr and exit code 2."""
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in STORAGE_ERRNOS:
            raise
        # A full disk anywhere (a log line, an event file) is the user's to fix, not a bug.
        print(f"error: {write_error(err.filename or 'a file', err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
