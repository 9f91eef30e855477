"""``visbench.kernels.linear``: F.linear's values and gradients, its bias gradient as a GEMV."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from visbench.kernels import linear


def _inputs(shape: tuple[int, ...], out_features: int, bias: bool, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    w = torch.randn(out_features, shape[-1], generator=gen, dtype=dtype)
    b = torch.randn(out_features, generator=gen, dtype=dtype) if bias else None
    grad = torch.randn(*shape[:-1], out_features, generator=gen, dtype=dtype)
    return x, w, b, grad


def _grads(fn, x, w, b, grad):
    leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    out = fn(*leaves) if b is not None else fn(*leaves, None)
    out.backward(grad)
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("shape", [(50, 7), (2, 1, 33, 9), (3, 4, 5, 6)])
@pytest.mark.parametrize("out_features", [53, 32, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_are_F_linears(shape, out_features, bias) -> None:
    x, w, b, grad = _inputs(shape, out_features, bias)
    out, grads = _grads(linear, x, w, b, grad)
    out_ref, grads_ref = _grads(F.linear, x, w, b, grad)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    for ours, ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_strided_input_and_grad_and_sliced_weights() -> None:
    """The block's calls: weight and bias are slices of fc1's, the input a transposed view."""
    x, w, b, grad = _inputs((4, 11, 9), 20, True)
    x_t = x.transpose(0, 1).contiguous().transpose(0, 1)  # strided (4, 11, 9) view of the same values
    w_full = torch.randn(30, 9).requires_grad_()
    b_full = torch.randn(30).requires_grad_()
    out = linear(x_t, w_full[5:25], b_full[5:25])
    out.backward(grad.transpose(0, 1).contiguous().transpose(0, 1))
    ref_w, ref_b = w_full.detach().clone().requires_grad_(), b_full.detach().clone().requires_grad_()
    F.linear(x, ref_w[5:25], ref_b[5:25]).backward(grad)
    torch.testing.assert_close(w_full.grad, ref_w.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b_full.grad, ref_b.grad, rtol=1e-5, atol=1e-5)
    assert not b_full.grad[:5].any() and not b_full.grad[25:].any()


def test_gradcheck_in_float64() -> None:
    x, w, b, _ = _inputs((2, 3, 4), 5, True, torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(linear, inputs)
    assert torch.autograd.gradgradcheck(linear, inputs)


def test_only_the_gradients_asked_for_are_computed() -> None:
    x, w, b, grad = _inputs((6, 4), 3, True)
    w.requires_grad_()
    linear(x, w, b).backward(grad)
    torch.testing.assert_close(w.grad, grad.t() @ x)
    assert x.grad is None and b.grad is None
    assert linear(x, w.detach(), b).grad_fn is None  # nothing needs a gradient: F.linear itself


def test_under_autocast_it_takes_F_linears_dtype_and_gradients_keep_the_parameters_dtype() -> None:
    x, w, b, grad = _inputs((8, 16), 12, True)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear(*leaves)
        ref = F.linear(*ref_leaves)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    out.float().backward(grad)
    ref.float().backward(grad)
    for ours, theirs in zip(leaves, ref_leaves, strict=True):
        assert ours.grad.dtype == torch.float32
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=2e-2, atol=2e-2)


def test_compiles_without_graph_breaks() -> None:
    x, w, b, grad = _inputs((5, 7), 53, True)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    compiled = torch.compile(linear, fullgraph=True, backend="aot_eager")
    compiled(*leaves).backward(grad)
    _, ref = _grads(F.linear, x, w, b, grad)
    for ours, theirs in zip(leaves, ref, strict=True):
        torch.testing.assert_close(ours.grad, theirs, rtol=1e-5, atol=1e-5)


def test_a_jit_trace_records_aten_linear() -> None:
    """fvcore's counts and ONNX export trace the model: they must see the linear, not a Python op."""

    class Projection(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return linear(x, self.weight, self.bias)

    graph = torch.jit.trace(Projection(4, 5), (torch.randn(3, 4),)).graph
    kinds = {node.kind() for node in graph.nodes()}
    assert "aten::linear" in kinds and "prim::PythonOp" not in kinds
