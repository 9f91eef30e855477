"""What a model name stands for: family, token mixer, scan order, body, size and tokens per stage.

The one place that says it. The bodies build their registries from :data:`MODEL_FAMILIES`
(``visbench.backbones.hierarchical.FAMILIES``, ``visbench.backbones.sequence.SEQUENCE_MODELS``);
results, tables, analyze, bench and the study read :func:`describe`, :func:`describe_any` and
:func:`tokens_per_stage`; ``tests/test_naming.py`` builds every registered model and checks that its
mixer, order, body, strides and token maps are what this module says.

Our names are ``<stem>_<size>``: the stem says family, mixer, order and body (``gated_cnn``,
``ssm_cross2d``, ``attn_causal``, ``vit_causal``, ``vim``, ``iso_gated_cnn``, ``seq_ssm_causal``, ...),
the size is one of :data:`SIZES`. timm's own names that the project compares with (``mambaout_*``,
``vit_*_patch16_224``, ``deit_*``, ``resnet*``, ``convnext_*``) are described by :func:`describe_any`,
which says ``"unknown"`` for what it does not know instead of raising. This module uses the standard
library only: reading a name builds no model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = [
    "BODY_STAGE_STRIDES",
    "MODEL_FAMILIES",
    "SIZES",
    "UNKNOWN",
    "Family",
    "ModelDescription",
    "describe",
    "describe_any",
    "stage_grids",
    "stage_strides",
    "token_grid",
    "tokens_per_stage",
]

SIZES = ("femto", "kobe", "tiny", "small", "base")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Family:
    """What a name stem stands for; ``mixer`` / ``order`` are ``visbench.backbones.mixers``' keywords."""

    family: str  # the comparison group: gated_cnn, ssm, attention (cnn for timm's plain conv nets)
    mixer: str  # conv, ssm, attn
    order: str  # full, causal, bidir, cross2d (``full``: every token sees every token; convs are not causal)
    body: str  # hierarchical, isotropic, sequence


# Name stem (a registered name without its ``_<size>``) -> what it stands for. The gated CNN's depthwise
# 7x7 conv is not causal, so its order is ``full``, as on the model; the pixel-sequence gated CNN swaps it
# for a causal conv1d (``visbench.backbones.sequence.CausalConvOperator``).
MODEL_FAMILIES: dict[str, Family] = {
    # hierarchical 4-stage (MambaOut's body): visbench.backbones.hierarchical, all of SIZES
    "gated_cnn": Family("gated_cnn", "conv", "full", "hierarchical"),
    "ssm_causal": Family("ssm", "ssm", "causal", "hierarchical"),
    "ssm_bidir": Family("ssm", "ssm", "bidir", "hierarchical"),
    "ssm_cross2d": Family("ssm", "ssm", "cross2d", "hierarchical"),
    "attn": Family("attention", "attn", "full", "hierarchical"),
    "attn_causal": Family("attention", "attn", "causal", "hierarchical"),
    # isotropic patch-16: visbench.backbones.isotropic (ViT tiny/small/base; Vim and iso_gated_cnn tiny/small)
    "vit": Family("attention", "attn", "full", "isotropic"),
    "vit_causal": Family("attention", "attn", "causal", "isotropic"),
    "vim": Family("ssm", "ssm", "bidir", "isotropic"),
    "iso_gated_cnn": Family("gated_cnn", "conv", "full", "isotropic"),
    # 1-D pixel sequence, one token per pixel: visbench.backbones.sequence (tiny)
    "seq_gated_cnn": Family("gated_cnn", "conv", "causal", "sequence"),
    "seq_ssm_causal": Family("ssm", "ssm", "causal", "sequence"),
    "seq_ssm_bidir": Family("ssm", "ssm", "bidir", "sequence"),
    "seq_attn_causal": Family("attention", "attn", "causal", "sequence"),
    "seq_attn": Family("attention", "attn", "full", "sequence"),
}

# Stride of each stage's token map, per body: hierarchical = MambaOut's stem (4) and three
# downsamplings; isotropic = 16x16 patches; sequence = one token per pixel. A side of n gives
# ceil(n / stride) tokens: MambaOut's stride-2 3x3 convs are padded, and a patch body pads a side that
# does not divide (timm's ``dynamic_img_pad``). Our hierarchical bodies ask for multiples of 32 and our
# isotropic ones for multiples of 16, where ceil is exact.
BODY_STAGE_STRIDES: dict[str, tuple[int, ...]] = {
    "hierarchical": (4, 8, 16, 32),
    "isotropic": (16,),
    "sequence": (1,),
}

