"""The one tar parser of the suite: where each member's bytes lie, found by reading headers only.

Scanning 512-byte headers and seeking past the data is far cheaper than reading the tar, so
an index over 300k samples costs a second or two at start-up and buys exact, worker-count
independent sampling by position (DESIGN.md, "indexed" resume). Training (samples.py) and
shards/verify.py both read shards through this parser, so a shard that one accepts the other
accepts too.

Total by construction: every header field is checked before it is used (checksum, sizes as
ASCII octal or GNU base-256, PAX records with their length, names as UTF-8), every length is
bounded by the file, and every loop advances by at least one block; a malformed shard is
one UserError naming the shard and the byte offset, never a hang or another exception.
Shards are read, never extracted; member names that could escape a folder are refused all
the same, as a sign of a file that was not made by shards/build.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sslrun.errors import UserError

BLOCK = 512
_OCTAL = re.compile(rb"[0-7]+\Z")
_DIGITS = re.compile(rb"[0-9]+\Z")
_ZERO_BLOCK = b"\0" * BLOCK
_MAX_META = 1 << 20  # a PAX or GNU long-name payload bigger than this is not a name


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of the data, in bytes from the start of the file
    size: int


class _Bad(Exception):
    """A malformed header: message and byte offset, turned into a UserError by the caller."""

    def __init__(self, at: int, what: str) -> None:
        super().__init__(what)
        self.at, self.what = at, what


def _number(field: bytes, at: int, what: str) -> int:
    """A numeric header field: ASCII octal (NUL/space padded) or GNU base-256 (positive only)."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] == b"\xff":
        raise _Bad(at, f"negative {what} (base-256)")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if not _OCTAL.match(text):
        raise _Bad(at, f"{what} field {field!r} is not an octal number")
    return int(text, 8)


def _checksum_ok(header: bytes, at: int) -> bool:
    stored = _number(header[148:156], at + 148, "checksum")
    blanked = header[:148] + b"        " + header[156:]
    unsigned = sum(blanked)
    signed = unsigned - sum(256 for b in blanked if b >= 128)  # old tars summed signed chars
    return stored in (unsigned, signed)


