#!/usr/bin/env bash
# The demo: set up .venv, then train FixMatch on the embedded digits data for seeds 42, 43, 44
# (SLURM when sbatch is on PATH, else the local executor), wait, and print the results table.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash env/setup.sh
.venv/bin/python jobs/submit.py --array seeds=42,43,44 --wait "$@"
echo "demo wall time: $(( $(date +%s) - start )) s"
