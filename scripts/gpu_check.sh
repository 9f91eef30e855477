#!/usr/bin/env bash
# The prepared GPU check (issue 16): every GPU-only path checked and timed in one short run.
#
#   scripts/gpu_check.sh [--out DIR] [--quick] [--skip-install] [--budget-s S] [--install-budget-s S]
#                        [--sections scan,conv,train,detect,scan_timing,bench]
#
# Runs `python -m visbench.gpu_check` (see its docstring): Triton and mamba-ssm CUDA scans against ref,
# causal-conv1d's CUDA kernels against the reference, one bf16 training step of every tiny model, one
# Mask R-CNN iteration, scan timings and `visbench bench` throughput; the checks take at most --budget-s
# (default 480 s). Set-up is not counted: the project environment (scripts/bootstrap.sh --dev, only when
# visbench does not import) and, unless --skip-install, the CUDA builds of mamba-ssm
# (MAMBA_FORCE_BUILD=TRUE MAMBA_KEEP_CUDA_BUILD=TRUE pip install --no-build-isolation ... mamba-ssm) and
# causal-conv1d when their compiled modules do not import. Summary: a Markdown table on stdout, and
# DIR/gpu_check.json + DIR/gpu_check.md (default DIR: runs/gpu_check). Exit 1 when a check failed.
# Without a CUDA GPU: one line saying so, exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${VIRTUAL_ENV:-$PWD/.venv}/bin/python"
if [ ! -x "$PY" ] || ! "$PY" -c "import visbench.kernels" 2>/dev/null; then
  if ! ls /dev/nvidia[0-9]* >/dev/null 2>&1 && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU here (no NVIDIA device, no project environment); nothing to check"
    exit 0
  fi
  echo "[gpu_check] setting up the project environment (scripts/bootstrap.sh --dev; not timed)" >&2
  bash scripts/bootstrap.sh --dev || echo "[gpu_check] bootstrap failed; going on with what is installed" >&2
  PY="${VIRTUAL_ENV:-$PWD/.venv}/bin/python"
fi
exec "$PY" -m visbench.gpu_check "$@"
