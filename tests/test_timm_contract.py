"""Every registered model keeps timm's model contract: what a model declares (``output_fmt``,
``num_features``, ``head_hidden_size``, ``pool_size``, ``feature_info``, ``first_conv``, ``classifier``)
agrees with what it returns from ``forward_features``, ``forward_head``, ``features_only`` and
``forward_intermediates``.

This is what timm's own ``tests/test_models.py`` checks (README: which of its tests pass on our models).
Metadata is checked for every name, on the meta device; forward, features and backward for the smallest
size of each family, at the smallest input its body takes.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim
from visbench.backbones import describe, list_models

FORMATS = ("NCHW", "NHWC", "NLC")
SIZE_ORDER = ("femto", "kobe", "tiny", "small", "base")


def _smallest_of_each_family(names: list[str]) -> list[str]:
    stems: dict[str, str] = {}
    for name in sorted(names, key=lambda n: SIZE_ORDER.index(n.rsplit("_", 1)[1])):
        stems.setdefault(name.rsplit("_", 1)[0], name)
    return sorted(stems.values())


NAMES = list_models()
SMALLEST = _smallest_of_each_family(NAMES)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _output_fmt(model: torch.nn.Module) -> str:
    fmt = getattr(model, "output_fmt", None)
    assert fmt in FORMATS, f"{type(model).__name__} must declare output_fmt (one of {FORMATS}), has {fmt!r}"
    return fmt


def _small_input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    """The cfg's input if it is fixed, else two tokens a side at the last stage's stride."""
    channels, *size = model.pretrained_cfg["input_size"]
    if not model.pretrained_cfg.get("fixed_input_size", False):
        size = [2 * model.feature_info[-1]["reduction"]] * 2
    return torch.randn(batch, channels, *size)


def _grid(size: tuple[int, ...], reduction: int) -> tuple[int, int]:
    return tuple(math.ceil(s / reduction) for s in size[-2:])


def _assert_features_shape(out: torch.Tensor, model: torch.nn.Module, image: tuple[int, ...]) -> None:
    """``forward_features`` output laid out as ``output_fmt`` says, ``num_features`` wide."""
    fmt, grid = _output_fmt(model), _grid(image, model.feature_info[-1]["reduction"])
    if fmt == "NLC":
        tokens = getattr(model, "num_prefix_tokens", 0) + grid[0] * grid[1]
        assert tuple(out.shape) == (image[0], tokens, model.num_features)
        return
    assert out.dim() == 4 and out.shape[get_channel_dim(fmt)] == model.num_features
    assert tuple(out.shape[i] for i in get_spatial_dim(fmt)) == grid


def _assert_maps_match_feature_info(
    maps: list[torch.Tensor], info: list[dict], image: tuple[int, ...], fmt: str = "NCHW"
) -> None:
    """One 4-D map per ``feature_info`` entry, laid out as ``fmt``, ``num_chs`` wide, at its ``reduction``."""
    assert len(maps) == len(info)
    for fmap, entry in zip(maps, info):
        assert fmap.dim() == 4 and fmap.shape[0] == image[0]
        assert fmap.shape[get_channel_dim(fmt)] == entry["num_chs"]
        assert tuple(fmap.shape[i] for i in get_spatial_dim(fmt)) == _grid(image, entry["reduction"])


@pytest.mark.parametrize("name", NAMES)
def test_declared_metadata_is_complete_and_consistent(name: str) -> None:
    with torch.device("meta"):
        model = timm.create_model(name)
    cfg, fmt = model.pretrained_cfg, _output_fmt(model)
    info = model.feature_info
    assert len(info) >= 3, "timm's features_only tests need at least three levels"
    modules = dict(model.named_modules())
    assert all(entry["module"] in modules and entry["num_chs"] > 0 for entry in info)
    assert [e["reduction"] for e in info] == sorted(e["reduction"] for e in info)
    assert model.num_features == info[-1]["num_chs"] and model.head_hidden_size > 0
    image_size = cfg["input_size"][1:]
    if fmt == "NLC":
        assert cfg["pool_size"] is None, "a token sequence has no pool_size"
    else:
        assert tuple(cfg["pool_size"]) == _grid(image_size, info[-1]["reduction"])
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state and f"{cfg['classifier']}.weight" in state
    assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0] == model.in_chans
    assert model.num_classes == cfg["num_classes"]
    assert describe(name).body in ("hierarchical", "isotropic", "sequence")


@pytest.mark.parametrize("name", SMALLEST)
def test_forward_features_and_head_agree_with_the_declarations(name: str) -> None:
    model = timm.create_model(name).eval()
    x = _small_input(model)
    with torch.no_grad():
        features = model.forward_features(x)
        _assert_features_shape(features, model, tuple(x.shape))
        pre_logits = model.forward_head(features, pre_logits=True)
        assert tuple(pre_logits.shape) == (x.shape[0], model.head_hidden_size)
        logits = model(x)
        model.set_grad_checkpointing()  # a no-op in eval mode: same output
        torch.testing.assert_close(model(x), logits)
        model.reset_classifier(0)
        assert model.num_classes == 0
        torch.testing.assert_close(model(x), pre_logits)
        model.reset_classifier(0, "")  # no pooling either: a map (or tokens) on the features' grid
        unpooled = model(x)
    fmt = _output_fmt(model)
    assert unpooled.dim() == features.dim()
    if fmt == "NLC":
        assert unpooled.shape[:2] == features.shape[:2]
    else:
        assert all(unpooled.shape[i] == features.shape[i] for i in (0, *get_spatial_dim(fmt)))


@pytest.mark.parametrize("name", SMALLEST)
def test_features_only_returns_what_feature_info_says(name: str) -> None:
    model = timm.create_model(name, features_only=True).eval()
    x = _small_input(model)
    with torch.no_grad():
        maps = model(x)
    fmt = getattr(model, "output_fmt", "NCHW")  # the feature wrapper's own layout (timm's convention)
    _assert_maps_match_feature_info(maps, model.feature_info.get_dicts(), tuple(x.shape), fmt)


@pytest.mark.parametrize("name", SMALLEST)
def test_forward_intermediates_agree_with_forward_features(name: str) -> None:
    model = timm.create_model(name).eval()
    x = _small_input(model)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        only = model.forward_intermediates(x, intermediates_only=True)
        features = model.forward_features(x)
    _assert_maps_match_feature_info(maps, model.feature_info, tuple(x.shape))
    torch.testing.assert_close(final, features)
    assert all(torch.equal(a, b) for a, b in zip(only, maps)) and len(only) == len(maps)


@pytest.mark.parametrize("name", SMALLEST)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = timm.create_model(name, num_classes=42).train()
    x = _small_input(model)
    out = model(x)
    assert tuple(out.shape) == (x.shape[0], 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
