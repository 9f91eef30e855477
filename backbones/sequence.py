"""1-D pixel-sequence body: an image read as one long sequence, one token per pixel (row-major).

The study's "long, causal" setting (MambaOut's hypothesis: SSMs matter for long sequences read
causally). A (B, 1, 28, 28) Fashion-MNIST image becomes L = 784 tokens:

    pixels (B, L, C) -> Linear(C, D) -> + learned position embedding (L, D)
    -> depth x GatedBlock on a (B, 1, L, D) map (an H = 1 map is a 1-D sequence)
    -> LayerNorm -> pool -> Linear head

Mixers (``mixer=`` / ``order=``; each name's pair is in ``visbench.backbones.naming.MODEL_FAMILIES``):

- ``conv`` + ``causal``: the Gated CNN block whose token operator is a causal depthwise conv1d of
  width 7 (:class:`CausalConvOperator`, through ``visbench.kernels.causal_conv1d``). MambaOut's 7x7
  conv is not causal; this is its causal analogue. Its receptive field is ``depth * 6 + 1`` tokens, so
  the last token does *not* see the whole image: that is the gated CNN's handicap on long causal tasks, which
  is the point of the comparison. ``conv`` + ``full`` is the block's own (non-causal) depthwise conv.
- ``ssm`` (``causal`` or ``bidir``) and ``attn`` (``causal`` or ``full``): the operators of the other
  bodies (``visbench.backbones.mixers``) in the same block.

Causal orders make the *entire* model causal (embedding, position embedding, norms, MLPs and
operators are per-token or causal), and the head reads the LAST token, the only one that has seen
every pixel. Non-causal orders average all tokens. The position embedding is kept for every mixer
(the SSM and causal conv do not need it) so that the mixer is the only thing that changes between
models; ``pos_embed=False`` drops it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from timm.layers import LayerNorm, calculate_drop_path_rates, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from visbench.backbones.block_stack import BlockStackAPI
from visbench.backbones.blocks import GatedBlock
from visbench.backbones.naming import MODEL_FAMILIES
from visbench.backbones.param_tags import exclude_from_weight_decay
from visbench.kernels import causal_conv1d

__all__ = ["CausalConvOperator", "PixelSequenceNet", "is_causal_order"]

PoolType = Literal["last", "avg", ""]
_POOLS = ("last", "avg", "")


def is_causal_order(order: str | None) -> bool:
    """Whether a scan order reads tokens causally (token t sees only tokens <= t)."""
    return order == "causal"


class CausalConvOperator(nn.Module):
    """Causal depthwise conv1d over the row-major tokens of a ``(B, H, W, C)`` map.

    ``out[t] = bias + sum_k weight[k] * x[t - (width - 1) + k]`` (zeros before the start), so token t
    depends on tokens ``t - width + 1 .. t`` only. No activation: it replaces the Gated CNN block's
    depthwise conv one for one.
    """

    def __init__(self, dim: int, width: int = 7) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.order = "causal"
        self.width = width
        self.weight = nn.Parameter(torch.empty(dim, width))
        self.bias = nn.Parameter(torch.empty(dim))
        bound = 1.0 / math.sqrt(width)  # nn.Conv1d's default init for a depthwise conv
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        seq = x.reshape(batch, height * width, dim).transpose(1, 2)  # (B, C, L)
        out = causal_conv1d(seq, self.weight, self.bias, None)
        return out.transpose(1, 2).reshape(batch, height, width, dim)


def _sequence_block(
    dim: int, mixer: str, order: str | None, conv_width: int, drop_path: float, **block_kwargs: Any
) -> GatedBlock:
    """A GatedBlock; for ``conv`` + ``causal`` its depthwise conv is swapped for a causal conv1d."""
    if mixer == "conv" and is_causal_order(order):
        # The conv operator of visbench.backbones.mixers has no causal order: build the block with a
        # minimal 1x1 conv and put the causal operator at ``block.mixer`` (its documented operator slot).
        block = GatedBlock(dim, mixer="conv", kernel_size=1, drop_path=drop_path, **block_kwargs)
        block.mixer = CausalConvOperator(block.split_sizes[2], conv_width)
        return block
    return GatedBlock(dim, mixer=mixer, order=order, drop_path=drop_path, **block_kwargs)


class PixelSequenceNet(BlockStackAPI, nn.Module):
    """Classifier over an image read as a 1-D sequence of ``H * W`` pixel tokens (row-major)."""

    output_fmt: str = "NLC"  # forward_features gives (B, L, D) tokens, as timm's ViTs declare

    def __init__(
        self,
        img_size: int | tuple[int, int] = 28,
        in_chans: int = 1,
        num_classes: int = 10,
        embed_dim: int = 64,
        depth: int = 4,
        mixer: str = "ssm",
        order: str | None = "causal",
        pos_embed: bool = True,
        global_pool: PoolType | None = None,
        conv_width: int = 7,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if global_pool is None:
            global_pool = "last" if is_causal_order(order) else "avg"
        self._check_pool(global_pool)
        self.img_size = size
        self.seq_len = size[0] * size[1]
        self.mixer, self.order = mixer, order
        self.causal = is_causal_order(order)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False

        self.embed = nn.Linear(in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.seq_len, embed_dim)) if pos_embed else None
        if self.pos_embed is not None:
            exclude_from_weight_decay(self.pos_embed)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(
            *[
                _sequence_block(embed_dim, mixer, order, conv_width, dpr[i], **block_kwargs)
                for i in range(depth)
            ]
        )
        self.norm = LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=1) for i in range(depth)]

        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        for linear in (self.embed, self.head):
            if isinstance(linear, nn.Linear):
                trunc_normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)

    @staticmethod
    def _check_pool(global_pool: str) -> None:
        if global_pool not in _POOLS:
            raise ValueError(f"global_pool must be one of {_POOLS}, got {global_pool!r}")

    # -- timm model API ----------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^embed|pos_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    # -- forward -----------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) -> token map (B, 1, H*W, D), pixels in row-major order."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected an image (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if self.pos_embed is not None and (height, width) != self.img_size:
            raise ValueError(
                f"input size {height}x{width} is not allowed: this model's position embedding holds "
                f"{self.seq_len} tokens, so only {self.img_size[0]}x{self.img_size[1]} inputs work "
                f"(build it with img_size=({height}, {width}) or pos_embed=False for other sizes)"
            )
        tokens = self.embed(x.flatten(2).transpose(1, 2))  # (B, L, D)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed
        return tokens.unsqueeze(1)

    def _run(self, x: torch.Tensor, blk: nn.Module) -> torch.Tensor:
        if self.grad_checkpointing and self.training:
            return torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token features (B, L, D) after the final norm."""
        x = self._embed(x)
        for blk in self.blocks:
            x = self._run(x, blk)
        return self.norm(x.squeeze(1))

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "last":
            return x[:, -1]
        if pool_type == "avg":
            return x.mean(dim=1)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-block token features: ``NLC`` (B, L, D), or ``NCHW`` folded back onto the pixel grid."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        batch, _, height, width = x.shape
        x = self._embed(x)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            x = self._run(x, blk)
            if i in take_indices:
                y = x.squeeze(1)
                y = self.norm(y) if norm else y
                if output_fmt == "NCHW":
                    y = y.transpose(1, 2).reshape(batch, -1, height, width)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x.squeeze(1)), intermediates


