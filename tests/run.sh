#!/usr/bin/env bash
# The test command: installs what the tests need (env/setup.sh) and runs the whole suite.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not slow"` for the fast subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash env/setup.sh
exec .venv/bin/python -m pytest "$@"
