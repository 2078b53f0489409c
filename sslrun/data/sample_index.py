"""A split's sample index: where every sample's image lies, with its label, hidden class and id.

Why a file: without it every rank scanned every tar header (and read every `.cls` / `.id`
member) at every start and requeue, over 10M reads a rank at 10M samples on shared storage.
The build writes `<split>.index.npz` beside the shards and records its size and sha256 in
the manifest; a start reads this one small file, checks it against the manifest, and trusts
it (shards/verify.py compares it with the tars in full).

The file is a plain `.npz` (`np.load` opens it, no pickles) with columns `shard` (int32,
position in the split's shard list), `offset` and `size` (int64, of the image member's data),
`label` (int64, -1 where unlabeled), `hidden` (int64, -1 where unknown) and `ids` (the ids as
UTF-8, NUL-separated, as uint8: fixed-width strings would take 80 x 4 bytes a sample). Its
zip entries carry a fixed timestamp, so the same build gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from sslrun.data.manifest import IndexEntry
from sslrun.errors import UserError

COLUMNS = {"shard": np.int32, "offset": np.int64, "size": np.int64, "label": np.int64, "hidden": np.int64}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def index_file(split: str) -> str:
    return f"{split}.index.npz"


def pack(cols: dict[str, np.ndarray], ids: list[str]) -> bytes:
    """The index file's bytes for these columns (same columns -> same bytes)."""
    if any("\0" in i for i in ids):
        raise ValueError("a sample id holds a NUL character")
    arrays = {k: np.ascontiguousarray(cols[k], dtype=t) for k, t in COLUMNS.items()}
    arrays["ids"] = np.frombuffer("\0".join(ids).encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            one = io.BytesIO()
            np.lib.format.write_array(one, arr, allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME), one.getvalue())
    return buf.getvalue()


def entry_for(file: str, data: bytes) -> dict[str, object]:
    """The manifest's `index` object for an index file with these bytes."""
    return {"file": file, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def unpack(path: Path, entry: IndexEntry, count: int, shard_counts: list[int]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Read and check the index file at `path` against its manifest entry and the split's
    counts; any mismatch is one UserError naming the file. Reads one file, no shard."""
    fix = "damaged or replaced; rebuild the shard set with shards/build.py"
    try:
        size = os.path.getsize(path)
        raw = path.read_bytes() if size == entry.bytes else b""
    except OSError as err:
        raise UserError(f"sample index {path}: cannot read ({err.strerror or err}); {fix}") from None
    if size != entry.bytes:
        raise UserError(f"sample index {path}: {size} bytes, manifest says {entry.bytes} ({fix})")
    if hashlib.sha256(raw).hexdigest() != entry.sha256:
        raise UserError(f"sample index {path}: sha256 differs from the manifest ({fix})")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            cols = {k: z[k] for k in COLUMNS}
            blob = z["ids"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"sample index {path}: not a readable index ({str(err)[:80]}); {fix}") from None
    for k, t in COLUMNS.items():
        if cols[k].dtype != t or cols[k].shape != (count,):
            raise UserError(f"sample index {path}: column '{k}' is {cols[k].dtype}{list(cols[k].shape)}, "
                            f"expected {np.dtype(t)}[{count}] ({fix})")
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise UserError(f"sample index {path}: column 'ids' is not bytes ({fix})")
    try:
        ids = blob.tobytes().decode("utf-8").split("\0") if count else []
    except UnicodeDecodeError:
        raise UserError(f"sample index {path}: ids are not UTF-8 ({fix})") from None
    if len(ids) != count:
        raise UserError(f"sample index {path}: {len(ids)} ids for {count} samples ({fix})")
    shard = cols["shard"]
    if count and (shard.min() < 0 or shard.max() >= len(shard_counts)
                  or np.bincount(shard, minlength=len(shard_counts)).tolist() != shard_counts):
        raise UserError(f"sample index {path}: samples per shard differ from the manifest ({fix})")
    return cols, ids
