"""visbench.kernels.causal_conv1d: the causal-conv1d package's semantics, autograd, FLOPs and input checks."""

from __future__ import annotations

import pytest
import torch
from conftest import import_mamba_reference
from torch.utils.flop_counter import FlopCounterMode
from visbench.kernels.causal_conv1d import SHORT_ROWS, causal_conv1d, causal_conv1d_reference
from visbench.kernels.checks import assert_causal_conv1d_matches_reference

# causal-conv1d's own test tolerances (tests/test_causal_conv1d.py in that repository)
TOLERANCES = {torch.float32: (3e-4, 1e-3), torch.bfloat16: (1e-2, 5e-2)}


@pytest.fixture(scope="module")
def package_ref():
    return import_mamba_reference("causal_conv1d.causal_conv1d_interface").causal_conv1d_ref


def _inputs(dim: int, width: int, seqlen: int, dtype: torch.dtype, with_bias: bool, batch: int = 2):
    gen = torch.Generator().manual_seed(dim * 100 + width * 10 + seqlen)
    x = torch.randn(batch, dim, seqlen, generator=gen).to(dtype).requires_grad_()
    weight = torch.randn(dim, width, generator=gen).to(dtype).requires_grad_()
    bias = torch.randn(dim, generator=gen).to(dtype).requires_grad_() if with_bias else None
    return x, weight, bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("activation", [None, "silu", "swish"])
@pytest.mark.parametrize("width", [2, 3, 4])
def test_matches_package_reference_forward_and_gradients(package_ref, dtype, with_bias, activation, width):
    x, weight, bias = _inputs(dim=16, width=width, seqlen=37, dtype=dtype, with_bias=with_bias)
    rtol, atol = TOLERANCES[dtype]
    out = causal_conv1d(x, weight, bias, activation)
    ref = package_ref(x, weight, bias, activation=activation)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)

    grad_out = torch.randn_like(out)
    leaves = [t for t in (x, weight, bias) if t is not None]
    grads = torch.autograd.grad(out, leaves, grad_out)
    grads_ref = torch.autograd.grad(ref, leaves, grad_out)
    for name, got, want in zip(("x", "weight", "bias"), grads, grads_ref):
        assert got.dtype == want.dtype, name
        # weight / bias gradients sum over batch * seqlen terms: bf16 rounding grows with that sum
        scale = 1.0 if name == "x" or dtype == torch.float32 else 4.0
        torch.testing.assert_close(got, want, rtol=rtol * scale, atol=atol * scale, msg=f"grad of {name}")


@pytest.mark.parametrize("activation", [None, "silu"])
def test_gradcheck_float64(activation):
    x, weight, bias = _inputs(dim=3, width=3, seqlen=6, dtype=torch.float64, with_bias=True)
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a, activation=activation), (x, weight, bias))


@pytest.mark.parametrize(("width", "seqlen"), [(1, 5), (4, 2), (4, 1)])
def test_gradcheck_without_bias_and_short_sequences(width, seqlen):
    x, weight, _ = _inputs(dim=2, width=width, seqlen=seqlen, dtype=torch.float64, with_bias=False)
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a, activation="silu"), (x, weight))


@pytest.mark.parametrize("t", [0, 5, 18])
def test_output_up_to_t_ignores_later_inputs(t):
    x, weight, bias = _inputs(dim=4, width=4, seqlen=19, dtype=torch.float32, with_bias=True)
    x = x.detach()
    changed = x.clone()
    changed[..., t + 1 :] = torch.randn_like(changed[..., t + 1 :]) * 10
    out = causal_conv1d(x, weight, bias, "silu")
    out_changed = causal_conv1d(changed, weight, bias, "silu")
    torch.testing.assert_close(out[..., : t + 1], out_changed[..., : t + 1], rtol=0, atol=0)
    if t + 1 < x.shape[-1]:
        assert not torch.allclose(out[..., t + 1 :], out_changed[..., t + 1 :])


