"""A split of a shard set as a list of samples with their byte ranges, labels and ids."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslrun.data.manifest import IMAGE_EXTS, Manifest, SplitInfo, file_sha256
from sslrun.data.sample_index import unpack
from sslrun.data.tar_index import Member, group_samples, parse_class, scan_tar
from sslrun.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class SplitSamples:
    """Column-wise sample table: the image of sample i lies in shards[shard[i]] at offset[i]."""

    name: str
    shards: list[str]
    shard: np.ndarray  # int32
    offset: np.ndarray  # int64
    size: np.ndarray  # int64
    label: np.ndarray  # int64, -1 where unlabeled
    hidden: np.ndarray  # int64, the hidden true class of unlabeled samples, -1 where unknown
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


# `verify_shards=auto` hashes every shard at start when the whole set is at most this big.
AUTO_FULL_BYTES = 256 * 2**20


def check_shards(manifest: Manifest, mode: str) -> str:
    """Check every shard against the manifest before training: presence and size always,
    sha256 too with mode `full` (or `auto` and a set of at most AUTO_FULL_BYTES).

    Why not always sha256: reading 1.4 GB from shared storage at every start (and restart)
    costs tens of seconds per rank; size catches a missing, truncated or replaced file, and
    shards/verify.py does the full check on demand. Returns the mode that was applied."""
    entries = [e for s in manifest.splits.values() for e in s.shards]
    total = sum(e.bytes for e in entries)
    full = mode == "full" or (mode == "auto" and total <= AUTO_FULL_BYTES)
    for entry in entries:
        path = manifest.root / entry.file
        if not path.is_file():
            raise UserError(f"shard {path} listed in {manifest.root / 'manifest.json'} is missing")
        size = os.path.getsize(path)
        if size != entry.bytes:
            raise UserError(f"shard {path}: {size} bytes, manifest says {entry.bytes} (damaged or replaced)")
        if full:
            if file_sha256(path) != entry.sha256:
                raise UserError(f"shard {path}: sha256 differs from the manifest (damaged or replaced; "
                                f"shards/verify.py {manifest.root} lists every problem)")
    return "full" if full else "size"


def _read_member(fd: int, path: Path, m: Member, what: str) -> bytes:
    raw = os.pread(fd, m.size, m.offset)
    if len(raw) != m.size:
        raise UserError(f"shard {path}: byte {m.offset}: {what} member cut short (file changed while read?)")
    return raw


def load_split(manifest: Manifest, split: str) -> SplitSamples:
    """One split's samples: from its sample index (one small file, checked by size and sha256
    against the manifest), or, in a shard set built before the index, by scanning every tar.
    Every shard is checked to be present with its manifest size either way."""
    info = manifest.split(split)
    if info.index is None:
        if manifest.root not in _warned:
            _warned.add(manifest.root)
            log.warning("%s has no sample index (built before it existed): scanning every tar header at start; "
                        "rerun its shards/build.py command (or build it anew) to start faster", manifest.root)
        return scan_split(manifest, split)
    paths = _present(manifest, info)
    cols, ids = unpack(manifest.root / info.index.file, info.index, info.count, [e.count for e in info.shards])
    return SplitSamples(name=split, shards=paths, ids=ids, **cols)


_warned: set[Path] = set()  # shard sets already named in the log as lacking an index


def _present(manifest: Manifest, info: SplitInfo) -> list[str]:
    """The split's shard paths, each checked to exist with its manifest size (a stat each)."""
    paths = []
    for entry in info.shards:
        path = manifest.root / entry.file
        if not path.is_file():
            raise UserError(f"shard {path} listed in {manifest.root / 'manifest.json'} is missing")
        if os.path.getsize(path) != entry.bytes:
            raise UserError(f"shard {path}: {os.path.getsize(path)} bytes, manifest says {entry.bytes} (damaged or replaced)")
        paths.append(str(path))
    return paths


def scan_split(manifest: Manifest, split: str) -> SplitSamples:
    """Index one split by scanning its shards' tar headers and reading every .cls / .id
    member (what the build's sample index saves at start); a shard whose sample count
    differs from the manifest is an error."""
    info = manifest.split(split)
    shard_files = _present(manifest, info)
    cols: dict[str, list] = {k: [] for k in ("shard", "offset", "size", "label", "hidden", "ids")}
    for si, entry in enumerate(info.shards):
        path = manifest.root / entry.file
        samples = group_samples(scan_tar(path), str(path))
        if len(samples) != entry.count:
            raise UserError(f"shard {path}: {len(samples)} samples, manifest says {entry.count}")
        fd = os.open(path, os.O_RDONLY)
        try:
            for i, (key, parts) in enumerate(samples):
                imgs = [parts[e] for e in IMAGE_EXTS if e in parts]
                if len(imgs) != 1:
                    raise UserError(f"shard {path}: sample {key!r} has {len(imgs)} image members (has {', '.join(parts)}), expected 1")
                img = imgs[0]
                label = -1
                if "cls" in parts:
                    raw = _read_member(fd, path, parts["cls"], ".cls")
                    c = parse_class(raw, manifest.num_classes)
                    if c is None:
                        raise UserError(f"shard {path}: byte {parts['cls'].offset}: sample {key!r} has class {raw[:20]!r}, "
                                        f"expected ASCII digits 0..{manifest.num_classes - 1}")
                    label = c
                elif info.labeled:
                    raise UserError(f"shard {path}: sample {key!r} of labeled split '{split}' has no .cls member")
                if "id" in parts:
                    raw = _read_member(fd, path, parts["id"], ".id")
                    try:
                        sid = raw.decode("utf-8").strip()
                    except UnicodeDecodeError:
                        raise UserError(f"shard {path}: byte {parts['id'].offset}: sample {key!r} has an .id that is not UTF-8") from None
                else:
                    sid = key
                cols["shard"].append(si)
                cols["offset"].append(img.offset)
                cols["size"].append(img.size)
                cols["label"].append(label)
                cols["hidden"].append(entry.hidden_labels[i] if entry.hidden_labels is not None else -1)
                cols["ids"].append(sid)
        finally:
            os.close(fd)
    return SplitSamples(
        name=split,
        shards=shard_files,
        shard=np.asarray(cols["shard"], dtype=np.int32),
        offset=np.asarray(cols["offset"], dtype=np.int64),
        size=np.asarray(cols["size"], dtype=np.int64),
        label=np.asarray(cols["label"], dtype=np.int64),
        hidden=np.asarray(cols["hidden"], dtype=np.int64),
        ids=cols["ids"],
    )
