#!/usr/bin/env bash
# Create or reuse ./.venv and install sslrun into it (editable) with pinned dependencies.
# Re-running is cheap: it reinstalls only when env/requirements.txt, env/constraints.txt or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PY --version 2>&1)"
  "$PY" -m venv .venv
fi
stamp=.venv/.sslrun-installed
want="$(cat env/requirements.txt env/constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing sslrun and its dependencies into .venv (a few minutes on a fresh machine)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r env/requirements.txt -c env/constraints.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
