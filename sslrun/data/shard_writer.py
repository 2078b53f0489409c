"""A small deterministic tar shard writer (USTAR, fixed metadata, atomic per shard).

Why not webdataset's ShardWriter: it writes PAX headers (float mtimes: +32 % size on small
JPEGs) and puts the wall clock into every member, so two builds of the same data differ.
Here every header is plain USTAR with mtime 0, uid/gid 0, empty user/group names and mode
0o444, so the same samples in the same order give the same bytes, and `tarfile`, GNU tar and
`webdataset` all read the shards as they are.

Headers are built by hand (byte-for-byte what `tarfile` writes for USTAR_FORMAT; a test
checks this) because `tarfile.TarFile.addfile` costs ~70 us a member, a third of the budget
for packing tens of thousands of small images a second.

A shard is written to a hidden temporary name in its folder, flushed, fsynced and renamed
with os.replace: a reader never sees a half-written shard under a final name, and a crash
leaves at most a `.*.tmp` file that the next build removes.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from sslrun.atomic import TMP_SUFFIX, fsync_dir
from sslrun.data.manifest import ShardEntry

BLOCK = 512
MTIME = 0
MODE = 0o444
WRITEBACK_EVERY = 8 << 20
_KEY_OK = re.compile(r"[A-Za-z0-9_\-]+\Z")
_EXT_OK = re.compile(r"[A-Za-z0-9_\-.]+\Z")


def _fields_after_size() -> tuple[bytes, bytes, int]:
    """The constant parts of a header around the name and size fields, and their byte sum."""
    mid = b"%07o\0" % MODE + b"%07o\0" % 0 + b"%07o\0" % 0  # mode, uid, gid
    tail = b"".join([
        b"0",  # regular file
        b"\0" * 100,  # linkname
        b"ustar\x0000",
        b"\0" * 32,  # uname
        b"\0" * 32,  # gname
        b"\0" * 16,  # devmajor, devminor: empty for regular files, as tarfile writes them
        b"\0" * 155,  # prefix
        b"\0" * 12,
    ])
    mtime = b"%011o\0" % MTIME
    return mid, mtime, sum(mid) + sum(mtime) + sum(b"        ") + sum(tail), tail


_MID, _MTIME, _CONST_SUM, _TAIL = _fields_after_size()  # type: ignore[misc]


def _ustar_header(name: bytes, size: int) -> bytes:
    """One USTAR header block for a regular file; the same bytes tarfile's USTAR_FORMAT
    writes (a test checks), built from precomputed parts because this runs per member."""
    if len(name) > 100:
        raise ValueError(f"member name longer than 100 bytes: {name[:40]!r}...")
    if size >= 8**11:
        raise ValueError(f"member too large for a USTAR header: {size} bytes")
    size_field = b"%011o\0" % size
    chksum = sum(name) + sum(size_field) + _CONST_SUM
    return b"".join(
        (name.ljust(100, b"\0"), _MID, size_field, _MTIME, b"%06o\0 " % chksum, _TAIL)
    )


_ZEROS = b"\0" * BLOCK


def member_size(data_len: int) -> int:
    """Bytes a member with `data_len` bytes of data takes in a tar."""
    return BLOCK + data_len + (-data_len % BLOCK)


END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


class TarShard:
    """One shard being written: add samples, then commit() (atomic) or abort()."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}{TMP_SUFFIX}")
        self._f = open(self.tmp, "wb", buffering=1 << 20)
        self._sha = hashlib.sha256()
        self.count = 0
        self.bytes = 0
        self._keys: set[str] = set()
        self._kicked = 0  # bytes handed to the kernel for write-back so far

    def _put(self, chunk: bytes) -> None:
        self._f.write(chunk)
        self._sha.update(chunk)
        self.bytes += len(chunk)
        if self.bytes - self._kicked >= WRITEBACK_EVERY:
            self._kick()

    def _kick(self) -> None:
        """Start writing what is written so far to disk, without waiting (Linux starts
        write-back on POSIX_FADV_DONTNEED, then drops the pages once clean). The fsync at
        commit() then finds little left to do: the disk works while this process packs the
        next samples, instead of a multi-second stall per shard at the end."""
        advise = getattr(os, "posix_fadvise", None)
        if advise is None:
            return
        self._f.flush()
        advise(self._f.fileno(), 0, self.bytes, os.POSIX_FADV_DONTNEED)
        self._kicked = self.bytes

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample: `members` maps extension ('jpg', 'cls', 'id') to bytes, kept adjacent."""
        if not _KEY_OK.match(key):
            raise ValueError(f"bad sample key {key!r}: ASCII letters, digits, '_' and '-' only")
        if key in self._keys:
            raise ValueError(f"sample key {key!r} twice in {self.path.name}")
        self._keys.add(key)
        parts = []
        for ext, data in members.items():
            if not _EXT_OK.match(ext):
                raise ValueError(f"bad member extension {ext!r}")
            parts.append(_ustar_header(f"{key}.{ext}".encode("ascii"), len(data)))
            parts.append(data)
            parts.append(_ZEROS[: -len(data) % BLOCK])
        self._put(b"".join(parts))
        self.count += 1

    def commit(self, hidden_labels: list[int] | None = None) -> ShardEntry:
        """Finish the tar, fsync, rename to the final name; return its manifest entry."""
        self._put(END_OF_ARCHIVE)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        if hidden_labels is not None and len(hidden_labels) != self.count:
            raise ValueError(f"{len(hidden_labels)} hidden labels for {self.count} samples")
        return ShardEntry(self.path.name, self.count, self.bytes, self._sha.hexdigest(), hidden_labels)

    def abort(self) -> None:
        """Drop the temporary file: never leave a partial shard behind."""
        if not self._f.closed:
            self._f.close()
        self.tmp.unlink(missing_ok=True)
