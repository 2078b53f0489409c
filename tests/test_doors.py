"""Every command-line door (issue 17): a console script in pyproject.toml whose logic is in
sslrun/doors/<name>.py, a jobs/ or shards/ twin that only launches it, `--help` that works and a
bad argument that is one line `error: ...` with exit 2 (not argparse's usage block)."""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sslrun.errors import exit_on_user_error

REPO = Path(__file__).resolve().parent.parent

# console script -> (module of its logic, its twin in the checkout)
DOORS = {
    "sslrun-submit": ("sslrun.doors.submit", "jobs/submit.py"),
    "sslrun-train": ("sslrun.doors.train", "jobs/train.py"),
    "sslrun-status": ("sslrun.doors.status", "jobs/status.py"),
    "sslrun-report": ("sslrun.doors.report", "jobs/report.py"),
    "sslrun-predict": ("sslrun.doors.predict", "jobs/predict.py"),
    "sslrun-prefetch": ("sslrun.doors.prefetch", "jobs/prefetch_weights.py"),
    "sslrun-build": ("sslrun.doors.build", "shards/build.py"),
    "sslrun-verify": ("sslrun.doors.verify", "shards/verify.py"),
}

# what each door requires, so the bad flag is what its one line names
REQUIRED = {"sslrun-status": ["sweep"], "sslrun-report": ["sweep"], "sslrun-predict": ["run"],
            "sslrun-prefetch": ["resnet18"], "sslrun-build": ["--labeled", "a", "--out", "b"], "sslrun-verify": ["set"]}


def test_every_door_is_a_console_script():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {name: f"{module}:entry" for name, (module, _) in DOORS.items()}
    for module, _ in DOORS.values():
        assert callable(importlib.import_module(module).entry)


@pytest.mark.parametrize("name", sorted(DOORS))
def test_twin_is_a_thin_launcher(name):
    """The jobs/ and shards/ files import their door and do nothing else: no sys.path edit."""
    module, twin = DOORS[name]
    text = (REPO / twin).read_text()
    assert "sys.path" not in text.split("\"\"\"")[-1]
    tree = ast.parse(text)
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [(module, ["entry", "main"])]
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert defs == []


@pytest.mark.parametrize("name", sorted(DOORS))
def test_help_works(name, capsys):
    main = importlib.import_module(DOORS[name][0]).main
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


@pytest.mark.parametrize("name", sorted(DOORS))
def test_bad_argument_is_one_line_exit_2(name, capsys):
    main = importlib.import_module(DOORS[name][0]).main
    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(lambda: main([*REQUIRED.get(name, []), "--no-such-flag"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "--no-such-flag" in err[0], err


@pytest.mark.slow
def test_install_makes_every_console_script_and_each_runs(tmp_path):
    """pip installs this checkout (a copy: the build writes beside its sources) the way env/setup.sh
    does, without dependencies or network; every declared script is made and answers a bad flag
    with one line and exit 2."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "sslrun", src / "sslrun", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(src)], check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in (target / "bin").iterdir()) == sorted(DOORS)
    env = {**os.environ, "PYTHONPATH": str(target)}
    for name in DOORS:
        proc = subprocess.run([sys.executable, str(target / "bin" / name), *REQUIRED.get(name, []), "--no-such-flag"],
                              capture_output=True, text=True, env=env, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "--no-such-flag" in lines[0], (name, proc.stderr)
