"""Test-only helpers for hand-made shards: a rolling shard writer, one tar member as bytes,
and a split's shard paths. They lived in sslrun/data (issue 17: test-only code out of the
package); the build writes shards with sslrun.data.shard_writer.TarShard."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sslrun.data.manifest import Manifest, ShardEntry
from sslrun.data.shard_writer import _ZEROS, BLOCK, END_OF_ARCHIVE, TarShard, _ustar_header, member_size


def shard_paths(manifest: Manifest, split: str) -> list[Path]:
    """The shard files of one split, in manifest order."""
    return [manifest.root / s.file for s in manifest.split(split).shards]


def tar_member(name: str, data: bytes) -> bytes:
    """Header, data and zero padding to a whole block: one member as it lies in the tar."""
    return _ustar_header(name.encode("ascii"), len(data)) + data + _ZEROS[: -len(data) % BLOCK]



@dataclass
class ShardWriter:
    """Write samples into `<folder>/<prefix>-NNNNNN.tar`, rolling over by count or bytes.

    A new shard starts when the current one holds `max_count` samples, or when adding the
    next sample would take it past `max_bytes` (a single sample larger than `max_bytes`
    still gets a shard of its own). Use as a context manager: on an exception the open
    shard's temporary file is removed; `entries` lists the committed shards.
    """

    folder: Path
    prefix: str
    max_count: int = 10000
    max_bytes: int | None = None
    start_index: int = 0

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.index = self.start_index
        self.entries: list[ShardEntry] = []
        self._shard: TarShard | None = None
        self._hidden: list[int] | None = None

    def _open(self) -> TarShard:
        self._shard = TarShard(self.folder / f"{self.prefix}-{self.index:06d}.tar")
        self.index += 1
        self._hidden = None
        return self._shard

    def write(self, key: str, members: dict[str, bytes], hidden_label: int | None = None) -> None:
        """Add one sample; `hidden_label` (given for all samples or none) goes to the entry only."""
        size = sum(member_size(len(d)) for d in members.values())
        shard = self._shard
        if shard is not None and (
            shard.count >= self.max_count
            or (self.max_bytes is not None and shard.count and shard.bytes + size + len(END_OF_ARCHIVE) > self.max_bytes)
        ):
            self._commit()
            shard = None
        if shard is None:
            shard = self._open()
        if hidden_label is not None:
            if self._hidden is None:
                if shard.count:
                    raise ValueError("hidden_label given for some samples of a shard but not all")
                self._hidden = []
            self._hidden.append(hidden_label)
        elif self._hidden is not None:
            raise ValueError("hidden_label given for some samples of a shard but not all")
        shard.add(key, members)

    def _commit(self) -> None:
        assert self._shard is not None
        self.entries.append(self._shard.commit(self._hidden))
        self._shard = None

    def close(self) -> list[ShardEntry]:
        if self._shard is not None:
            self._commit()
        return self.entries

    def abort(self) -> None:
        if self._shard is not None:
            self._shard.abort()
            self._shard = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
