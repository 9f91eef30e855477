"""``visbench analyze``: when is a vision task "long" for a model? (MambaOut, Sec. 3.2, Eq. 6)

A ViT block with channel width D on L tokens costs ``24·D²·L + 4·D·L²`` FLOPs (MambaOut Eq. 6, fully
visible attention): the quadratic, token-mixing term outweighs the linear one when ``r = L / 6D > 1``.
So a task is long for a stage of width D once its token count passes ``6D`` (ViT-S: 2304, ViT-B: 4608).
ImageNet at 224² gives 196 tokens at stride 16 (r = 0.085 for ViT-S); COCO at 800x1280 gives 4000.

For every model and input size this module reports, per stage (a run of blocks at one stride and
width, read from the model's timm ``feature_info``): tokens L (the token map, no class token, from
``visbench.backbones.naming.tokens_per_stage``, the one place that counts them), r, whether it is long,
and the input size at which r crosses 1. The model-level verdict uses the
*reference stage*: the stage with the most blocks (stride 16 for MambaOut's hierarchical bodies and for
ViTs). Token vs channel mixing MACs are measured on the built model (``count_macs_by_kind``, on the meta
device, nothing is computed) and, for attention models, also given in closed form (Eq. 6).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SETTINGS: dict[str, tuple[int, int]] = {
    "imagenet": (224, 224),
    "coco": (800, 1280),
    "ade20k": (512, 2048),
}
DEFAULT_MODELS = ("vit_small_patch16_224", "vit_base_patch16_224", "mambaout_tiny")


@dataclass(frozen=True)
class Stage:
    """A run of blocks at one stride and width."""

    index: int
    reduction: int
    dim: int
    depth: int
    module: str

    @property
    def threshold_tokens(self) -> int:
        """Token count at which r = L / 6D reaches 1."""
        return 6 * self.dim


@dataclass
class StageAnalysis:
    index: int
    reduction: int
    dim: int
    depth: int
    grid: tuple[int, int]
    tokens: int
    threshold_tokens: int
    r: float
    long: bool
    crossing_scale: float  # multiply H and W by this to reach r = 1
    crossing_side: int  # square input side at which r = 1


@dataclass
class ModelAnalysis:
    model: str
    family: str
    mixer: str
    order: str
    body: str
    setting: str
    input_size: tuple[int, int]
    stages: list[StageAnalysis]
    reference_stage: int
    tokens: int
    r: float
    long: bool
    long_blocks: int
    total_blocks: int
    crossing_side: int
    macs: dict[str, int] = field(default_factory=dict)
    token_mixing_share: float | None = None
    closed_form_token_mixing_share: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------- model shape


def build_meta_model(name: str, **model_kwargs: Any) -> Any:
    """``timm.create_model(name, **model_kwargs)`` on the meta device: shapes only, no memory or init."""
    import timm
    import torch

    import visbench.backbones  # noqa: F401  (the registration point)

    if not timm.is_model(name):
        raise ValueError(f"model {name!r} is not registered with timm (ours: gated_cnn_tiny, vit_small, ...)")
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **model_kwargs)


def _depth_of(model: Any, module: str) -> int:
    try:
        sub = model.get_submodule(module)
    except AttributeError:
        return 1
    blocks = getattr(sub, "blocks", None)
    return len(blocks) if blocks is not None else 1


def model_stages(model: Any) -> list[Stage]:
    """Stages from timm's ``feature_info``: consecutive entries at the same (reduction, width) merge."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no feature_info: cannot tell its strides and widths")
    entries = [(int(e["reduction"]), int(e["num_chs"]), str(e.get("module", ""))) for e in info]
    stages: list[Stage] = []
    for reduction, dim, module in entries:
        if stages and stages[-1].reduction == reduction and stages[-1].dim == dim:
            last = stages[-1]  # isotropic body: one feature_info entry per block
            stages[-1] = Stage(last.index, reduction, dim, last.depth + 1, last.module)
        else:
            stages.append(Stage(len(stages), reduction, dim, _depth_of(model, module), module))
    if len(stages) == 1 and len(entries) == 1:
        stages[0] = Stage(
            0, stages[0].reduction, stages[0].dim, _depth_of(model, entries[0][2]), entries[0][2]
        )
    return stages


def reference_stage(stages: list[Stage]) -> Stage:
    """The stage with the most blocks (ties: the higher-resolution one)."""
    return max(stages, key=lambda s: (s.depth, -s.index))


# --------------------------------------------------------------------------------------- arithmetic


