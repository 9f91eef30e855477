"""A model name says family, mixer, order, body, size and tokens per stage; every built model agrees."""

from __future__ import annotations

import pytest
import timm
import torch
import visbench.backbones
from visbench.backbones.mixers import default_order
from visbench.backbones.naming import (
    MODEL_FAMILIES,
    describe,
    describe_any,
    stage_strides,
    tokens_per_stage,
)

NAMES = visbench.backbones.list_models()

# The class of each body (by name: the classes move between files, the bodies do not).
BODY_OF_CLASS = {
    "HierarchicalNet": "hierarchical",
    "VisionTransformer": "isotropic",
    "GatedIsotropicNet": "isotropic",
    "PixelSequenceNet": "sequence",
}
MIXER_OF_OPERATOR = {
    "DepthwiseConvOperator": "conv",
    "CausalConvOperator": "conv",
    "SelectiveScanOperator": "ssm",
    "AttentionOperator": "attn",
}
# Two input sizes per body, at which the body runs (hierarchical: multiples of 32; isotropic: of 16).
SIZES_OF_BODY = {
    "hierarchical": [(64, 96), (160, 224)],
    "isotropic": [(32, 48), (224, 160)],
    "sequence": [(28, 28), (8, 12)],
}


def _build_on_meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: nothing is initialised or computed
        return timm.create_model(name, **kwargs)


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    if hasattr(model, "stages"):
        return [blk for stage in model.stages for blk in stage.blocks]
    return list(model.blocks)


def _token_operator(block: torch.nn.Module) -> tuple[str, str]:
    """(mixer, order) a block really runs: a GatedBlock's operator, or a ViT block's attention."""
    if hasattr(block, "mixer"):
        operator = block.mixer
        return MIXER_OF_OPERATOR[type(operator).__name__], operator.order
    return "attn", "causal" if block.attn.causal else "full"


def _merged_strides(model: torch.nn.Module) -> tuple[int, ...]:
    strides: list[int] = []
    for entry in model.feature_info:
        if not strides or strides[-1] != entry["reduction"]:
            strides.append(int(entry["reduction"]))
    return tuple(strides)


def test_every_registered_model_has_a_row_and_every_row_a_model() -> None:
    assert len(NAMES) == 45
    stems = {name.rpartition("_")[0] for name in NAMES}
    assert stems == set(MODEL_FAMILIES)
    for name in NAMES:
        assert name.endswith("_" + describe(name).size)


@pytest.mark.parametrize("name", NAMES)
def test_built_model_is_what_its_name_says(name: str) -> None:
    d = describe(name)
    model = _build_on_meta(name)
    assert BODY_OF_CLASS[type(model).__name__] == d.body
    assert {_token_operator(blk) for blk in _blocks(model)} == {(d.mixer, d.order)}
    if getattr(model, "mixer", None) is not None:
        order = model.order if model.order is not None else default_order(model.mixer)
        assert (model.mixer, order) == (d.mixer, d.order)
    if hasattr(model, "causal"):
        assert model.causal == (d.order == "causal")
    assert _merged_strides(model) == stage_strides(name)


@pytest.mark.parametrize("name", NAMES)
def test_tokens_per_stage_are_the_token_maps_the_model_produces(name: str) -> None:
    body = describe(name).body
    for height, width in SIZES_OF_BODY[body]:
        kwargs = dict(img_size=(height, width)) if body == "sequence" else {}
        model = _build_on_meta(name, **kwargs)
        with torch.device("meta"):
            maps = model.forward_intermediates(
                torch.empty(1, model.in_chans, height, width), intermediates_only=True
            )
        expected = dict(zip(stage_strides(name), tokens_per_stage(name, (height, width))))
        assert len(maps) == len(model.feature_info)
        for entry, feature_map in zip(model.feature_info, maps):
            assert feature_map.shape[1] == entry["num_chs"]
            assert feature_map.shape[-2] * feature_map.shape[-1] == expected[entry["reduction"]], (
                height,
                width,
            )


