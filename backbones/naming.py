"""What a registered model name says: family, token mixer, scan order, body and size.

Names follow one grammar (DESIGN.md): ``[seq_|iso_]<family part>_<size>``, e.g. ``gated_cnn_tiny``,
``ssm_cross2d_small``, ``attn_causal_tiny``, ``vit_causal_small``, ``vim_small``, ``seq_ssm_causal_tiny``.
Result files and tables use this to label rows without building the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

SIZES = ("femto", "kobe", "tiny", "small", "base")

# family part of the name -> (family, mixer, order, default body)
_FAMILY_PARTS: dict[str, tuple[str, str, str, str]] = {
    "gated_cnn": ("gated_cnn", "conv", "full", "hierarchical"),
    "ssm_causal": ("ssm", "ssm", "causal", "hierarchical"),
    "ssm_bidir": ("ssm", "ssm", "bidir", "hierarchical"),
    "ssm_cross2d": ("ssm", "ssm", "cross2d", "hierarchical"),
    "attn": ("attention", "attn", "full", "hierarchical"),
    "attn_causal": ("attention", "attn", "causal", "hierarchical"),
    "vit": ("attention", "attn", "full", "isotropic"),
    "vit_causal": ("attention", "attn", "causal", "isotropic"),
    "deit": ("attention", "attn", "full", "isotropic"),
    "vim": ("ssm", "ssm", "bidir", "isotropic"),
}
_BODY_PREFIXES = {"seq_": "sequence", "iso_": "isotropic"}

# Stride of each stage's token map, per body: hierarchical = MambaOut's stem (4) and three
# downsamplings (padded stride-2 convs, so a side of n gives ceil(n / 2)); isotropic = patch 16
# (the input side must divide); sequence = one token per pixel.
BODY_STAGE_STRIDES: dict[str, tuple[int, ...]] = {
    "hierarchical": (4, 8, 16, 32),
    "isotropic": (16,),
    "sequence": (1,),
}


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
    """Parse a visbench model name; ``ValueError`` names the part that is not understood."""
    rest, body = name, None
    for prefix, prefix_body in _BODY_PREFIXES.items():
        if rest.startswith(prefix):
            rest, body = rest[len(prefix) :], prefix_body
    family_part, _, size = rest.rpartition("_")
    if size not in SIZES:
        raise ValueError(f"model name {name!r}: size {size!r} is not one of {SIZES}")
    if family_part not in _FAMILY_PARTS:
        raise ValueError(f"model name {name!r}: family {family_part!r} is not one of {sorted(_FAMILY_PARTS)}")
    family, mixer, order, default_body = _FAMILY_PARTS[family_part]
    if body == "sequence" and mixer == "conv":
        order = "causal"  # the pixel-sequence gated CNN uses a causal depthwise conv (backbones/sequence.py)
    return ModelDescription(name, family, mixer, order, body or default_body, size)


def tokens_per_stage(name: str, input_size: Sequence[int]) -> tuple[int, ...]:
    """Tokens L that each stage's mixers see at ``input_size`` (``(H, W)`` or ``(C, H, W)``).

    The one place that turns a model name and an input size into token counts: results, tables,
    analyze, bench and the study read it. ``ValueError`` for a name :func:`describe` does not know.
    """
    height, width = (int(v) for v in input_size[-2:])
    body = describe(name).body
    strides = BODY_STAGE_STRIDES[body]
    if body == "isotropic":
        return tuple((height // s) * (width // s) for s in strides)
    return tuple(math.ceil(height / s) * math.ceil(width / s) for s in strides)
