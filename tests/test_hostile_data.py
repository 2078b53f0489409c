"""Hostile shards and manifests: every outcome is a correct result or one clean UserError.

Hand-made regressions (issue 15, class 5) first, then hypothesis over random corruptions of
tar headers and manifests (bit flips, truncation, garbage fields). Both readers of a shard,
training's index (samples.load_split) and shards/verify.py, go through the one parser in
tar_index.py, so each corruption is checked against both.
"""

from __future__ import annotations

import io
import json
import signal
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from sslrun.data.manifest import read_manifest
from sslrun.data.samples import load_split
from shard_tools import tar_member
from sslrun.data.transforms import decode
from sslrun.data.verify import verify_shards
from sslrun.errors import UserError

END = b"\0" * 1024


def _png(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(out, format="PNG")
    return out.getvalue()


def _sample(key: str, cls: bytes, value: int = 10) -> bytes:
    return tar_member(f"{key}.png", _png(value)) + tar_member(f"{key}.cls", cls)


def _pax(payload: bytes) -> bytes:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(payload)
    return info.tobuf(format=tarfile.USTAR_FORMAT) + payload + b"\0" * (-len(payload) % 512)


def _write_set(folder: Path, raw: bytes, count: int) -> Path:
    """A one-shard labeled set around `raw`, the manifest made to agree with its size and hash."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-000000.tar").write_bytes(raw)
    (folder / "manifest.json").write_text(json.dumps({
        "format": "sslrun-shards/1", "classes": ["a", "b"],
        "splits": {"train": {"count": count, "labeled": True, "shards": [
            {"file": "train-000000.tar", "count": count, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}]}}}))
    return folder


class _Hang(Exception):
    pass


def _outcome(folder: Path) -> tuple[str, str]:
    """('ok' | 'error', detail) from training's index and a full read; anything else fails the test."""
    def alarm(*_: object) -> None:
        raise _Hang()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(10)
    try:
        s = load_split(read_manifest(folder), "train")
        raw = (folder / "train-000000.tar").read_bytes()
        for off, size in zip(s.offset, s.size):
            decode(raw[off:off + size])
        return "ok", ""
    except UserError as err:
        msg = str(err)
        assert "\n" not in msg and msg
        return "error", msg
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


GOOD = _sample("k0", b"0") + _sample("k1", b"1", 200) + END


def _field(raw: bytes, at: int, value: bytes) -> bytes:
    """`raw` with the first header's bytes at `at` replaced, and a checksum that matches again."""
    h = bytearray(raw[:512])
    h[at:at + len(value)] = value
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h) + raw[512:]


@pytest.mark.parametrize("name,raw,where", [
    ("zero-length PAX record (was a hang)", _pax(b"0 path=k0.png\n") + _sample("k0", b"0") + END, "byte 512"),
    ("PAX record without a length (was a traceback)", _pax(b"path=k0.png\n") + _sample("k0", b"0") + END, "byte 512"),
    ("PAX length past the record", _pax(b"99 path=k0.png\n") + _sample("k0", b"0") + END, "byte 512"),
    ("superscript digit in .cls (was a traceback)", _sample("k0", "\u00b3".encode()) + END, "has class"),
    ("Arabic-Indic digit in .cls", _sample("k0", "\u0663".encode()) + END, "has class"),
    ("non-UTF-8 .cls", _sample("k0", b"\xff") + END, "has class"),
    ("huge .cls", _sample("k0", b"9" * 4000) + END, "has class"),
    ("non-UTF-8 .id", _sample("k0", b"0")[:-0 or None] + tar_member("k0.id", b"\xff\xfe") + END, "not UTF-8"),
    ("truncated inside data", GOOD[:520], "byte 0: truncated"),
    ("truncated inside a header", GOOD[:512 * 3 + 100], "inside a tar header"),
    ("no end-of-archive", GOOD[:-1024], "end-of-archive"),
    ("size field with a non-octal digit", _field(GOOD, 124, b"0000000009\0\0"), "byte 124"),
    ("size field with a non-ASCII digit", _field(GOOD, 124, "000000\u0663".encode() + b"\0"), "byte 124"),
    ("negative base-256 size", _field(GOOD, 124, b"\xff" * 12), "byte 124"),
    ("huge base-256 size", _field(GOOD, 124, b"\x80" + b"\x7f" * 11), "byte 0: truncated"),
    ("checksum garbage", GOOD[:148] + b"zzzzzzzz" + GOOD[156:], "byte 148"),
    ("bit flip in the name", GOOD[:3] + b"\x01" + GOOD[4:], "checksum"),
    ("symlink member", _field(GOOD, 156, b"2"), "type b'2'"),
    ("name with ..", _field(GOOD, 0, b"../k0.png\0"), "'..'"),
    ("name not UTF-8", _field(GOOD, 0, b"k\xff.png\0"), "not UTF-8"),
])
def test_malformed_shard_is_one_line_naming_shard_and_offset(tmp_path, name, raw, where):
    folder = _write_set(tmp_path / "s", raw, 1)
    kind, msg = _outcome(folder)
    assert kind == "error", name
    assert "train-000000.tar" in msg and where in msg, msg
    problems = verify_shards(folder)
    assert any(where in p and "train-000000.tar" in p for p in problems), problems


