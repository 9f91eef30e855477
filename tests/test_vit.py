"""ViT/DeiT (backbones.vit): equal to timm's, the causal ViT equal to timm's is_causal run."""

from __future__ import annotations

import pytest
import timm
import torch
import visbench.backbones.vit as vit
from torch import nn

NAMES = ["vit_tiny", "vit_small", "vit_base", "vit_causal_tiny", "vit_causal_small", "vit_causal_base"]
SMALL = 32  # 2x2 tokens: every name runs forward and backward on CPU in seconds


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_names_are_all_tested() -> None:
    assert set(vit.registered_names()) == set(NAMES)


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_vit_params_and_keys_equal_timm(size: str) -> None:
    with torch.device("meta"):
        ours = timm.create_model(f"vit_{size}")
        causal = timm.create_model(f"vit_causal_{size}")
        ref = timm.create_model(f"vit_{size}_patch16_224")
    assert _count(ours) == _count(ref) == _count(causal)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }


@pytest.mark.parametrize(
    ("ours", "ref"),
    [
        ("vit_tiny", "deit_tiny_patch16_224"),
        ("vit_small", "vit_small_patch16_224"),
        ("vit_small", "deit_small_patch16_224"),
        ("vit_base", "deit_base_patch16_224"),
    ],
)
def test_timm_checkpoint_loads_through_timm_and_gives_same_logits(ours: str, ref: str, tmp_path) -> None:
    reference = timm.create_model(ref).eval()
    path = tmp_path / f"{ref}.pth"
    torch.save(reference.state_dict(), path)
    model = timm.create_model(ours, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max() <= 1e-4


def test_wrapped_checkpoint_with_other_grid_is_resampled(tmp_path) -> None:
    reference = timm.create_model("vit_tiny_patch16_224").eval()
    path = tmp_path / "deit_release.pth"
    torch.save({"model": reference.state_dict()}, path)  # DeiT's release files wrap the state dict
    model = timm.create_model(
        "vit_tiny", img_size=128, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 192)
    assert torch.equal(model.cls_token, reference.cls_token)


def test_causal_vit_equals_timm_vit_run_with_is_causal(tmp_path) -> None:
    # Reference: timm's own ViT, averaging the (final-normed) patch tokens, with is_causal=True in SDPA.
    reference = timm.create_model("vit_tiny_patch16_224", global_pool="avg", fc_norm=False).eval()
    path = tmp_path / "vit_tiny.pth"
    torch.save(reference.state_dict(), path)
    model = timm.create_model(
        "vit_causal_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - reference(x, is_causal=True)).abs().max() <= 1e-4
        assert (model.forward_features(x) - reference.forward_features(x, is_causal=True)).abs().max() <= 1e-4
        assert (model(x) - reference(x)).abs().max() > 1e-3  # and it is not the full-attention model


def test_causal_vit_rejects_class_token_pooling() -> None:
    with pytest.raises(ValueError, match="class token comes first"):
        timm.create_model("vit_causal_tiny", global_pool="token")
    model = timm.create_model("vit_causal_tiny", img_size=SMALL)
    with pytest.raises(ValueError, match="causal"):
        model.reset_classifier(10, global_pool="token")


def _perturb_after(x: torch.Tensor, t: int) -> torch.Tensor:
    y = x.clone()
    y[:, t + 1 :] += torch.randn_like(y[:, t + 1 :])
    return y


@pytest.mark.parametrize("causal", [True, False])
def test_vit_block_is_causal_exactly_when_asked(causal: bool) -> None:
    block = vit.ViTBlock(32, num_heads=2, causal=causal).eval()
    x, t = torch.randn(2, 10, 32), 4
    with torch.no_grad():
        unchanged = torch.allclose(block(x)[:, : t + 1], block(_perturb_after(x, t))[:, : t + 1], atol=1e-6)
    assert unchanged == causal


def test_causal_vit_tokens_do_not_see_later_patches() -> None:
    model = timm.create_model("vit_causal_tiny", img_size=64, num_classes=0).eval()
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[:, :, 48:, :] = torch.randn(1, 3, 16, 64)  # last patch row: patches 12..15, tokens 13..16
    with torch.no_grad():
        a, b = model.forward_features(x), model.forward_features(y)
    assert torch.allclose(a[:, :13], b[:, :13], atol=1e-5)
    assert not torch.allclose(a[:, 13:], b[:, 13:], atol=1e-3)


def test_forward_intermediates_equal_timm() -> None:
    reference = timm.create_model("vit_tiny_patch16_224", img_size=64).eval()
    model = timm.create_model("vit_tiny", img_size=64).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[1, 5], norm=True)
        ref_final, ref_inter = reference.forward_intermediates(x, indices=[1, 5], norm=True)
    assert torch.allclose(final, ref_final, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(inter, ref_inter))
    assert inter[0].shape == (2, 192, 4, 4)


@pytest.mark.slow
def test_torch_compile_vit_matches_eager() -> None:
    model = timm.create_model("vit_causal_tiny", img_size=SMALL, depth=2).eval()
    x = torch.randn(2, 3, SMALL, SMALL)
    compiled = torch.compile(model)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


@pytest.mark.parametrize(("height", "width"), [(64, 96), (160, 32)])
def test_any_multiple_of_16_works(height: int, width: int) -> None:
    model = timm.create_model("vit_tiny", num_classes=5).eval()  # built for 224, run at another size
    assert model(torch.randn(1, 3, height, width)).shape == (1, 5)


@pytest.mark.parametrize("size", [(100, 112), (224, 8)])
def test_size_not_multiple_of_16_raises(size: tuple[int, int]) -> None:
    model = timm.create_model("vit_tiny", img_size=SMALL, depth=1)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 3, *size))
    with pytest.raises(ValueError, match="multiples of 16"):
        timm.create_model("vit_tiny", img_size=size, depth=1)


