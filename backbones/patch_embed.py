"""What the two isotropic patch-16 bodies share (``vit.py``, ``isotropic.py``): the stride, the input-size
check, the patch embedding, the final norm and the position-embedding resampling of an (H, W) token map.
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed
from torch import nn

__all__ = ["PATCH_SIZE", "check_input_size", "layer_norm", "patch_embed", "resample_grid_pos_embed"]

PATCH_SIZE = 16


def check_input_size(height: int, width: int, stride: int = PATCH_SIZE) -> None:
    """Raise ValueError unless both sides are positive multiples of the body's stride."""
    if height % stride or width % stride or height < stride or width < stride:
        raise ValueError(
            f"input size {height}x{width} is not allowed: height and width must be positive multiples of "
            f"{stride} (e.g. 224, 240, 256, 384)"
        )


def layer_norm(dim: int) -> nn.LayerNorm:
    """The norm of every isotropic block and of the final features: LayerNorm, eps 1e-6 (timm's ViT)."""
    return nn.LayerNorm(dim, eps=1e-6)


def patch_embed(
    img_size: int | tuple[int, int], in_chans: int, embed_dim: int, patch_size: int = PATCH_SIZE
) -> PatchEmbed:
    """timm's ``PatchEmbed`` (16x16 by default) returning an NHWC token map.

    Any multiple of ``patch_size`` is accepted at run time. A smaller patch keeps the token count of a
    small input equal to a hierarchical body's stage 1 (patch 4 at 32x32: 64 tokens), as the study does.

    The module is named ``patch_embed.proj`` inside, as in timm's ViT, so checkpoints load unchanged.
    """
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    check_input_size(*size, stride=patch_size)
    return PatchEmbed(
        img_size=size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=embed_dim,
        output_fmt="NHWC",
        strict_img_size=False,
    )


def resample_grid_pos_embed(pos_embed: torch.Tensor, new_size: tuple[int, int]) -> torch.Tensor:
    """A (1, h, w, D) position embedding resampled (bicubic, as timm's) to (1, *new_size, D)."""
    if tuple(pos_embed.shape[1:3]) == tuple(new_size):
        return pos_embed
    flat = resample_abs_pos_embed(
        pos_embed.flatten(1, 2), new_size=new_size, old_size=pos_embed.shape[1:3], num_prefix_tokens=0
    )
    return flat.reshape(1, new_size[0], new_size[1], -1)
