"""One exception type for mistakes a user can fix.

Library code raises UserError with a one-line message that names the file or key and what
was expected; the command-line doors catch it, print `error: <message>` and exit with code 2,
so a user never has to read a traceback to learn that a path was wrong.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
import traceback
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


def one_line(text: str, limit: int = 300) -> str:
    """A message as one line: control characters (a newline in a value) shown escaped."""
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def internal_error_log(err: BaseException) -> str:
    """Write the traceback of a bug to a file and return its path: the terminal gets one line,
    the details are kept for the bug report. $SSLRUN_ERROR_DIR, else sslrun-errors in the temp dir."""
    folder = os.environ.get("SSLRUN_ERROR_DIR") or os.path.join(tempfile.gettempdir(), "sslrun-errors")
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), suffix=".log", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(" ".join(sys.argv) + "\n" + text)
        return path
    except OSError:
        fd, path = tempfile.mkstemp(prefix="sslrun-error-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path


def exit_on_user_error(main: Callable[[], int | None]) -> NoReturn:
    """Run a door's main(): the door's one error boundary.

    A UserError (or a full disk) is one line `error: ...` and exit 2; any other exception is a
    bug: one line `error: internal: ...` naming the file that holds the traceback, exit 3.
    """
    try:
        code = main()
    except UserError as err:
        print(f"error: {one_line(str(err), 2000)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as err:  # noqa: BLE001 - the boundary: every bug becomes one line and a log file
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            # A full disk anywhere (a log line, an event file) is the user's to fix, not a bug.
            print(f"error: {one_line(str(write_error(err.filename or 'a file', err)))}", file=sys.stderr)
            sys.exit(2)
        path = internal_error_log(err)
        print(f"error: internal: {type(err).__name__}: {one_line(str(err), 200)} (details: {path})", file=sys.stderr)
        sys.exit(3)
    sys.exit(code or 0)
