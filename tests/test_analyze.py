"""The MambaOut analysis anchors, exactly, and the analyze command's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visbench import analyze as A


@pytest.fixture(scope="module")
def vit_s():
    return A.build_meta_model("vit_small_patch16_224")


@pytest.fixture(scope="module")
def vit_b():
    return A.build_meta_model("vit_base_patch16_224")


def test_vit_thresholds_are_2304_and_4608_tokens(vit_s, vit_b) -> None:
    assert A.reference_stage(A.model_stages(vit_s)).threshold_tokens == 2304
    assert A.reference_stage(A.model_stages(vit_b)).threshold_tokens == 4608


def test_imagenet_gives_196_tokens_and_r_0085_for_vit_s(vit_s) -> None:
    a = A.analyze_model("vit_small_patch16_224", 224, 224, measure=False, model=vit_s)
    assert a.tokens == 196
    assert a.r == 196 / 2304
    assert round(a.r, 3) == 0.085
    assert not a.long


def test_coco_gives_4000_tokens_long_for_vit_s_not_for_vit_b(vit_s, vit_b) -> None:
    label, (h, w) = A.parse_size("coco")
    assert (h, w) == (800, 1280)
    small = A.analyze_model("vit_small_patch16_224", h, w, measure=False, model=vit_s)
    base = A.analyze_model("vit_base_patch16_224", h, w, measure=False, model=vit_b)
    assert small.tokens == base.tokens == 4000
    assert small.long and not base.long


def test_crossing_side_is_stride_times_sqrt_6d(vit_s) -> None:
    assert A.crossing_side(16, 384) == 768  # 16 * sqrt(2304) = 16 * 48
    a = A.analyze_model("vit_small_patch16_224", 768, 768, measure=False, model=vit_s)
    assert a.tokens == 2304 and a.r == 1.0 and not a.long


def test_hierarchical_stages_from_feature_info() -> None:
    stages = A.model_stages(A.build_meta_model("mambaout_tiny"))
    assert [(s.reduction, s.dim, s.depth) for s in stages] == [
        (4, 96, 3),
        (8, 192, 3),
        (16, 384, 9),
        (32, 576, 3),
    ]
    assert A.reference_stage(stages).index == 2


def test_closed_form_share_matches_measured_attention_share(vit_s) -> None:
    a = A.analyze_model("vit_small_patch16_224", 224, 224, measure=True, model=vit_s)
    # Measured includes the class token (L = 197) and leaves patch embedding / head aside.
    assert a.closed_form_token_mixing_share == pytest.approx(4 * 196 / (24 * 384 + 4 * 196))
    assert a.macs["token_mixing"] == 12 * 2 * 197 * 197 * 384
    assert a.token_mixing_share == pytest.approx(a.closed_form_token_mixing_share, rel=0.02)


@pytest.mark.parametrize(
    ("text", "expected"), [("224", (224, 224)), ("800x1280", (800, 1280)), ("ADE20K", (512, 2048))]
)
def test_parse_size(text: str, expected: tuple[int, int]) -> None:
    assert A.parse_size(text)[1] == expected


@pytest.mark.parametrize("text", ["big", "0x10", "12x"])
def test_bad_size_is_named(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        A.parse_size(text)


def test_unknown_model_is_named() -> None:
    with pytest.raises(ValueError, match="no_such_net"):
        A.build_meta_model("no_such_net")


def test_tokens_become_square_sizes() -> None:
    assert A.size_for_tokens(196, 16) == (224, 224)
    assert A.size_for_tokens(4096, 16) == (1024, 1024)


def test_cli_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    A.add_arguments(parser)
    plot = tmp_path / "r.png"
    args = parser.parse_args(
        [
            "--models",
            "vit_small_patch16_224",
            "--tokens",
            "196,4096",
            "--format",
            "json",
            "--no-measure",
            "--plot",
            str(plot),
        ]
    )
    assert A.run(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["tokens"] for r in rows] == [196, 4096]
    assert [r["long"] for r in rows] == [False, True]
    assert plot.stat().st_size > 1000 and plot.with_suffix(".svg").stat().st_size > 1000


def test_our_models_tokens_and_facts_are_naming_s() -> None:
    from visbench.backbones.naming import describe, tokens_per_stage

    for name, size in [
        ("gated_cnn_tiny", (224, 224)),
        ("vim_small", (224, 320)),
        ("seq_ssm_causal_tiny", (28, 28)),
    ]:
        a = A.analyze_model(name, *size, measure=False)
        assert tuple(s.tokens for s in a.stages) == tokens_per_stage(name, size)
        d = describe(name)
        assert (a.family, a.mixer, a.order, a.body) == (d.family, d.mixer, d.order, d.body)


def test_timm_mambaout_tokens_at_any_size_are_its_padded_convs() -> None:
    a = A.analyze_model("mambaout_tiny", 70, 100, measure=False)
    assert [s.grid for s in a.stages] == [(18, 25), (9, 13), (5, 7), (3, 4)]


def test_feature_info_that_disagrees_with_naming_is_an_error(vit_s) -> None:
    with pytest.raises(ValueError, match=r"'gated_cnn_tiny': its feature_info strides \(16,\) disagree"):
        A.analyze_model("gated_cnn_tiny", 224, 224, measure=False, model=vit_s)


def test_a_model_naming_does_not_know_gets_its_feature_info_strides() -> None:
    a = A.analyze_model("resnet18", 224, 224, measure=False)
    assert a.family == "cnn" and a.order == "full"
    assert [s.tokens for s in a.stages] == [112 * 112, 56 * 56, 28 * 28, 14 * 14, 7 * 7]
