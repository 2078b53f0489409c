"""The careless or malicious user at every door (issue 15): a table of real command lines.

Each case builds its inputs in its own folder, runs the door as a subprocess (`python jobs/x.py
...`, what a user types), and expects either exit 0 with the right result, or exit 2 with one
`error: ...` line (the last line of stderr, the only one starting so) naming the file or key.
Never a traceback, never exit 3 (a bug), never a hang (a timeout), and every file that existed
before the command has the same bytes after it (checksummed), unless the case says it writes.

The doors that import torch take seconds to start, so the cases run two at a time in one
session fixture and each test only reads its outcome; the few that train are marked slow.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO

B, V, T, S, ST, R, P, W = ("shards/build.py", "shards/verify.py", "jobs/train.py", "jobs/submit.py",
                           "jobs/status.py", "jobs/report.py", "jobs/predict.py", "jobs/prefetch_weights.py")
TINY = ["model=test_resnet", "image_size=32", "steps=4", "batch_size=4", "mu=1", "eval_every=2", "ckpt_every=2",
        "log_every=1", "threads=1", "workers=0", "strategy=supervised"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# One xdist worker for the whole file: its session fixtures run every case at once (two at a time);
# split over two workers, each would run all of them.
pytestmark = pytest.mark.xdist_group("hostile")


@dataclass
class Fx:
    """Shared read-only inputs: an image tree, its shard set, a finished run (copy before editing)."""

    tree: Path
    data: Path
    run: Path


@dataclass
class Case:
    id: str
    door: str
    make: Callable[[Path, Fx], list[str]]  # writes inputs under the case folder, returns argv
    code: int  # 0 or 2
    fragment: str  # in the error line (code 2) or in stdout (code 0)
    check: Callable[[Path], None] | None = None  # more checks on the case folder after an exit 0
    env: dict[str, str] = field(default_factory=dict)
    writes: bool = False  # the door may rewrite files that existed (a resumed run)
    slow: bool = False  # trains: always in the slow tier
    root_skips: str = ""  # why the case means nothing when run as root

    @property
    def heavy(self) -> bool:
        """In the slow tier: the doors that import torch take 3-5 s each to start."""
        return self.slow or self.door in (ST, R, P)


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    changed: list[str]
    seconds: float
    folder: Path


# ----------------------------------------------------------------------------- inputs
def png(path: Path, mode: str = "RGB", size: tuple[int, int] = (8, 8), **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, **kw).save(path, format=kw.pop("format", None) or "PNG")
    return path


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def tree(t: Path, fx: Fx, edit: Callable[[Path], object] | None = None) -> Path:
    """A copy of the good two-class tree at t/in, edited."""
    src = shutil.copytree(fx.tree, t / "in")
    if edit is not None:
        edit(src)
    return src


def build(edit: Callable[[Path], object] | None = None, *extra: str) -> Callable[[Path, Fx], list[str]]:
    def make(t: Path, fx: Fx) -> list[str]:
        return ["--labeled", str(tree(t, fx, edit)), "--out", str(t / "out"), "--no-progress", *extra]
    return make


def packed(n: int, rejects: int = 0) -> Callable[[Path], None]:
    """After a build: n samples in the manifest and `rejects` rows in rejects.tsv."""
    def check(t: Path) -> None:
        m = json.loads((t / "out" / "manifest.json").read_text())
        assert sum(s["count"] for s in m["splits"].values()) == n
        rows = (t / "out" / "rejects.tsv").read_text().splitlines()[1:]
        assert len(rows) == rejects, rows
    return check


def jpeg_bytes(mode: str = "RGB", size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128 if mode == "L" else (200, 100, 50)).save(buf, "JPEG")
    return buf.getvalue()


def noisy_png(size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((size, size), 60).save(buf, "PNG")
    return buf.getvalue()


def bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, "PNG")  # 900 M pixels declared, a few KiB on disk
    return buf.getvalue()


def palette_alpha(path: Path) -> None:
    im = Image.new("P", (8, 8))
    im.putpalette([255, 0, 0] * 256)
    im.info["transparency"] = 0
    im.save(path)


def frames(path: Path, fmt: str) -> None:
    if fmt == "GIF":
        fr = [Image.new("P", (8, 8), i) for i in range(3)]
    else:
        fr = [Image.new("RGB", (8, 8), (60 * i, 0, 0)) for i in range(3)]
    fr[0].save(path, format=fmt, save_all=True, append_images=fr[1:])


def unlabeled(t: Path, names: list[str]) -> Path:
    for n in names:
        png(t / "unl" / n)
    return t / "unl"


def data_copy(t: Path, fx: Fx, edit: Callable[[dict, Path], object] | None = None) -> Path:
    d = shutil.copytree(fx.data, t / "data")
    if edit is not None:
        m = json.loads((d / "manifest.json").read_text())
        edit(m, d)
        (d / "manifest.json").write_text(json.dumps(m))
    return d


def data_raw(text: str | bytes) -> Callable[[Path, Fx], list[str]]:
    def make(t: Path, fx: Fx) -> list[str]:
        d = data_copy(t, fx)
        write(d / "manifest.json", text)
        return [str(d)]
    return make


def verify_edit(edit: Callable[[dict, Path], object]) -> Callable[[Path, Fx], list[str]]:
    """verify --no-decode on an edited copy (decoding imports torch: seconds, and beside the point)."""
    return lambda t, fx: [str(data_copy(t, fx, edit)), "--no-decode"]


def shard0(m: dict) -> dict:
    return m["splits"]["train"]["shards"][0]


def submit(*args: str) -> Callable[[Path, Fx], list[str]]:
    """A dry run on the good data with the tiny settings, runs under the case folder."""
    return lambda t, fx: ["--dry-run", f"data={fx.data}", f"root={t / 'runs'}", *TINY, *args]


def submit_file(name: str, text: str | bytes, flag: str, *args: str) -> Callable[[Path, Fx], list[str]]:
    return lambda t, fx: [flag, str(write(t / name, text)), *submit(*args)(t, fx)]


def submit_env(text: str | bytes | None) -> Callable[[Path, Fx], list[str]]:
    """submit.yaml defaults given by $SSLRUN_SUBMIT_CONFIG (set to t/submit.yaml by the runner)."""
    def make(t: Path, fx: Fx) -> list[str]:
        if text is not None:
            write(t / "submit.yaml", text)
        return submit()(t, fx)
    return make


def train(*args: str) -> Callable[[Path, Fx], list[str]]:
    return lambda t, fx: [f"data={fx.data}", f"root={t / 'runs'}", *TINY, *args]


def train_config(text: str | bytes) -> Callable[[Path, Fx], list[str]]:
    return lambda t, fx: ["--config", str(write(t / "c.yaml", text)), *train()(t, fx)]


def sweep(edit: Callable[[Path], object] | None = None) -> Callable[[Path, Fx], list[str]]:
    """A sweep t/sw holding a copy of the finished run as t/sw/r, edited."""
    def make(t: Path, fx: Fx) -> list[str]:
        run = shutil.copytree(fx.run, t / "sw" / "r", symlinks=True)
        if edit is not None:
            edit(run)
        return [str(t / "sw")]
    return make


def report(edit: Callable[[Path], object] | None = None) -> Callable[[Path, Fx], list[str]]:
    return lambda t, fx: [*sweep(edit)(t, fx), "--out", str(t / "rep")]


def predict(edit: Callable[[Path], object] | None = None, *extra: str) -> Callable[[Path, Fx], list[str]]:
    def make(t: Path, fx: Fx) -> list[str]:
        run = sweep(edit)(t, fx)[0] + "/r"
        return [run, "--split", "val", *extra]
    return make


def replace(path: Path, data: str | bytes | None = None, link: str | None = None, folder: bool = False) -> None:
    path.unlink(missing_ok=True)
    if link is not None:
        os.symlink(link, path)
    elif folder:
        path.mkdir()
    else:
        write(path, data or b"")


def appended(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def cfg_edit(run: Path, old: str, new: str) -> None:
    p = run / "config.yaml"
    text = p.read_text()
    assert old in text
    p.write_text(text.replace(old, new))


BOMB_YAML = "".join(f"{c}: &{c} [" + ",".join([f"*{p}"] * 9 if p else ["x"] * 9) + "]\n"
                    for p, c in zip(["", *"abcdefg"], "abcdefgh"))
STATUS_OK = "| r |"


# ----------------------------------------------------------------------------- the table
CASES: list[Case] = [
    # --- build: file names
    Case("build-name-spaces", B, build(lambda s: png(s / "a" / "with space.png")), 0, "9 samples", packed(9)),
    Case("build-name-leading-dash", B, build(lambda s: png(s / "a" / "-rf.png")), 0, "9 samples", packed(9)),
    Case("build-name-newline", B, build(lambda s: png(s / "a" / "new\nline.png")), 2, "new\\nline"),
    Case("build-name-tab", B, build(lambda s: png(s / "a" / "tab\there.png")), 2, "'\\t'"),
    Case("build-name-bidi-override", B, build(lambda s: png(s / "a" / "x\u202egnp.png")), 2, "U+202E"),
    Case("build-name-line-separator", B, build(lambda s: png(s / "a" / "x\u2028y.png")), 2, "U+2028"),
    Case("build-class-name-newline", B, build(lambda s: png(s / "c\nd" / "x.png")), 2, "c\\nd"),
    Case("build-name-not-utf8", B, build(lambda s: png(Path(os.fsdecode(os.fsencode(s / "a") + b"/\xff.png")))),
         2, "not UTF-8"),
    Case("build-nfc-nfd-twins", B, build(lambda s: (png(s / "a" / unicodedata.normalize("NFC", "\u00e9.png")),
                                                    png(s / "a" / unicodedata.normalize("NFD", "\u00e9.png")))),
         2, "differ only in Unicode normalization"),
    Case("build-case-twins", B, build(lambda s: (png(s / "a" / "Q.png"), png(s / "a" / "q.png"))), 0, "10 samples",
         packed(10)),
    Case("build-very-long-name", B, build(lambda s: png(s / "a" / ("x" * 250 + ".png"))), 0, "9 samples", packed(9)),
    Case("build-unicode-name", B, build(lambda s: png(s / "a" / "\u732b\u00e9.png")), 0, "9 samples", packed(9)),
    Case("build-dot-only-stem", B, build(lambda s: png(s / "a" / "..png")), 0, "8 samples", packed(8)),  # hidden
    Case("build-no-extension", B, build(lambda s: png(s / "a" / "noext")), 0, "9 samples", packed(9)),
    Case("build-same-stem-two-ext", B, build(lambda s: png(s / "a" / "a0.jpg")), 2, "have the id 'a/a0'"),
    Case("build-hidden-files", B, build(lambda s: (write(s / ".DS_Store", b"\0\0\0\1Bud1"),
                                                   write(s / "a" / ".DS_Store", b"x"), write(s / "a" / "._a0.png", b"x"))),
         0, "8 samples", packed(8)),
    # --- build: links and odd files
    Case("build-symlink-loop", B, build(lambda s: os.symlink("loop.png", s / "a" / "loop.png")), 0, "8 samples", packed(8, 1)),
    Case("build-symlink-dangling", B, build(lambda s: os.symlink("/nonexistent.png", s / "a" / "d.png")), 0, "8 samples", packed(8, 1)),
    Case("build-symlink-outside", B, lambda t, fx: build(lambda s: os.symlink(png(t / "elsewhere.png"), s / "a" / "o.png"))(t, fx),
         0, "9 samples", packed(9)),
    Case("build-symlink-to-folder", B, build(lambda s: os.symlink(s / "b", s / "a" / "sub")), 2, "sub-folder 'sub'"),
    Case("build-sub-folder", B, build(lambda s: png(s / "a" / "2019" / "x.png")), 2, "sub-folder '2019'"),
    Case("build-fifo", B, build(lambda s: os.mkfifo(s / "a" / "f.png")), 0, "8 samples", packed(8, 1)),
    Case("build-zero-byte", B, build(lambda s: write(s / "a" / "z.png", b"")), 0, "8 samples", packed(8, 1)),
    Case("build-unreadable-file", B, build(lambda s: (png(s / "a" / "u.png"), os.chmod(s / "a" / "u.png", 0))), 0, "8 samples", packed(8, 1), root_skips="root reads a chmod 000 file"),
    # --- build: pixels
    Case("build-truncated-jpeg", B, build(lambda s: write(s / "a" / "t.jpg", jpeg_bytes()[:300])), 0, "8 samples", packed(8, 1)),
    Case("build-truncated-png", B, build(lambda s: write(s / "a" / "t.png", noisy_png()[:2000])), 0, "8 samples", packed(8, 1)),
    Case("build-1x1", B, build(lambda s: png(s / "a" / "one.png", size=(1, 1))), 0, "9 samples", packed(9)),
    Case("build-decompression-bomb", B, build(lambda s: write(s / "a" / "bomb.png", bomb_png())), 0, "8 samples", packed(8, 1)),
    Case("build-cmyk-jpeg", B, build(lambda s: write(s / "a" / "c.jpg", jpeg_bytes("CMYK"))), 0, "9 samples", packed(9)),
    Case("build-palette-transparency", B, build(lambda s: palette_alpha(s / "a" / "p.png")), 0, "9 samples", packed(9)),
    Case("build-animated-gif", B, build(lambda s: frames(s / "a" / "g.gif", "GIF")), 0, "9 samples", packed(9)),
    Case("build-multipage-tiff", B, build(lambda s: frames(s / "a" / "m.tif", "TIFF")), 0, "9 samples", packed(9)),
    Case("build-16bit-png", B, build(lambda s: png(s / "a" / "i16.png", "I;16")), 0, "9 samples", packed(9)),
    Case("build-jpg-that-is-text", B, build(lambda s: write(s / "a" / "t.jpg", "hello, not an image\n")), 0, "8 samples", packed(8, 1)),
    Case("build-svg", B, build(lambda s: write(s / "a" / "x.svg", "<svg/>")), 0, "8 samples", packed(8, 1)),
    # --- build: folders
    Case("build-empty-class", B, build(lambda s: (s / "c").mkdir()), 2, "class folder"),
    Case("build-class-is-a-file", B, build(lambda s: write(s / "c", b"x")), 2, "loose files"),
    Case("build-no-classes", B, lambda t, fx: ["--labeled", str((t / "e").mkdir() or t / "e"), "--out", str(t / "out")],
         2, "no class sub-folders"),
    Case("build-labeled-is-a-file", B, lambda t, fx: ["--labeled", str(write(t / "f", "x")), "--out", str(t / "out")],
         2, "not a folder"),
    Case("build-out-inside-input", B, lambda t, fx: ["--labeled", str(tree(t, fx)), "--out", str(t / "in" / "a" / "o")],
         2, "overlap"),
    Case("build-input-inside-out", B, lambda t, fx: ["--labeled", str(tree(t, fx)), "--out", str(t)], 2, "overlap"),
    Case("build-same-labeled-unlabeled", B, lambda t, fx: ["--labeled", str(tree(t, fx)), "--unlabeled", str(t / "in"),
                                                          "--out", str(t / "out")], 2, "overlap"),
    Case("build-unlabeled-inside-labeled", B, lambda t, fx: ["--labeled", str(tree(t, fx)), "--unlabeled",
                                                            str(t / "in" / "a"), "--out", str(t / "out")], 2, "overlap"),
    Case("build-test-is-labeled", B, lambda t, fx: ["--labeled", str(tree(t, fx)), "--test", str(t / "in"),
                                                   "--out", str(t / "out")], 2, "overlap"),
    Case("build-duplicate-unlabeled-ids", B, lambda t, fx: ["--labeled", str(tree(t, fx)), "--unlabeled",
                                                           str(unlabeled(t, ["u0.png", "u0.jpg"])), "--out", str(t / "out")],
         2, "have the id 'u0'"),
    Case("build-unlabeled-ok", B, lambda t, fx: ["--labeled", str(tree(t, fx)), "--unlabeled",
                                                str(unlabeled(t, ["u0.png", "u1.png"])), "--out", str(t / "out")],
         0, "10 samples", packed(10)),
    Case("build-out-is-a-file", B, lambda t, fx: ["--labeled", str(tree(t, fx)), "--out", str(write(t / "o", "keep"))],
         2, "not a folder"),
    Case("build-out-name-too-long", B, lambda t, fx: ["--labeled", str(tree(t, fx)), "--out", str(t / ("y" * 300))],
         2, "too long"),
    Case("build-out-under-a-file", B, lambda t, fx: ["--labeled", str(tree(t, fx)), "--out", str(write(t / "f", "x") / "o")],
         2, "--out"),
    Case("build-out-not-empty", B, lambda t, fx: ["--labeled", str(tree(t, fx)), "--out", str(write(t / "o" / "x", "x").parent)],
         2, "not empty"),
    Case("build-out-foreign-manifest", B, lambda t, fx: ["--labeled", str(tree(t, fx)), "--out",
                                                        str(write(t / "o" / "manifest.json", "[1, 2]").parent)],
         2, "different shard set"),
    Case("build-out-garbage-plan", B, lambda t, fx: ["--labeled", str(tree(t, fx)), "--out",
                                                    str(write(t / "o" / ".build-plan.json", "[[[[").parent)],
         2, "unfinished build"),
    Case("build-val-fraction-nan", B, build(None, "--val-fraction", "nan"), 2, "--val-fraction"),
    Case("build-shard-bytes-inf", B, build(None, "--shard-bytes", "1e309"), 2, "not understood"),
    Case("build-bad-flag-value", B, build(None, "--seed", "x"), 2, "invalid int value"),
    # --- verify
    Case("verify-good", V, lambda t, fx: [str(fx.data)], 0, "ok"),
    Case("verify-manifest-nan", V, data_raw('{"format": "sslrun-shards/1", "classes": NaN}'), 2, "manifest.json"),
    Case("verify-manifest-deep", V, data_raw("[" * 100000), 2, "manifest.json"),
    Case("verify-manifest-not-utf8", V, data_raw(b"\xff\xfe{}"), 2, "manifest.json"),
    Case("verify-manifest-list", V, data_raw("[]"), 2, "manifest.json"),
    Case("verify-manifest-empty", V, data_raw(""), 2, "manifest.json"),
    Case("verify-shard-path-escape", V, verify_edit(lambda m, d: shard0(m).update(file="../../etc/passwd")), 2,
         "../../etc/passwd"),
    Case("verify-shard-absolute", V, verify_edit(lambda m, d: shard0(m).update(file="/etc/passwd")), 2, "/etc/passwd"),
    Case("verify-count-string", V, verify_edit(lambda m, d: shard0(m).update(count="10")), 2, "count"),
    Case("verify-count-negative", V, verify_edit(lambda m, d: shard0(m).update(count=-1)), 2, "count"),
    Case("verify-shard-is-dev-zero", V, verify_edit(lambda m, d: replace(d / shard0(m)["file"], link="/dev/zero")),
         1, "train-000000.tar: cannot read (not a regular file)"),
    Case("verify-shard-truncated", V, verify_edit(lambda m, d: (d / shard0(m)["file"]).write_bytes(
        (d / shard0(m)["file"]).read_bytes()[:700])), 1, "train-000000.tar"),
    # --- config values through the key table (submit --dry-run: the same table as train)
    Case("cfg-ok", S, submit("seed=7"), 0, "dry run"),
    Case("cfg-seed-minus-zero", S, submit("seed=-0"), 0, "dry run"),
    Case("cfg-seed-negative", S, submit("seed=-1"), 2, "seed=-1"),
    Case("cfg-seed-unicode-digits", S, submit("seed=\u0664\u0662"), 2, "seed="),
    Case("cfg-seed-fullwidth-digits", S, submit("seed=\uff14\uff12"), 2, "seed="),
    Case("cfg-seed-1e309", S, submit("seed=1e309"), 2, "seed=1e309"),
    Case("cfg-seed-list", S, submit("seed=[1,2]"), 2, "seed=[1,2]"),
    Case("cfg-seed-huge", S, submit("seed=" + "9" * 5000), 2, "seed="),
    Case("cfg-lr-zero", S, submit("lr=0"), 2, "lr=0"),
    Case("cfg-lr-inf", S, submit("lr=inf"), 2, "lr=inf"),
    Case("cfg-lr-nan", S, submit("lr=nan"), 2, "lr=nan"),
    Case("cfg-lr-empty", S, submit("lr="), 2, "lr="),
    Case("cfg-lr-1e309", S, submit("lr=1e309"), 2, "lr=1e309"),
    Case("cfg-momentum-one", S, submit("momentum=1"), 2, "momentum=1"),
    Case("cfg-ema-edge-zero", S, submit("ema_decay=0"), 0, "dry run"),
    Case("cfg-image-size-1", S, submit("image_size=1"), 2, "image_size=1"),
    Case("cfg-steps-underscore", S, submit("steps=1_000"), 0, "dry run"),
    Case("cfg-bool-yes", S, submit("frozen=yes"), 0, "dry run"),
    Case("cfg-bool-on", S, submit("sync_bn=on"), 2, "sync_bn=true needs a GPU"),  # on read as true, refused on a CPU job
    Case("cfg-bool-maybe", S, submit("frozen=maybe"), 2, "frozen=maybe"),
    Case("cfg-budget-nan", S, submit("budget_s=nan"), 2, "budget_s=nan"),
    Case("cfg-warmup-negative", S, submit("warmup_steps=-1"), 2, "warmup_steps=-1"),
    Case("cfg-name-long", S, submit("name=" + "x" * 300), 2, "name="),
    Case("cfg-name-newline", S, submit("name=a\nb"), 2, "control character"),
    Case("cfg-name-bidi", S, submit("name=a\u202eb"), 2, "U+202E"),
    Case("cfg-name-line-separator", S, submit("name=a\u2028b"), 2, "U+2028"),
    Case("cfg-name-not-utf8", S, submit(os.fsdecode(b"name=\xff")), 2, "non-UTF-8 byte 0xff"),
    Case("cfg-name-dotdot", S, submit("name=.."), 2, "name="),
    Case("cfg-threshold-python", S, submit("threshold=__import__('os').system('id')"), 2, "threshold="),
    Case("cfg-threshold-power", S, submit("threshold=9**9**9"), 2, "threshold="),
    Case("cfg-threshold-div0", S, submit("threshold=1/0"), 2, "threshold="),
    Case("cfg-extra-yaml-tag", S, submit("extra.x=!!python/object/apply:os.system ['id']"), 2, "extra.x"),
    Case("cfg-extra-yaml-alias", S, submit("extra.x=*a"), 2, "extra.x"),
    Case("cfg-extra-typo", S, submit("extra.mixupp=1"), 2, "extra.mixupp"),
    Case("cfg-unknown-key", S, submit("sed=1"), 2, "did you mean seed"),
    Case("cfg-root-is-a-file", S, lambda t, fx: submit()(t, fx) + [f"root={write(t / 'f', 'x')}"], 2, "root="),
    Case("cfg-data-missing", S, lambda t, fx: submit()(t, fx) + [f"data={t / 'nope'}"], 2, "data="),
    # --- submit: options, sweeps, files
    Case("submit-partition-newline", S, submit("--partition", "gpu\nrm -rf ~"), 2, "--partition"),
    Case("submit-sbatch-newline", S, submit("--sbatch", "mail-type=END\n#SBATCH --wrap=id"), 2, "--sbatch"),
    Case("submit-nodes-zero", S, submit("--nodes", "0"), 2, "--nodes 0"),
    Case("submit-time-negative", S, submit("--time", "-5"), 2, "--time"),
    Case("submit-array-repeat", S, submit("--array", "seeds=1,1"), 2, "planned twice"),
    Case("submit-array-and-override", S, submit("--array", "seeds=1,2", "seed=3"), 2, "both as an override"),
    Case("submit-array-empty-value", S, submit("--array", "seeds=1,,2"), 2, "--array"),
    Case("submit-name-with-array", S, submit("name=myrun", "--array", "seeds=42,43,44"), 0, "3 runs"),
    Case("submit-array-names-collide", S, submit("--array", "extra.mixup=a b,a_b"), 2, "share the folder"),
    Case("submit-write-runs-missing-folder", S, lambda t, fx: ["--write-runs", str(t / "no" / "runs.txt"),
                                                              *submit()(t, fx)[1:]], 2, "--write-runs"),
    Case("submit-write-runs-is-folder", S, lambda t, fx: ["--write-runs", str(t), *submit()(t, fx)[1:]], 2,
         "--write-runs"),
    Case("sweep-file-ok", S, submit_file("s.yaml", "grid:\n  seed: [1, 2]\n", "--sweep-file"), 0, "2 runs"),
    Case("sweep-file-duplicate-key", S, submit_file("s.yaml", "grid:\n  seed: [1]\n  seed: [2]\n", "--sweep-file"),
         2, "given twice"),
    Case("sweep-file-alias-bomb", S, submit_file("s.yaml", BOMB_YAML + "grid:\n  seed: *h\n", "--sweep-file"),
         2, "aliases"),
    Case("sweep-file-python-tag", S, submit_file("s.yaml", "grid: !!python/object/new:list [[1]]\n", "--sweep-file"),
         2, "s.yaml"),
    Case("sweep-file-override-shrinks", S, submit_file("s.yaml", "grid:\n  seed: [1, 2]\n", "--sweep-file", "seed=3"),
         2, "planned twice"),
    Case("sweep-file-not-utf8", S, submit_file("s.yaml", b"grid: \xff\n", "--sweep-file"), 2, "not UTF-8"),
    Case("sweep-file-dev-zero", S, lambda t, fx: ["--sweep-file", "/dev/zero", *submit()(t, fx)], 2, "/dev/zero"),
    Case("sweep-file-deep", S, submit_file("s.yaml", "[" * 5000, "--sweep-file"), 2, "s.yaml"),
    Case("submit-yaml-newline", S, submit_env('partition: "gpu\\nrm -rf ~"\n'), 2, "--partition"),
    Case("submit-yaml-duplicate", S, submit_env("partition: a\npartition: b\n"), 2, "given twice"),
    Case("submit-yaml-tag", S, submit_env("partition: !!python/object/apply:os.system ['id']\n"), 2, "submit.yaml"),
    Case("submit-yaml-list", S, submit_env("partition: [a]\n"), 2, "--partition"),
    Case("submit-yaml-missing", S, submit_env(None), 2, "SSLRUN_SUBMIT_CONFIG"),
    Case("submit-yaml-ok", S, submit_env("partition: gpu\n"), 0, "--partition=gpu"),
    # --- train
    Case("train-bad-value-no-folder", T, train("lr=nan"), 2, "lr=nan"),
    Case("train-config-duplicate-key", T, train_config("seed: 1\nseed: 2\n"), 2, "given twice"),
    Case("train-config-alias", T, train_config("a: &a [1]\nseed: *a\n"), 2, "aliases"),
    Case("train-config-tag", T, train_config("seed: !!python/object/apply:os.system ['id']\n"), 2, "c.yaml"),
    Case("train-config-not-utf8", T, train_config(b"seed: \xff\n"), 2, "not UTF-8"),
    Case("train-config-wrong-type", T, train_config("seed: [1]\n"), 2, "seed="),
    Case("train-config-dev-zero", T, lambda t, fx: ["--config", "/dev/zero", *train()(t, fx)], 2, "/dev/zero"),
    Case("train-config-fifo", T, lambda t, fx: (os.mkfifo(t / "f.yaml"), ["--config", str(t / "f.yaml"),
                                                                         *train()(t, fx)])[1], 2, "f.yaml"),
    Case("train-hand-written-config", T, train_config("seed: 3\n"), 0, '"steps": 4', slow=True),
    # --- status and report over damaged run folders
    Case("status-ok", ST, sweep(), 0, STATUS_OK),
    Case("status-bad-flag", ST, lambda t, fx: ["--bogus"], 2, "(see --help)"),
    Case("status-metrics-torn-line", ST, sweep(lambda r: appended(r / "metrics.jsonl", '{"step": 9, "lo')), 0, "| done |"),
    Case("status-metrics-folder", ST, sweep(lambda r: replace(r / "metrics.jsonl", folder=True)), 0, "cannot read"),
    Case("status-result-folder", ST, sweep(lambda r: replace(r / "result.json", folder=True)), 0, "| damaged |"),
    Case("status-result-nan", ST, sweep(lambda r: replace(r / "result.json", '{"best_val_acc": NaN}')), 0, "| damaged |"),
    Case("status-result-deep", ST, sweep(lambda r: replace(r / "result.json", "[" * 100000)), 0, "nested too deeply"),
    Case("status-result-dev-zero", ST, sweep(lambda r: replace(r / "result.json", link="/dev/zero")), 0, "| damaged |"),
    Case("status-config-folder", ST, sweep(lambda r: replace(r / "config.yaml", folder=True)), 0, "| damaged |"),
    Case("status-config-tag", ST, sweep(lambda r: replace(r / "config.yaml", "!!python/object/apply:os.system ['id']\n")),
         0, "| damaged |"),
    Case("status-config-alias-bomb", ST, sweep(lambda r: replace(r / "config.yaml", BOMB_YAML)), 0, "aliases"),
    Case("status-config-duplicate-key", ST, sweep(lambda r: appended(r / "config.yaml", "seed: 7\n")), 0, "given twice"),
    Case("status-ckpt-dev-zero", ST, sweep(lambda r: replace(r / "ckpt" / "last.pt", link="/dev/zero")), 0, STATUS_OK),
    Case("status-ckpt-fifo", ST, sweep(lambda r: (replace(r / "ckpt" / "last.pt"), (r / "ckpt" / "last.pt").unlink(),
                                                  os.mkfifo(r / "ckpt" / "last.pt"))), 0, STATUS_OK),
    Case("status-jobs-garbage", ST, sweep(lambda r: write(r.parent / ".submitit" / "jobs.jsonl", '[]\n{"run": [1]}\n{torn')),
         0, STATUS_OK),
    Case("status-planted-pickle", ST, sweep(lambda r: write(r.parent / ".submitit" / "1" / "1_submitted.pkl",
                                                            b"cos\nsystem\n(S'touch PWNED'\ntR.")), 0, STATUS_OK),
    Case("status-run-named-newline", ST, sweep(lambda r: shutil.copytree(r, r.parent / "a\nb")), 0, "| a\\nb |"),
    Case("status-sweep-unreadable", ST, sweep(lambda r: os.chmod(r.parent, 0)), 2, "sw",
         root_skips="root reads a chmod 000 folder"),
    Case("report-ok", R, report(), 0, "settings.csv"),
    Case("report-result-deep", R, report(lambda r: replace(r / "result.json", "[" * 100000)), 0, "damaged"),
    Case("report-config-alias-bomb", R, report(lambda r: replace(r / "config.yaml", BOMB_YAML)), 0, "damaged"),
    Case("report-out-is-a-file", R, lambda t, fx: [*sweep()(t, fx), "--out", str(write(t / "o", "keep"))], 2, "o"),
    # --- predict and checkpoints
    Case("predict-ok", P, predict(), 0, "val accuracy"),
    Case("predict-ckpt-dev-zero", P, predict(lambda r: replace(r / "ckpt" / "best.pt", link="/dev/zero")), 2, "best.pt"),
    Case("predict-ckpt-fifo", P, predict(lambda r: (replace(r / "ckpt" / "best.pt"), (r / "ckpt" / "best.pt").unlink(),
                                                    os.mkfifo(r / "ckpt" / "best.pt"))), 2, "best.pt"),
    Case("predict-ckpt-empty", P, predict(lambda r: replace(r / "ckpt" / "best.pt", b"")), 2, "best.pt"),
    Case("predict-ckpt-pickle", P, predict(lambda r: replace(r / "ckpt" / "best.pt", b"cos\nsystem\n(S'touch PWNED'\ntR.")),
         2, "best.pt"),
    Case("predict-out-overwrites-config", P, lambda t, fx: [*predict()(t, fx), "--out", str(t / "sw" / "r" / "config.yaml")],
         2, "--out"),
    Case("predict-config-duplicate-key", P, predict(lambda r: appended(r / "config.yaml", "seed: 7\n")), 2, "given twice"),
    Case("prefetch-no-model", W, lambda t, fx: [], 2, "model"),
]


# ----------------------------------------------------------------------------- running
def _snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under `folder` (links not followed)."""
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                try:
                    with open(p, "rb") as f:
                        out[p] = hashlib.sha256(f.read()).hexdigest()
                except OSError:
                    out[p] = "unreadable"
    return out


