#!/usr/bin/env bash
# The demo: why semi-supervised learning is worth it. Sets up .venv, then trains FixMatch and
# the supervised baseline on the embedded digits data (a few labels per class, the rest
# unlabeled), seeds 42, 43, 44 (SLURM when sbatch is on PATH, else the local executor),
# shows each run's progress while waiting, and prints one table per strategy with the
# accuracy gain of FixMatch over supervised. Extra key=value arguments go to every run.
# Runs land in $SSLRUN_ROOT/demo (default ./runs/demo); a second call reuses finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash env/setup.sh
root="${SSLRUN_ROOT:-runs}"
.venv/bin/python jobs/submit.py --array seeds=42,43,44 --array strategy=fixmatch,supervised \
    root="$root" sweep=demo --wait "$@"
.venv/bin/python jobs/report.py "$root/demo" --by strategy
echo "demo wall time: $(( $(date +%s) - start )) s"
