"""Build a shard set (tar shards + manifest.json) from folders of images.

The build runs in three steps, and only the last touches `out`:
1. Scan the input folders (names; sizes only when shards are cut by bytes; no image bytes)
   and catch every fatal user mistake (empty class folder, two files with one id, unknown
   test class) before anything is written.
2. Plan: split the labeled set per class by seed (val, labeled train, hidden-label
   unlabeled), shuffle each split by seed and cut it into shards. The plan depends only on
   the inputs (file names) and the parameters, so its digest names the build: the same
   command run again (after a crash or Ctrl-C) finds the same plan in `out` and resumes.
   (An input file rewritten in place between the crash and the rerun is not noticed.)
   `workers` and `progress` are not part of it: they change nothing in the output.
3. Write the shards (in parallel with `workers`): each shard reads its files in directory
   order (never in random order: that is ~3x slower on a cold disk), checks each image
   cheaply, and writes the samples in the planned (shuffled) order to a temporary file that
   is renamed when complete. A journal in `out` records every finished shard with its
   sha256; a rerun skips shards whose file still has that sha256. Bad files are skipped and
   listed in `rejects.tsv`. Each shard records where its samples' images lie as it writes
   them; the per-split sample indexes (`<split>.index.npz`, sample_index.py), `_info.json`
   and `manifest.json` are written last, atomically; `manifest.json` is the mark of a
   finished build.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import multiprocessing as mp
import operator
import os
import re
import signal
import stat
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sslrun.atomic import TMP_SUFFIX, write_atomic
from sslrun.data.images import BadImage, check_image, shrink
from sslrun.data.manifest import FORMAT, ShardEntry, file_sha256, wids_file, wids_index
from sslrun.data.sample_index import entry_for, index_file, pack
from sslrun.data.shard_writer import BLOCK, END_OF_ARCHIVE, TarShard, member_size
from sslrun.errors import UserError, write_error
from sslrun.text import bad_char, shown

log = logging.getLogger(__name__)

PLAN_FILE = ".build-plan.json"
JOURNAL_FILE = ".build-journal.jsonl"
REJECTS_FILE = "rejects.tsv"
MAX_KEY = 80
SPLIT_ORDER = ("train", "val", "unlabeled", "test")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]")


class Source(NamedTuple):
    """One input file as planned: where it is, its sample key, and its labels.

    A NamedTuple, not a dataclass: a build plans hundreds of thousands of these and ships
    them to worker processes; tuples are several times cheaper to make, copy and pickle."""

    path: str  # as found under the input folder given by the user
    id: str | None  # the file id when it differs from the key (written as `<key>.id`)
    key: str  # sample key in the shard (no '.', ASCII)
    order: int  # position in directory-scan order: files are read in this order
    size: int  # bytes on disk when planning shards by bytes, else 0 (not asked: a stat per
    # file is a third of the planning time); -1 for what is not a regular file
    label: int | None = None  # class index written as `<key>.cls` (labeled splits)
    hidden: int | None = None  # true class kept only in the manifest (unlabeled split)


@dataclass(frozen=True)
class ShardTask:
    out: str
    split: str
    index: int
    sources: tuple[Source, ...]
    max_side: int | None

    @property
    def file(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"


# ---------------------------------------------------------------------------- scanning


class _Scan:
    """Lists folders in directory order, numbering files in the order they are met.
    `sizes`: stat every file for its size (needed only to plan shards by bytes)."""

    def __init__(self, sizes: bool) -> None:
        self.counter = 0
        self.sizes = sizes

    def entries(self, folder: Path) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
        """(sub-folders, files) of `folder`, hidden names (starting with '.') left out."""
        try:
            with os.scandir(folder) as it:
                found = [e for e in it if not e.name.startswith(".")]
        except FileNotFoundError:
            raise UserError(f"input folder {folder} does not exist") from None
        except NotADirectoryError:
            raise UserError(f"input {folder} is not a folder") from None
        except PermissionError:
            raise UserError(f"input folder {folder} cannot be read (permission denied)") from None
        dirs, files = [], []
        for e in found:
            try:
                e.name.encode("utf-8")
            except UnicodeEncodeError:  # os gives undecodable bytes as surrogates
                raise UserError(f"input {os.fsencode(e.path)!r}: file name is not UTF-8 "
                                "(sample ids must be text; rename it, e.g. with convmv)") from None
            bad = bad_char(e.name)
            if bad is not None:  # a newline in an id is a new row of the submission CSV
                raise UserError(f"input {e.path!r}: file name contains '{shown(bad)}' (sample ids and class "
                                "names must be printable text on one line; rename it)")
            try:
                is_dir = e.is_dir()
            except OSError:  # a symlink loop: not a folder; rejected with its reason when read
                is_dir = False
            (dirs if is_dir else files).append(e)
        return dirs, files

    def files(self, folder: Path) -> list[tuple[str, int, int]]:
        """(path, order, size) of the files in `folder`, sorted by name (for determinism).

        A sub-folder here is fatal, by choice: packing it would need a rule for its ids and
        class, and skipping it would lose its images without a word."""
        dirs, files = self.entries(folder)
        if dirs:
            raise UserError(f"folder {folder} has a sub-folder '{dirs[0].name}': images in sub-folders are not "
                            "packed (move them up, or make them class folders of their own)")
        rows = []
        n = self.counter
        for e in files:
            try:
                if not e.is_file():
                    size = -1  # a FIFO, socket, device...: rejected, never opened
                else:
                    size = e.stat().st_size if self.sizes else 0
            except OSError:
                size = 0  # unreadable entry: planned anyway, rejected when read
            rows.append((e.name, e.path, n, size))
            n += 1
        self.counter = n
        rows.sort()
        return [r[1:] for r in rows]


def _file_id(path: str) -> str:
    name = path.rpartition(os.sep)[2]
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name


def _safe(text: str) -> str:
    """`text` with every character but ASCII letters, digits, '_' and '-' made '_'."""
    if text.isascii() and text.replace("_", "a").replace("-", "a").isalnum():
        return text  # the common case, without the regex
    return _KEY_BAD.sub("_", text)


class _Keys:
    """Turns file ids into unique, safe sample keys within one namespace.

    A loose file's id is its name without the extension; the key is that id with every
    character other than letters, digits, '_' and '-' made '_' (webdataset splits a member
    name at the first '.'), cut to 80 characters; the id goes into a `<key>.id` member when
    it differs. A file in a labeled class folder is keyed `<class>_<stem>`, because image
    folders often number files per class (CIFAR's `bird/0338.jpg`, `cat/0338.jpg`); its id is
    `<class>/<stem>`, which the key and the manifest's class list already give, so no `.id`
    member is spent on it. Two files with one id (`a.jpg`, `a.png` in a folder) are fatal.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.ids: dict[str, str] = {}
        self.keys: set[str] = set()

    def many(self, rows: list[tuple[str, int, int]], cls: str | None = None) -> list[tuple]:
        """key() over a folder's (path, order, size) rows -> (path, id, key, order, size).
        The plain case (a safe, new stem) is done inline: this runs for every file."""
        ids, keys, out = self.ids, self.keys, []
        prefix = None if cls is None else _safe(cls) + "_"
        for path, order, size in rows:
            name = path.rpartition(os.sep)[2]
            stem, dot, _ = name.rpartition(".")
            if not (dot and stem):
                stem = name
            fid = stem if cls is None else f"{cls}/{stem}"
            key = stem if prefix is None else prefix + stem
            if (not fid.isascii() or fid in ids or key in keys or len(key) > MAX_KEY or not key.isascii()
                    or not key.replace("_", "a").replace("-", "a").isalnum()):
                out.append((path, *self.key(path, cls), order, size))  # the careful path
                continue
            ids[fid] = path
            keys.add(key)
            out.append((path, None if cls is not None or key == fid else fid, key, order, size))
        return out

    def key(self, path: str, cls: str | None = None) -> tuple[str | None, str]:
        """(id to store as `<key>.id`, or None when not needed; key)."""
        stem = _file_id(path)
        fid = stem if cls is None else f"{cls}/{stem}"
        # `é` typed on macOS (NFD) and on Linux (NFC) are two names that print the same: as ids
        # they would be two rows no one can tell apart, so they count as one id.
        same = unicodedata.normalize("NFC", fid)
        if same in self.ids:
            first = self.ids[same]
            why = "" if _file_id(first) == stem else "; the names differ only in Unicode normalization"
            if why:  # show the code points: the two names print the same
                first, path = ascii(first), ascii(path)
            raise UserError(f"two {self.what} files have the id '{fid}': {first} and {path} (ids must be unique{why})")
        self.ids[same] = path
        base = stem if cls is None else f"{cls}_{stem}"
        key = _safe(base)[:MAX_KEY] or "_"
        if key in self.keys:
            key = f"{key[: MAX_KEY - 9]}_{hashlib.sha1(fid.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
        if key in self.keys:
            raise UserError(f"cannot make a unique sample key for {path}")
        self.keys.add(key)
        return (None if cls is not None or key == fid else fid), key


def _scan_classes(scan: _Scan, folder: Path, what: str) -> tuple[list[str], list[list[tuple[str, int, int]]]]:
    dirs, files = scan.entries(folder)
    if files and dirs:
        raise UserError(f"{what} folder {folder} has both class sub-folders and loose files (e.g. {files[0].name})")
    if not dirs:
        raise UserError(f"{what} folder {folder} has no class sub-folders")
    names = sorted(d.name for d in dirs)
    per_class = []
    for name in names:
        rows = scan.files(folder / name)
        if not rows:
            raise UserError(f"class folder {folder / name} is empty")
        per_class.append(rows)
    return names, per_class


# ---------------------------------------------------------------------------- planning


def _perm(n: int, seed: int, *what: str) -> list[int]:
    """A permutation of range(n) per purpose, so one split's draw never shifts another's.
    numpy's legacy RandomState: its stream is frozen across numpy versions (Generator's is
    not promised), so a shard set rebuilt years later is the same; and it is ~10x faster than
    random.shuffle on 300k items."""
    digest = hashlib.sha256(":".join(["sslrun-shards", str(seed), *what]).encode()).digest()
    return np.random.RandomState(int.from_bytes(digest[:4], "little")).permutation(n).tolist()


def _cut(sources: list[Source], shard_samples: int, shard_bytes: int | None) -> list[list[Source]]:
    """Cut a split into shards of at most `shard_samples` samples and about `shard_bytes` bytes
    (planned from file sizes on disk; a shrunk or rejected image only makes a shard smaller)."""
    if shard_bytes is None:
        return [sources[i : i + shard_samples] for i in range(0, len(sources), shard_samples)]
    shards: list[list[Source]] = []
    cur: list[Source] = []
    cur_bytes = len(END_OF_ARCHIVE)
    for s in sources:
        size = member_size(s.size)
        if s.label is not None:
            size += member_size(len(str(s.label)))
        if s.id is not None:
            size += member_size(len(s.id.encode("utf-8", "surrogateescape")))
        if cur and (len(cur) >= shard_samples or (shard_bytes is not None and cur_bytes + size > shard_bytes)):
            shards.append(cur)
            cur, cur_bytes = [], len(END_OF_ARCHIVE)
        cur.append(s)
        cur_bytes += size
    if cur:
        shards.append(cur)
    return shards


@dataclass
class Plan:
    classes: list[str]
    splits: dict[str, list[list[Source]]]  # split -> shards -> sources
    labeled: dict[str, bool]
    params: dict[str, Any]
    digest: str = ""

    def tasks(self, out: Path, max_side: int | None) -> list[ShardTask]:
        return [
            ShardTask(str(out), split, i, tuple(srcs), max_side)
            for split in SPLIT_ORDER
            for i, srcs in enumerate(self.splits.get(split, []))
        ]


def make_plan(
    labeled: Path,
    unlabeled: Path | None,
    test: Path | None,
    *,
    val_per_class: int | None,
    val_fraction: float | None,
    labels_per_class: int | None,
    seed: int,
    shard_samples: int,
    shard_bytes: int | None,
    max_side: int | None,
    unlabeled_truth: dict[str, str] | None = None,
) -> Plan:
    """Scan the inputs and decide every sample's split, shard and position; writes nothing.

    `unlabeled_truth` (file id -> class name) gives loose unlabeled images a hidden true class,
    kept only in the manifest like the labeled surplus of --labels-per-class: for synthetic
    rehearsals, whose pseudo-label accuracy is then measurable."""
    scan = _Scan(sizes=shard_bytes is not None)
    classes, per_class = _scan_classes(scan, labeled, "labeled")
    keys = _Keys("labeled/unlabeled")
    splits: dict[str, list[Source]] = {"train": [], "val": [], "unlabeled": []}
    for ci, (name, rows) in enumerate(zip(classes, per_class)):
        srcs = keys.many(rows, name)
        srcs = [srcs[i] for i in _perm(len(srcs), seed, "split", name)]
        n = len(srcs)
        n_val = val_per_class if val_per_class is not None else round((val_fraction or 0.0) * n)
        n_train = labels_per_class if labels_per_class is not None else n - n_val
        if n_val + n_train > n or n_train < 1:
            need = f"{n_val} for val + {labels_per_class if labels_per_class is not None else 1} labeled"
            raise UserError(f"class '{name}' has {n} images, too few for {need}")
        make = Source._make  # tuple.__new__ underneath: 3x faster than Source(*s, ...)
        splits["val"] += [make((*s, ci, None)) for s in srcs[:n_val]]
        splits["train"] += [make((*s, ci, None)) for s in srcs[n_val : n_val + n_train]]
        splits["unlabeled"] += [make((*s, None, ci)) for s in srcs[n_val + n_train :]]
    if unlabeled is not None:
        dirs, _ = scan.entries(unlabeled)
        if dirs:
            raise UserError(f"unlabeled folder {unlabeled} has sub-folders (e.g. {dirs[0].name}); expected loose images")
        hidden = -1 if labels_per_class or unlabeled_truth is not None else None
        rows = keys.many(scan.files(unlabeled))
        if unlabeled_truth is None:
            splits["unlabeled"] += [Source._make((*row, None, hidden)) for row in rows]
        else:
            index = {name: ci for ci, name in enumerate(classes)}
            bad = sorted({c for c in unlabeled_truth.values() if c not in index})
            if bad:
                raise UserError(f"--unlabeled-truth: class '{bad[0]}' is not a class of the labeled folder")
            splits["unlabeled"] += [Source._make((*row, None, index.get(unlabeled_truth.get(row[1] or row[2], ""), -1)))
                                    for row in rows]
    labeled_flags = {"train": True, "val": True, "unlabeled": False}
    if test is not None:
        tkeys = _Keys("test")
        dirs, files = scan.entries(test)
        if dirs and files:
            raise UserError(f"test folder {test} has both class sub-folders and loose files (e.g. {files[0].name})")
        if dirs:
            names, rows_per = _scan_classes(scan, test, "test")
            unknown = [n for n in names if n not in classes]
            if unknown:
                raise UserError(f"test folder {test} has class '{unknown[0]}' that the labeled folder lacks")
            splits["test"] = [
                Source(*row, classes.index(n), None) for n, rows in zip(names, rows_per) for row in tkeys.many(rows)
            ]
            labeled_flags["test"] = True
        else:
            splits["test"] = [Source(*row) for row in tkeys.many(scan.files(test))]
            labeled_flags["test"] = False
    if labels_per_class is None and unlabeled is None:
        del splits["unlabeled"]
    if not splits["val"]:
        del splits["val"]
    if "unlabeled" in splits and splits["unlabeled"] and all(s.hidden == -1 for s in splits["unlabeled"]):
        splits["unlabeled"] = [_with(s, hidden=None) for s in splits["unlabeled"]]
    shards = {}
    for name, srcs in splits.items():
        shards[name] = _cut([srcs[i] for i in _perm(len(srcs), seed, "order", name)], shard_samples, shard_bytes)
    params = {
        "labeled": str(labeled),
        "unlabeled": None if unlabeled is None else str(unlabeled),
        "test": None if test is None else str(test),
        "val_per_class": val_per_class,
        "val_fraction": val_fraction,
        "labels_per_class": labels_per_class,
        "seed": seed,
        "shard_samples": shard_samples,
        "shard_bytes": shard_bytes,
        "max_side": max_side,
    }
    if unlabeled_truth is not None:  # only when given: older shard sets keep their digest
        params["unlabeled_truth"] = hashlib.sha256(json.dumps(sorted(unlabeled_truth.items())).encode()).hexdigest()
    plan = Plan(classes, shards, {k: labeled_flags[k] for k in shards}, params)
    h = hashlib.sha256(json.dumps({"params": params, "classes": classes}, sort_keys=True).encode())
    for name in SPLIT_ORDER:  # every sample's place; json.dumps is C, a loop here is not
        h.update(json.dumps([name, shards.get(name, [])]).encode())
    plan.digest = h.hexdigest()
    return plan


def read_truth(path: str | Path) -> dict[str, str]:
    """An `id,class` CSV (header optional) -> {file id: class name}; a bad line is one UserError."""
    out: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--unlabeled-truth {path}: cannot read it ({err})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or (n == 1 and line.strip() == "id,class"):
            continue
        fid, sep, cls = line.rpartition(",")
        if not sep or not fid or not cls:
            raise UserError(f"--unlabeled-truth {path}: line {n}: expected 'id,class', got {line[:80]!r}")
        out[fid] = cls
    return out


def _with(s: Source, **kw: Any) -> Source:
    return s._replace(**kw)


# ---------------------------------------------------------------------------- writing

_progress: Any = None  # a multiprocessing Value in pool workers, a callable in-process
_TASKS: list[ShardTask] = []  # a pool worker's copy of the shard tasks (inherited, not sent)


def _init_worker(counter: Any, tasks: list[ShardTask]) -> None:
    """Pool worker set-up. The tasks come once through the initializer (with fork: no copy at
    all) and each job is just an index: large pickled jobs would fill the task pipe and make
    Pool.terminate() hang on Ctrl-C. Workers ignore SIGINT: the parent alone decides, and
    terminates them (their temporary shard files are then removed by the parent)."""
    global _progress, _TASKS
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _progress = counter
    _TASKS = tasks


def _write_nth(i: int) -> dict[str, Any]:
    return write_shard(_TASKS[i])


def _tick(n: int) -> None:
    p = _progress
    if p is None:
        return
    if callable(p):
        p(n)
    else:
        with p.get_lock():
            p.value += n


READ_AHEAD = 128


def _read_all(fd: int, size: int) -> bytes:
    """The whole file behind `fd`: one read when it is the size the scan saw (raw os calls, no
    buffered file object, since this runs per image)."""
    want = size + 1 if size > 0 else 1 << 16
    data = os.read(fd, want)
    if len(data) < want:
        return data
    chunks = [data]
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_files(sources: list[Source]) -> list[bytes | OSError]:
    """Each source's bytes (or the OSError), in the given order, keeping up to READ_AHEAD
    files open with POSIX_FADV_WILLNEED so a cold disk gets many reads in flight. One thread
    and a plain loop: a thread handoff or a generator per file costs more than it saves warm."""
    n = len(sources)
    fds: list[int | OSError | None] = [None] * n
    out: list[bytes | OSError] = []
    advise = getattr(os, "posix_fadvise", None)
    willneed = getattr(os, "POSIX_FADV_WILLNEED", 0)
    os_open, os_close, rdonly = os.open, os.close, os.O_RDONLY
    ahead = 0
    try:
        for i in range(n):
            stop = min(n, i + READ_AHEAD)
            while ahead < stop:
                s = sources[ahead]
                try:
                    if s.size < 0:
                        raise OSError(0, "not a regular file")
                    fd = os_open(s.path, rdonly)
                    fds[ahead] = fd
                    if advise is not None:
                        advise(fd, 0, 0, willneed)
                except OSError as err:
                    fds[ahead] = err
                ahead += 1
            fd = fds[i]
            fds[i] = None
            if fd.__class__ is int:
                try:
                    out.append(_read_all(fd, sources[i].size))  # type: ignore[arg-type]
                except OSError as err:
                    out.append(err)
                finally:
                    os_close(fd)  # type: ignore[arg-type]
            else:
                out.append(fd)  # type: ignore[arg-type]
    finally:
        for fd in fds:
            if fd.__class__ is int:
                os_close(fd)  # type: ignore[arg-type]
    return out


_ORDER = operator.attrgetter("order")


def write_shard(task: ShardTask) -> dict[str, Any]:
    """Read, check and write one planned shard; returns its entry, rejects and class counts."""
    data: dict[str, tuple[str, bytes]] = {}
    rejects: list[tuple[str, str]] = []
    done = 0
    in_order = sorted(task.sources, key=_ORDER)
    for s, raw in zip(in_order, _read_files(in_order)):
        done += 1
        if raw.__class__ is not bytes:
            assert isinstance(raw, OSError)
            rejects.append((s.path, f"cannot read: {raw.strerror or type(raw).__name__}"))
            continue
        try:
            ext, w, h = check_image(raw)
            if task.max_side is not None and max(w, h) > task.max_side:
                try:
                    raw, ext = shrink(raw, ext, task.max_side)
                except Exception as err:  # PIL cannot resize every mode (e.g. some 16-bit ones)
                    raise BadImage(f"cannot shrink to {task.max_side} px: {err}"[:200]) from None
            data[s.key] = (ext, raw)
        except BadImage as err:
            rejects.append((s.path, str(err)))
        if done % 256 == 0:
            _tick(256)
    _tick(done % 256)
    shard = TarShard(Path(task.out) / task.file)
    try:
        hidden: list[int] | None = [] if task.sources and task.sources[0].hidden is not None else None
        per_class: dict[int, int] = {}
        index: dict[str, list] = {"offset": [], "size": [], "label": [], "id": []}  # the split's sample index
        add = shard.add
        for s in task.sources:
            got = data.pop(s.key, None)
            if got is None:
                continue
            index["offset"].append(shard.bytes + BLOCK)  # the image is the sample's first member
            index["size"].append(len(got[1]))
            index["label"].append(-1 if s.label is None else s.label)
            index["id"].append(s.key if s.id is None else s.id)
            members = {got[0]: got[1]}
            if s.label is not None:
                members["cls"] = b"%d" % s.label
                per_class[s.label] = per_class.get(s.label, 0) + 1
            if s.id is not None:
                members["id"] = s.id.encode("utf-8", "surrogateescape")
            add(s.key, members)
            if hidden is not None:
                assert s.hidden is not None
                hidden.append(s.hidden)
        entry = shard.commit(hidden)
    except OSError as err:  # a full disk: name the shard (a bare write() error names no file)
        shard.abort()
        raise OSError(err.errno, err.strerror, str(shard.path)) from None
    except BaseException:
        shard.abort()
        raise
    e = {"file": entry.file, "count": entry.count, "bytes": entry.bytes, "sha256": entry.sha256,
         "hidden_labels": entry.hidden_labels}
    return {"entry": e, "rejects": rejects, "per_class": per_class, "split": task.split, "index": index}


def _split_index(name: str, tasks: list[ShardTask], results: dict[str, dict[str, Any]]) -> bytes:
    """The sample index file of split `name`, from what write_shard recorded while writing."""
    cols: dict[str, list] = {k: [] for k in ("shard", "offset", "size", "label", "hidden")}
    ids: list[str] = []
    for si, t in enumerate(t for t in tasks if t.split == name):
        res = results[t.file]
        rec, n = res["index"], res["entry"]["count"]
        cols["shard"] += [si] * n
        cols["offset"] += rec["offset"]
        cols["size"] += rec["size"]
        cols["label"] += rec["label"]
        hidden = res["entry"]["hidden_labels"]
        cols["hidden"] += [-1] * n if hidden is None else hidden
        ids += rec["id"]
    shas = [results[t.file]["entry"]["sha256"] for t in tasks if t.split == name]
    return pack({k: np.asarray(v, dtype=np.int64) for k, v in cols.items()}, ids, shas)


def _add_missing_indexes(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """A finished set from before the sample index: scan its shards once, write the indexes and
    the manifest with them (rerunning the build command upgrades the set in place)."""
    from sslrun.data.manifest import read_manifest
    from sslrun.data.samples import scan_split

    m = read_manifest(out)
    for name, info in manifest["splits"].items():
        if "index" in info:
            continue
        sp = scan_split(m, name)
        data = pack({"shard": sp.shard, "offset": sp.offset, "size": sp.size, "label": sp.label,
                     "hidden": sp.hidden}, sp.ids, [e.sha256 for e in m.split(name).shards])
        write_atomic(out / index_file(name), data)
        manifest["splits"][name] = _with_index(info, entry_for(index_file(name), data))
    write_atomic(out / "manifest.json", _dumps(manifest))
    log.info("%s: added the sample index of each split", out)
    return manifest


def _with_index(info: dict[str, Any], index: dict[str, Any]) -> dict[str, Any]:
    """A split's manifest object with `index` placed before the long shard list."""
    out = {k: v for k, v in info.items() if k not in ("shards", "index")}
    return {**out, "index": index, "shards": info["shards"]}


# ---------------------------------------------------------------------------- the build


def parse_size(text: str) -> int:
    """'1G', '500M', '64k', '1000' -> bytes (binary units: 1K = 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[iI]?[bB]?\s*", text)
    if not m:
        raise UserError(f"size {text!r} not understood (expected e.g. 500M, 1G, 65536)")
    mult = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    value = int(float(m.group(1)) * mult)
    if value < 10 * 1024:
        raise UserError(f"shard size {text!r} is too small (at least 10K)")
    return value


def _check_args(
    labeled: Any, val_per_class: Any, val_fraction: Any, labels_per_class: Any, shard_samples: Any,
    shard_bytes: Any, workers: Any, max_side: Any,
) -> None:
    if labeled is None:
        raise UserError("a labeled folder is needed (--labeled DIR): it gives the classes and the train split")
    if val_per_class is not None and val_fraction is not None:
        raise UserError("give --val-per-class or --val-fraction, not both")
    if val_per_class is not None and val_per_class < 0:
        raise UserError(f"--val-per-class must be >= 0, got {val_per_class}")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if labels_per_class is not None and labels_per_class < 1:
        raise UserError(f"--labels-per-class must be >= 1, got {labels_per_class}")
    if shard_samples < 1:
        raise UserError(f"--shard-samples must be >= 1, got {shard_samples}")
    if shard_bytes is not None and shard_bytes < 10 * 1024:
        raise UserError(f"--shard-bytes must be at least 10K, got {shard_bytes}")
    if workers < 1:
        raise UserError(f"-j must be >= 1, got {workers}")
    if max_side is not None and max_side < 1:
        raise UserError(f"--max-side must be >= 1, got {max_side}")


def _check_out_apart(out: Path, inputs: dict[str, Any]) -> None:
    """--out inside an input would be scanned as images (or a class) on a rerun; an input
    inside --out would be mixed with the shards. Both are refused, resolved through symlinks."""
    o = out.resolve()
    for flag, folder in inputs.items():
        if folder is None:
            continue
        f = Path(folder).resolve()
        if o == f or f in o.parents or o in f.parents:
            raise UserError(f"--out {out} and {flag} {folder} overlap: the shard set must be a folder "
                            "outside the input folders, and not contain them")


def _check_inputs_apart(inputs: dict[str, Any]) -> None:
    """Two input folders that are one, or one inside the other, would put the same images in two
    splits (test images trained on, labeled images counted twice): refused, through symlinks.
    To train on labeled images also as unlabeled ones, use --labels-per-class."""
    given = [(flag, Path(folder), Path(folder).resolve()) for flag, folder in inputs.items() if folder is not None]
    for i, (flag, folder, f) in enumerate(given):
        for flag2, folder2, g in given[i + 1:]:
            if f == g or f in g.parents or g in f.parents:
                raise UserError(f"{flag} {folder} and {flag2} {folder2} overlap: the same images would be in two "
                                "splits; give separate folders")


def _check_out_path(out: Path) -> None:
    """The cheap --out mistakes, before the inputs are scanned: a file, a name too long, a
    parent that is a file."""
    try:
        st = os.stat(out)
    except FileNotFoundError:
        return
    except OSError as err:
        raise UserError(f"--out {out}: {err.strerror or err}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"--out {out} exists and is not a folder")


def _lock_out(out: Path) -> int:
    """Make `out` and hold an exclusive lock on it for the whole build: a second build into the
    same folder (two terminals, a job array) would remove the first one's temporary shards and mix
    two sets' files. The lock is the folder's own (flock on its descriptor): nothing is added to
    a folder the user gave, and it goes away with the process, however it ends."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise UserError(f"cannot create --out {out}: {err.strerror or err}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            # a file system without flock (some NFS mounts): build unlocked, as before the lock
            log.warning("--out %s: cannot lock (%s); do not start a second build into it", out, err.strerror)
            return fd
        os.close(fd)
        raise UserError(f"--out {out} is being written by another build right now; wait for it to end "
                        "(then rerun to resume it) or choose another --out") from None
    return fd


def _remove_tmp(out: Path) -> None:
    """Remove temporary files a crashed or interrupted build left (never a final name)."""
    if not out.is_dir():
        return
    for p in out.iterdir():
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX):
            p.unlink(missing_ok=True)


def _prepare_out(out: Path, plan: Plan) -> dict[str, Any] | None:
    """Make `out` ready; return the finished manifest if this very build is already there."""
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        old = _json_object(manifest_path)
        build = old.get("build")
        if isinstance(build, dict) and build.get("plan_sha256") == plan.digest:
            return old
        raise UserError(f"{out} already holds a different shard set; choose another --out")
    plan_path = out / PLAN_FILE
    if plan_path.is_file():
        old_digest = _json_object(plan_path).get("plan_sha256")
        if old_digest != plan.digest:
            raise UserError(
                f"{out} holds an unfinished build of other inputs or parameters; "
                "rerun that exact command to finish it, or choose another --out"
            )
        _remove_tmp(out)
        return None
    if any(out.iterdir()):
        raise UserError(f"--out {out} is not empty; choose a new folder (nothing is deleted to make room)")
    write_atomic(plan_path, json.dumps({"plan_sha256": plan.digest, "params": plan.params}, indent=1).encode())
    return None


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON object file found in --out, or {} when it is anything else (unreadable, not JSON,
    a list): such a file is not this build's, and the caller says so."""
    try:
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _load_journal(out: Path, plan: Plan, tasks: list[ShardTask]) -> dict[str, dict[str, Any]]:
    """Finished shards of this plan whose file still has its recorded sha256."""
    path = out / JOURNAL_FILE
    if not path.is_file():
        return {}
    wanted = {t.file for t in tasks}
    done: dict[str, dict[str, Any]] = {}
    for line in path.read_bytes().splitlines():
        try:
            rec = json.loads(line)
            if rec.get("plan") != plan.digest or rec["entry"]["file"] not in wanted or "index" not in rec:
                continue
            rec["per_class"] = {int(k): v for k, v in rec["per_class"].items()}
            int(rec["entry"]["bytes"]), str(rec["entry"]["sha256"])
        except (ValueError, RecursionError, AttributeError, KeyError, TypeError):
            continue  # a line cut by a crash, or not ours: that shard is written again
        done[rec["entry"]["file"]] = rec
    good = {}
    for file, rec in done.items():
        p = out / file
        if p.is_file() and p.stat().st_size == rec["entry"]["bytes"] and file_sha256(p) == rec["entry"]["sha256"]:
            good[file] = rec
        else:
            log.warning("shard %s differs from the journal: writing it again", file)
    return good


def _run_tasks(
    tasks: list[ShardTask], workers: int, on_done: Callable[[dict[str, Any]], None], progress: bool, total: int,
    initial: int,
) -> None:
    """Write the shards, `workers` at a time; `on_done` runs in this process for each."""
    global _progress
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=initial, unit="img", unit_scale=True, desc="shards", smoothing=0.05)
    try:
        if workers == 1 or len(tasks) <= 1:
            _progress = bar.update if bar is not None else None
            try:
                for t in tasks:
                    on_done(write_shard(t))
            finally:
                _progress = None
            return
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        counter = ctx.Value("q", 0)
        seen = 0
        pool = ctx.Pool(min(workers, len(tasks)), initializer=_init_worker, initargs=(counter, tasks))
        try:
            pending = [pool.apply_async(_write_nth, (i,)) for i in range(len(tasks))]
            while pending:
                pending[0].wait(0.2)
                still = []
                for r in pending:
                    if r.ready():
                        on_done(r.get())
                    else:
                        still.append(r)
                pending = still
                if bar is not None:
                    now = counter.value
                    bar.update(now - seen)
                    seen = now
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    finally:
        if bar is not None:
            bar.close()


