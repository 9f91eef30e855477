"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton fixes interpreted-vs-compiled mode when it is first imported (torch.utils.flop_counter
# imports it), so choose before any test module loads: without a GPU, Triton kernels run in its
# CPU interpreter, which is how the Triton back end is tested here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
FASHION_MNIST_DIR = Path(os.environ.get("VISBENCH_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


def import_mamba_reference(module: str):
    """Import a pure-PyTorch reference module of mamba-ssm / causal-conv1d without their CUDA parts.

    Their PyPI releases import compiled extensions at module import; on a machine where the CUDA
    build was skipped those are absent, so a placeholder module stands in for them. Skips the test
    (with the reason) when the package is not installed at all.
    """
    from visbench.kernels.checks import import_without_cuda_extensions

    try:
        return import_without_cuda_extensions(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        pytest.skip(f"{module} not importable ({err}); install with scripts/bootstrap.sh --dev")


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    if not any(FASHION_MNIST_DIR.glob("train-images-idx3-ubyte*")):
        pytest.skip(f"Fashion-MNIST not found in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
    return FASHION_MNIST_DIR


@pytest.fixture(scope="module")
def template() -> dict:
    """One valid classification result (environment filled once); tests copy it and change what they need."""
    from visbench.results import make_result

    return make_result(
        model="gated_cnn_tiny",
        task="classification",
        dataset="fashion_mnist",
        input_size=[32, 32],
        params=1_000_000,
        macs=100_000_000,
        metrics={"top1": 50.0},
        start_time="2026-01-01T00:00:00+00:00",
        end_time="2026-01-01T00:02:00+00:00",
        seed=0,
    )
