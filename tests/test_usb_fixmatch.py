"""bench/usb_fixmatch.py (USB's FixMatch in its own venv) on the embedded digits: a smoke run.

Skipped unless /tmp/usbvenv holds semilearn (see the script's docstring): sslrun does not depend on it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

USB = Path("/tmp/usbvenv/bin/python")


def _has_semilearn() -> bool:
    return USB.exists() and subprocess.run([str(USB), "-c", "import importlib.util as u; exit(u.find_spec('semilearn') is None)"],
                                           capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _has_semilearn(), reason="no /tmp/usbvenv with semilearn")
@pytest.mark.parametrize("how", [[], ["--model", "cifar_cnn_wide", "--amp", "bf16", "--channels-last"]], ids=["fp32", "bf16-cl"])
def test_usb_fixmatch_smoke_run_on_digits(digits, tmp_path, how):
    proc = subprocess.run([str(USB), str(REPO / "bench" / "usb_fixmatch.py"), "--data", str(digits), "--steps", "6",
                           "--batch", "8", "--uratio", "2", "--workers", "0", "--out", str(tmp_path), *how],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == 6 and 0 <= result["test_acc"] <= 1 and result["eval_images"] > 0
    assert result["amp"] == ("bf16" if how else "off") and result["channels_last"] == bool(how)
    assert json.loads((tmp_path / "result-seed42.json").read_text()) == result