def build_shards(
    out: str | Path,
    labeled: str | Path | None = None,
    unlabeled: str | Path | None = None,
    test: str | Path | None = None,
    *,
    val_per_class: int | None = None,
    val_fraction: float | None = None,
    labels_per_class: int | None = None,
    seed: int = 0,
    shard_samples: int = 10000,
    shard_bytes: int | None = None,
    workers: int = 1,
    max_side: int | None = None,
    progress: bool = False,
    unlabeled_truth: dict[str, str] | None = None,
) -> dict:
    """Build (or finish building) a shard set in `out`; returns the manifest dict it wrote.

    Same inputs and parameters give byte-identical shards and manifest, whatever `workers`.
    Rerunning after a crash resumes: finished shards are kept (checked by sha256), partial
    ones removed. User mistakes raise UserError before anything is written to `out`.
    """
    _check_args(labeled, val_per_class, val_fraction, labels_per_class, shard_samples, shard_bytes, workers, max_side)
    out = Path(out)
    inputs = {"--labeled": labeled, "--unlabeled": unlabeled, "--test": test}
    _check_out_apart(out, inputs)
    _check_inputs_apart(inputs)
    _check_out_path(out)
    t0 = time.monotonic()
    plan = make_plan(
        Path(labeled),
        None if unlabeled is None else Path(unlabeled),
        None if test is None else Path(test),
        val_per_class=val_per_class,
        val_fraction=val_fraction,
        labels_per_class=labels_per_class,
        seed=seed,
        shard_samples=shard_samples,
        shard_bytes=shard_bytes,
        max_side=max_side,
        unlabeled_truth=unlabeled_truth,
    )
    n_total = sum(len(s) for shards in plan.splits.values() for s in shards)
    log.info("planned %d samples in %d shards (%.1f s)", n_total, sum(map(len, plan.splits.values())), time.monotonic() - t0)
    lock = _lock_out(out)
    try:
        return _build_locked(out, plan, workers, progress, max_side, n_total)
    finally:
        os.close(lock)