def test_good_shard_reads_in_both(tmp_path):
    folder = _write_set(tmp_path / "s", GOOD, 2)
    assert _outcome(folder) == ("ok", "")
    assert verify_shards(folder) == []
    s = load_split(read_manifest(folder), "train")
    assert list(s.label) == [0, 1] and s.ids == ["k0", "k1"]
    from sslrun.data.tar_index import scan_bytes

    # the same parse as tarfile's, member for member
    with tarfile.open(fileobj=io.BytesIO(GOOD)) as tf:
        want = [(i.name, i.offset_data, i.size) for i in tf]
    assert [(m.name, m.offset, m.size) for m in scan_bytes(GOOD, "x")] == want


_HEADER_BYTES = [o for h in range(0, len(GOOD) - 1024, 512) if GOOD[h:h + 512].startswith(b"k") for o in range(h, h + 512)]

corruption = st.one_of(
    st.tuples(st.just("flip"), st.sampled_from(_HEADER_BYTES), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, len(GOOD) - 1), st.just(0)),
    st.tuples(st.just("garbage"), st.sampled_from(_HEADER_BYTES), st.binary(min_size=1, max_size=24)),
)


def _corrupt(raw: bytes, how: tuple) -> bytes:
    kind, at, arg = how
    b = bytearray(raw)
    if at >= len(b):
        return raw
    if kind == "flip":
        b[at] ^= 1 << arg
    elif kind == "cut":
        del b[at:]
    else:
        b[at:at + len(arg)] = arg[: len(b) - at]
    return bytes(b)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hows=st.lists(corruption, min_size=1, max_size=3))
def test_random_shard_corruption_is_result_or_clean_error(tmp_path_factory, hows):
    raw = GOOD
    for how in hows:
        raw = _corrupt(raw, how)
    folder = _write_set(tmp_path_factory.mktemp("h"), raw, 2)
    kind, msg = _outcome(folder)
    problems = verify_shards(folder)  # a list, never an exception
    if kind == "error" and "manifest says" not in msg and "sha256" not in msg:
        assert "byte " in msg or "has no .cls" in msg or "image members" in msg, msg
    if kind == "ok":  # what training accepts, verify's parse accepts too
        assert not any("byte " in p for p in problems if "does not decode" not in p), problems


_MANIFEST = json.loads(json.dumps({
    "format": "sslrun-shards/1", "classes": ["a", "b"],
    "splits": {"train": {"count": 2, "labeled": True, "per_class": [1, 1], "shards": [
        {"file": "train-000000.tar", "count": 2, "bytes": len(GOOD), "sha256": "0" * 64,
         "hidden_labels": None}]}}}))
_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                  st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_manifest_damage_is_result_or_clean_error(tmp_path_factory, data):
    folder = _write_set(tmp_path_factory.mktemp("m"), GOOD, 2)
    m = json.loads(json.dumps(_MANIFEST))
    m["splits"]["train"]["shards"][0]["sha256"] = json.loads((folder / "manifest.json").read_text())[
        "splits"]["train"]["shards"][0]["sha256"]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(m)[1:]))
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = data.draw(_JUNK)
        if not isinstance(m, dict):
            break
    text = json.dumps(m)
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(text)))
        text = text[:cut]
    (folder / "manifest.json").write_text(text)
    kind, msg = _outcome(folder)
    assert kind in ("ok", "error")
    try:
        verify_shards(folder)
    except UserError as err:
        assert "\n" not in str(err)
