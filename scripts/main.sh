#!/usr/bin/env bash
# The README's main command: set up (or reuse) the environment and run the main job.
#   scripts/main.sh [extra arguments for the main job]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/install_det.sh  # mmdetection stack; builds mmcv once (~25 min), then cached
VENV="${VIRTUAL_ENV:-$PWD/.venv}"
exec "$VENV/bin/visbench" study "$@"