def _build_locked(out: Path, plan: Plan, workers: int, progress: bool, max_side: int | None,
                  n_total: int) -> dict:
    """build_shards' writing part, with `out` locked against a second build."""
    finished = _prepare_out(out, plan)
    if finished is not None:
        (out / PLAN_FILE).unlink(missing_ok=True)
        (out / JOURNAL_FILE).unlink(missing_ok=True)
        if any("index" not in info for info in finished["splits"].values()):
            return _add_missing_indexes(out, finished)
        log.info("%s already holds this build; nothing to do", out)
        return finished
    tasks = plan.tasks(out, max_side)
    results = _load_journal(out, plan, tasks)
    if results:
        log.info("resuming: %d of %d shards already complete", len(results), len(tasks))
    todo = [t for t in tasks if t.file not in results]
    journal = open(out / JOURNAL_FILE, "a")

    def on_done(res: dict[str, Any]) -> None:
        res = {"plan": plan.digest, **res}
        results[res["entry"]["file"]] = res
        journal.write(json.dumps(res) + "\n")
        journal.flush()
        os.fsync(journal.fileno())

    initial = sum(len(t.sources) for t in tasks if t.file in results)
    try:
        try:
            _run_tasks(todo, workers, on_done, progress, n_total, initial)
        finally:
            journal.close()
            _remove_tmp(out)
        manifest = _manifest(plan, tasks, results)
        rejects = sorted(r for res in results.values() for r in res["rejects"])
        tsv = "path\treason\n" + "".join(f"{_tsv(p)}\t{_tsv(why)}\n" for p, why in rejects)
        write_atomic(out / REJECTS_FILE, tsv.encode("utf-8", "surrogateescape"))
        write_atomic(out / "_info.json", _dumps(_timm_info(manifest)))
        for name, split in manifest["splits"].items():
            write_atomic(out / wids_file(name), _dumps(wids_index(name, split["shards"])))
            data = _split_index(name, tasks, results)
            write_atomic(out / index_file(name), data)
            manifest["splits"][name] = _with_index(split, entry_for(index_file(name), data))
        write_atomic(out / "manifest.json", _dumps(manifest))
    except OSError as err:  # a full disk: finished shards stay (journal), partial ones are gone
        raise write_error(err.filename or out, err, "finished shards are kept: free space and rerun the same "
                          "command to resume") from None
    (out / PLAN_FILE).unlink(missing_ok=True)
    (out / JOURNAL_FILE).unlink(missing_ok=True)
    log.info("wrote %s: %d samples, %d rejects", out, sum(s["count"] for s in manifest["splits"].values()), len(rejects))
    return manifest


