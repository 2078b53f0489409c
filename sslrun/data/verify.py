"""Check a shard set against its manifest before a long job trusts it.

Why a separate pass: the build only checks image headers (fast); this pass decodes every
sample, recomputes every shard's sha256, recounts samples per split, per shard and per
class, and compares each split's sample index (what training trusts at start) with the tars, so a damaged copy or a file that only looked like an image is found in minutes, not
six hours into a training run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from sslrun.data.manifest import IMAGE_EXTS, SplitInfo, read_manifest
from sslrun.data.sample_index import unpack
from sslrun.data.tar_index import group_samples, parse_class, scan_bytes
from sslrun.errors import UserError

log = logging.getLogger(__name__)


def _decoder() -> Callable[[bytes], None]:
    """Training's own decoder (transforms.decode): what verify accepts, training reads."""
    from sslrun.data.transforms import decode

    def check(data: bytes) -> None:
        decode(data)

    return check


def _check_index(root: Path, split: SplitInfo, scanned: list[tuple]) -> list[str]:
    """The split's sample index (what training reads at start) against the samples in its tars."""
    if split.index is None:
        log.info("%s: split '%s' has no sample index (built before it existed)", root, split.name)
        return []
    where = f"{split.name}/{split.index.file}"
    try:
        cols, ids = unpack(root / split.index.file, split.index, split.count, [e.count for e in split.shards])
    except UserError as err:
        return [str(err)]
    if len(scanned) != split.count:
        return []  # the counts are already reported against the manifest
    names = ("shard", "offset", "size", "label", "hidden")
    for i, row in enumerate(scanned):
        got = (*(int(cols[k][i]) for k in names), ids[i])
        if got != row:
            bad = [n for n, a, b in zip((*names, "id"), got, row) if a != b]
            return [f"{where}: sample {i} ({split.shards[row[0]].file}, id {row[5]!r}) differs from the tar in {', '.join(bad)}"]
    return []


def verify_shards(root: str | Path, decode: bool = True) -> list[str]:
    """Every problem found in the shard set at `root`, one line each; empty when all is fine."""
    root = Path(root)
    m = read_manifest(root)
    problems: list[str] = []
    check = _decoder() if decode else None
    for split in m.splits.values():
        per_class = [0] * m.num_classes
        scanned: list[tuple] | None = []  # (shard, offset, size, label, hidden, id) per sample, as the tars say
        for si, entry in enumerate(split.shards):
            path = root / entry.file
            where = f"{split.name}/{entry.file}"
            try:
                raw = path.read_bytes()
            except OSError as err:
                problems.append(f"{where}: cannot read ({err.strerror or err})")
                scanned = None
                continue
            if len(raw) != entry.bytes:
                problems.append(f"{where}: {len(raw)} bytes, manifest says {entry.bytes}")
            if hashlib.sha256(raw).hexdigest() != entry.sha256:
                problems.append(f"{where}: sha256 differs from the manifest")
            try:
                samples = group_samples(scan_bytes(raw, where), where)
            except UserError as err:
                problems.append(str(err))
                scanned = None
                continue
            if len(samples) != entry.count:
                problems.append(f"{where}: {len(samples)} samples, manifest says {entry.count}")
            for i, (key, parts) in enumerate(samples):
                members = {ext: raw[p.offset:p.offset + p.size] for ext, p in parts.items()}
                imgs = [e for e in members if e in IMAGE_EXTS]
                if len(imgs) != 1:
                    problems.append(f"{where}: sample {key} has {len(imgs)} images ({', '.join(members)})")
                    scanned = None
                    continue
                if scanned is not None:
                    c = parse_class(members["cls"], m.num_classes) if "cls" in members else None
                    hidden = entry.hidden_labels[i] if entry.hidden_labels is not None and i < len(entry.hidden_labels) else -1
                    sid = members["id"].decode("utf-8", "replace").strip() if "id" in members else key
                    scanned.append((si, parts[imgs[0]].offset, parts[imgs[0]].size, -1 if c is None else c, hidden, sid))
                if split.labeled:
                    cls = members.get("cls")
                    c = parse_class(cls, m.num_classes) if cls is not None else None
                    if c is None:
                        problems.append(f"{where}: byte {parts['cls'].offset if cls is not None else parts[imgs[0]].offset}: "
                                        f"sample {key} has class {cls!r:.40}, expected 0..{m.num_classes - 1}")
                    else:
                        per_class[c] += 1
                elif "cls" in members:
                    problems.append(f"{where}: sample {key} of unlabeled split '{split.name}' has a class")
                if "id" in members:
                    try:
                        members["id"].decode("utf-8")
                    except UnicodeDecodeError:
                        problems.append(f"{where}: byte {parts['id'].offset}: sample {key} has an .id that is not UTF-8")
                if check is not None:
                    try:
                        check(members[imgs[0]])
                    except Exception as err:
                        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                        problems.append(f"{where}: sample {key} does not decode ({msg[:120]})")
            if entry.hidden_labels is not None and not all(
                isinstance(h, int) and -1 <= h < m.num_classes for h in entry.hidden_labels
            ):
                problems.append(f"{where}: hidden_labels out of range")
        if scanned is not None:
            problems += _check_index(root, split, scanned)
        if split.count != sum(s.count for s in split.shards):
            problems.append(f"{split.name}: count {split.count} differs from the sum over its shards")
        if split.labeled and split.per_class is not None and split.per_class != per_class:
            problems.append(f"{split.name}: per-class counts {per_class} differ from the manifest's {split.per_class}")
    return problems
