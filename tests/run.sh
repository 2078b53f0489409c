#!/usr/bin/env bash
# The test command: installs what the tests need (env/setup.sh) and runs the whole suite.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not slow"` for the fast subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash env/setup.sh
# Two pytest-xdist workers: the SLURM tests (one group, one worker) wait on the queue while the
# other worker runs the rest; about 40 % of the serial time (serial: add -n 0).
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