def test_unknown_pool_raises() -> None:
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model("vit_tiny", global_pool="mean")


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_shapes_and_eval_determinism(name: str) -> None:
    model = timm.create_model(name, img_size=SMALL, num_classes=7, depth=2)  # each size's width, 2 blocks
    x = torch.randn(2, 3, SMALL, SMALL)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", ["vit_tiny", "vit_causal_tiny"])
def test_features_only_gives_per_block_maps_at_stride_16(name: str) -> None:
    model = timm.create_model(name, features_only=True, out_indices=(1, 3, 5), img_size=64)
    feats = model(torch.randn(2, 3, 64, 96))
    width = model.feature_info.channels()[0]
    assert [f.shape for f in feats] == [(2, width, 4, 6)] * 3
    assert model.feature_info.reduction() == [16, 16, 16]


def _randomized(module: nn.Module) -> nn.Module:
    """Random, non-zero weights and biases: timm's init (zero biases) would hide a misplaced bias."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.1)
    return module.eval()


@pytest.mark.parametrize(
    ("name", "pool", "reference_kwargs"),
    [
        ("vit_tiny", "token", {}),
        ("vit_tiny", "avg", dict(global_pool="avg", fc_norm=False)),
        ("vit_causal_tiny", "avg", dict(global_pool="avg", fc_norm=False)),
    ],
)
def test_logits_with_random_biases_equal_timm_with_and_without_grad(
    name: str, pool: str, reference_kwargs: dict
) -> None:
    model = _randomized(timm.create_model(name, img_size=64, global_pool=pool))
    reference = timm.create_model("vit_tiny_patch16_224", img_size=64, **reference_kwargs).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        expected = reference(x, is_causal=model.causal)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x).detach(), expected, rtol=1e-5, atol=1e-5)


def test_every_class_has_one_forward() -> None:
    """No second, hand-fused path: the same forward runs with and without gradients (issue #12)."""
    for cls in (vit.SelfAttention, vit.ViTBlock, vit.VisionTransformer):
        assert not [name for name in vars(cls) if "inference" in name], cls.__name__
