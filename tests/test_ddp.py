"""Two ranks with gloo on CPU: every validation sample counted once, only rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from conftest import FAST, REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_rank_gloo_run(digits, tmp_path):
    port = _free_port()
    args = [sys.executable, str(REPO / "jobs/train.py"), *FAST, f"data={digits}", f"root={tmp_path}", "sweep=ddp",
            "name=two", "workers=0"]
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONUNBUFFERED": "1"}
        # Rank 1 creates files readable by nobody else: any such file in the run folder was written by it.
        umask = 0o077 if rank == 1 else 0o022
        procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, preexec_fn=lambda u=umask: os.umask(u)))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    run_dir = tmp_path / "ddp" / "two"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 12
    from sslrun.data.manifest import read_manifest

    val_count = read_manifest(digits).split("val").count
    evals = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if '"val"' in ln]
    assert evals and all(e["count"] == val_count for e in evals), "each validation sample is counted exactly once"
    for path in [run_dir, *run_dir.rglob("*")]:
        mode = path.stat().st_mode
        assert mode & stat.S_IRGRP, f"{path} was written by rank 1 (umask 077)"
    # Rank 1 printed the same result (it took part in every collective) but wrote nothing.
    rank1 = json.loads(outs[1][0])
    assert {k: v for k, v in rank1.items() if k != "elapsed_s"} == {k: v for k, v in result.items() if k != "elapsed_s"}
