#!/usr/bin/env bash
# The test command: installs what the tests need (env/setup.sh) and runs the whole suite.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not slow"` for the fast subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash env/setup.sh
# Two pytest-xdist workers: the SLURM tests as one group on one worker, the rest on both (measured:
# 803-863 s against 1,054-1,080 s serial on 2 cores; serially: add -n 0).
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
