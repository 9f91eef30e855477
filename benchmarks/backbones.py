"""Inference throughput of our backbones against timm's implementation of the same architecture.

    python benchmarks/backbones.py                      # pairs + every family at tiny size, CPU
    python benchmarks/backbones.py --device cuda --repeats 20
    python benchmarks/backbones.py --only-pairs --repeats 15

Pairs (same architecture, same weights' shapes): ``gated_cnn_tiny`` vs timm's ``mambaout_tiny``,
``vit_small`` vs timm's ``vit_small_patch16_224``. Then every family at tiny size (sequence models at
their own 28x28 input). Method: eval mode, batch 16, 224x224, warm-up iterations, then ``--repeats``
timed forward passes (synchronised on CUDA); img/s from the median time.

Within a pair the models are timed in turn, in ABBA order, and the speed-up is the median over
repeats of the per-repeat ratio timm time / our time, so that load from other processes, which comes
and goes over seconds, hits both sides of each ratio alike; the interquartile range of those ratios
is printed next to it. Each pair is timed five ways: timm's model; ours as users run it
(``model(x)`` under ``torch.inference_mode``, which takes the blocks' fused inference paths, with
their GEMMs on oneDNN on CPU (``visbench.backbones.cpu_gemm``), and, for a class-token ViT, runs the last
block on the class token only); the same with PyTorch's BLAS GEMMs (``VISBENCH_CPU_GEMM=blas``, what
``F.linear`` and timm use); ours on every token (``forward_head(forward_features(x))``, inference
paths but no class-token shortcut); and ours on its autograd path (gradients on, parameters frozen),
which shows what the architecture alone gives. Our models run channels-last (their convs read NHWC);
timm's run as timm ships them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import visbench.backbones.hierarchical  # noqa: E402,F401  (registers the names with timm)
import visbench.backbones.isotropic  # noqa: E402,F401
import visbench.backbones.sequence  # noqa: E402,F401
from visbench.backbones.cpu_gemm import BACKEND_ENV  # noqa: E402

PAIRS = (("gated_cnn_tiny", "mambaout_tiny"), ("vit_small", "vit_small_patch16_224"))
TINY = (
    "gated_cnn_tiny",
    "ssm_causal_tiny",
    "ssm_bidir_tiny",
    "ssm_cross2d_tiny",
    "attn_tiny",
    "attn_causal_tiny",
    "vit_tiny",
    "vit_causal_tiny",
    "vim_tiny",
    "iso_gated_cnn_tiny",
    "seq_gated_cnn_tiny",
    "seq_ssm_causal_tiny",
    "seq_ssm_bidir_tiny",
    "seq_attn_causal_tiny",
    "seq_attn_tiny",
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MODES = ("inference", "inference_blas", "all_tokens", "autograd")


@contextlib.contextmanager
def forced_gemm_backend(choice: str | None):
    """Set ``VISBENCH_CPU_GEMM`` to ``choice`` for the block (None: leave it as the user set it)."""
    if choice is None:
        yield
        return
    before = os.environ.get(BACKEND_ENV)
    os.environ[BACKEND_ENV] = choice
    try:
        yield
    finally:
        if before is None:
            del os.environ[BACKEND_ENV]
        else:
            os.environ[BACKEND_ENV] = before


class Runner:
    """One model ready to time: built, in eval mode, on the device, with a fixed input batch.

    ``mode``: ``inference`` times ``model(x)`` under ``torch.inference_mode`` (as users run it);
    ``inference_blas`` the same with the inference paths' GEMMs on PyTorch's BLAS; ``all_tokens``
    times ``forward_head(forward_features(x))`` there, so every token goes through every block;
    ``autograd`` times ``model(x)`` with gradients enabled (parameters frozen, so no
    graph is kept): our blocks then take their autograd path instead of the fused inference one.
    """

    def __init__(
        self,
        name: str,
        batch: int,
        size: int,
        device: torch.device,
        channels_last: bool,
        mode: str = "inference",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.name = name
        # ViTs (timm's and ours) are built for the input size: timm's patch embedding checks it
        kwargs = {"img_size": size} if name.startswith("vit") else {}
        self.model: nn.Module = timm.create_model(name, **kwargs).eval().to(device).requires_grad_(False)
        chans, *native = self.model.pretrained_cfg["input_size"]
        hw = native if name.startswith("seq_") else (size, size)  # sequence bodies read 28x28 pixels
        self.input_size = tuple(hw)
        self.x = torch.randn(batch, chans, *hw, device=device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.device = device
        self.batch = batch
        self.mode = mode
        self.times: list[float] = []

    def step(self, record: bool = True) -> None:
        grad_mode = torch.enable_grad() if self.mode == "autograd" else torch.inference_mode()
        with grad_mode, forced_gemm_backend("blas" if self.mode == "inference_blas" else None):
            _sync(self.device)
            start = time.perf_counter()
            if self.mode == "all_tokens":
                self.model.forward_head(self.model.forward_features(self.x))
            else:
                self.model(self.x)
            _sync(self.device)
        if record:
            self.times.append(time.perf_counter() - start)

    @property
    def throughput(self) -> float:
        return self.batch / statistics.median(self.times)

    @property
    def params_m(self) -> float:
        return sum(p.numel() for p in self.model.parameters()) / 1e6


def time_together(runners: Sequence[Runner], warmup: int, repeats: int) -> None:
    """Warm up, then time the runners in turn, ``repeats`` passes each, alternating ABBA order."""
    for _ in range(warmup):
        for runner in runners:
            runner.step(record=False)
    for i in range(repeats):
        for runner in runners if i % 2 == 0 else reversed(runners):
            runner.step()


def paired_speedup(ours: Runner, ref: Runner) -> tuple[float, float, float]:
    """Median and quartiles of ``ref time / ours time`` over repeats timed side by side.

    With fewer than 4 repeats the "quartiles" are the minimum and maximum.
    """
    ratios = sorted(r / o for o, r in zip(ours.times, ref.times, strict=True))
    if len(ratios) < 4:
        median = statistics.median(ratios)
        return median, ratios[0], ratios[-1]
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    return median, q1, q3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    parser.add_argument("--only-pairs", action="store_true", help="skip the per-family table")
    parser.add_argument("--models", nargs="*", default=list(TINY), help="models of the per-family table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch} size={args.size} "
        f"warmup={args.warmup} repeats={args.repeats} torch={torch.__version__} timm={timm.__version__}"
    )

    print(
        "\n| ours | img/s | timm | img/s | ours / timm (IQR) | ours, BLAS GEMMs / timm (IQR) "
        "| ours, all tokens / timm (IQR) | ours, autograd path / timm (IQR) |"
        "\n|---|---:|---|---:|---:|---:|---:|---:|"
    )
    for ours_name, timm_name in PAIRS:
        ours = {mode: Runner(ours_name, args.batch, args.size, device, True, mode) for mode in MODES}
        ref = Runner(timm_name, args.batch, args.size, device, channels_last=False)
        time_together([*ours.values(), ref], args.warmup, args.repeats)
        ratios = " | ".join(
            "{:.2f}x ({:.2f}-{:.2f})".format(*paired_speedup(runner, ref)) for runner in ours.values()
        )
        print(
            f"| {ours_name} | {ours['inference'].throughput:.1f} | {timm_name} | {ref.throughput:.1f} "
            f"| {ratios} |",
            flush=True,
        )
        del ours, ref

    if not args.only_pairs:
        print("\n| model | input | params (M) | img/s |\n|---|---|---:|---:|")
        for name in args.models:
            runner = Runner(name, args.batch, args.size, device, channels_last=not name.startswith("seq_"))
            time_together([runner], args.warmup, args.repeats)
            size = "x".join(map(str, runner.input_size))
            print(f"| {name} | {size} | {runner.params_m:.2f} | {runner.throughput:.1f} |", flush=True)
            del runner
    return 0


if __name__ == "__main__":
    sys.exit(main())