def stage_grids(name: str, stages: list[Stage], height: int, width: int) -> list[tuple[int, int]]:
    """Token map of each stage at ``height x width``: ``visbench.backbones.naming``'s, for the names it knows.

    ``ValueError`` when the model's ``feature_info`` strides disagree with naming's. A name naming does
    not know (any other timm model) gets its ``feature_info`` strides and naming's arithmetic (ceil).
    """
    from visbench.backbones import naming

    try:
        strides = naming.stage_strides(name)
    except ValueError:
        return [naming.token_grid((height, width), s.reduction) for s in stages]
    reductions = tuple(s.reduction for s in stages)
    if reductions != strides:
        raise ValueError(
            f"model {name!r}: its feature_info strides {reductions} disagree with "
            f"visbench.backbones.naming's {strides}"
        )
    return list(naming.stage_grids(name, (height, width)))


def ratio(tokens: int, dim: int) -> float:
    """MambaOut's r = L / 6D."""
    return tokens / (6 * dim)


def crossing_side(reduction: int, dim: int) -> int:
    """Square input side at which a stage reaches 6D tokens: ``reduction · sqrt(6D)`` (rounded up)."""
    return math.ceil(reduction * math.sqrt(6 * dim))


def analyze_stage(stage: Stage, grid: tuple[int, int]) -> StageAnalysis:
    tokens = grid[0] * grid[1]
    r = ratio(tokens, stage.dim)
    return StageAnalysis(
        index=stage.index,
        reduction=stage.reduction,
        dim=stage.dim,
        depth=stage.depth,
        grid=grid,
        tokens=tokens,
        threshold_tokens=stage.threshold_tokens,
        r=r,
        long=r > 1.0,
        crossing_scale=math.sqrt(1.0 / r),
        crossing_side=crossing_side(stage.reduction, stage.dim),
    )


def vit_token_mixing_share(dim: int, tokens: int) -> float:
    """Closed-form share of a ViT block's FLOPs in the attention matrices: 4DL² / (24D²L + 4DL²)."""
    quadratic = 4 * dim * tokens * tokens
    return quadratic / (24 * dim * dim * tokens + quadratic)


def parse_size(text: str) -> tuple[str, tuple[int, int]]:
    """``imagenet`` / ``coco`` / ``ade20k``, ``224`` or ``800x1280`` -> (label, (H, W))."""
    key = text.strip().lower()
    if key in SETTINGS:
        return key, SETTINGS[key]
    try:
        if "x" in key:
            h, w = (int(v) for v in key.split("x", 1))
        else:
            h = w = int(key)
    except ValueError:
        raise ValueError(
            f"size {text!r}: expected one of {sorted(SETTINGS)}, a side like 224, or HxW like 800x1280"
        ) from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size {text!r}: height and width must be positive")
    return f"{h}x{w}", (h, w)


def size_for_tokens(tokens: int, reduction: int) -> tuple[int, int]:
    """Square input giving about ``tokens`` tokens at stride ``reduction``."""
    if tokens <= 0:
        raise ValueError(f"tokens must be positive, got {tokens}")
    side = max(1, round(math.sqrt(tokens))) * reduction
    return side, side


def analyze_model(
    name: str,
    height: int,
    width: int,
    setting: str | None = None,
    measure: bool = True,
    model: Any | None = None,
) -> ModelAnalysis:
    """The full analysis of one model at one input size."""
    from visbench.backbones.naming import describe_any

    model = model if model is not None else build_meta_model(name)
    stages = model_stages(model)
    ref = reference_stage(stages)
    per_stage = [analyze_stage(s, g) for s, g in zip(stages, stage_grids(name, stages, height, width))]
    ref_a = per_stage[ref.index]
    d = describe_any(name)
    result = ModelAnalysis(
        model=name,
        family=d.family,
        mixer=d.mixer,
        order=d.order,
        body=d.body,
        setting=setting or f"{height}x{width}",
        input_size=(height, width),
        stages=per_stage,
        reference_stage=ref.index,
        tokens=ref_a.tokens,
        r=ref_a.r,
        long=ref_a.long,
        long_blocks=sum(s.depth for s in per_stage if s.long),
        total_blocks=sum(s.depth for s in per_stage),
        crossing_side=ref_a.crossing_side,
    )
    if result.mixer == "attn" and len(stages) == 1:
        result.closed_form_token_mixing_share = vit_token_mixing_share(ref.dim, ref_a.tokens)
    if measure:
        from visbench.backbones.complexity import count_macs_by_kind

        in_chans = int(getattr(model, "in_chans", 3))
        try:
            macs = count_macs_by_kind(model, (in_chans, height, width))
        except (AssertionError, RuntimeError):
            # timm ViTs fix their input size at build time; resize the position embedding and retry.
            if not hasattr(model, "set_input_size"):
                raise
            model.set_input_size(img_size=(height, width))
            macs = count_macs_by_kind(model, (in_chans, height, width))
        result.macs = macs
        mixing = macs["token_mixing"] + macs["channel_mixing"]
        result.token_mixing_share = macs["token_mixing"] / mixing if mixing else None
    return result


# --------------------------------------------------------------------------------------- output