@pytest.mark.parametrize("size", [(70, 100), (33, 47), (3, 224, 256)])
def test_hierarchical_tokens_at_any_size_are_mambaouts_padded_convs(size: tuple[int, ...]) -> None:
    # Our hierarchical body asks for multiples of 32; timm's MambaOut (the same stem and downsampling
    # convs) runs at any size, and the formula is checked on it.
    model = _build_on_meta("mambaout_femto")
    with torch.device("meta"):
        maps = model.forward_intermediates(torch.empty(1, 3, *size[-2:]), intermediates_only=True)
    assert tuple(m.shape[-2] * m.shape[-1] for m in maps) == tokens_per_stage("mambaout_femto", size)
    assert tokens_per_stage("gated_cnn_femto", size) == tokens_per_stage("mambaout_femto", size)


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "vit_base_patch32_224"])
def test_timm_vit_tokens_are_its_padded_patch_grid_without_the_class_token(name: str) -> None:
    model = _build_on_meta(name, dynamic_img_size=True, dynamic_img_pad=True)
    with torch.device("meta"):
        maps = model.forward_intermediates(torch.empty(1, 3, 232, 250), intermediates_only=True)
    assert {m.shape[-2] * m.shape[-1] for m in maps} == set(tokens_per_stage(name, (232, 250)))
    assert tokens_per_stage("vit_small", (224, 224)) == (196,)


@pytest.mark.parametrize(
    ("name", "family", "mixer", "order", "body"),
    [
        ("gated_cnn_tiny", "gated_cnn", "conv", "full", "hierarchical"),
        ("ssm_cross2d_small", "ssm", "ssm", "cross2d", "hierarchical"),
        ("attn_causal_tiny", "attention", "attn", "causal", "hierarchical"),
        ("vit_causal_small", "attention", "attn", "causal", "isotropic"),
        ("vim_small", "ssm", "ssm", "bidir", "isotropic"),
        ("iso_gated_cnn_small", "gated_cnn", "conv", "full", "isotropic"),
        ("seq_gated_cnn_tiny", "gated_cnn", "conv", "causal", "sequence"),
        ("seq_ssm_causal_tiny", "ssm", "ssm", "causal", "sequence"),
    ],
)
def test_name_parts(name: str, family: str, mixer: str, order: str, body: str) -> None:
    d = describe(name)
    assert (d.family, d.mixer, d.order, d.body) == (family, mixer, order, body)


@pytest.mark.parametrize(("name", "part"), [("gated_cnn_huge", "size"), ("conv_tiny", "family")])
def test_unknown_name_is_an_error_naming_the_part(name: str, part: str) -> None:
    with pytest.raises(ValueError, match=part):
        describe(name)


@pytest.mark.parametrize(
    ("name", "facts"),
    [
        ("gated_cnn_tiny", ("gated_cnn", "conv", "full", "hierarchical", "tiny")),
        ("mambaout_femto", ("gated_cnn", "conv", "full", "hierarchical", "femto")),
        ("vit_small_patch16_224", ("attention", "attn", "full", "isotropic", "small")),
        ("deit_tiny_patch16_224", ("attention", "attn", "full", "isotropic", "tiny")),
        ("convnext_tiny", ("cnn", "conv", "full", "hierarchical", "tiny")),
        ("resnet50", ("cnn", "conv", "full", "hierarchical", "unknown")),
        ("efficientnet_b0", ("unknown", "unknown", "unknown", "unknown", "unknown")),
    ],
)
def test_describe_any_knows_timm_names_and_says_unknown_for_others(name: str, facts: tuple[str, ...]) -> None:
    d = describe_any(name)
    assert (d.family, d.mixer, d.order, d.body, d.size) == facts


def test_strides_of_a_name_naming_does_not_know_are_an_error_naming_it() -> None:
    assert stage_strides("vit_base_patch32_224") == (32,)
    with pytest.raises(ValueError, match="'resnet50': its stage strides are not known"):
        tokens_per_stage("resnet50", (224, 224))
