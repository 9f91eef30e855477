"""The README's throughput runs: ours against timm's identical architectures, and every family alike.

A thin caller of ``visbench bench``, which owns the timing, the engine (``--compile``) and the pairing
(``--pair-with``, windows interleaved ABBA, median of per-repeat ratios with quartiles):

    python benchmarks/backbones.py                            # ours vs timm, eager, CPU
    python benchmarks/backbones.py --compile inductor-freeze  # the same pairs, both compiled alike
    python benchmarks/backbones.py --families                 # each family: compiled vs eager, paired

Pairs (same architecture, same weight shapes): ``gated_cnn_tiny`` vs timm's ``mambaout_tiny``,
``vit_small`` vs timm's ``vit_small_patch16_224``. Inference (no grad), batch 16, 224x224. Any other
argument goes to ``visbench bench`` unchanged (``--device cuda``, ``--repeats 20``, ``--out ...``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from visbench.cli import main as visbench

PAIRS = (("gated_cnn_tiny", "mambaout_tiny"), ("vit_small", "vit_small_patch16_224"))
FAMILIES = (
    "gated_cnn_tiny",
    "ssm_causal_tiny",
    "ssm_bidir_tiny",
    "ssm_cross2d_tiny",
    "attn_tiny",
    "vit_small",
    "vim_small",
)
COMMON = ("--batch-size", "16", "--sizes", "224", "--no-train", "--warmup", "2", "--repeats", "9")


def bench_argv(families: bool, compile: str, rest: Sequence[str]) -> list[str]:
    """The ``visbench bench`` arguments of one run (later arguments override ``COMMON``)."""
    if families:
        names = ",".join(FAMILIES)
        pairing = ["--models", names, "--pair-with", names, "--compile", compile, "--pair-compile", "none"]
    else:
        ours, theirs = (",".join(names) for names in zip(*PAIRS, strict=True))
        pairing = ["--models", ours, "--pair-with", theirs, "--compile", compile]
    return ["bench", *COMMON, *pairing, *rest]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", action="store_true", help="every family, compiled vs eager")
    parser.add_argument(
        "--compile",
        default=None,
        help="engine for every model (default: none for the pairs, inductor-freeze for --families)",
    )
    args, rest = parser.parse_known_args(argv)
    compile = args.compile or ("inductor-freeze" if args.families else "none")
    return visbench(bench_argv(args.families, compile, rest))


if __name__ == "__main__":
    sys.exit(main())