def test_first_step_sees_only_last_tap():
    # out[0] = bias + weight[:, -1] * x[0]: the zero padding sits before the sequence, not after
    x, weight, bias = _inputs(dim=5, width=4, seqlen=7, dtype=torch.float32, with_bias=True)
    out = causal_conv1d(x, weight, bias)
    torch.testing.assert_close(out[..., 0], bias + weight[:, -1] * x[..., 0])


def test_flop_counter_counts_forward_and_twice_for_backward():
    batch, dim, seqlen, width = 2, 8, 33, 4
    x, weight, bias = _inputs(dim=dim, width=width, seqlen=seqlen, dtype=torch.float32, with_bias=True)
    forward_flops = 2 * batch * dim * seqlen * width
    with FlopCounterMode(display=False) as counter:
        out = causal_conv1d(x, weight, bias, "silu")
    assert counter.get_total_flops() == forward_flops
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 2 * forward_flops


def test_channel_last_strides_give_the_same_result():
    x, weight, bias = _inputs(dim=8, width=4, seqlen=20, dtype=torch.float32, with_bias=True)
    x_channel_last = x.detach().transpose(1, 2).contiguous().transpose(1, 2)
    assert x_channel_last.stride(1) == 1
    out = causal_conv1d(x_channel_last, weight, bias, "silu")
    torch.testing.assert_close(out, causal_conv1d_reference(x.detach(), weight, bias, "silu"))
    assert out.stride() == x_channel_last.stride()  # x's layout: a channels-last caller transposes back free


@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "sliced", "time_strided"])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_cpu_kernels_match_reference_gradients_in_every_layout(layout, activation):
    """The CPU path (numba kernels when numba imports) against the F.conv1d definition, through autograd."""
    x, weight, bias = _inputs(dim=6, width=4, seqlen=37, dtype=torch.float32, with_bias=True, batch=3)
    relayout = {
        "contiguous": lambda t: t,
        "channel_last": lambda t: t.transpose(1, 2).contiguous().transpose(1, 2),
        "sliced": lambda t: t.repeat_interleave(2, dim=1)[:, ::2],
        "time_strided": lambda t: t.repeat_interleave(2, dim=2)[..., ::2],
    }[layout]
    dout = torch.randn(3, 6, 37, generator=torch.Generator().manual_seed(3))
    results = []
    for fn in (causal_conv1d, causal_conv1d_reference):
        x_in = relayout(x)
        out = fn(x_in, weight, bias, activation)
        if fn is causal_conv1d:
            assert out.stride() == torch.empty_like(x_in).stride()
        results.append((out, *torch.autograd.grad(out, (x, weight, bias), dout)))
    for got, want in zip(*results):
        scale = max(1.0, want.detach().abs().max().item())
        torch.testing.assert_close(got, want, rtol=3e-5, atol=1e-5 * scale)


@pytest.mark.parametrize(
    ("batch", "dim", "seqlen", "width"),
    [(1, 64, 150, 4), (3, 32, 300, 7), (2, 5, 3, 4), (1, 48, 1, 2), (2, 600, 9, 4), (2, 7, 16, 4)],
)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("layout", ["channel_last", "contiguous"])
def test_channel_last_kernels_match_row_kernels_and_reference(
    batch, dim, seqlen, width, with_bias, activation, layout
):
    """The channel-last kernels (tiles of steps, several per sample here, a halo, sequences shorter than
    the width; contiguous x takes them too when its rows have at most SHORT_ROWS steps): the forward
    agrees with the row kernels' to float rounding, gradients with the F.conv1d definition's, and the
    output and dx come back in x's layout."""
    x, weight, bias = _inputs(
        dim=dim, width=width, seqlen=seqlen, dtype=torch.float32, with_bias=with_bias, batch=batch
    )
    x_in = x.detach()
    if layout == "channel_last":
        x_in = x_in.transpose(1, 2).contiguous().transpose(1, 2)
    x_in.requires_grad_()
    out = causal_conv1d(x_in, weight, bias, activation)
    assert out.stride() == torch.empty_like(x_in).stride()
    if layout == "channel_last" and seqlen > SHORT_ROWS:  # the contiguous x of the same values: row kernels
        torch.testing.assert_close(
            out, causal_conv1d(x.detach(), weight, bias, activation), rtol=1e-6, atol=1e-6
        )
    dout = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    leaves = [t for t in (x_in, weight, bias) if t is not None]
    grads = torch.autograd.grad(out, leaves, dout)
    ref = causal_conv1d_reference(x, weight, bias, activation)
    torch.testing.assert_close(out, ref, rtol=3e-5, atol=1e-5 * max(1.0, ref.detach().abs().max().item()))
    grads_ref = torch.autograd.grad(ref, [t for t in (x, weight, bias) if t is not None], dout)
    assert grads[0].stride() == torch.empty_like(x_in).stride()
    for got, want in zip(grads, grads_ref):
        scale = max(1.0, want.detach().abs().max().item())
        torch.testing.assert_close(got, want, rtol=3e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("activation", [None, "silu"])
def test_gradcheck_float64_channel_last(activation):
    x, weight, bias = _inputs(dim=3, width=3, seqlen=6, dtype=torch.float64, with_bias=True)
    x = x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a, activation=activation), (x, weight, bias))


