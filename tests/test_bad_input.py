"""Bad input at every door, as one table: the input, the one-line message, the exit code, and
that nothing was half written.

Most cases call the door's main() in this process (sys.argv set, SystemExit and stderr caught),
since each door imports torch (seconds per interpreter); the cases marked `sub` run the door as
a real subprocess, which is what a user sees.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import shutil
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import FAST, REPO, _train, run_door
from sslrun.errors import exit_on_user_error


@dataclass
class Env:
    """What the cases build on: a fresh tmp folder per case and shared read-only inputs."""

    tmp: Path
    digits: Path  # a good shard set (do not modify: copy it)
    run: Path  # a finished small run (do not modify: copy it)
    tree: Path  # a good image tree for the builder


@dataclass
class Case:
    id: str
    door: str
    args: Callable[[Env], list[str]]  # builds the input (may write broken files into env.tmp)
    fragment: str  # expected in the one `error:` line (or in stdout for exit code 1)
    code: int = 2
    watch: Callable[[Env], Path] = lambda env: env.tmp / "watch"  # must be unchanged by the door
    sub: bool = False  # run as a real subprocess


# ------------------------------------------------------------------------- building inputs


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _shards(env: Env, edit: Callable[[dict, Path], None] | None = None) -> Path:
    """A copy of the good shard set in env.tmp/watch/data, its manifest edited by `edit`."""
    data = _copy(env.digits, env.tmp / "watch" / "data")
    if edit is not None:
        m = json.loads((data / "manifest.json").read_text())
        edit(m, data)
        (data / "manifest.json").write_text(json.dumps(m))
    return data


RUN_ARGS = [*FAST, "strategy=supervised", "steps=4", "ckpt_every=2", "eval_every=2"]


def _train_args(env: Env, *extra: str) -> list[str]:
    (env.tmp / "watch").mkdir(exist_ok=True)
    return [*FAST, f"root={env.tmp / 'watch' / 'runs'}", *extra]


def _on_data(env: Env, edit: Callable[[dict, Path], None] | str) -> list[str]:
    if isinstance(edit, str):  # raw manifest text
        data = _shards(env)
        (data / "manifest.json").write_text(edit)
    else:
        data = _shards(env, edit)
    return _train_args(env, f"data={data}", "strategy=supervised")


def _first_shard(m: dict) -> dict:
    return m["splits"]["train"]["shards"][0]


def _flip_byte(m: dict, data: Path) -> None:
    path = data / _first_shard(m)["file"]
    raw = bytearray(path.read_bytes())
    raw[600] ^= 0xFF  # inside the first image: same size, other bytes
    path.write_bytes(bytes(raw))


def _truncate(m: dict, data: Path) -> None:
    path = data / _first_shard(m)["file"]
    path.write_bytes(path.read_bytes()[:1000])


def _evil_member(m: dict, data: Path) -> None:
    """Replace the first train shard by a tar with a `../` member, manifest updated to match."""
    entry = _first_shard(m)
    path = data / entry["file"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in (("../evil.png", b"x"), ("a.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    path.write_bytes(buf.getvalue())
    entry.update(bytes=len(buf.getvalue()), sha256=hashlib.sha256(buf.getvalue()).hexdigest())


def _resume(env: Env, edit: Callable[[Path], None]) -> list[str]:
    """A copy of the small run, unfinished, its ckpt folder broken by `edit`; resume it."""
    import yaml

    root = env.tmp / "watch" / "runs"
    run = _copy(env.run, root / "s" / "r")
    (run / "result.json").unlink()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "root": str(root)}, sort_keys=False))
    edit(run / "ckpt")
    return [*RUN_ARGS, f"data={env.digits}", f"root={root}", "sweep=s", "name=r"]


def _other_model(ckpt: Path) -> None:
    for name in ("last.pt", "prev.pt"):
        state = torch.load(ckpt / name, weights_only=True)
        state["model_name"] = "resnet18"
        torch.save(state, ckpt / name)


def _both_unreadable(ckpt: Path) -> None:
    data = (ckpt / "last.pt").read_bytes()
    (ckpt / "last.pt").write_bytes(data[: len(data) // 3])
    (ckpt / "prev.pt").write_bytes(b"")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _tree_copy(env: Env, edit: Callable[[Path], None]) -> list[str]:
    tree = _copy(env.tree, env.tmp / "in")
    edit(tree)
    (env.tmp / "watch").mkdir()
    return ["--labeled", str(tree), "--out", str(env.tmp / "watch" / "out")]


def _run_copy(env: Env, edit: Callable[[Path], None] | None = None) -> Path:
    run = _copy(env.run, env.tmp / "watch" / "s" / "r")
    if edit is not None:
        edit(run)
    return run


def _watch(env: Env) -> Path:
    (env.tmp / "watch").mkdir(exist_ok=True)
    return env.tmp / "watch"


B, V, T, S, R, P = "shards/build.py", "shards/verify.py", "jobs/train.py", "jobs/submit.py", "jobs/report.py", "jobs/predict.py"

CASES = [
    # --- the shard builder
    Case("build-no-args", B, lambda e: [], "the following arguments are required: --labeled, --out", sub=True),
    Case("build-unknown-flag", B, lambda e: ["--labeled", "x", "--out", "y", "--bogus"], "unrecognized arguments: --bogus"),
    Case("build-missing-input", B, lambda e: ["--labeled", str(e.tmp / "nope"), "--out", str(_watch(e) / "o")],
         "does not exist"),
    Case("build-negative-val", B, lambda e: ["--labeled", str(e.tree), "--out", str(_watch(e) / "o"), "--val-per-class", "-1"],
         "--val-per-class must be >= 0"),
    Case("build-val-both", B, lambda e: ["--labeled", str(e.tree), "--out", "o", "--val-per-class", "1", "--val-fraction", "0.1"],
         "not allowed with argument"),
    Case("build-bad-size", B, lambda e: ["--labeled", str(e.tree), "--out", str(_watch(e) / "o"), "--shard-bytes", "1Q"],
         "not understood"),
    Case("build-jobs-zero", B, lambda e: ["--labeled", str(e.tree), "--out", str(_watch(e) / "o"), "-j", "0"], "-j must be >= 1"),
    Case("build-not-an-int", B, lambda e: ["--labeled", str(e.tree), "--out", "o", "--seed", "x"], "invalid int value: 'x'"),
    Case("build-empty-class", B, lambda e: _tree_copy(e, lambda t: [p.unlink() for p in (t / "b").iterdir()]), "is empty"),
    Case("build-mixed-folder", B, lambda e: _tree_copy(e, lambda t: (t / "loose.png").write_bytes(b"x")),
         "has both class sub-folders and loose files"),
    Case("build-duplicate-id", B, lambda e: _tree_copy(e, lambda t: shutil.copy(t / "a" / "a0.png", t / "a" / "a0.jpg")),
         "have the id 'a/a0'"),
    Case("build-out-not-empty", B, lambda e: ["--labeled", str(e.tree), "--out", str(_write(_watch(e) / "x.txt", "x").parent)],
         "is not empty"),
    Case("verify-not-a-set", V, lambda e: [str(_watch(e))], "is not a shard set"),
    Case("verify-damaged-shard", V, lambda e: [str(_shards(e, _flip_byte)), "--no-decode"], "sha256", code=1),
    # --- the config and its overrides
    Case("train-unknown-key", T, lambda e: _train_args(e, "bogus=1"), "unknown key 'bogus'", sub=True),
    Case("train-not-key-value", T, lambda e: _train_args(e, "seed"), "override 'seed': expected key=value"),
    Case("train-bad-number", T, lambda e: _train_args(e, "lr=fast"), "lr=fast: expected a number"),
    Case("train-bad-int", T, lambda e: _train_args(e, "steps=1.5"), "steps=1.5: expected an integer"),
    Case("train-zero-steps", T, lambda e: _train_args(e, "steps=0"), "steps=0: expected a positive integer"),
    Case("train-bad-bool", T, lambda e: _train_args(e, "frozen=maybe"), "frozen=maybe: expected true or false"),
    Case("train-bad-choice", T, lambda e: _train_args(e, "verify_shards=always"), "verify_shards=always: expected one of"),
    Case("train-bad-augment-on", T, lambda e: _train_args(e, "augment_on=gpu"), "augment_on=gpu: expected one of auto, loader, trainer"),
    Case("train-unbatched-preset", T, lambda e: _train_args(e, "augment_on=trainer", "augment=jitter"),
         "augment=jitter: no batched version for augment_on=trainer"),
    Case("train-bad-name", T, lambda e: _train_args(e, "name=a/b"), "expected plain folder names"),
    Case("train-bad-threshold", T, lambda e: _train_args(e, "threshold=0.9+x"), "threshold"),
    Case("train-missing-config", T, lambda e: ["--config", str(e.tmp / "none.yaml"), *_train_args(e)], "none.yaml: cannot read"),
    Case("train-config-unknown-key", T, lambda e: ["--config", str(_write(e.tmp / "c.yaml", "lr: 0.1\nspeed: 3\n")),
                                                   *_train_args(e)], "unknown key 'speed'"),
    Case("train-unknown-flag", T, lambda e: _train_args(e, "--fast"), "unrecognized arguments: --fast"),
    # --- --array and the submitter
    Case("array-empty-value", S, lambda e: ["--array", "seeds=", "--dry-run", "--cluster", "local", *_train_args(e)[-1:]],
         "expected key=v1,v2"),
    Case("array-no-equals", S, lambda e: ["--array", "seeds", "--dry-run", "--cluster", "local", *_train_args(e)[-1:]],
         "expected key=v1,v2"),
    Case("array-twice", S, lambda e: ["--array", "seed=1,2", "--array", "seeds=3", "--dry-run", "--cluster", "local",
                                      *_train_args(e)[-1:]], "given twice"),
    Case("array-unknown-key", S, lambda e: ["--array", "colour=1,2", "--dry-run", "--cluster", "local", *_train_args(e)[-1:]],
         "unknown key 'colour'", sub=True),
    Case("array-bad-value", S, lambda e: ["--array", "seed=1,x", "--dry-run", "--cluster", "local", *_train_args(e)[-1:]],
         "seed=x: expected an integer"),
    Case("submit-bad-cluster", S, lambda e: ["--cluster", "mars", "--dry-run", *_train_args(e)[-1:]], "--cluster mars"),
    Case("submit-bad-time", S, lambda e: ["--time", "soon", "--dry-run", "--cluster", "local", *_train_args(e)[-1:]], "--time 'soon'"),
    # --- issue 15 classes 2, 3, 6 and 7: the key table, the threshold grammar, control characters
    *[Case(f"key-range-{item.replace('=', '-')}", T, lambda e, item=item: _train_args(e, item), item.split("=")[0] + "=")
      for item in ["seed=-1", "image_size=1", "momentum=-1", "lr=nan", "budget_s=nan", "epoch_steps=-1",
                   "warmup_steps=-1", "weight_decay=-1", "lambda_u=-1", "lr=inf", "steps=99999999999999"]],
    Case("key-name-300", T, lambda e: _train_args(e, "name=" + "n" * 300), "name="),
    Case("key-root-a-file", T, lambda e: [*_train_args(e)[:-1], f"root={_write(e.tmp / 'watch' / 'f', 'x')}"], "is a file"),
    *[Case(f"threshold-python-{i}", T, lambda e, t=t: _train_args(e, f"threshold={t}"), "threshold=")
      for i, t in enumerate(["1/0", "9**9**9", "min()", "__import__('os')", "(" * 300 + "1", "1e999*epoch"])],
    Case("extra-typo", T, lambda e: _train_args(e, "strategy=classical", "extra.t1_typo=5"), "did you mean extra.t1?"),
    Case("extra-bad-type", T, lambda e: _train_args(e, "strategy=classical", "extra.t1=soon"), "extra.t1=soon"),
    Case("extra-bad-yaml", T, lambda e: _train_args(e, "extra.mixup=[1,"), "extra.mixup=[1,: not a YAML value"),
    Case("config-wrong-type", T, lambda e: ["--config", str(_write(e.tmp / "c.yaml", "lr: [1]\nsteps: many\n")),
                                            *_train_args(e)], "c.yaml: lr="),
    Case("override-newline", T, lambda e: _train_args(e, "sweep=a\nb"), "control character"),
    Case("submit-partition-newline", S, lambda e: ["--partition", "gpu\nrm -rf ~", "--dry-run", "--cluster", "local",
                                                   *_train_args(e)[-1:]], "--partition: contains the control character"),
    Case("submit-sbatch-newline", S, lambda e: ["--sbatch", "mail-type=END\necho", "--dry-run", "--cluster", "local",
                                                *_train_args(e)[-1:]], "control character"),
    Case("submit-nodes-0", S, lambda e: ["--nodes", "0", "--dry-run", "--cluster", "local", *_train_args(e)[-1:]],
         "--nodes 0: expected an integer from 1"),
    Case("submit-gpus-negative", S, lambda e: ["--gpus-per-node", "-2", "--dry-run", "--cluster", "local",
                                               *_train_args(e)[-1:]], "--gpus-per-node -2"),
    Case("submit-write-runs-missing-folder", S, lambda e: ["--write-runs", str(e.tmp / "no" / "runs.txt"), "--cluster",
                                                           "local", *_train_args(e)[-1:]], "--write-runs"),
    # --- the manifest and the shards, found before training starts (no run folder is made)
    Case("manifest-bad-json", T, lambda e: _on_data(e, "{not json"), "not valid JSON"),
    Case("manifest-wrong-format", T, lambda e: _on_data(e, lambda m, d: m.update(format="other/9")), "format is 'other/9'"),
    Case("manifest-missing-key", T, lambda e: _on_data(e, lambda m, d: m.pop("classes")), "missing key 'classes'"),
    Case("manifest-count-mismatch", T, lambda e: _on_data(e, lambda m, d: m["splits"]["train"].update(count=1)),
         "count 1 differs from the sum over its shards"),
    Case("manifest-shard-missing", T, lambda e: _on_data(e, lambda m, d: (d / _first_shard(m)["file"]).unlink()), "is missing"),
    Case("shard-truncated", T, lambda e: _on_data(e, _truncate), "manifest says"),
    Case("shard-damaged-same-size", T, lambda e: _on_data(e, _flip_byte), "sha256 differs from the manifest"),
    Case("shard-dotdot-member", T, lambda e: _on_data(e, _evil_member), "'../evil.png' is absolute or has '..'"),
    # --- checkpoints
    Case("ckpt-both-unreadable", T, lambda e: _resume(e, _both_unreadable), "no readable checkpoint", sub=True),
    Case("ckpt-other-model", T, lambda e: _resume(e, _other_model), "the folder holds another run"),
    # --- report and predict
    Case("report-missing-sweep", R, lambda e: [str(e.tmp / "nope")], "does not exist", sub=True),
    Case("report-bad-by", R, lambda e: [str(_run_copy(e).parent), "--by", "colour"], "--by colour: not a config key"),
    # a damaged config.yaml or result.json makes that run `damaged` in the report (tests/test_run_folder.py)
    Case("predict-not-a-run", P, lambda e: [str(_watch(e))], "not a run folder (no config.yaml)", sub=True),
    Case("predict-bad-checkpoint-flag", P, lambda e: [str(_run_copy(e)), "--checkpoint", "worst"], "invalid choice: 'worst'"),
    Case("predict-bad-split", P, lambda e: [str(_run_copy(e)), "--split", "holdout"], "--split holdout"),
    Case("predict-truncated-best", P, lambda e: [str(_run_copy(e, lambda r: (r / "ckpt" / "best.pt").write_bytes(b"PK\x03")))],
         "unreadable checkpoint"),
    Case("predict-zero-byte-last", P, lambda e: [str(_run_copy(e, lambda r: (r / "ckpt" / "last.pt").write_bytes(b""))),
                                                 "--checkpoint", "last"], "unreadable checkpoint"),
    Case("predict-no-out-folder", P, lambda e: [str(_run_copy(e)), "--out", str(e.tmp / "no" / "x.csv")], "does not exist"),
]


# ---------------------------------------------------------------------------- the harness


@pytest.fixture(scope="module")
def shared(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("bad_input")
    _train([*RUN_ARGS, f"data={digits}", f"root={root}", "sweep=s", "name=r"])
    tree = root / "tree"
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (tree / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tree / c / f"{c}{i}.png")
    return root / "s" / "r", tree


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


_DOORS: dict[str, object] = {}


def _call_in_process(script: str, args: list[str], monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    if script not in _DOORS:
        spec = importlib.util.spec_from_file_location(f"door_{Path(script).stem}", REPO / script)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        _DOORS[script] = module
    monkeypatch.setattr(sys, "argv", [script, *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(_DOORS[script].main)  # type: ignore[attr-defined]
    out, err = capsys.readouterr()
    return int(stop.value.code or 0), out, err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, shared: tuple[Path, Path], digits: Path, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    env = Env(tmp_path, digits, *shared)
    args = case.args(env)
    watch = case.watch(env)
    before = _snapshot(watch)
    if case.sub:
        proc = run_door(case.door, *args)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        monkeypatch.chdir(tmp_path)
        code, out, err = _call_in_process(case.door, args, monkeypatch, capsys)
    assert code == case.code, f"exit {code}:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    if code == 2:
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and case.fragment in errors[0], err[-3000:]
        assert not [ln for ln in err.splitlines() if ln.startswith("usage:")], "argparse's usage block is not printed"
    else:
        assert case.fragment in out, out[-3000:]
    after = _snapshot(watch)
    assert after == before, f"the door changed {watch}: {sorted(set(after) ^ set(before)) or 'mtimes/sizes'}"
    assert not [p for p in after if p.endswith(".tmp") or ".tmp" in Path(p).name]
    assert not (tmp_path / "runs").exists(), "no run folder under the working directory"


def test_at_least_thirty_cases_and_a_few_real_subprocesses() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert 3 <= sum(c.sub for c in CASES) <= 8
    assert {c.door for c in CASES} == {B, V, T, S, R, P}
