"""ViT/DeiT (patch 16, isotropic): timm's ``VisionTransformer`` parameter for parameter, with full or causal
attention.

Reads top to bottom as timm's model files: attention, block, the model with ``forward_features`` /
``forward_head`` / ``forward_intermediates``, ``checkpoint_filter_fn`` (timm's ViT/DeiT checkpoints and
DeiT's release files), default cfgs, one ``_create`` helper and a ``@register_model`` function per size.

- ``vit_tiny`` / ``vit_small`` / ``vit_base``: ViT-Ti/S/B = DeiT-Ti/S/B; a state dict of timm's
  ``vit_*_patch16_224`` or ``deit_*_patch16_224`` loads unchanged and gives the same logits. Attention runs
  through ``F.scaled_dot_product_attention``.
- ``vit_causal_*``: the same models with ``is_causal=True`` in every block's SDPA: token ``i`` attends to
  tokens ``<= i`` in (class token, row-major patches) order, exactly timm's ``model(x, is_causal=True)``.

Pooling (``global_pool``): ``token`` (the class token, timm's ViT default), ``avg`` (mean of the patch
tokens) or ``last`` (the last patch token, the only one that has seen every patch under a causal mask). A
causal ViT cannot pool its class token: it comes first, so under a causal mask it attends only to itself
and its output does not depend on the image. ``vit_causal_*`` therefore default to ``avg`` (timm's
``global_pool='avg', fc_norm=False``: the final norm stays on the tokens, so ViT/DeiT checkpoints load
unchanged), and ``token`` with ``causal=True`` is a ValueError.

Any input whose sides are multiples of 16 works: the position embedding is resampled (bicubic, as timm's
``dynamic_img_size``) from the grid of ``img_size`` to the grid of the input. ``forward_features`` returns
tokens (B, 1 + h*w, D): ``output_fmt = "NLC"``, no ``pool_size`` (timm's ViTs declare none either).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, calculate_drop_path_rates, resample_abs_pos_embed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from visbench.backbones.block_stack import BlockStackAPI
from visbench.backbones.naming import MODEL_FAMILIES
from visbench.backbones.param_tags import exclude_from_weight_decay
from visbench.backbones.patch_embed import PATCH_SIZE, check_input_size, layer_norm, patch_embed

__all__ = ["SelfAttention", "ViTBlock", "VisionTransformer", "checkpoint_filter_fn"]

PoolType = Literal["token", "avg", "last", ""]
_POOLS = ("token", "avg", "last", "")


class SelfAttention(nn.Module):
    """Multi-head self-attention through SDPA; parameter names match timm's ``Attention`` (qkv, proj)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        causal: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.causal = causal
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = (
            self.qkv(x)
            .reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, is_causal=self.causal
        )
        x = x.transpose(1, 2).reshape(batch, length, dim)
        return self.proj_drop(self.proj(x))


