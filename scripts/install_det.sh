#!/usr/bin/env bash
# Install the detection stack (the `det` extra): mmengine, mmcv with its compiled ops, mmdetection,
# pycocotools.
#
#   scripts/install_det.sh
#
# mmdetection 3.3.0 needs mmcv >= 2.0.0rc4, < 2.2.0, which PyPI has only as a source archive, and
# recent torch needs C++20. So this script downloads the mmcv 2.1.0 sdist, switches its C++ standard
# to C++20, builds a wheel with the ops (about 25 minutes on 2 cores) and keeps that wheel in a cache
# folder, keyed on the Python and torch versions: a second set-up on the same machine takes seconds.
#
# Environment:
#   VISBENCH_WHEEL_CACHE   where built wheels are kept (default ~/.cache/visbench/wheels)
#   MAX_JOBS               parallel compile jobs for mmcv (default 2)
#
# Uses the active virtualenv if there is one, else ./.venv (as scripts/bootstrap.sh does).
# Quick exit when `import mmdet, mmcv.ops, pycocotools` already works.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MMCV_VERSION=2.1.0
MMENGINE_VERSION=0.10.7
MMDET_VERSION=3.3.0

say() { echo "[install_det] $*" >&2; }

if [ -n "${VIRTUAL_ENV:-}" ]; then
  VENV="$VIRTUAL_ENV"
else
  VENV="$ROOT/.venv"
fi
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  say "no Python environment at $VENV: run scripts/bootstrap.sh first"
  exit 1
fi
PIP=("$PY" -m pip)

if "$PY" -c "import mmdet, mmcv.ops, pycocotools" 2>/dev/null; then
  say "mmdet, mmcv (with ops) and pycocotools already import in $VENV: nothing to do"
  exit 0
fi

if ! "$PY" -c "import torch" 2>/dev/null; then
  say "torch is not installed in $VENV: run scripts/bootstrap.sh first"
  exit 1
fi

TORCH_TAG=$("$PY" -c "import sys, torch; print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}')")
CACHE_ROOT="${VISBENCH_WHEEL_CACHE:-$HOME/.cache/visbench/wheels}"
CACHE="$CACHE_ROOT/$TORCH_TAG"
mkdir -p "$CACHE"

say "installing build helpers: setuptools<81 (mmcv's setup.py imports pkg_resources), wheel, ninja"
"${PIP[@]}" install --quiet "setuptools<81" wheel ninja

say "installing mmengine==$MMENGINE_VERSION"
"${PIP[@]}" install --quiet "mmengine==$MMENGINE_VERSION"

shopt -s nullglob
wheels=("$CACHE"/mmcv-"$MMCV_VERSION"-*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  BUILD=$(mktemp -d "${TMPDIR:-/tmp}/visbench-mmcv-XXXXXX")
  trap 'rm -rf "$BUILD"' EXIT
  say "no cached mmcv $MMCV_VERSION wheel for $TORCH_TAG in $CACHE: building one"
  say "downloading the mmcv $MMCV_VERSION source archive"
  "${PIP[@]}" download --quiet --no-deps --no-binary :all: --no-build-isolation \
    -d "$BUILD" "mmcv==$MMCV_VERSION"
  archive=("$BUILD"/mmcv-"$MMCV_VERSION".tar.gz)
  if [ ${#archive[@]} -ne 1 ]; then
    say "expected mmcv-$MMCV_VERSION.tar.gz in $BUILD, found: $(ls "$BUILD")"
    exit 1
  fi
  tar -xzf "${archive[0]}" -C "$BUILD"
  SRC="$BUILD/mmcv-$MMCV_VERSION"
  say "switching mmcv's C++ standard from C++17 to C++20 (torch's headers need it)"
  sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
  if ! grep -q -- '-std=c++20' "$SRC/setup.py"; then
    say "could not find -std=c++17 in $SRC/setup.py: the mmcv source layout changed"
    exit 1
  fi
  say "compiling mmcv with ops (MMCV_WITH_OPS=1, MAX_JOBS=${MAX_JOBS:-2}); this takes about 25 minutes on 2 cores"
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-2}" \
    "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$BUILD/dist" "$SRC"
  built=("$BUILD"/dist/mmcv-"$MMCV_VERSION"-*.whl)
  if [ ${#built[@]} -ne 1 ]; then
    say "the mmcv build produced no wheel in $BUILD/dist"
    exit 1
  fi
  # Copy then rename, so an interrupted copy never leaves a broken wheel in the cache.
  cp "${built[0]}" "$CACHE/.partial.whl"
  mv "$CACHE/.partial.whl" "$CACHE/$(basename "${built[0]}")"
  wheels=("$CACHE/$(basename "${built[0]}")")
  say "cached the mmcv wheel as ${wheels[0]}"
else
  say "using the cached mmcv wheel ${wheels[0]}"
fi

say "installing mmcv from ${wheels[0]}"
# --force-reinstall: an mmcv 2.1.0 without ops (e.g. built with MMCV_WITH_OPS=0) would otherwise count as installed
"${PIP[@]}" install --quiet --force-reinstall --no-deps "${wheels[0]}"
say "installing mmcv's dependencies, mmdet==$MMDET_VERSION and pycocotools"
"${PIP[@]}" install --quiet "${wheels[0]}" "mmdet==$MMDET_VERSION" pycocotools

if ! "$PY" -c "import mmdet, mmcv.ops, pycocotools"; then
  say "the install finished but 'import mmdet, mmcv.ops, pycocotools' fails (see above)"
  exit 1
fi
say "detection stack ready in $VENV (mmcv $MMCV_VERSION with ops, mmdet $MMDET_VERSION)"
