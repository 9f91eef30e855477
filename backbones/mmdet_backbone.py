"""visbench's image models as mmdetection backbones: ``dict(type="VisBenchBackbone", model="vit_small")``.

Hierarchical and isotropic bodies (the 1-D pixel-sequence bodies have no 2-D feature maps to detect
on). The class is registered in mmdetection's ``MODELS`` registry when mmdet is importable; without
mmdet this module still imports (the class is then a plain ``nn.Module``), and ``import
visbench.backbones`` never imports this module, so the models never depend on the detection stack.
Configs load it with
``custom_imports = dict(imports=["visbench.backbones.mmdet_backbone"], allow_failed_imports=False)``.

The body is the registered timm model itself (``timm.create_model``), run through its
``forward_intermediates``: the parameter names are those of the classification checkpoints, so a
``Pretrained`` checkpoint loads with the same names it was saved with. Hierarchical bodies give one
NCHW map per stage (strides 4, 8, 16, 32); isotropic bodies give one stride-16 map, which ViTDet's
simple feature pyramid (``visbench.backbones.pyramid``) turns into maps at strides 4, 8, 16 and 32.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import visbench.backbones  # noqa: F401  (the one registration point: every model is registered with timm)
from torch import nn
from visbench.backbones.naming import describe

try:  # optional: the detection stack
    from mmdet.registry import MODELS as _MMDET_MODELS
    from mmengine.model import BaseModule as _Base
except ImportError:  # pragma: no cover - depends on the environment
    _MMDET_MODELS = None
    _Base = nn.Module

__all__ = ["VisBenchBackbone", "load_backbone_checkpoint"]

# What ``norm_eval`` keeps in eval mode (timm's LayerNorm / LayerNorm2d subclass nn.LayerNorm).
_NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def load_backbone_checkpoint(body: nn.Module, checkpoint: str | Path) -> None:
    """Load a classification checkpoint (ours or a timm one the model's filter converts) into ``body``.

    The classifier head is skipped; any other missing or unexpected key is an error naming the file.
    """
    state = timm.models.load_state_dict(str(checkpoint), use_ema=True)
    filter_fn = getattr(sys.modules[type(body).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, body)
    own = body.state_dict()
    head_prefixes = ("head.", "fc_norm.", "fc.", "classifier.")
    state = {k: v for k, v in state.items() if not k.startswith(head_prefixes)}
    missing = [k for k in own if k not in state and not k.startswith(head_prefixes)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise KeyError(
            f"checkpoint {checkpoint} does not fit {type(body).__name__}: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    mismatched = [k for k, v in state.items() if own[k].shape != v.shape]
    if mismatched:
        k = mismatched[0]
        raise ValueError(
            f"checkpoint {checkpoint}: {len(mismatched)} tensors differ in shape, e.g. {k}: "
            f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
        )
    body.load_state_dict(state, strict=False)


class VisBenchBackbone(_Base):
    """A registered visbench model as a detection backbone returning a tuple of NCHW maps.

    Args:
        model: registered model name, e.g. ``gated_cnn_tiny``, ``ssm_cross2d_small``, ``vit_small``.
        out_indices: stages (hierarchical, 0..3) whose outputs are returned. For isotropic bodies: the
            pyramid levels (0..3 = strides 4, 8, 16, 32) built from the last block's stride-16 map.
        frozen_stages: hierarchical: -1 none, 0 the stem, k the stem and stages 0..k-1. Isotropic: -1
            none, 0 the patch embedding, k it and the first k blocks.
        drop_path_rate: stochastic depth of the body.
        pyramid_channels: output channels of every simple-feature-pyramid level (isotropic bodies
            only, with ViTDet's 1x1 + 3x3 output convs); ``None``: no output convs, the levels keep
            ViTDet's widths D/4, D/2, D, D and the neck (FPN) does the lateral convs.
        norm_eval: keep every normalisation layer in eval mode while training, as mmdetection's
            backbones do. Our bodies normalise with LayerNorm, which has no running statistics, so the
            outputs do not change; it is accepted so that configs written for BatchNorm backbones work.
        init_cfg: ``dict(type="Pretrained", checkpoint=PATH)`` loads a classification checkpoint at
            construction (head dropped); anything else keeps timm's initialisation.
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``dims``, ``depths`` for a small width).
    """

    def __init__(
        self,
        model: str,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        drop_path_rate: float = 0.0,
        pyramid_channels: int | None = None,
        norm_eval: bool = False,
        init_cfg: dict[str, Any] | None = None,
        **model_kwargs: Any,
    ):
        if _Base is nn.Module:
            super().__init__()
        else:
            super().__init__(init_cfg=None)  # weights are set here; mmengine must not re-initialise them
        self.model_name = model
        self.description = describe(model)
        if self.description.body not in ("hierarchical", "isotropic"):
            raise ValueError(
                f"{model}: a {self.description.body} body is not a detection backbone; use a hierarchical "
                "or isotropic model (gated_cnn_tiny, ssm_cross2d_tiny, vit_small, vim_small, ...)"
            )
        self.out_indices = tuple(int(i) for i in out_indices)
        self.frozen_stages = int(frozen_stages)
        self.norm_eval = bool(norm_eval)
        body = timm.create_model(
            model, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate, **model_kwargs
        )
        checkpoint = None
        if init_cfg is not None:
            if init_cfg.get("type") != "Pretrained" or not init_cfg.get("checkpoint"):
                raise ValueError(
                    "VisBenchBackbone init_cfg: expected dict(type='Pretrained', checkpoint=...), "
                    f"got {init_cfg}"
                )
            checkpoint = init_cfg["checkpoint"]
            load_backbone_checkpoint(body, checkpoint)
        self.checkpoint = checkpoint

        self.isotropic = self.description.body == "isotropic"
        n_frozen = len(body.blocks) if self.isotropic else len(body.stages)
        if not -1 <= self.frozen_stages <= n_frozen:
            raise ValueError(f"{model}: frozen_stages={frozen_stages} must be in -1..{n_frozen}")
        if self.isotropic:
            if any(i not in range(4) for i in self.out_indices):
                raise ValueError(f"{model}: out_indices {self.out_indices} must be pyramid levels in 0..3")
            from visbench.backbones.pyramid import SimpleFeaturePyramid

            self.body_indices = [len(body.blocks) - 1]
            body.prune_intermediate_layers(self.body_indices, prune_head=True)
            self.pyramid = SimpleFeaturePyramid(body.num_features, out_channels=pyramid_channels)
            self.channels = [self.pyramid.out_channels[i] for i in self.out_indices]
        else:
            n = len(body.stages)
            if any(i not in range(n) for i in self.out_indices):
                raise ValueError(f"{model}: out_indices {self.out_indices} must be stages in 0..{n - 1}")
            self.body_indices = list(self.out_indices)
            body.prune_intermediate_layers(self.body_indices, prune_head=True)
            self.channels = [body.feature_info[i]["num_chs"] for i in self.out_indices]
        self.body = body
        self._freeze()

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        if self.isotropic:
            first = [
                m
                for m in (getattr(self.body, n, None) for n in ("patch_embed", "cls_token", "pos_embed"))
                if isinstance(m, nn.Module)
            ]
            return first + list(self.body.blocks[: self.frozen_stages])
        return [self.body.stem, *list(self.body.stages[: self.frozen_stages])]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad = False
        if self.isotropic and self.frozen_stages >= 0:
            for name in ("cls_token", "pos_embed"):
                p = getattr(self.body, name, None)
                if isinstance(p, nn.Parameter):
                    p.requires_grad = False

    def train(self, mode: bool = True) -> VisBenchBackbone:
        super().train(mode)
        self._freeze()  # frozen parts stay in eval mode
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _NORM_LAYERS):
                    module.eval()
        return self

    def init_weights(self) -> None:
        """Nothing to do: timm initialised the body; ``init_cfg``'s checkpoint was loaded at construction."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.body.forward_intermediates(x, indices=self.body_indices, intermediates_only=True)
        if self.isotropic:
            levels = self.pyramid(maps[-1])
            return tuple(levels[i] for i in self.out_indices)
        return tuple(maps)


if _MMDET_MODELS is not None:
    _MMDET_MODELS.register_module(name="VisBenchBackbone", module=VisBenchBackbone)