class ViTBlock(nn.Module):
    """Pre-norm transformer block (attention + MLP), the layout of timm's ``vision_transformer.Block``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        causal: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = SelfAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop, causal)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class VisionTransformer(BlockStackAPI, nn.Module):
    """ViT/DeiT with SDPA attention; the state dict equals timm's ``VisionTransformer`` of the same size."""

    num_prefix_tokens: int = 1  # the class token
    output_fmt: str = "NLC"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = PATCH_SIZE,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        causal: bool = False,
        global_pool: PoolType | None = None,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.causal = causal
        global_pool = ("avg" if causal else "token") if global_pool is None else global_pool
        self._check_pool(global_pool)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False

        # Built in this order (embedding, head, then the rest), as in earlier versions: a seed gives the
        # same initial weights.
        self.patch_size = patch_size
        self.patch_embed = patch_embed(img_size, in_chans, embed_dim, patch_size)
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)
        ]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        exclude_from_weight_decay(self.cls_token, self.pos_embed)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(
            *[
                ViTBlock(
                    embed_dim, num_heads, mlp_ratio, qkv_bias, causal, proj_drop_rate, attn_drop_rate, dpr[i]
                )
                for i in range(depth)
            ]
        )
        self.norm = layer_norm(embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """timm's ViT init: truncated-normal (0.02) linears and position embedding, tiny class token."""
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _check_pool(self, global_pool: str) -> None:
        if global_pool not in _POOLS:
            raise ValueError(f"global_pool must be one of {_POOLS}, got {global_pool!r}")
        if global_pool == "token" and self.causal:
            raise ValueError(
                "global_pool='token' is not allowed for a causal ViT: the class token comes first, so under "
                "a causal mask it sees only itself; use 'avg' or 'last'"
            )

    # -- timm model API ----------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^cls_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]
        )

    # -- forward -----------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image (B, C, H, W) -> tokens (B, 1 + h*w, D) with class token and position embedding."""
        check_input_size(x.shape[-2], x.shape[-1], self.patch_size)
        x = self.patch_embed(x)
        batch, height, width, dim = x.shape
        pos_embed = resample_abs_pos_embed(
            self.pos_embed, new_size=(height, width), old_size=self.patch_embed.grid_size, num_prefix_tokens=1
        )
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x.reshape(batch, height * width, dim)], dim=1)
        return self.pos_drop(x + pos_embed), (height, width)

    def _block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self._embed(x)
        for blk in self.blocks:
            x = self._block(blk, x)
        return self.norm(x)

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "token":
            return x[:, 0]
        if pool_type == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        if pool_type == "last":
            return x[:, -1]
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-block outputs at stride 16, as timm's ``VisionTransformer.forward_intermediates``."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        batch = x.shape[0]
        x, (height, width) = self._embed(x)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, blk in enumerate(blocks):
            x = self._block(blk, x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        prefix = [y[:, : self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens :] for y in intermediates]
        if output_fmt == "NCHW":
            intermediates = [
                y.reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates
            ]
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


# -- checkpoints ------------------------------------------------------------------------------------
def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: VisionTransformer
) -> dict[str, torch.Tensor]:
    """Map a timm ViT/DeiT (or our own) state dict onto ``model``; resample the position embedding.

    Accepts ``{"model": ...}`` / ``{"state_dict": ...}`` wrappers (DeiT's release files), drops
    ``pre_logits`` and distillation keys, and resamples ``pos_embed`` to the model's grid.
    """
    state_dict = state_dict.get("model", state_dict)
    state_dict = state_dict.get("state_dict", state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if "pre_logits" in key or key == "dist_token" or key.startswith("head_dist."):
            continue
        if key == "pos_embed" and value.shape != model.pos_embed.shape:
            value = resample_abs_pos_embed(
                value,
                new_size=model.patch_embed.grid_size,
                num_prefix_tokens=model.num_prefix_tokens,
                verbose=True,
            )
        out[key] = value
    return out


# -- registry ---------------------------------------------------------------------------------------
def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,  # tokens, not a map (output_fmt "NLC"), as timm's ViT cfgs
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
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}

default_cfgs = generate_default_cfgs(
    {
        **{f"vit_{size}": _cfg() for size in SIZES},
        **{f"vit_causal_{size}": _cfg() for size in SIZES},
    }
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> VisionTransformer:
    """Build ``<stem>_<size>``: the size's widths, causal or not as ``naming.MODEL_FAMILIES`` says."""
    stem, _, size = variant.rpartition("_")
    out_indices = kwargs.pop("out_indices", 3)
    model_args = dict(SIZES[size], causal=MODEL_FAMILIES[stem].order == "causal")
    return build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **dict(model_args, **kwargs),
    )


@register_model
def vit_tiny(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16 = DeiT-Ti (5.7M params)."""
    return _create("vit_tiny", pretrained, **kwargs)


@register_model
def vit_small(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-S/16 = DeiT-S (22M params)."""
    return _create("vit_small", pretrained, **kwargs)


@register_model
def vit_base(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-B/16 = DeiT-B (86M params)."""
    return _create("vit_base", pretrained, **kwargs)


@register_model
def vit_causal_tiny(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16 with causal attention over (class token, row-major patches), average-pooled."""
    return _create("vit_causal_tiny", pretrained, **kwargs)


@register_model
def vit_causal_small(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-S/16 with causal attention, average-pooled."""
    return _create("vit_causal_small", pretrained, **kwargs)


@register_model
def vit_causal_base(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-B/16 with causal attention, average-pooled."""
    return _create("vit_causal_base", pretrained, **kwargs)


def registered_names() -> Sequence[str]:
    """The model names this module registers with timm."""
    return tuple(default_cfgs)