_INT_LIST = re.compile(r"\[\s*-?\d+(?:,\s*-?\d+)*\s*\]")


def _dumps(obj: Any) -> bytes:
    """Indented JSON with lists of numbers on one line (hidden labels of 300k samples would
    otherwise take 300k lines)."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    text = _INT_LIST.sub(lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "), text)
    return (text + "\n").encode("utf-8", "surrogateescape")


def _tsv(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")


def _manifest(plan: Plan, tasks: list[ShardTask], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    n_rejects = 0
    for name in SPLIT_ORDER:
        if name not in plan.splits:
            continue
        shards = []
        per_class = [0] * len(plan.classes)
        for t in tasks:
            if t.split != name:
                continue
            res = results[t.file]
            n_rejects += len(res["rejects"])
            e = ShardEntry(**res["entry"])
            entry: dict[str, Any] = {"file": e.file, "count": e.count, "bytes": e.bytes, "sha256": e.sha256}
            if e.hidden_labels is not None:
                entry["hidden_labels"] = e.hidden_labels
            shards.append(entry)
            for c, n in res["per_class"].items():
                per_class[int(c)] += n
        info: dict[str, Any] = {"count": sum(s["count"] for s in shards), "labeled": plan.labeled[name]}
        if plan.labeled[name]:
            info["per_class"] = per_class
        else:
            info["hidden_labels"] = bool(shards) and all("hidden_labels" in s for s in shards)
        info["shards"] = shards
        splits[name] = info
    return {
        "format": FORMAT,
        "classes": plan.classes,
        "splits": splits,
        "rejects": {"count": n_rejects, "file": REJECTS_FILE},
        "build": {**plan.params, "plan_sha256": plan.digest},
    }


def _timm_info(manifest: dict[str, Any]) -> dict[str, Any]:
    """The `_info.json` that timm's webdataset reader (`wds/...` datasets) understands."""
    return {
        "name": "sslrun-shards",
        "num_classes": len(manifest["classes"]),
        "splits": {
            name: {
                "name": name,
                "num_samples": info["count"],
                "filenames": [s["file"] for s in info["shards"]],
                "shard_lengths": [s["count"] for s in info["shards"]],
            }
            for name, info in manifest["splits"].items()
        },
    }