# timm (and published) names that visbench does not register but that bench, analyze and the reference
# tables use: name prefix -> (what it stands for, stage strides; ``None``: not known here). A ``patchN`` in
# a ViT name sets its stride. timm's conv nets are non-causal convs: order ``full``, as our gated CNN.
_TIMM_PREFIXES: tuple[tuple[str, Family, tuple[int, ...] | None], ...] = (
    ("mambaout_", Family("gated_cnn", "conv", "full", "hierarchical"), (4, 8, 16, 32)),
    ("test_mambaout", Family("gated_cnn", "conv", "full", "hierarchical"), (4, 8, 16, 32)),  # timm's tests
    ("test_vit", Family("attention", "attn", "full", "isotropic"), (16,)),
    ("vit_", Family("attention", "attn", "full", "isotropic"), (16,)),
    ("deit_", Family("attention", "attn", "full", "isotropic"), (16,)),
    ("deit3_", Family("attention", "attn", "full", "isotropic"), (16,)),
    ("vim_", Family("ssm", "ssm", "bidir", "isotropic"), (16,)),
    ("vmamba", Family("ssm", "ssm", "cross2d", "hierarchical"), None),
    ("resnet", Family("cnn", "conv", "full", "hierarchical"), None),
    ("convnext", Family("cnn", "conv", "full", "hierarchical"), None),
)


@dataclass(frozen=True)
class ModelDescription:
    name: str
    family: str
    mixer: str
    order: str
    body: str
    size: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def describe(name: str) -> ModelDescription:
    """What a visbench model name stands for; ``ValueError`` names the part that is not understood."""
    stem, _, size = name.rpartition("_")
    if size not in SIZES:
        raise ValueError(f"model name {name!r}: size {size!r} is not one of {SIZES}")
    if stem not in MODEL_FAMILIES:
        raise ValueError(f"model name {name!r}: family {stem!r} is not one of {sorted(MODEL_FAMILIES)}")
    f = MODEL_FAMILIES[stem]
    return ModelDescription(name, f.family, f.mixer, f.order, f.body, size)


def _timm_entry(name: str) -> tuple[Family, tuple[int, ...] | None] | None:
    for prefix, family, strides in _TIMM_PREFIXES:
        if name.startswith(prefix):
            patch = re.search(r"patch(\d+)", name)
            if patch and family.body == "isotropic":
                strides = (int(patch.group(1)),)
            return family, strides
    return None


def describe_any(name: str) -> ModelDescription:
    """:func:`describe` for our names, the timm table for timm's; ``"unknown"`` fields for any other name.

    Never raises: bench may time any timm model. The size of a timm name is the first part of it that
    is one of :data:`SIZES` (``vit_small_patch16_224``: small), else unknown.
    """
    try:
        return describe(name)
    except ValueError:
        pass
    size = next((part for part in name.split("_") if part in SIZES), UNKNOWN)
    entry = _timm_entry(name)
    if entry is None:
        return ModelDescription(name, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, size)
    f = entry[0]
    return ModelDescription(name, f.family, f.mixer, f.order, f.body, size)


def stage_strides(name: str, patch_size: int | None = None) -> tuple[int, ...]:
    """Stride of each stage's token map (ours, or a timm name of the table with known strides).

    ``patch_size`` (an isotropic body's constructor argument, 16 by default) overrides the stride of an
    isotropic body. ``ValueError`` for a name whose strides this module does not know.
    """
    try:
        body = describe(name).body
        if patch_size is not None and body == "isotropic":
            return (int(patch_size),)
        return BODY_STAGE_STRIDES[body]
    except ValueError:
        pass
    entry = _timm_entry(name)
    if entry is None or entry[1] is None:
        raise ValueError(f"model name {name!r}: its stage strides are not known to visbench.backbones.naming")
    return entry[1]


def token_grid(input_size: Sequence[int], stride: int) -> tuple[int, int]:
    """Token map ``(h, w)`` at ``stride`` of an ``(H, W)`` (or ``(C, H, W)``) input: ceil(side / stride).

    The arithmetic behind :func:`tokens_per_stage`, also for models this module does not know.
    """
    height, width = (int(v) for v in input_size[-2:])
    return math.ceil(height / stride), math.ceil(width / stride)


def stage_grids(
    name: str, input_size: Sequence[int], patch_size: int | None = None
) -> tuple[tuple[int, int], ...]:
    """The token map ``(h, w)`` of each stage at ``input_size``; ``ValueError`` for an unknown name."""
    return tuple(token_grid(input_size, s) for s in stage_strides(name, patch_size))


def tokens_per_stage(name: str, input_size: Sequence[int], patch_size: int | None = None) -> tuple[int, ...]:
    """Tokens L that each stage's mixers see at ``input_size`` (``(H, W)`` or ``(C, H, W)``).

    The one place that turns a model name and an input size into token counts: results, tables,
    analyze, bench and the study read it. L counts the token map, not prefix tokens (a ViT's class
    token), as MambaOut's Eq. 6 does (196 for a patch-16 body at 224²). ``ValueError`` for a name
    :func:`stage_strides` does not know. ``patch_size``: an isotropic body built with another patch.
    """
    return tuple(h * w for h, w in stage_grids(name, input_size, patch_size))
