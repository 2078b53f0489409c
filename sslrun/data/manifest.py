"""The shard set's manifest: what a folder of WebDataset tar shards holds.

A shard set is a folder with `manifest.json` and tar shards. The shards are plain WebDataset
shards (USTAR tar, members `<key>.<ext>`, a sample's members adjacent), so `webdataset`
reads them as they are; the manifest adds what streaming alone cannot give: the class names,
exact counts per split and per shard (every rank must run the same number of steps), and
checksums to find a damaged shard before a six-hour job starts.

Splits: `train` (labeled), `val` (labeled, held out), `unlabeled`, `test` (labeled or not).
Members of one sample:
- `<key>.<img>`: the image's original bytes; `<img>` is jpg, jpeg, png, webp, bmp, gif,
  tif or tiff.
- `<key>.cls`: the class index as ASCII digits, in labeled splits only.
- `<key>.id`: the original file id (the file name without its extension) when it differs
  from the key; otherwise the key is the id (what a submission CSV lists). Samples from a
  labeled class folder are keyed `<class>_<stem>` (image folders often number files per
  class) and carry no `.id`: the folder and file name are not a submission id.
The true class of an unlabeled sample, when known (the standard "N labels per class"
protocol), is never in the shard: it is in the manifest's shard entry as `hidden_labels`, in
sample order, for diagnostics only, so training cannot read it by mistake; -1 marks a sample
whose class is unknown (from an unlabeled folder mixed into that protocol's split).

manifest.json:
{
  "format": "sslrun-shards/1",
  "classes": ["cat", "dog", ...],
  "splits": {
    "train": {"count": 720, "labeled": true, "per_class": [15, ...],
              "shards": [{"file": "train-000000.tar", "count": 720, "bytes": 1234,
                          "sha256": "..."}]},
    "unlabeled": {"count": 300000, "labeled": false, "hidden_labels": false,
                  "index": {"file": "unlabeled.index.npz", "bytes": 10800000, "sha256": "..."},
                  "shards": [...]},
    ...
  },
  "rejects": {"count": 0, "file": "rejects.tsv"},
  (and beside it, one wids shard index per split, `<split>.wids.json`: see wids_index)
  (`index`: the split's sample index, `<split>.index.npz`, read at start instead of scanning
   the tar headers: see sample_index.py; absent in sets built before it, which still load)
  "build": {... the parameters of the build ...}
}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslrun.errors import UserError

FORMAT = "sslrun-shards/1"
SPLITS = ("train", "val", "unlabeled", "test")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


@dataclass(frozen=True)
class ShardEntry:
    file: str
    count: int
    bytes: int
    sha256: str
    hidden_labels: list[int] | None = None


@dataclass(frozen=True)
class IndexEntry:
    """A split's sample index file (see sample_index.py): name, size and sha256."""

    file: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    name: str
    count: int
    labeled: bool
    shards: list[ShardEntry]
    per_class: list[int] | None = None
    index: IndexEntry | None = None  # None in shard sets built before the index existed

    @property
    def has_hidden_labels(self) -> bool:
        return bool(self.shards) and all(s.hidden_labels is not None for s in self.shards)


@dataclass(frozen=True)
class Manifest:
    root: Path
    classes: list[str]
    splits: dict[str, SplitInfo]
    build: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            have = ", ".join(sorted(self.splits)) or "none"
            raise UserError(f"{self.root / 'manifest.json'}: no '{name}' split (has: {have})")
        return self.splits[name]


def file_sha256(path: Path) -> str:
    """The sha256 the manifest records for a file (shards, sample indexes), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def wids_file(split: str) -> str:
    return f"{split}.wids.json"


def wids_index(split: str, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """A wids shard index for one split: `wids.ShardListDataset("<set>/train.wids.json")`
    opens the split for random access with no scan (URLs are relative to the index file)."""
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": split,
        "shardlist": [{"url": s["file"], "nsamples": s["count"], "filesize": s["bytes"]} for s in shards],
    }


def _need(obj: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise UserError(f"{where}: missing key '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise UserError(f"{where}: '{key}' should be {getattr(kind, '__name__', kind)}, got {value!r:.60}")
    return value


def read_manifest(root: str | Path) -> Manifest:
    """Read and check `<root>/manifest.json`; every problem is a one-line UserError."""
    root = Path(root)
    path = root / "manifest.json"
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist (expected a shard set made by shards/build.py)")
    if not path.is_file():
        raise UserError(f"{path} not found: {root} is not a shard set (build one with shards/build.py)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object")
    fmt = raw.get("format")
    if fmt != FORMAT:
        raise UserError(f"{path}: format is {fmt!r}, expected {FORMAT!r}")
    classes = _need(raw, "classes", list, str(path))
    if not classes or not all(isinstance(c, str) and c for c in classes):
        raise UserError(f"{path}: 'classes' should be a non-empty list of names")
    if len(set(classes)) != len(classes):
        raise UserError(f"{path}: 'classes' has duplicate names")
    splits_raw = _need(raw, "splits", dict, str(path))
    splits: dict[str, SplitInfo] = {}
    for name, info in splits_raw.items():
        where = f"{path} split '{name}'"
        if name not in SPLITS:
            raise UserError(f"{path}: unknown split '{name}' (expected one of {', '.join(SPLITS)})")
        if not isinstance(info, dict):
            raise UserError(f"{where}: expected an object")
        shards = []
        for i, s in enumerate(_need(info, "shards", list, where)):
            swhere = f"{where} shard {i}"
            if not isinstance(s, dict):
                raise UserError(f"{swhere}: expected an object")
            file = _need(s, "file", str, swhere)
            if "/" in file or file.startswith(".") or not file.endswith(".tar"):
                raise UserError(f"{swhere}: file {file!r} should be a plain name ending in .tar")
            hidden = s.get("hidden_labels")
            count = _need(s, "count", int, swhere)
            if hidden is not None and not (isinstance(hidden, list) and all(type(h) is int for h in hidden)):
                raise UserError(f"{swhere}: hidden_labels should be a list of class indices")
            if hidden is not None and len(hidden) != count:
                raise UserError(f"{swhere}: hidden_labels has {len(hidden)} entries for {count} samples")
            shards.append(ShardEntry(file, count, _need(s, "bytes", int, swhere), _need(s, "sha256", str, swhere), hidden))
        count = _need(info, "count", int, where)
        if count != sum(s.count for s in shards):
            raise UserError(f"{where}: count {count} differs from the sum over its shards")
        per_class = info.get("per_class")
        if per_class is not None and not (
            isinstance(per_class, list) and len(per_class) == len(classes) and all(type(n) is int for n in per_class)
        ):
            raise UserError(f"{where}: 'per_class' should be a list of {len(classes)} counts")
        index = None
        if "index" in info:
            iwhere = f"{where} index"
            raw_index = _need(info, "index", dict, where)
            ifile = _need(raw_index, "file", str, iwhere)
            if "/" in ifile or ifile.startswith(".") or not ifile.endswith(".npz"):
                raise UserError(f"{iwhere}: file {ifile!r} should be a plain name ending in .npz")
            index = IndexEntry(ifile, _need(raw_index, "bytes", int, iwhere), _need(raw_index, "sha256", str, iwhere))
        splits[name] = SplitInfo(name, count, bool(info.get("labeled", False)), shards, per_class, index)
    if "train" not in splits:
        raise UserError(f"{path}: no 'train' split")
    return Manifest(root, list(classes), splits, raw.get("build", {}))
