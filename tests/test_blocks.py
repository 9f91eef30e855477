"""GatedBlock (backbones.blocks): timm's MambaOut block with the conv as one token operator among several."""

from __future__ import annotations

import pytest
import torch
from timm.models.mambaout import GatedConvBlock
from torch import nn
from visbench.backbones.blocks import GatedBlock
from visbench.backbones.mixers import MIXER_ORDERS

CASES = [(mixer, order) for mixer, orders in MIXER_ORDERS.items() for order in orders]


def _randomized(module: nn.Module) -> nn.Module:
    """Non-trivial weights and biases, so a dropped or misplaced bias shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.2)
    return module.eval()


@pytest.mark.parametrize("conv_ratio", [1.0, 8 / 3, 0.5])
def test_conv_block_equals_timm_mambaout_block(conv_ratio: float) -> None:
    """conv_ratio = 8/3 mixes every hidden channel (no identity part); 0.5 leaves a large one."""
    ours = _randomized(GatedBlock(48, conv_ratio=conv_ratio))
    reference = GatedConvBlock(48, conv_ratio=conv_ratio).eval()
    state = {k.replace("mixer.conv.", "conv."): v for k, v in ours.state_dict().items()}
    reference.load_state_dict(state)
    x = torch.randn(2, 7, 7, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv_ratio", [1.0, 8 / 3])
def test_conv_block_gradients_equal_timm_mambaout_block(conv_ratio: float) -> None:
    """The block computes fc1 / fc2 on weight slices (no split / cat): gradients must not change either."""
    ours = _randomized(GatedBlock(48, conv_ratio=conv_ratio))
    reference = GatedConvBlock(48, conv_ratio=conv_ratio).eval()
    reference.load_state_dict({k.replace("mixer.conv.", "conv."): v for k, v in ours.state_dict().items()})
    x = torch.randn(2, 7, 7, 48)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    weights = torch.randn(2, 7, 7, 48)
    (ours(x_ours) * weights).sum().backward()
    (reference(x_ref) * weights).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    ref_params = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(
            p.grad, ref_params[name.replace("mixer.conv.", "conv.")].grad, rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(("mixer", "order"), CASES)
def test_every_mixer_keeps_the_shape_and_trains(mixer: str, order: str) -> None:
    block = GatedBlock(32, mixer=mixer, order=order)
    x = torch.randn(2, 4, 5, 32)
    out = block(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert all(p.grad is not None for p in block.parameters())


def test_bad_conv_ratio_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="conv_ratio"):
        GatedBlock(32, conv_ratio=4.0)


def test_drop_path_in_train_mode_drops_about_half_the_samples() -> None:
    """Stochastic depth with or without gradients (a no-grad probe during training keeps it)."""
    torch.manual_seed(0)
    block = GatedBlock(32, drop_path=0.5).train()
    x = torch.randn(64, 2, 2, 32)
    with torch.no_grad():
        residual_branch = block(x) - x
    dropped = (residual_branch.flatten(1).abs().amax(1) == 0).float().mean().item()
    assert 0.2 < dropped < 0.8, f"about half of the samples should skip the branch, got {dropped:.2f}"
    block.eval()
    with torch.no_grad():
        assert (block(x) - x).flatten(1).abs().amax(1).min() > 0, "eval mode keeps every sample's branch"


def test_block_runs_on_the_meta_device() -> None:
    """timm builds models on meta (``count_macs`` counts them there)."""
    with torch.device("meta"):
        block = GatedBlock(32).eval()
        x = torch.empty(2, 4, 4, 32)
    with torch.no_grad():
        assert block(x).shape == (2, 4, 4, 32)
