"""Odd inputs of shards/build.py (issue 15 class 3, build part): every image packed, rejected
with its reason, or a fatal one-line error; nothing silently dropped, nothing written on error."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sslrun.data.build import build_shards
from sslrun.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def _png(v: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (6, 6), (v, v, v)).save(out, format="PNG")
    return out.getvalue()


def _tree(root: Path) -> Path:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            (root / c / f"{c}{i}.png").write_bytes(_png(40 * i))
    return root


def _fails(tmp_path: Path, fragment: str, **kw: object) -> None:
    out = kw.pop("out", tmp_path / "out")
    with pytest.raises(UserError) as err:
        build_shards(out, **kw)
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_class_folder_with_sub_folder_is_fatal(tmp_path):
    t = _tree(tmp_path / "in")
    (t / "a" / "more").mkdir()
    (t / "a" / "more" / "x.png").write_bytes(_png(1))
    _fails(tmp_path, "has a sub-folder 'more'", labeled=t)
    assert not (tmp_path / "out").exists()


def test_unlabeled_folder_with_sub_folder_is_fatal(tmp_path):
    t = _tree(tmp_path / "in")
    (tmp_path / "u" / "deep").mkdir(parents=True)
    _fails(tmp_path, "sub-folder", labeled=t, unlabeled=tmp_path / "u")


def test_symlink_loop_in_a_class_folder_is_fatal_not_a_hang(tmp_path):
    t = _tree(tmp_path / "in")
    os.symlink(t, t / "a" / "loop")
    _fails(tmp_path, "sub-folder 'loop'", labeled=t)


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses non-UTF-8 names")
def test_non_utf8_file_name_is_refused_with_the_file_named(tmp_path):
    t = _tree(tmp_path / "in")
    bad = os.fsencode(t / "a") + b"/caf\xe9.png"
    with open(bad, "wb") as f:
        f.write(_png(3))
    _fails(tmp_path, "caf\\xe9.png", labeled=t)


def test_out_inside_an_input_is_refused(tmp_path):
    t = _tree(tmp_path / "in")
    _fails(tmp_path, "overlap", labeled=t, out=t / "shards")
    _fails(tmp_path, "overlap", labeled=t, out=t)
    assert not (t / "shards").exists()


def test_input_inside_out_is_refused(tmp_path):
    t = _tree(tmp_path / "out" / "in")
    _fails(tmp_path, "overlap", labeled=t, out=tmp_path / "out")


def test_non_image_and_unreadable_files_are_counted_as_rejects(tmp_path):
    t = _tree(tmp_path / "in")
    (t / "a" / "notes.txt").write_text("not an image")
    (t / "b" / "broken.png").write_bytes(_png(5)[:30])
    m = build_shards(tmp_path / "out", labeled=t)
    assert m["rejects"]["count"] == 2
    text = (tmp_path / "out" / m["rejects"]["file"]).read_text()
    assert "notes.txt" in text and "broken.png" in text
    assert sum(s["count"] for s in m["splits"].values()) == 6


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
    t = _tree(tmp_path / "in")
    (t / "a" / "sub").mkdir()
    r = subprocess.run([sys.executable, str(REPO / "shards" / "build.py"), "--labeled", str(t), "--out",
                        str(tmp_path / "o"), "--no-progress"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "sub-folder 'sub'" in lines[0]


def test_shard_set_is_a_wids_index_and_streams_with_webdataset(tmp_path):
    """Issue 17: each split's `<split>.wids.json` opens with wids, and webdataset streams the shards."""
    import webdataset as wds
    import wids

    t = _tree(tmp_path / "in")
    m = build_shards(tmp_path / "out", labeled=t, val_per_class=1)
    for name, split in m["splits"].items():
        ds = wids.ShardListDataset(str(tmp_path / "out" / f"{name}.wids.json"), transformations=[])
        assert len(ds) == split["count"]
        keys = set()
        for i in range(len(ds)):
            sample = ds[i]
            png, cls = (sample[k].read() if hasattr(sample[k], "read") else sample[k] for k in (".png", ".cls"))
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and cls.strip().isdigit()
            keys.add(sample["__key__"])
        assert len(keys) == split["count"]
        urls = [str(tmp_path / "out" / s["file"]) for s in split["shards"]]
        streamed = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb").to_tuple("png", "cls"))
        assert len(streamed) == split["count"]
        assert all(img.shape == (6, 6, 3) and int(c) in (0, 1) for img, c in streamed)
