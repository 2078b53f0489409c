"""Shared fixtures: the embedded digits shard set, built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Small settings every training test shares: a few seconds per run on 2 CPU cores.
FAST = ["model=test_resnet", "image_size=32", "steps=12", "batch_size=8", "mu=2", "eval_every=6", "ckpt_every=4",
        "log_every=2", "threads=1", "workers=0"]
SMALL = [*FAST, "ema_decay=0.9"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`tests/run.sh` runs `-n 2 --dist loadgroup`), every SLURM test goes to one
    worker, one at a time: they share one cluster and some assert how fast a job starts; the
    other worker runs the rest meanwhile."""
    for item in items:
        if item.get_closest_marker("slurm") is not None:
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sslrun.data.digits import ensure_digits

    return ensure_digits(tmp_path_factory.mktemp("data"))


def run_door(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
             check: bool = False) -> subprocess.CompletedProcess:
    """Run one of the command-line doors as a user would, from the repository root."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def start_door(script: str, *args: str) -> subprocess.Popen:
    """Start a command-line door in the background, as `run_door` runs one to the end."""
    return subprocess.Popen([sys.executable, str(REPO / script), *args], cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def signal_when(proc: subprocess.Popen, ready: Callable[[], bool], sig: int, timeout: float = 120,
                poll_s: float = 0.02) -> None:
    """Send `sig` to `proc` as soon as `ready()` holds (or it exits, or `timeout` passes)."""
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(poll_s)
    proc.send_signal(sig)


def _train(overrides: list[str]) -> dict:
    """One small run in this process (no interpreter start-up: the shared sweep stays quick)."""
    from sslrun.config import make_config, parse_overrides
    from sslrun.engine import run

    return run(make_config(parse_overrides(overrides)))


def _cut_and_resume(common: list[str], sweep_dir: Path) -> dict:
    """Copy `sweep_dir/straight` to `cut` as a kill after step 8 leaves it (no result, last.pt
    replaced by the step-8 prev.pt) and resume it; returns the resumed run's result."""
    import shutil

    other = sweep_dir / "cut"
    shutil.copytree(sweep_dir / "straight", other)
    cfg = other / "config.yaml"
    cfg.write_text(cfg.read_text().replace("\nname: straight\n", "\nname: cut\n"))
    (other / "result.json").unlink()
    os.replace(other / "ckpt" / "prev.pt", other / "ckpt" / "last.pt")
    return _train([*common, "name=cut"])


@pytest.fixture(scope="session")
def small_sweep(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sweep trained once per session: fixmatch seeds 42 and 43, supervised seed 42.

    Also `<root>/resumed/seed=42`: fixmatch seed 42 killed after its last log line (result
    removed, last.pt replaced by the step-8 prev.pt) and resumed, as a preemption leaves it.
    """
    import shutil

    root = tmp_path_factory.mktemp("runs")
    common = [*SMALL, f"data={digits}", f"root={root}", "sweep=s"]
    _train([*common, "seed=42", "name=seed=42"])
    _train([*common, "seed=43", "name=seed=43"])
    _train([*common, "strategy=supervised", "seed=42", "name=supervised,seed=42"])
    resumed = root / "resumed" / "seed=42"
    shutil.copytree(root / "s" / "seed=42", resumed)
    (resumed / "result.json").unlink()
    cfg = resumed / "config.yaml"
    cfg.write_text(cfg.read_text().replace("\nsweep: s\n", "\nsweep: resumed\n"))
    os.replace(resumed / "ckpt" / "prev.pt", resumed / "ckpt" / "last.pt")
    _train([*SMALL, f"data={digits}", f"root={root}", "sweep=resumed", "seed=42", "name=seed=42"])
    return root / "s"