def _run_case(case: Case, t: Path, fx: Fx) -> Outcome:
    t.mkdir(parents=True)
    argv = case.make(t, fx)
    before = {**_snapshot(t), **_snapshot(fx.data), **_snapshot(fx.run)}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOME": str(t / "home"), "SSLRUN_ERROR_DIR": str(t / "errors"),
           "SSLRUN_SUBMIT_CONFIG": str(t / "submit.yaml") if case.id.startswith("submit-yaml") else "",
           "SLURM_JOB_ID": "", **case.env}
    env = {k: v for k, v in env.items() if v != "" or k == "SSLRUN_SUBMIT_CONFIG"}
    if not env["SSLRUN_SUBMIT_CONFIG"]:
        del env["SSLRUN_SUBMIT_CONFIG"]
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, str(REPO / case.door), *argv], cwd=t, env=env, capture_output=True,
                              timeout=120)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as hang:
        code, out, err = -9, hang.stdout or b"", (hang.stderr or b"") + b"\nHANG: no result in 120 s"
    seconds = time.monotonic() - t0
    for p in (t, t.parent):  # undo a chmod 000 so the checks (and pytest's cleanup) can read
        for dirpath, dirs, _ in os.walk(p):
            for d in dirs:
                try:
                    os.chmod(os.path.join(dirpath, d), 0o755)
                except OSError:
                    pass
    after = {**_snapshot(t), **_snapshot(fx.data), **_snapshot(fx.run)}
    changed = sorted(p for p, h in before.items() if after.get(p) != h)
    return Outcome(code, out.decode("utf-8", "backslashreplace"), err.decode("utf-8", "backslashreplace"), changed,
                   seconds, t)


