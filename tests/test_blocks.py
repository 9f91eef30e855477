"""GatedBlock's no-grad path (backbones.blocks): same outputs as its autograd path, and really taken."""

from __future__ import annotations

import pytest
import torch
from op_recorder import OpRecorder
from torch import nn
from visbench.backbones.blocks import GatedBlock
from visbench.backbones.mixers import MIXER_ORDERS

CASES = [(mixer, order) for mixer, orders in MIXER_ORDERS.items() for order in orders]


def _block(mixer: str, order: str, **kwargs) -> GatedBlock:
    torch.manual_seed(0)
    block = GatedBlock(48, mixer=mixer, order=order, **kwargs).eval()
    for p in block.parameters():  # non-trivial biases, so a dropped or misplaced bias shows
        nn.init.normal_(p, std=0.2)
    return block


@pytest.mark.parametrize(("mixer", "order"), CASES)
def test_no_grad_path_equals_autograd_path(mixer: str, order: str, gemm_backend: str) -> None:
    block = _block(mixer, order)
    x = torch.randn(2, 6, 5, 48)
    x_before = x.clone()
    expected = block(x)  # gradients on: the autograd path
    with torch.no_grad():
        got = block(x)
    with torch.inference_mode():
        got_inference = block(x)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_inference, expected.detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(x, x_before), "the no-grad path must not write into its input"


@pytest.mark.parametrize("conv_ratio", [1.0, 8 / 3, 0.5])
def test_no_grad_path_for_every_channel_split(conv_ratio: float, gemm_backend: str) -> None:
    """conv_ratio = 8/3 mixes every hidden channel (no identity part); 0.5 leaves a large one."""
    block = _block("conv", "full", conv_ratio=conv_ratio)
    x = torch.randn(2, 7, 7, 48)
    expected = block(x).detach()
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_no_grad_path_is_taken_and_skips_the_concatenation() -> None:
    block = _block("conv", "full")
    x = torch.randn(1, 4, 4, 48)
    with OpRecorder() as grad_on:
        block(x)
    with torch.no_grad(), OpRecorder() as grad_off:
        block(x)
    assert "cat" in grad_on.ops and "gelu" in grad_on.ops
    assert "cat" not in grad_off.ops and "gelu_" in grad_off.ops


def test_activation_without_in_place_twin_keeps_autograd_path() -> None:
    torch.manual_seed(0)
    block = GatedBlock(32, act_layer=nn.SiLU).eval()
    x = torch.randn(1, 4, 4, 32)
    with torch.no_grad(), OpRecorder() as ops:
        out = block(x)
    assert "cat" in ops.ops
    torch.testing.assert_close(out, block(x).detach())


def test_training_mode_without_grad_still_applies_drop_path() -> None:
    """A no-grad forward in train mode (e.g. a probe during training) keeps stochastic depth."""
    torch.manual_seed(0)
    block = GatedBlock(32, drop_path=0.5).train()
    _assert_drops_about_half_the_samples(block)


def _assert_drops_about_half_the_samples(block: GatedBlock) -> None:
    """With drop_path=0.5, a no-grad forward must skip the residual branch for about half the samples."""
    x = torch.randn(64, 2, 2, 32)
    with torch.no_grad():
        residual_branch = block(x) - x
    dropped = (residual_branch.flatten(1).abs().amax(1) == 0).float().mean().item()
    assert 0.2 < dropped < 0.8, f"about half of the samples should skip the branch, got {dropped:.2f}"


def test_no_grad_path_keeps_the_residual_stream_dtype_under_autocast(gemm_backend: str) -> None:
    """Under AMP, fc2's output is bfloat16 while the residual stream is float32: as with gradients."""
    block = _block("conv", "full")
    x = torch.randn(2, 5, 5, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = block(x).detach()
        with torch.no_grad():
            got = block(x)
    assert got.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


def test_hooks_and_non_linear_layers_keep_the_autograd_path() -> None:
    """A hook on fc2 must see fc2's own output; a quantized / swapped fc1 must still be called."""
    block = _block("conv", "full")
    x = torch.randn(1, 4, 4, 48)
    seen: list[torch.Tensor] = []
    handle = block.fc2.register_forward_hook(lambda mod, inp, out: seen.append(out.clone()))
    with torch.no_grad(), OpRecorder() as ops:
        out = block(x)
    handle.remove()
    assert "cat" in ops.ops and len(seen) == 1
    torch.testing.assert_close(out, seen[0] + x)

    class LoggingLinear(nn.Linear):
        calls = 0

        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            LoggingLinear.calls += 1
            return super().forward(inp)

    swapped = LoggingLinear(48, block.fc1.out_features)
    swapped.load_state_dict(block.fc1.state_dict())
    block.fc1 = swapped
    with torch.no_grad():
        block(x)
    assert LoggingLinear.calls == 1


def test_drop_path_switched_back_on_or_replaced_is_applied() -> None:
    """MC stochastic depth (block in eval, DropPath in train) and a module put in the drop-path slot."""
    block = GatedBlock(32, drop_path=0.5).eval()
    block.drop_path.train()
    _assert_drops_about_half_the_samples(block)

    class Scale(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return 0.5 * t

    block = _block("conv", "full")
    block.drop_path = Scale()
    x = torch.randn(2, 4, 4, 48)
    expected = block(x).detach()
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_patched_forward_and_tracing_keep_the_autograd_path() -> None:
    block = _block("conv", "full")
    x = torch.randn(1, 4, 4, 48)
    calls: list[int] = []
    plain_forward = block.fc1.forward  # the no-grad path reads fc1's weights instead of calling it
    block.fc1.forward = lambda t: calls.append(1) or plain_forward(t)
    with torch.no_grad():
        block(x)
    assert calls == [1]

    block = _block("conv", "full")
    with torch.no_grad():
        traced = torch.jit.trace(block, x)
    y = x.clone().requires_grad_()
    traced(y).sum().backward()  # the in-place no-grad path would fail here
    expected = x.clone().requires_grad_()
    block(expected).sum().backward()
    torch.testing.assert_close(y.grad, expected.grad)


def test_no_grad_path_runs_on_the_meta_device() -> None:
    """``meta`` has no autocast: asking about it must not fail (timm builds models on meta)."""
    with torch.device("meta"):
        block = GatedBlock(32).eval()
        x = torch.empty(2, 4, 4, 32)
    with torch.no_grad():
        assert block(x).shape == (2, 4, 4, 32)
