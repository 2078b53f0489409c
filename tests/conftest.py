"""Shared fixtures: the embedded digits shard set, built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Small settings every training test shares: a few seconds per run on 2 CPU cores.
FAST = ["model=test_resnet", "image_size=32", "steps=12", "batch_size=8", "mu=2", "eval_every=6", "ckpt_every=4",
        "log_every=2", "threads=1", "workers=0"]


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
