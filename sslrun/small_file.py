"""Reading a small file that a user wrote, or that anyone could have replaced by a link.

A config, a sweep file or a run's result.json may be a symlink to /dev/zero, a FIFO or a
multi-gigabyte file: `Path.read_bytes()` then never returns or fills the memory. Such files
are read only when they are regular files, and only up to a limit; anything else is an
OSError with a plain reason, which every caller already turns into one line naming the file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

LIMIT = 64 << 20  # far above any config, sweep file or result.json sslrun writes


def read_small(path: str | Path, limit: int = LIMIT) -> bytes:
    """The bytes of the regular file `path` (links followed), at most `limit` of them, else OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO must not wait
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise OSError(errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL, what, str(path))
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit >> 20} MiB", str(path))
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew while read
                raise OSError(errno.EFBIG, f"larger than {limit >> 20} MiB", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)
