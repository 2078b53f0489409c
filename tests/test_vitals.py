"""Per-rank vitals (sslrun/vitals.py) and where a run logs them: the 'startup' line of every
process start, the labeling pass's figures, result.json's 'ranks'."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from conftest import FAST, run_door
from sslrun import vitals


def test_process_start_fds_and_rss_are_this_processes():
    start = vitals.process_start_wall()
    assert start <= time.time() and start > time.time() - 3600 * 24
    before = vitals.open_fds()
    fd = os.open(__file__, os.O_RDONLY)
    try:
        assert vitals.open_fds() == before + 1
    finally:
        os.close(fd)
    assert vitals.peak_rss_mb() > 10
    v = vitals.Vitals(torch.device("cpu"))
    fds = [os.open(__file__, os.O_RDONLY) for _ in range(5)]
    v.sample()
    for fd in fds:
        os.close(fd)
    assert v.max_fds >= before + 5  # the most seen, not the count now
    fresh = vitals.Vitals(torch.device("cpu"))
    fds = [os.open(__file__, os.O_RDONLY) for _ in range(3)]
    assert fresh.common()["fds"] >= before + 3  # sampled by common() itself, not left at the start's count
    for fd in fds:
        os.close(fd)
    got = v.gathered({"a": 1.5, **v.common()})  # one rank: no process group
    assert got["a_r0"] == 1.5 and got["fds_r0"] >= before + 5 and set(got) == {"a_r0", "fds_r0", "rss_mb_r0"}


def _lines(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_run_logs_startup_labeling_and_rank_figures(digits, tmp_path):
    run_door("jobs/train.py", *FAST, "steps=4", "strategy=permanent", "threshold=0", "extra.label_every=2",
             f"data={digits}", f"root={tmp_path}", "name=v", check=True)
    run_dir = next(tmp_path.glob("*/v"))
    (start,) = _lines(run_dir, "startup")
    assert start["step"] == 1 and start["restart"] == 0
    assert 0 < start["first_step_s_r0"] < 300 and start["rss_mb_r0"] > 10 and start["fds_r0"] > 2
    passes = _lines(run_dir, "labeling")
    assert [p["step"] for p in passes] == [2] and passes[0]["images"] > 0 and passes[0]["images_per_s"] > 0
    assert passes[0]["pass_s_r0"] > 0 and passes[0]["mem_mb_r0"] > 10
    result = json.loads((run_dir / "result.json").read_text())
    assert [r["rank"] for r in result["ranks"]] == [0]
    assert result["ranks"][0]["weights_sha256"] == result["weights_sha256"]
    assert result["ranks"][0]["fds"] >= start["fds_r0"]