@pytest.fixture(scope="session")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fx:
    """The good inputs every case starts from: a tree of 2 x 4 PNGs, its shard set, a finished run."""
    from conftest import _train
    from sslrun.data.build import build_shards

    base = tmp_path_factory.mktemp("hostile-fx")
    for c in ("a", "b"):
        for i in range(4):
            png(base / "tree" / c / f"{c}{i}.png", color=(40 * i, 100 if c == "a" else 200, 0))
    build_shards(base / "data", base / "tree", val_per_class=1)
    _train([f"data={base / 'data'}", f"root={base / 'runs'}", "sweep=s", "name=r", *TINY])
    for p in (base / "tree", base / "data", base / "runs"):
        for dirpath, dirs, files in os.walk(p):  # read-only: a door that writes there fails loudly
            for name in files:
                os.chmod(os.path.join(dirpath, name), 0o444)
    return Fx(base / "tree", base / "data", base / "runs" / "s" / "r")


def _run_all(cases: list[Case], base: Path, fx: Fx) -> dict[str, Outcome]:
    """The cases two at a time (2 cores): each waits mostly on its interpreter's start."""
    todo = [c for c in cases if not (IS_ROOT and c.root_skips)]
    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(lambda c: (c.id, _run_case(c, base / c.id, fx)), todo))


