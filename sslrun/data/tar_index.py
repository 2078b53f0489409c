"""Random access into tar shards: where each member's bytes lie, found by reading headers only.

Scanning 512-byte headers and seeking past the data is far cheaper than reading the tar, so
an index over 300k samples costs a second or two at start-up and buys exact, worker-count
independent sampling by position (DESIGN.md, "indexed" resume). Shards are read, never
extracted; member names that could escape a folder are refused all the same, as a sign of a
file that was not made by shards/build.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sslrun.errors import UserError

BLOCK = 512


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of the data, in bytes from the start of the file
    size: int


def _octal(field: bytes, path: Path, at: int) -> int:
    text = field.rstrip(b"\0 ").strip()
    if not text:
        return 0
    if field[0] & 0x80:  # GNU base-256 for big sizes
        return int.from_bytes(field[1:], "big")
    try:
        return int(text, 8)
    except ValueError:
        raise UserError(f"{path}: corrupt tar header at byte {at}") from None


def _pax_path(data: bytes) -> str | None:
    """The `path` record of a PAX extended header, if any."""
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8")
        pos += length
    return None


def scan_tar(path: str | Path) -> list[Member]:
    """Regular-file members of a tar in file order; a UserError names a damaged or hostile shard."""
    path = Path(path)
    members: list[Member] = []
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise UserError(f"shard {path}: cannot open ({err.strerror})") from None
    try:
        end = os.fstat(fd).st_size
        pos = 0
        long_name: str | None = None
        while pos + BLOCK <= end:
            header = os.pread(fd, BLOCK, pos)
            if header == b"\0" * BLOCK:
                break
            size = _octal(header[124:136], path, pos)
            kind = header[156:157]
            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
            if prefix and header[257:262] == b"ustar":
                name = f"{prefix}/{name}"
            data_at = pos + BLOCK
            if data_at + size > end:
                raise UserError(f"shard {path}: truncated (member {name!r} runs past the end of the file)")
            if kind in (b"x", b"L"):
                payload = os.pread(fd, size, data_at)
                long_name = _pax_path(payload) if kind == b"x" else payload.rstrip(b"\0").decode("utf-8", "replace")
            elif kind in (b"0", b"\0", b"7"):
                if long_name is not None:
                    name, long_name = long_name, None
                if name.startswith("/") or ".." in name.split("/"):
                    raise UserError(f"shard {path}: member name {name!r} is absolute or has '..'; refusing it")
                members.append(Member(name, data_at, size))
            elif kind != b"g":
                long_name = None
            pos = data_at + (size + BLOCK - 1) // BLOCK * BLOCK
        else:
            if pos != end:
                raise UserError(f"shard {path}: truncated (ends inside a tar header)")
    finally:
        os.close(fd)
    return members


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key runs to the first dot of the base name, the rest is the extension."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()