# -- registry ---------------------------------------------------------------------------------------
def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": True,
        "mean": (0.2860,),
        "std": (0.3530,),
        "first_conv": "embed",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


# tiny: dim and depth chosen so that a few hundred steps at batch 32, L = 784 run on 2 CPU cores in
# minutes.
_TINY = dict(embed_dim=64, depth=4)

# name -> (mixer, order), from the one table of what names stand for (its sequence rows, size tiny).
SEQUENCE_MODELS: dict[str, tuple[str, str]] = {
    f"{stem}_tiny": (f.mixer, f.order) for stem, f in MODEL_FAMILIES.items() if f.body == "sequence"
}

default_cfgs = generate_default_cfgs({name: _cfg() for name in SEQUENCE_MODELS})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> PixelSequenceNet:
    mixer, order = SEQUENCE_MODELS[variant]
    model_args = dict(_TINY, mixer=mixer, order=order)
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        PixelSequenceNet,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(model_args, **kwargs),
    )


@register_model
def seq_gated_cnn_tiny(pretrained: bool = False, **kwargs: Any) -> PixelSequenceNet:
    """Gated CNN with a causal width-7 depthwise conv1d; reads the last pixel token."""
    return _create("seq_gated_cnn_tiny", pretrained, **kwargs)


@register_model
def seq_ssm_causal_tiny(pretrained: bool = False, **kwargs: Any) -> PixelSequenceNet:
    """Gated CNN + selective SSM, one causal scan over the pixels; reads the last pixel token."""
    return _create("seq_ssm_causal_tiny", pretrained, **kwargs)


@register_model
def seq_ssm_bidir_tiny(pretrained: bool = False, **kwargs: Any) -> PixelSequenceNet:
    """Gated CNN + selective SSM, forward and backward scans (Vim); averages the tokens."""
    return _create("seq_ssm_bidir_tiny", pretrained, **kwargs)


@register_model
def seq_attn_causal_tiny(pretrained: bool = False, **kwargs: Any) -> PixelSequenceNet:
    """Gated CNN + causal self-attention over the pixels; reads the last pixel token."""
    return _create("seq_attn_causal_tiny", pretrained, **kwargs)


@register_model
def seq_attn_tiny(pretrained: bool = False, **kwargs: Any) -> PixelSequenceNet:
    """Gated CNN + full self-attention over the pixels; averages the tokens."""
    return _create("seq_attn_tiny", pretrained, **kwargs)
