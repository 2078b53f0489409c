"""A real TensorBoard server over finished runs: scalars read back through its HTTP API.

Checks what a user sees in the browser: one run per run folder, the same values as
metrics.jsonl, every step once after a resume, the confusion image and the hparams session.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, path: str, body: dict | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _rows(run_dir: Path, kind: str, key: str) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if r["kind"] == kind and key in r}


@pytest.mark.slow
def test_tensorboard_server_shows_each_run_once_with_the_logged_values(small_sweep):
    root = small_sweep.parent
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(root), "--host", "127.0.0.1",
                             "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    wanted = {"s/seed=42/tb", "s/seed=43/tb", "s/supervised,seed=42/tb", "resumed/seed=42/tb"}
    try:
        deadline, tags = time.time() + 90, {}
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                tags = _get(base, "/data/plugin/scalars/tags")
                if wanted <= set(tags):
                    break
            except OSError:
                pass
            time.sleep(1)
        assert wanted <= set(tags), f"runs seen: {sorted(tags)}"
        assert set(tags) == wanted, "one TensorBoard run per run folder, nothing else"
        assert {"train/loss", "train/mask_rate", "val/acc", "val/loss", "val/best_acc"} <= set(tags["s/seed=42/tb"])

        for run in ("s/seed=42", "resumed/seed=42"):
            run_dir = root / run
            for tb_tag, kind, key in (("val/acc", "val", "acc"), ("train/loss", "train", "loss")):
                q = urllib.parse.urlencode({"run": f"{run}/tb", "tag": tb_tag})
                points = _get(base, f"/data/plugin/scalars/scalars?{q}")
                steps = [p[1] for p in points]
                assert steps == sorted(set(steps)), f"{run} {tb_tag}: a step shown twice: {steps}"
                logged = _rows(run_dir, kind, key)
                assert steps == sorted(logged)
                assert all(abs(p[2] - logged[p[1]]) < 1e-5 for p in points)
        # The resumed run shows the same curve as the straight one (exact resume, every step once).
        assert _rows(root / "resumed/seed=42", "train", "loss") == pytest.approx(_rows(small_sweep / "seed=42", "train", "loss"))
        assert sorted(_rows(root / "resumed/seed=42", "train", "loss")) == list(range(2, 13, 2))

        images = _get(base, "/data/plugin/images/tags")
        assert "val/confusion_matrix" in images["s/seed=42/tb"]
        experiment = _get(base, "/data/plugin/hparams/experiment", {"experimentName": ""})
        hparams = {h["name"] for h in experiment["hparamInfos"]}
        metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"strategy", "model", "threshold", "seed"} <= hparams
        assert {"hparam/val_acc", "hparam/test_acc"} <= metrics
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
