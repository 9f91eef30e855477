"""Hierarchical 4-stage bodies (MambaOut's) with any token mixer in the Gated CNN block.

Reads top to bottom as timm's ``mambaout.py``: stem, downsampling, stage, the model with
``forward_features`` / ``forward_head`` / ``forward_intermediates``, ``checkpoint_filter_fn``
(timm's ``mambaout_*`` and the official MambaOut checkpoints), default cfgs, one ``_create``
helper and one ``@register_model`` function per (family, size). Module names follow timm's, so a
``mambaout_tiny`` state dict loads into ``gated_cnn_tiny`` and gives the same logits.

Families (``mixer``/``order`` of every block, see ``visbench.backbones.mixers``) come from the one
table of what names stand for, ``visbench.backbones.naming.MODEL_FAMILIES`` (its hierarchical rows):
``gated_cnn_*`` (conv, full), ``ssm_causal_*`` / ``ssm_bidir_*`` / ``ssm_cross2d_*`` (ssm),
``attn_*`` (attn, full) and ``attn_causal_*`` (attn, causal); sizes femto, kobe, tiny, small, base.
Any name also takes ``mixer=...`` / ``order=...`` keywords that override its defaults.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm, calculate_drop_path_rates, get_act_layer, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from visbench.backbones.blocks import GatedBlock
from visbench.backbones.mixers import default_order
from visbench.backbones.naming import MODEL_FAMILIES
from visbench.backbones.param_tags import no_weight_decay_names

__all__ = ["HierarchicalNet", "checkpoint_filter_fn", "SIZES", "FAMILIES"]

TOTAL_STRIDE = 32


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


class Stem(nn.Module):
    """Two stride-2 3x3 convs (InternImage / MambaOut stem); NCHW in, NHWC out at stride 4."""

    def __init__(self, in_chs: int, out_chs: int, act_layer: type[nn.Module], norm_layer: type[nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs // 2, 3, stride=2, padding=1)
        self.norm1 = norm_layer(out_chs // 2)
        self.act = act_layer()
        self.conv2 = nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1)
        self.norm2 = norm_layer(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Checked here, the entry of every path (forward, forward_intermediates, features_only).
        _check_input_size(x.shape[-2], x.shape[-1])
        x = self.act(_to_nchw(self.norm1(_to_nhwc(self.conv1(x)))))
        return self.norm2(_to_nhwc(self.conv2(x)))


class Downsample(nn.Module):
    """Stride-2 3x3 conv then LayerNorm; NHWC in and out."""

    def __init__(self, in_chs: int, out_chs: int, norm_layer: type[nn.Module]):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1)
        self.norm = norm_layer(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_to_nhwc(self.conv(_to_nchw(x))))


class MlpHead(nn.Module):
    """MambaOut's head: average pool, norm, fc -> act -> norm (pre-logits), dropout, fc."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        pool_type: str = "avg",
        mlp_ratio: int = 4,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = LayerNorm,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        _check_pool(pool_type)
        self.pool_type = pool_type
        self.in_features = in_features
        hidden = int(mlp_ratio * in_features)
        self.norm = norm_layer(in_features)
        self.pre_logits = nn.Sequential(
            OrderedDict(fc=nn.Linear(in_features, hidden), act=act_layer(), norm=norm_layer(hidden))
        )
        self.num_features = hidden
        self.head_dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: str | None = None, reset_other: bool = False) -> None:
        if pool_type is not None:
            _check_pool(pool_type)
            self.pool_type = pool_type
        if reset_other:  # drop norm and pre-logits: the head becomes a plain classifier on the features
            self.norm, self.pre_logits = nn.Identity(), nn.Identity()
            self.num_features = self.in_features
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == "avg":
            x = x.mean((1, 2))
        x = self.head_dropout(self.pre_logits(self.norm(x)))
        return x if pre_logits else self.fc(x)


def _check_pool(pool_type: str) -> None:
    if pool_type not in ("", "avg"):
        raise ValueError(f"global_pool={pool_type!r} is not supported; use 'avg' or '' (no pooling)")


