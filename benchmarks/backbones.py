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
is printed next to it. Each pair is timed three ways: timm's model; ours as users run it
(``torch.inference_mode``, which takes ``GatedBlock``'s no-grad path); and ours on its autograd
path (gradients on, parameters frozen), which shows what the architecture alone gives. Our models
run channels-last (their convs read NHWC); timm's run as timm ships them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import backbones.hierarchical  # noqa: E402,F401  (registers the names with timm)
import backbones.isotropic  # noqa: E402,F401
import backbones.sequence  # noqa: E402,F401

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


class Runner:
    """One model ready to time: built, in eval mode, on the device, with a fixed input batch.

    ``no_grad_path=False`` times the model with gradients enabled (parameters frozen, so no graph is
    kept): our blocks then take their autograd path instead of the fused no-grad one.
    """

    def __init__(
        self,
        name: str,
        batch: int,
        size: int,
        device: torch.device,
        channels_last: bool,
        no_grad_path: bool = True,
    ) -> None:
        self.name = name
        self.model: nn.Module = timm.create_model(name).eval().to(device).requires_grad_(False)
        chans, *native = self.model.pretrained_cfg["input_size"]
        hw = native if name.startswith("seq_") else (size, size)  # sequence bodies read 28x28 pixels
        self.input_size = tuple(hw)
        self.x = torch.randn(batch, chans, *hw, device=device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.device = device
        self.batch = batch
        self.no_grad_path = no_grad_path
        self.times: list[float] = []

    def step(self, record: bool = True) -> None:
        mode = torch.inference_mode() if self.no_grad_path else torch.enable_grad()
        with mode:
            _sync(self.device)
            start = time.perf_counter()
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
        "\n| ours | img/s | ours, autograd path | img/s | timm | img/s | ours / timm (IQR) "
        "| autograd path / timm (IQR) |\n|---|---:|---|---:|---|---:|---:|---:|"
    )
    for ours_name, timm_name in PAIRS:
        ours = Runner(ours_name, args.batch, args.size, device, channels_last=True)
        plain = Runner(ours_name, args.batch, args.size, device, channels_last=True, no_grad_path=False)
        ref = Runner(timm_name, args.batch, args.size, device, channels_last=False)
        time_together([ours, plain, ref], args.warmup, args.repeats)
        fast, fast_q1, fast_q3 = paired_speedup(ours, ref)
        base, base_q1, base_q3 = paired_speedup(plain, ref)
        print(
            f"| {ours_name} | {ours.throughput:.1f} | {ours_name} | {plain.throughput:.1f} "
            f"| {timm_name} | {ref.throughput:.1f} | {fast:.2f}x ({fast_q1:.2f}-{fast_q3:.2f}) "
            f"| {base:.2f}x ({base_q1:.2f}-{base_q3:.2f}) |",
            flush=True,
        )
        del ours, plain, ref

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