@pytest.fixture(scope="session")
def outcomes(fx: Fx, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    return _run_all([c for c in CASES if not c.heavy], tmp_path_factory.mktemp("hostile"), fx)


@pytest.fixture(scope="session")
def heavy_outcomes(fx: Fx, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    return _run_all([c for c in CASES if c.heavy], tmp_path_factory.mktemp("hostile-heavy"), fx)


def _assert(case: Case, o: Outcome) -> None:
    shown = f"{case.door} exited {o.code} in {o.seconds:.1f} s\nstdout: {o.out[-1500:]}\nstderr: {o.err[-3000:]}"
    assert "Traceback" not in o.err and "Traceback" not in o.out, shown
    assert "PWNED" not in os.listdir(REPO), "code from data ran"
    assert o.code == case.code, shown
    assert not o.changed or case.writes, f"changed files that existed before: {o.changed}\n{shown}"
    lines = [line for line in o.err.splitlines() if line.strip()]
    if case.code == 2:
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], shown
        assert not errors[0].startswith("error: internal:"), shown
        assert case.fragment in errors[0], shown
    else:
        assert not any(line.startswith("error:") for line in lines), shown
        assert case.fragment in o.out, shown


def test_the_table_is_big_enough():
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [c for c in CASES if not c.heavy], ids=lambda c: c.id)
def test_hostile_case(case: Case, outcomes: dict[str, Outcome]) -> None:
    _check(case, outcomes)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.heavy], ids=lambda c: c.id)
