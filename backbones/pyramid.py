"""ViTDet's simple feature pyramid: strides 4, 8, 16, 32 from one stride-16 map of an isotropic body.

Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection" (ViTDet), Fig. 2(c):
from the last block's map (stride 16) build

- stride 4: ConvTranspose 2x2 (D -> D/2), LayerNorm, GELU, ConvTranspose 2x2 (D/2 -> D/4)
- stride 8: ConvTranspose 2x2 (D -> D/2)
- stride 16: the map itself
- stride 32: MaxPool 2x2

then, when ``out_channels`` is set, a 1x1 and a 3x3 conv (no bias, channel LayerNorm) per level, as
detectron2's ``SimpleFeaturePyramid``. With ``out_channels=None`` the levels keep their own widths
(D/4, D/2, D, D), for a neck (mmdet's FPN) that does its own lateral convs.

timm's ``features_only=True`` on our isotropic models stays timm-compatible (per-block maps, all at
stride 16); :class:`PyramidFeatures` wraps such a model to give the four-level pyramid instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["PyramidFeatures", "SimpleFeaturePyramid"]

SCALES = (4.0, 2.0, 1.0, 0.5)


def _scale_op(dim: int, scale: float) -> tuple[nn.Module, int]:
    """The resampling op for one level and its output width."""
    if scale == 4.0:
        half = dim // 2
        return nn.Sequential(
            nn.ConvTranspose2d(dim, half, 2, stride=2),
            LayerNorm2d(half),
            nn.GELU(),
            nn.ConvTranspose2d(half, dim // 4, 2, stride=2),
        ), dim // 4
    if scale == 2.0:
        return nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), dim // 2
    if scale == 1.0:
        return nn.Identity(), dim
    if scale == 0.5:
        return nn.MaxPool2d(2, stride=2), dim
    raise ValueError(f"scale {scale} is not supported; scales must be among {SCALES}")


class SimpleFeaturePyramid(nn.Module):
    """Stride-16 NCHW map ``(B, D, H, W)`` -> one map per scale (default strides 4, 8, 16, 32)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = 256,
        scales: Sequence[float] = SCALES,
        in_stride: int = 16,
    ) -> None:
        super().__init__()
        if in_channels % 4:
            raise ValueError(
                f"in_channels must be divisible by 4 (the stride-4 level has D/4), got {in_channels}"
            )
        self.in_channels = in_channels
        self.scales = tuple(scales)
        self.levels = nn.ModuleList()
        self.feature_info: list[dict] = []
        for i, scale in enumerate(self.scales):
            op, width = _scale_op(in_channels, scale)
            layers = [op]
            if out_channels is not None:
                layers += [
                    nn.Conv2d(width, out_channels, 1, bias=False),
                    LayerNorm2d(out_channels),
                    nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                    LayerNorm2d(out_channels),
                ]
                width = out_channels
            self.levels.append(nn.Sequential(*layers))
            self.feature_info.append(
                dict(num_chs=width, reduction=int(in_stride / scale), module=f"levels.{i}")
            )

    @property
    def out_channels(self) -> list[int]:
        return [info["num_chs"] for info in self.feature_info]

    @property
    def strides(self) -> list[int]:
        return [info["reduction"] for info in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected a (B, {self.in_channels}, H, W) map, got shape {tuple(x.shape)}")
        if any(scale < 1 for scale in self.scales) and (x.shape[-2] % 2 or x.shape[-1] % 2):
            raise ValueError(
                f"the stride-16 map is {x.shape[-2]}x{x.shape[-1]}; the max-pooled level needs even sides "
                f"(input sides a multiple of 32)"
            )
        return [level(x) for level in self.levels]


class PyramidFeatures(nn.Module):
    """An isotropic model (anything with timm's ``forward_intermediates``) + a simple feature pyramid.

    Returns the pyramid of the last block's map (``indices=[-1]``, un-normalised, as ViTDet) as a list
    of NCHW maps at strides 4, 8, 16, 32.
    """

    def __init__(
        self, model: nn.Module, out_channels: int | None = 256, scales: Sequence[float] = SCALES
    ) -> None:
        super().__init__()
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"{type(model).__name__} has no forward_intermediates; pass an isotropic body")
        self.model = model
        self.pyramid = SimpleFeaturePyramid(model.num_features, out_channels, scales)
        self.feature_info = self.pyramid.feature_info

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        (last,) = self.model.forward_intermediates(
            x, indices=[len(self.model.blocks) - 1], intermediates_only=True
        )
        return self.pyramid(last)
