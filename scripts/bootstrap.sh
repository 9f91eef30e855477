#!/usr/bin/env bash
# Create (or reuse) the project's Python environment and install visbench into it.
#
#   scripts/bootstrap.sh            runtime install (study / benchmarks)
#   scripts/bootstrap.sh --dev      + test tools and mamba-ssm / causal-conv1d reference code
#
# Uses the active virtualenv if there is one, else ./.venv (created when missing).
# A stamp file keyed on pyproject.toml and this script makes a second run take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    *) echo "bootstrap.sh: unknown option '$arg' (expected --dev)" >&2; exit 2 ;;
  esac
done

say() { echo "[bootstrap] $*" >&2; }

if [ -n "${VIRTUAL_ENV:-}" ]; then
  VENV="$VIRTUAL_ENV"
else
  VENV="$ROOT/.venv"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment in $VENV"
    python3 -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet)

# Fashion-MNIST ships as a Debian package; the study and tests read it from there.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    say "installing Debian package dataset-fashion-mnist"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >&2 \
      || say "could not install dataset-fashion-mnist; set the data path in the config instead"
  else
    say "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'"
  fi
fi

stamp_key=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
STAMP="$VENV/.visbench-bootstrap-$stamp_key-dev$DEV"
if [ -f "$STAMP" ]; then
  exit 0
fi

if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  # Versions that lie on this kind of machine's disk; on a GPU machine torch is usually present already.
  say "installing torch and torchvision (a minute from the local wheel cache)"
  "${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1" \
    || "${PIP[@]}" torch torchvision
fi

# Until 2026-12 the distribution was called `visbench` (a name another PyPI project holds) and put
# top-level `kernels` / `backbones` packages on the path: remove such an install so its import
# finder cannot shadow PyPI's `kernels` and `backbones`.
if "$PY" -m pip show --quiet visbench >/dev/null 2>&1; then
  say "removing the old 'visbench' distribution (now 'visbench-mamba', one import namespace)"
  "$PY" -m pip uninstall --quiet -y visbench
fi

if [ "$DEV" = 1 ]; then
  say "installing visbench with the dev extra"
  "${PIP[@]}" -e ".[dev]"
  # The reference implementations the tests compare against. Their CUDA builds cannot happen
  # without nvcc + a GPU toolchain, so skip them: the tests only need selective_scan_ref and
  # causal_conv1d_ref (pure PyTorch).
  if ! "$PY" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('mamba_ssm') and u.find_spec('causal_conv1d') else 1)"; then
    say "installing mamba-ssm and causal-conv1d Python parts (CUDA builds skipped)"
    # --no-deps: mamba-ssm 2.3 also asks for tilelang / quack-kernels (GPU-only); the reference code needs only these.
    "${PIP[@]}" packaging ninja einops transformers "setuptools<81" wheel
    CAUSAL_CONV1D_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
      "${PIP[@]}" --no-build-isolation --no-deps causal-conv1d
    MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
      "${PIP[@]}" --no-build-isolation --no-deps mamba-ssm
  fi
else
  say "installing visbench"
  "${PIP[@]}" -e .
fi
rm -f "$VENV"/.visbench-bootstrap-*-dev"$DEV"
touch "$STAMP"
say "environment ready: $VENV"
