"""bench/loader_rate.py on the embedded digits: both figures come out, with their ratio."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_loader_rate_prints_each_repeat_and_the_medians(digits):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "loader_rate.py"), str(digits), "--size", "16",
                           "--workers", "1", "--steps", "24", "--repeats", "2", "--in-process"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines[:2]] == ["repeat 0", "repeat 1"], proc.stdout
    m = re.search(r"loader (\d+) samples/s \(1 workers, trainer augments, 16 px\); fetch in-process (\d+); "
                  r"loader/in-process (\d+\.\d+)", lines[-1])
    assert m, lines[-1]
    assert int(m.group(1)) > 0 and int(m.group(2)) > 0 and float(m.group(3)) > 0
