#!/usr/bin/env bash
# The README's test command: set up (or reuse) the environment with the dev extras, lint, and run the tests.
#   scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --dev
bash scripts/install_det.sh  # mmdetection stack; builds mmcv once (~25 min), then cached
VENV="${VIRTUAL_ENV:-$PWD/.venv}"
export PATH="$VENV/bin:$PATH"
echo "[test] ruff" >&2
ruff check .
ruff format --check .
echo "[test] pytest" >&2
exec python -m pytest "$@"
