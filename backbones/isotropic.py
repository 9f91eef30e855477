"""Isotropic patch-16 body of Gated CNN blocks (Vim-like), with any token mixer.

MambaOut's Gated CNN block (``visbench.backbones.blocks.GatedBlock``) with a pluggable sequence operator
on the (H/16, W/16) token map: ``vim_*`` (selective SSM, Vim's bidirectional order) and
``iso_gated_cnn_*`` (no operator, a depthwise conv). ``mixer=`` / ``order=`` pick any mixer. The ViT of the
same shape is ``visbench.backbones.vit``; both share ``visbench.backbones.patch_embed``.

Reads top to bottom as timm's model files: the model, ``checkpoint_filter_fn``, default cfgs, one
``_create`` helper and a ``@register_model`` function per (family, size).

The body: a 16x16 patch embedding, a learned absolute position embedding on the token map, ``depth``
blocks at stride 16, a final LayerNorm, a pooled linear head. No class token: the head pools the map
(``avg``) or reads the last token in row-major order (``last``). ``forward_features`` returns the NHWC
map (``output_fmt = "NHWC"``, ``pool_size`` (14, 14) at 224), as timm's MambaOut does. Any input whose
sides are multiples of 16 works: the position embedding is resampled (bicubic) to the input's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from timm.layers import calculate_drop_path_rates, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from visbench.backbones.block_stack import BlockStackAPI
from visbench.backbones.blocks import GatedBlock
from visbench.backbones.naming import MODEL_FAMILIES
from visbench.backbones.param_tags import exclude_from_weight_decay
from visbench.backbones.patch_embed import (
    PATCH_SIZE,
    check_input_size,
    layer_norm,
    patch_embed,
    resample_grid_pos_embed,
)

__all__ = ["GatedIsotropicNet", "checkpoint_filter_fn"]

PoolType = Literal["avg", "last", ""]
_POOLS = ("avg", "last", "")


class GatedIsotropicNet(BlockStackAPI, nn.Module):
    """Isotropic body of Gated CNN blocks with a pluggable sequence operator, on the (H/16, W/16) map.

    ``mixer``/``order`` go to ``GatedBlock`` (``mixer="conv"`` is the plain Gated CNN block;
    ``"ssm"``/``"attn"`` add the sequence operator of MambaOut's Figure 1).
    """

    output_fmt: str = "NHWC"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = PATCH_SIZE,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 24,
        mixer: str = "ssm",
        order: str | None = "bidir",
        global_pool: PoolType = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self._check_pool(global_pool)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False
        self.mixer, self.order = mixer, order

        # Built in this order (embedding, head, then the rest), as in earlier versions: a seed gives the
        # same initial weights.
        self.patch_size = patch_size
        self.patch_embed = patch_embed(img_size, in_chans, embed_dim, patch_size)
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)
        ]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        grid = self.patch_embed.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0], grid[1], embed_dim))
        exclude_from_weight_decay(self.pos_embed)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(
            *[
                GatedBlock(embed_dim, mixer=mixer, order=order, drop_path=dpr[i], **block_kwargs)
                for i in range(depth)
            ]
        )
        self.norm = layer_norm(embed_dim)
        trunc_normal_(self.pos_embed, std=0.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @staticmethod
    def _check_pool(global_pool: str) -> None:
        if global_pool == "token":
            raise ValueError(
                "global_pool='token' needs a class token; this body has none (use 'avg' or 'last')"
            )
        if global_pool not in _POOLS:
            raise ValueError(f"global_pool must be one of {_POOLS}, got {global_pool!r}")

    # -- timm model API ----------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    # -- forward -----------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) -> token map (B, H/16, W/16, D) with position embedding."""
        check_input_size(x.shape[-2], x.shape[-1], self.patch_size)
        x = self.patch_embed(x)
        return x + resample_grid_pos_embed(self.pos_embed, tuple(x.shape[1:3]))

    def _block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embed(x)
        for blk in self.blocks:
            x = self._block(blk, x)
        return self.norm(x)

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "avg":
            return x.mean(dim=(1, 2))
        if pool_type == "last":
            return x[:, -1, -1]
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
        """Per-block maps at stride 16 (NCHW, or NHWC / NLC), as timm's isotropic models return them."""
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self._embed(x)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            x = self._block(blk, x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                if output_fmt == "NCHW":
                    y = y.permute(0, 3, 1, 2).contiguous()
                elif output_fmt == "NLC":
                    y = y.flatten(1, 2)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


# -- checkpoints ------------------------------------------------------------------------------------
def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: GatedIsotropicNet
) -> dict[str, torch.Tensor]:
    """Map one of our state dicts onto ``model`` (``{"model": ...}`` / ``{"state_dict": ...}`` wrappers
    accepted) and resample the (1, h, w, D) position embedding to the model's grid."""
    state_dict = state_dict.get("model", state_dict)
    state_dict = state_dict.get("state_dict", state_dict)
    out = dict(state_dict)
    if "pos_embed" in out:
        out["pos_embed"] = resample_grid_pos_embed(out["pos_embed"], tuple(model.patch_embed.grid_size))
    return out


# -- registry ---------------------------------------------------------------------------------------
def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (14, 14),  # the NHWC map of forward_features at 224 (stride 16)
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=192, depth=24),
    "small": dict(embed_dim=384, depth=24),
}

default_cfgs = generate_default_cfgs(
    {
        **{f"vim_{size}": _cfg() for size in SIZES},
        **{f"iso_gated_cnn_{size}": _cfg() for size in SIZES},
    }
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> GatedIsotropicNet:
    """Build ``<stem>_<size>`` with the mixer and order ``naming.MODEL_FAMILIES`` gives its stem.

    A ``mixer=`` without ``order=`` takes that mixer's default order.
    """
    stem, _, size = variant.rpartition("_")
    family = MODEL_FAMILIES[stem]
    mixer = kwargs.setdefault("mixer", family.mixer)
    kwargs.setdefault("order", family.order if mixer == family.mixer else None)
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        GatedIsotropicNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(SIZES[size], **kwargs),
    )


@register_model
def vim_tiny(pretrained: bool = False, **kwargs: Any) -> GatedIsotropicNet:
    """Vim-like: 24 Gated CNN + bidirectional selective-SSM blocks, dim 192."""
    return _create("vim_tiny", pretrained, **kwargs)


@register_model
def vim_small(pretrained: bool = False, **kwargs: Any) -> GatedIsotropicNet:
    """Vim-like: 24 Gated CNN + bidirectional selective-SSM blocks, dim 384."""
    return _create("vim_small", pretrained, **kwargs)


@register_model
def iso_gated_cnn_tiny(pretrained: bool = False, **kwargs: Any) -> GatedIsotropicNet:
    """Isotropic MambaOut: 24 Gated CNN blocks (no sequence operator), dim 192."""
    return _create("iso_gated_cnn_tiny", pretrained, **kwargs)


@register_model
def iso_gated_cnn_small(pretrained: bool = False, **kwargs: Any) -> GatedIsotropicNet:
    """Isotropic MambaOut: 24 Gated CNN blocks (no sequence operator), dim 384."""
    return _create("iso_gated_cnn_small", pretrained, **kwargs)


def registered_names() -> Sequence[str]:
    """The model names this module registers with timm."""
    return tuple(default_cfgs)