@pytest.mark.parametrize("channel_last", [False, True])
@pytest.mark.parametrize("with_bias", [True, False])
def test_custom_op_registrations_pass_opcheck(with_bias, channel_last):
    """opcheck compares the fake (compile-time) outputs' strides with the real ones, channel-last x too."""
    x, weight, bias = _inputs(dim=4, width=3, seqlen=9, dtype=torch.float32, with_bias=with_bias)
    if channel_last:
        x = x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    torch.library.opcheck(torch.ops.visbench.causal_conv1d.default, (x, weight, bias, True))
    grad = torch.randn(x.shape)
    args = (x.detach(), weight.detach(), None if bias is None else bias.detach(), grad, True)
    torch.library.opcheck(torch.ops.visbench.causal_conv1d_bwd.default, args)


def test_traces_under_torch_compile_without_graph_breaks():
    x, weight, bias = _inputs(dim=4, width=4, seqlen=9, dtype=torch.float32, with_bias=True)
    compiled = torch.compile(
        lambda *a: causal_conv1d(*a, activation="silu"), backend="aot_eager", fullgraph=True
    )
    out = compiled(x, weight, bias)
    torch.testing.assert_close(out, causal_conv1d_reference(x, weight, bias, "silu"))
    out.sum().backward()
    assert x.grad is not None and weight.grad is not None and bias.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_reference(dtype):
    """The package's CUDA kernels (through the op) against the reference: the check the GPU check runs."""
    assert_causal_conv1d_matches_reference(64, 4, 300, dtype, "cuda", activation="silu", with_bias=True)


@pytest.mark.parametrize(
    ("x_shape", "weight_shape", "bias_shape", "activation", "match"),
    [
        ((2, 8), (8, 4), None, None, r"x must be a \(batch, dim, seqlen\).*\(2, 8\)"),
        ((2, 8, 5, 1), (8, 4), None, None, r"x must be.*\(2, 8, 5, 1\)"),
        ((2, 8, 0), (8, 4), None, None, r"seqlen >= 1.*\(2, 8, 0\)"),
        ((2, 8, 5), (7, 4), None, None, r"weight must be \(dim, width\).*\(7, 4\)"),
        ((2, 8, 5), (8, 4, 1), None, None, r"weight.*\(8, 4, 1\)"),
        ((2, 8, 5), (8, 0), None, None, r"width >= 1.*\(8, 0\)"),
        ((2, 8, 5), (8, 4), (4,), None, r"bias must be \(dim,\).*\(4,\)"),
        ((2, 8, 5), (8, 4), None, "relu", r"activation must be one of.*'relu'"),
    ],
)
def test_bad_input_raises_value_error_naming_it(x_shape, weight_shape, bias_shape, activation, match):
    bias = None if bias_shape is None else torch.randn(bias_shape)
    with pytest.raises(ValueError, match=match):
        causal_conv1d(torch.randn(x_shape), torch.randn(weight_shape), bias, activation)


def test_integer_input_raises_value_error():
    with pytest.raises(ValueError, match="x must be a floating-point tensor.*int64"):
        causal_conv1d(torch.ones(1, 2, 3, dtype=torch.int64), torch.randn(2, 3))