def _text(raw: bytes, at: int, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad(at, f"{what} {raw[:60]!r} is not UTF-8") from None


def _pax_path(data: bytes, at: int) -> str | None:
    """The `path` record of a PAX extended header ("<len> <key>=<value>\\n" records), if any."""
    pos, n, path = 0, len(data), None
    while pos < n:
        if data[pos:].strip(b"\0") == b"":  # NUL padding after the last record
            break
        space = data.find(b" ", pos, pos + 21)
        if space < 0 or not _DIGITS.match(data[pos:space]):
            raise _Bad(at + pos, "PAX record without a decimal length")
        length = int(data[pos:space])
        end = pos + length
        if length <= space - pos + 1 or end > n or data[end - 1:end] != b"\n":
            raise _Bad(at + pos, f"PAX record length {length} does not fit the record")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise _Bad(at + pos, "PAX record without '='")
        if key == b"path":
            path = _text(value, at + pos, "PAX path")
        elif key == b"size":
            raise _Bad(at + pos, "PAX size record (members over 8 GiB) is not supported in shards")
        pos = end
    return path


def parse_tar(read: Callable[[int, int], bytes], end: int, where: str) -> list[Member]:
    """Regular-file members of the tar read by `read(offset, n)`, `end` bytes long, in file order."""
    try:
        return _parse(read, end)
    except _Bad as bad:
        raise UserError(f"shard {where}: byte {bad.at}: {bad.what}") from None


def _parse(read: Callable[[int, int], bytes], end: int) -> list[Member]:
    members: list[Member] = []
    pos = 0
    long_name: str | None = None
    while True:
        if pos + BLOCK > end:
            raise _Bad(pos, "truncated: the file ends before the end-of-archive blocks" if pos == end
                       else "truncated: the file ends inside a tar header")
        header = read(pos, BLOCK)
        if header == _ZERO_BLOCK:
            if long_name is not None:
                raise _Bad(pos, "archive ends after a long-name header without its member")
            return members  # one zero block is enough (GNU tar reads it as the end too)
        if not _checksum_ok(header, pos):
            raise _Bad(pos, "tar header checksum does not match (damaged or not a tar)")
        size = _number(header[124:136], pos + 124, "size")
        kind = header[156:157]
        data_at = pos + BLOCK
        if size > end - data_at:
            raise _Bad(pos, f"truncated: member of {size} bytes runs past the end of the file ({end} bytes)")
        if kind in (b"x", b"L"):
            if size > _MAX_META:
                raise _Bad(pos, f"extended header of {size} bytes")
            payload = read(data_at, size)
            if kind == b"x":
                long_name = _pax_path(payload, data_at)
            else:
                long_name = _text(payload.split(b"\0", 1)[0], data_at, "GNU long name")
        elif kind in (b"0", b"\0", b"7"):
            if long_name is not None:
                name, long_name = long_name, None
            else:
                name = _text(header[0:100].split(b"\0", 1)[0], pos, "member name")
                if header[257:262] == b"ustar":
                    prefix = _text(header[345:500].split(b"\0", 1)[0], pos + 345, "name prefix")
                    if prefix:
                        name = f"{prefix}/{name}"
            if not name:
                raise _Bad(pos, "member with an empty name")
            if name.startswith("/") or ".." in name.split("/"):
                raise _Bad(pos, f"member name {name!r} is absolute or has '..'; refusing it")
            members.append(Member(name, data_at, size))
        elif kind == b"5":  # a directory: no data, nothing to index (tar cf writes them)
            long_name = None
        elif kind == b"g":
            pass
        else:
            raise _Bad(pos, f"member of type {kind!r} (link, device or unknown): shards hold regular files only")
        pos = data_at + (size + BLOCK - 1) // BLOCK * BLOCK


def scan_tar(path: str | Path) -> list[Member]:
    """Regular-file members of a tar file in file order; a UserError names a damaged or hostile shard."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise UserError(f"shard {path}: cannot open ({err.strerror})") from None
    try:
        return parse_tar(lambda off, n: os.pread(fd, n, off), os.fstat(fd).st_size, str(path))
    finally:
        os.close(fd)


def scan_bytes(raw: bytes, where: str) -> list[Member]:
    """The same parse over a tar already in memory (shards/verify.py reads each shard once)."""
    return parse_tar(lambda off, n: raw[off:off + n], len(raw), where)


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key runs to the first dot of the base name, the rest is the extension."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def group_samples(members: list[Member], where: str) -> list[tuple[str, dict[str, Member]]]:
    """Members grouped into samples as webdataset does: adjacent members sharing a key.
    A key that comes back after another key, or an extension twice in a sample, is an error:
    webdataset would read it as a different sample than this index does."""
    out: list[tuple[str, dict[str, Member]]] = []
    seen: set[str] = set()
    for m in members:
        key, ext = split_key(m.name)
        if out and out[-1][0] == key:
            if ext in out[-1][1]:
                raise UserError(f"shard {where}: byte {m.offset - BLOCK}: member {m.name!r} twice in sample {key!r}")
            out[-1][1][ext] = m
            continue
        if key in seen:
            raise UserError(f"shard {where}: byte {m.offset - BLOCK}: sample {key!r} appears twice (not adjacent)")
        seen.add(key)
        out.append((key, {ext: m}))
    return out


def parse_class(raw: bytes, num_classes: int) -> int | None:
    """A `.cls` member's class index: ASCII digits (whitespace around allowed) in range, else None.
    Not str.isdigit(): it accepts '³' and other Unicode digits that int() then refuses."""
    text = raw.strip()
    if not _DIGITS.match(text) or len(text) > 9:
        return None
    c = int(text)
    return c if c < num_classes else None