def test_hostile_case_heavy(case: Case, heavy_outcomes: dict[str, Outcome]) -> None:
    _check(case, heavy_outcomes)


def _check(case: Case, outcomes: dict[str, Outcome]) -> None:
    if IS_ROOT and case.root_skips:
        pytest.skip(f"run as root: {case.root_skips}")
    o = outcomes[case.id]
    _assert(case, o)
    if case.check is not None:
        case.check(o.folder)


# ----------------------------------------------------------------------------- concurrency
def test_a_build_into_a_locked_out_is_one_line(fx: Fx, tmp_path: Path) -> None:
    """A second build into an --out that a build holds (flock on the folder) is refused at once."""
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = subprocess.run([sys.executable, str(REPO / B), "--labeled", str(fx.tree), "--out", str(out)],
                              capture_output=True, text=True, timeout=60)
    finally:
        os.close(fd)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: --out") and "another build" in proc.stderr
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_two_builds_into_one_out(tmp_path: Path) -> None:
    """Two different builds started together into one --out: one wins, the other is one line,
    and what is left is a sound shard set (before the lock, the loser removed the winner's
    temporary shards and the two journals mixed)."""
    from sslrun.data.verify import verify_shards

    for c in ("a", "b"):
        for i in range(150):
            png(tmp_path / "in" / c / f"{c}{i}.png", size=(32, 32), color=(i, 0, 0))
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, str(REPO / B), "--labeled", str(tmp_path / "in"), "--out", str(out),
                               "--seed", str(seed), "--shard-samples", "20", "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "Traceback" not in loser and loser.splitlines()[-1].startswith("error: ")
    assert verify_shards(out) == []