def format_table(analyses: list[ModelAnalysis]) -> str:
    """Plain-text table, one row per (model, setting) plus one indented row per stage."""
    header = (
        f"{'model':<24} {'setting':<10} {'stage':>5} {'stride':>6} {'D':>5} {'depth':>5} "
        f"{'tokens L':>9} {'6D':>6} {'r=L/6D':>8} {'long':>5} {'r=1 at':>7} {'tok-mix MACs':>12}"
    )
    lines = [header, "-" * len(header)]
    for a in analyses:
        share = "" if a.token_mixing_share is None else f"{100 * a.token_mixing_share:.1f}%"
        for s in a.stages:
            marker = "*" if s.index == a.reference_stage else " "
            lines.append(
                f"{a.model if s.index == 0 else '':<24} {a.setting if s.index == 0 else '':<10} "
                f"{s.index:>4}{marker} {s.reduction:>6} {s.dim:>5} {s.depth:>5} {s.tokens:>9} "
                f"{s.threshold_tokens:>6} {s.r:>8.3f} {'yes' if s.long else 'no':>5} {s.crossing_side:>7} "
                f"{share if s.index == a.reference_stage else '':>12}"
            )
    lines.append("* reference stage (most blocks); 'r=1 at': square input side where that stage turns long")
    return "\n".join(lines)


def plot_r_vs_resolution(
    models: list[str], path: Path, sides: list[int] | None = None, built: dict[str, Any] | None = None
) -> list[Path]:
    """r of each model's reference stage against square input side, log-log, with the r = 1 line.

    Writes ``path`` and its ``.svg`` twin when ``path`` is a ``.png``; returns the files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = sides or [2**k for k in range(5, 13)] + [224, 384, 512, 768, 800, 1024, 1280, 2048]
    sides = sorted(set(sides))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name in models:
        model = (built or {}).get(name) or build_meta_model(name)
        stages = model_stages(model)
        stage = reference_stage(stages)
        grids = [stage_grids(name, stages, s, s)[stage.index] for s in sides]
        rs = [ratio(h * w, stage.dim) for h, w in grids]
        ax.plot(sides, rs, marker="o", ms=3, label=f"{name} (D={stage.dim}, stride {stage.reduction})")
    ax.axhline(1.0, color="black", lw=1, ls="--", label="r = 1 (L = 6D)")
    for i, (label, (h, w)) in enumerate(SETTINGS.items()):
        ax.axvline(math.sqrt(h * w), color="grey", lw=0.6, ls=":")
        ax.text(
            math.sqrt(h * w),
            0.02 + 0.12 * i,
            label,
            rotation=90,
            fontsize=7,
            transform=ax.get_xaxis_transform(),
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("input side (square; settings at sqrt(H·W))")
    ax.set_ylabel("r = L / 6D (reference stage)")
    ax.set_title("When does a task become long? (MambaOut Eq. 6)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = [path]
    fig.savefig(path)
    if path.suffix.lower() == ".png":
        svg = path.with_suffix(".svg")
        fig.savefig(svg)
        written.append(svg)
    plt.close(fig)
    return written


# --------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated timm / visbench model names (default: %(default)s)",
    )
    parser.add_argument(
        "--sizes",
        default="imagenet,coco,ade20k",
        help="comma-separated settings: imagenet, coco, ade20k, 224, 800x1280 (default: %(default)s)",
    )
    parser.add_argument(
        "--tokens",
        default=None,
        help="comma-separated token counts at the reference stage (e.g. 196,4096), turned into square sizes",
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--no-measure", action="store_true", help="skip the measured MAC split")
    parser.add_argument("--plot", type=Path, default=None, help="write r vs resolution to this PNG (+ SVG)")


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    models = _split(args.models)
    if not models:
        print("visbench analyze: --models is empty", file=sys.stderr)
        return 2
    try:
        sizes = [parse_size(s) for s in _split(args.sizes)] if not args.tokens else []
        token_counts = [int(t) for t in _split(args.tokens)] if args.tokens else []
        built = {name: build_meta_model(name) for name in models}
    except ValueError as err:
        print(f"visbench analyze: {err}", file=sys.stderr)
        return 2
    analyses: list[ModelAnalysis] = []
    for name in models:
        model = built[name]
        model_sizes = list(sizes)
        if token_counts:
            stride = reference_stage(model_stages(model)).reduction
            for t in token_counts:
                h, w = size_for_tokens(t, stride)
                model_sizes.append((f"L={t}", (h, w)))
        for label, (h, w) in model_sizes:
            analyses.append(
                analyze_model(name, h, w, setting=label, measure=not args.no_measure, model=model)
            )
    if args.format == "json":
        print(json.dumps([a.as_dict() for a in analyses], indent=2))
    else:
        print(format_table(analyses))
    if args.plot is not None:
        for path in plot_r_vs_resolution(models, args.plot, built=built):
            print(f"wrote {path}", file=sys.stderr)
    return 0
