"""The 1-D pixel-sequence body: shapes, causality of the causal models, the head reading the last token."""

from __future__ import annotations

import pytest
import timm
import torch
import visbench.backbones.sequence as seq

NAMES = list(seq.SEQUENCE_MODELS)
CAUSAL = [name for name, (_, order) in seq.SEQUENCE_MODELS.items() if order == "causal"]
LONG_RANGE_CAUSAL = ["seq_ssm_causal_tiny", "seq_attn_causal_tiny"]
NON_CAUSAL = [name for name in NAMES if name not in CAUSAL]
IMG = 12  # 144 pixel tokens keep every test fast; the registered size is 28x28 (784 tokens)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _model(name: str, **kwargs) -> seq.PixelSequenceNet:
    return timm.create_model(name, img_size=IMG, **kwargs).eval()


def test_registered_names_are_the_studys() -> None:
    assert set(NAMES) == set(seq.default_cfgs)
    assert set(CAUSAL) == {"seq_gated_cnn_tiny", "seq_ssm_causal_tiny", "seq_attn_causal_tiny"}


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_on_fashion_mnist_shape(name: str) -> None:
    model = timm.create_model(name).train()
    x = torch.randn(2, 1, 28, 28)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.forward_features(x).shape == (2, 784, model.embed_dim)


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic(name: str) -> None:
    model = _model(name)
    x = torch.randn(2, 1, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_causal_orders_read_the_last_token_others_average(name: str) -> None:
    assert _model(name).global_pool == ("last" if name in CAUSAL else "avg")


def _perturb_after(x: torch.Tensor, t: int) -> torch.Tensor:
    flat = x.flatten(2).clone()
    flat[..., t + 1 :] += torch.randn_like(flat[..., t + 1 :])
    return flat.view_as(x)


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_models_features_at_t_ignore_later_pixels(name: str) -> None:
    model, t = _model(name), 70
    x = torch.randn(2, 1, IMG, IMG)
    with torch.no_grad():
        a, b = model.forward_features(x), model.forward_features(_perturb_after(x, t))
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-5)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :], atol=1e-3)


@pytest.mark.parametrize("name", NON_CAUSAL)
def test_non_causal_models_features_at_t_see_later_pixels(name: str) -> None:
    model, t = _model(name), 70
    x = torch.randn(2, 1, IMG, IMG)
    with torch.no_grad():
        a, b = model.forward_features(x), model.forward_features(_perturb_after(x, t))
    assert not torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-4)


@pytest.mark.parametrize("name", LONG_RANGE_CAUSAL)
def test_last_token_logits_depend_on_every_pixel(name: str) -> None:
    model = _model(name)
    x = torch.randn(1, 1, IMG, IMG, requires_grad=True)
    model(x).sum().backward()
    assert (x.grad != 0).all()


def test_causal_gated_cnn_sees_only_its_receptive_field() -> None:
    # depth 4 blocks of a width-7 causal conv: the last token sees the last 4 * 6 + 1 = 25 pixels.
    model = _model("seq_gated_cnn_tiny")
    x = torch.randn(1, 1, IMG, IMG, requires_grad=True)
    model(x).sum().backward()
    seen = (x.grad.flatten() != 0).nonzero().flatten()
    assert seen.min().item() == IMG * IMG - (len(model.blocks) * 6 + 1)


@pytest.mark.parametrize("name", ["seq_ssm_causal_tiny", "seq_attn_tiny"])
def test_features_only_gives_per_block_maps_on_the_pixel_grid(name: str) -> None:
    model = timm.create_model(name, img_size=IMG, features_only=True, out_indices=(0, 3))
    feats = model(torch.randn(2, 1, IMG, IMG))
    assert [f.shape for f in feats] == [(2, 64, IMG, IMG)] * 2
    assert model.feature_info.reduction() == [1, 1]


def test_params_are_comparable_across_mixers() -> None:
    counts = {name: sum(p.numel() for p in timm.create_model(name).parameters()) for name in NAMES}
    assert max(counts.values()) / min(counts.values()) < 1.5, counts


def test_wrong_input_size_or_channels_raise() -> None:
    model = _model("seq_ssm_causal_tiny")
    with pytest.raises(ValueError, match=f"only {IMG}x{IMG} inputs work"):
        model(torch.randn(1, 1, IMG + 1, IMG))
    with pytest.raises(ValueError, match=r"expected an image \(B, 1, H, W\)"):
        model(torch.randn(1, 3, IMG, IMG))
    assert _model("seq_ssm_causal_tiny", pos_embed=False)(torch.randn(1, 1, 5, 7)).shape == (1, 10)


def test_unknown_pool_and_bad_conv_width_raise() -> None:
    with pytest.raises(ValueError, match="global_pool"):
        _model("seq_attn_tiny", global_pool="token")
    with pytest.raises(ValueError, match="width"):
        seq.CausalConvOperator(8, width=0)