class GatedStage(nn.Module):
    """Optional downsampling then ``depth`` Gated CNN blocks with the given mixer."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        depth: int,
        downsample: bool,
        drop_path: list[float],
        norm_layer: type[nn.Module],
        **block_kwargs: Any,
    ):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = Downsample(dim, dim_out, norm_layer) if downsample else nn.Identity()
        self.blocks = nn.Sequential(
            *[
                GatedBlock(dim_out, norm_layer=norm_layer, drop_path=drop_path[j], **block_kwargs)
                for j in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _check_input_size(height: int, width: int, arg: str = "input size") -> None:
    if height % TOTAL_STRIDE or width % TOTAL_STRIDE:
        sizes = ", ".join(str(TOTAL_STRIDE * k) for k in range(1, 11))
        raise ValueError(
            f"{arg} {height}x{width} is not allowed: height and width must be multiples of the total "
            f"stride {TOTAL_STRIDE} ({sizes}, ...)"
        )


class HierarchicalNet(nn.Module):
    """MambaOut's 4-stage body: stem (stride 4), stages with conv downsampling, MLP head.

    Args:
        depths, dims: blocks and channels per stage.
        mixer, order: token operator of every block (``visbench.backbones.mixers``); ``order=None`` takes the
            mixer's default.
        mixer_kwargs: extra operator keywords (for example ``dict(d_state=16)`` or ``dict(head_dim=64)``).
        img_size: optional; only checked (multiples of 32), the body works at any such size.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 576),
        mixer: str = "conv",
        order: str | None = None,
        mixer_kwargs: dict[str, Any] | None = None,
        expansion_ratio: float = 8 / 3,
        kernel_size: int = 7,
        norm_layer: type[nn.Module] = LayerNorm,
        act_layer: type[nn.Module] | str = nn.GELU,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        img_size: int | tuple[int, int] | None = None,
    ):
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} must have the same length")
        if img_size is not None:
            h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
            _check_input_size(h, w, "img_size")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.mixer = mixer
        self.order = order if order is not None else default_order(mixer)
        self.output_fmt = "NHWC"
        act_layer = get_act_layer(act_layer)

        self.stem = Stem(in_chans, dims[0], act_layer, norm_layer)
        dp_rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        self.stages = nn.Sequential()
        self.feature_info = []
        prev_dim, stride = dims[0], 4
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stride *= 2 if i > 0 else 1
            stage = GatedStage(
                prev_dim,
                dim,
                depth,
                downsample=i > 0,
                drop_path=dp_rates[i],
                norm_layer=norm_layer,
                mixer=mixer,
                order=self.order,
                expansion_ratio=expansion_ratio,
                kernel_size=kernel_size,
                act_layer=act_layer,
                **(mixer_kwargs or {}),
            )
            self.stages.append(stage)
            prev_dim = dim
            self.feature_info.append(dict(num_chs=dim, reduction=stride, module=f"stages.{i}"))

        self.head = MlpHead(prev_dim, num_classes, global_pool, norm_layer=norm_layer, drop_rate=drop_rate)
        self.num_features = prev_dim
        self.head_hidden_size = self.head.num_features
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Only Conv2d/Linear: the SSM's own parameters (A_log, dt bias, ...) keep Mamba's init.
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters tagged where they are created (``visbench.backbones.param_tags``)."""
        return no_weight_decay_names(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [(r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False):
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, reset_other=reset_other)
        self.head_hidden_size = self.head.num_features

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs as timm's models give them (``indices``: last n if int, all if None)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt={output_fmt!r}; use 'NCHW' or 'NHWC'")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        intermediates = []
        x = self.stem(x)
        for idx, stage in enumerate(stages):
            x = stage(x)
            if idx in take_indices:
                intermediates.append(x)
        if output_fmt == "NCHW":
            intermediates = [_to_nchw(y).contiguous() for y in intermediates]
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages (and head) not needed for ``indices``."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.head.in_features = self.num_features
        if prune_head or prune_end:
            self.reset_classifier(0, "", reset_other=True)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(
    state_dict: dict[str, torch.Tensor], model: HierarchicalNet
) -> dict[str, torch.Tensor]:
    """Map timm ``mambaout_*`` (or official MambaOut) state dicts onto ``HierarchicalNet``.

    The only rename from timm's layout: a block's depthwise conv is its token operator,
    ``blocks.j.conv`` -> ``blocks.j.mixer.conv``.
    """
    if "model" in state_dict:
        state_dict = state_dict["model"]
    official = "downsample_layers.0.conv1.weight" in state_dict
    out = {}
    for k, v in state_dict.items():
        if official:
            k = _official_to_timm(k)
        k = re.sub(r"(blocks\.\d+)\.conv\.", r"\1.mixer.conv.", k)
        out[k] = v
    return out


def _official_to_timm(k: str) -> str:
    """Official MambaOut key -> timm key (as timm's own filter does)."""
    k = k.replace("downsample_layers.0.", "stem.")
    k = re.sub(r"stages\.(\d+)\.(\d+)", r"stages.\1.blocks.\2", k)
    k = re.sub(r"downsample_layers\.(\d+)", r"stages.\1.downsample", k)
    if k.startswith("norm."):
        return "head." + k
    k = k.replace("head.fc1.", "head.pre_logits.fc.").replace("head.norm.", "head.pre_logits.norm.")
    return k.replace("head.fc2.", "head.fc.")


# ---- registry: sizes are data, families are (mixer, order) from naming ---------------------------

SIZES: dict[str, dict[str, tuple[int, ...]]] = {
    "femto": dict(depths=(3, 3, 9, 3), dims=(48, 96, 192, 288)),
    "kobe": dict(depths=(3, 3, 15, 3), dims=(48, 96, 192, 288)),
    "tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 576)),
    "small": dict(depths=(3, 4, 27, 3), dims=(96, 192, 384, 576)),
    "base": dict(depths=(3, 4, 27, 3), dims=(128, 256, 512, 768)),
}

# name stem -> the keywords of its blocks' token operator, read from the one naming table.
FAMILIES: dict[str, dict[str, str]] = {
    stem: dict(mixer=f.mixer, order=f.order) for stem, f in MODEL_FAMILIES.items() if f.body == "hierarchical"
}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "test_input_size": (3, 288, 288),
        "pool_size": (7, 7),
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1",
        "classifier": "head.fc",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"{family}_{size}": _cfg() for family in FAMILIES for size in SIZES})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return build_model_with_cfg(
        HierarchicalNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


def _build(family: str, size: str, pretrained: bool, kwargs: dict[str, Any]) -> HierarchicalNet:
    model_args = dict(**SIZES[size], **FAMILIES[family])
    if "mixer" in kwargs and "order" not in kwargs:
        model_args.pop("order")  # a new mixer without an order takes that mixer's default order
    return _create(f"{family}_{size}", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def gated_cnn_femto(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("gated_cnn", "femto", pretrained, kwargs)


@register_model
def gated_cnn_kobe(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("gated_cnn", "kobe", pretrained, kwargs)


@register_model
def gated_cnn_tiny(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("gated_cnn", "tiny", pretrained, kwargs)


@register_model
def gated_cnn_small(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("gated_cnn", "small", pretrained, kwargs)


@register_model
def gated_cnn_base(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("gated_cnn", "base", pretrained, kwargs)


@register_model
def ssm_causal_femto(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_causal", "femto", pretrained, kwargs)


@register_model
def ssm_causal_kobe(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_causal", "kobe", pretrained, kwargs)


@register_model
def ssm_causal_tiny(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_causal", "tiny", pretrained, kwargs)


@register_model
def ssm_causal_small(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_causal", "small", pretrained, kwargs)


@register_model
def ssm_causal_base(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_causal", "base", pretrained, kwargs)


@register_model
def ssm_bidir_femto(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_bidir", "femto", pretrained, kwargs)


@register_model
def ssm_bidir_kobe(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_bidir", "kobe", pretrained, kwargs)


@register_model
def ssm_bidir_tiny(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_bidir", "tiny", pretrained, kwargs)


@register_model
def ssm_bidir_small(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_bidir", "small", pretrained, kwargs)


@register_model
def ssm_bidir_base(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_bidir", "base", pretrained, kwargs)


@register_model
def ssm_cross2d_femto(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_cross2d", "femto", pretrained, kwargs)


@register_model
def ssm_cross2d_kobe(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_cross2d", "kobe", pretrained, kwargs)


@register_model
def ssm_cross2d_tiny(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_cross2d", "tiny", pretrained, kwargs)


@register_model
def ssm_cross2d_small(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_cross2d", "small", pretrained, kwargs)


@register_model
def ssm_cross2d_base(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("ssm_cross2d", "base", pretrained, kwargs)


@register_model
def attn_femto(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("attn", "femto", pretrained, kwargs)


@register_model
def attn_kobe(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("attn", "kobe", pretrained, kwargs)


@register_model
def attn_tiny(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("attn", "tiny", pretrained, kwargs)


@register_model
def attn_small(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("attn", "small", pretrained, kwargs)


@register_model
def attn_base(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("attn", "base", pretrained, kwargs)


@register_model
def attn_causal_femto(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("attn_causal", "femto", pretrained, kwargs)


@register_model
def attn_causal_kobe(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("attn_causal", "kobe", pretrained, kwargs)


@register_model
def attn_causal_tiny(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("attn_causal", "tiny", pretrained, kwargs)


@register_model
def attn_causal_small(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("attn_causal", "small", pretrained, kwargs)


@register_model
def attn_causal_base(pretrained: bool = False, **kwargs: Any) -> HierarchicalNet:
    return _build("attn_causal", "base", pretrained, kwargs)
