"""bench/gpu_check.py: says so and exits 0 without CUDA; its CPU smoke mode runs every code path."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_door


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    proc = run_door("bench/gpu_check.py", "--out", str(tmp_path / "g.json"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout and not (tmp_path / "g.json").exists()


@pytest.mark.slow
def test_cpu_tiny_smoke_run_writes_its_figures(tmp_path):
    out = tmp_path / "g.json"
    proc = run_door("bench/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out), "--keep", str(tmp_path / "w"),
                    timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["resnet_images_per_s_eager"] > 0
    for on in ("loader", "trainer"):  # the views made in the workers, then on the device
        assert 0 < figures[f"fixmatch_{on}_augments_loader_ratio"] and figures[f"fixmatch_{on}_augments_premade_steps_per_s"] > 0
    assert figures["ddp_backend"] == "gloo" and figures["ddp_all_reduce_ok"] is True
    assert figures["batch_augment_draws_equal"] is True and figures["batch_augment_strong_pixels_differing"] == 0.0
    # stopped by SIGTERM half-way and resumed: on the CPU the weights must be bit-identical
    assert figures["resume_restarts"] == 1, figures
    assert figures["resume_bit_exact"] is True and figures["resume_max_abs_weight_diff"] == 0.0
    assert "resume_steps: 16" in proc.stdout
