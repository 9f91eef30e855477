"""GFLOP/s of the inference paths' GEMMs per back end (``backbones.cpu_gemm``), with oneDNN / BLAS ratios.

    python benchmarks/cpu_gemm.py                 # ViT-S and MambaOut-T linear shapes, batch 16, 224^2
    python benchmarks/cpu_gemm.py --repeats 31

Shows on a given CPU whether the default ``VISBENCH_CPU_GEMM=auto`` (oneDNN) beats PyTorch's BLAS
(``F.linear``, MKL on x86), and by how much. The two back ends are timed in turn on the same
operands, in ABBA order; the speed-up is the median of the per-repeat ratios, with their
interquartile range, so that load from other processes hits both sides alike.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from visbench.backbones import cpu_gemm  # noqa: E402

# (name, rows, in_features, out_features): rows = batch 16 x tokens at 224^2
SHAPES = (
    ("vit_small qkv", 16 * 197, 384, 1152),
    ("vit_small proj", 16 * 197, 384, 384),
    ("vit_small fc1", 16 * 197, 384, 1536),
    ("vit_small fc2", 16 * 197, 1536, 384),
    ("mambaout_tiny stage 3 fc1", 16 * 14 * 14, 384, 2048),
    ("mambaout_tiny stage 3 fc2", 16 * 14 * 14, 1024, 384),
    ("mambaout_tiny stage 1 fc1", 16 * 56 * 56, 96, 512),
)


def _time(fn: Callable[[], object], backend: str) -> float:
    os.environ[cpu_gemm.BACKEND_ENV] = backend
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ[cpu_gemm.BACKEND_ENV] = "auto"
    if cpu_gemm.gemm_backend() != "onednn":
        print("this PyTorch has no usable oneDNN linear: the inference paths use BLAS, nothing to compare")
        return 0
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} repeats={args.repeats}")
    print("\n| GEMM | rows x in -> out | BLAS GFLOP/s | oneDNN GFLOP/s | oneDNN / BLAS (IQR) |")
    print("|---|---|---:|---:|---:|")
    torch.manual_seed(0)
    with torch.inference_mode():
        for name, rows, k, n in SHAPES:
            operands = (torch.randn(rows, k), torch.randn(n, k) * k**-0.5, torch.randn(n))
            run = functools.partial(cpu_gemm.linear, *operands)

            for _ in range(args.warmup):
                for backend in ("blas", "onednn"):
                    _time(run, backend)
            blas, onednn = [], []
            for i in range(args.repeats):
                order = ("blas", "onednn") if i % 2 == 0 else ("onednn", "blas")
                times = {backend: _time(run, backend) for backend in order}
                blas.append(times["blas"])
                onednn.append(times["onednn"])
            ratios = sorted(b / o for b, o in zip(blas, onednn))
            if len(ratios) >= 4:
                q1, median, q3 = statistics.quantiles(ratios, n=4)
            else:  # too few for quartiles: the range
                q1, median, q3 = ratios[0], statistics.median(ratios), ratios[-1]
            flops = 2 * rows * k * n
            print(
                f"| {name} | {rows} x {k} -> {n} | {flops / statistics.median(blas) / 1e9:.0f} "
                f"| {flops / statistics.median(onednn) / 1e9:.0f} | {median:.2f}x ({q1:.2f}-{q3:.2f}) |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
