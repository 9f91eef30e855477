"""``split_linear`` / ``concat_linear``: F.linear's values and gradients, split over outputs or inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from visbench.kernels import concat_linear, split_linear

SIZES = [(53, 32, 53, 32), (5,), (0, 7, 0, 7), (3, 1, 16)]


def _randn(*shape: int, gen: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=dtype)


def _leaves(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def _grads(leaves: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    return [None if t is None else t.grad for t in leaves]


def _assert_same_grads(ours: list, ref: list) -> None:
    for a, b in zip(ours, ref, strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("shape", [(50, 9), (2, 1, 33, 9), (3, 4, 5, 9)])
@pytest.mark.parametrize("bias", [True, False])
def test_split_linear_is_F_linear_split(sizes, shape, bias) -> None:
    gen = torch.Generator().manual_seed(0)
    out_features = sum(sizes)
    x, w = _randn(*shape, gen=gen), _randn(out_features, shape[-1], gen=gen)
    b = _randn(out_features, gen=gen) if bias else None
    grads = [_randn(*shape[:-1], n, gen=gen) for n in sizes]
    ours, ref = _leaves(x, w, b), _leaves(x, w, b)
    outs = split_linear(*ours, sizes)
    ref_outs = F.linear(*ref).split(list(sizes), -1)
    for out, ref_out in zip(outs, ref_outs, strict=True):
        assert out.is_contiguous()
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)  # other GEMM shapes, other rounding
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(ref_outs, grads)
    _assert_same_grads(_grads(ours), _grads(ref))


@pytest.mark.parametrize("widths", [(53, 32), (7,), (0, 7), (3, 1, 16)])
@pytest.mark.parametrize("lead", [(50,), (2, 1, 33), (3, 4, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_concat_linear_is_F_linear_of_the_concatenation(widths, lead, bias) -> None:
    gen = torch.Generator().manual_seed(1)
    xs = [_randn(*lead, n, gen=gen) for n in widths]
    w = _randn(11, sum(widths), gen=gen)
    b = _randn(11, gen=gen) if bias else None
    grad = _randn(*lead, 11, gen=gen)
    ours, ref = _leaves(w, b, *xs), _leaves(w, b, *xs)
    out = concat_linear(ours[2:], ours[0], ours[1])
    ref_out = F.linear(torch.cat(ref[2:], -1), ref[0], ref[1])
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    out.backward(grad)
    ref_out.backward(grad)
    _assert_same_grads(_grads(ours), _grads(ref))


def test_strided_inputs_and_gradients() -> None:
    """Transposed views in, transposed gradients back: the ops read any strides."""
    gen = torch.Generator().manual_seed(2)
    x = _randn(11, 4, 9, gen=gen).transpose(0, 1)  # (4, 11, 9), not contiguous
    w1, b1 = _randn(20, 9, gen=gen), _randn(20, gen=gen)
    grads = [_randn(11, 4, n, gen=gen).transpose(0, 1) for n in (12, 8)]
    ours, ref = _leaves(x, w1, b1), _leaves(x, w1, b1)
    torch.autograd.backward(split_linear(*ours, (12, 8)), grads)
    torch.autograd.backward(F.linear(*ref).split([12, 8], -1), grads)
    _assert_same_grads(_grads(ours), _grads(ref))
    xs = [_randn(11, 4, n, gen=gen).transpose(0, 1) for n in (6, 3)]
    w2, grad = _randn(5, 9, gen=gen), _randn(11, 4, 5, gen=gen).transpose(0, 1)
    ours, ref = _leaves(w2, *xs), _leaves(w2, *xs)
    concat_linear(ours[1:], ours[0], None).backward(grad)
    F.linear(torch.cat(ref[1:], -1), ref[0]).backward(grad)
    _assert_same_grads(_grads(ours), _grads(ref))


def test_gradcheck_in_float64() -> None:
    gen = torch.Generator().manual_seed(3)
    f64 = torch.float64
    x, x2 = _randn(2, 3, 4, gen=gen, dtype=f64), _randn(2, 3, 2, gen=gen, dtype=f64)
    w1, b1 = _randn(6, 4, gen=gen, dtype=f64), _randn(6, gen=gen, dtype=f64)
    w2, b2 = _randn(5, 6, gen=gen, dtype=f64), _randn(5, gen=gen, dtype=f64)
    for t in (x, x2, w1, b1, w2, b2):
        t.requires_grad_()

    def split(x, w, b):
        return split_linear(x, w, b, (1, 2, 3))

    def concat(w, b, x, x2):
        return concat_linear((x, x2), w, b)

    for fn, inputs in ((split, (x, w1, b1)), (concat, (w2, b2, x, x2))):
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


def test_only_the_gradients_asked_for_are_computed() -> None:
    gen = torch.Generator().manual_seed(4)
    x, w, b = _randn(6, 4, gen=gen), _randn(3, 4, gen=gen).requires_grad_(), _randn(3, gen=gen)
    (out,) = split_linear(x, w, b, (3,))
    grad = _randn(6, 3, gen=gen)
    out.backward(grad)
    torch.testing.assert_close(w.grad, grad.t() @ x)
    assert x.grad is None and b.grad is None
    assert all(o.grad_fn is None for o in split_linear(x, w.detach(), b, (1, 2)))  # plain F.linear


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: split_linear(torch.ones(2, 4), torch.ones(5, 4), None, (2, 2)),
            r"sizes \(2, 2\) do not add up",
        ),
        (lambda: concat_linear((torch.ones(2, 3),), torch.ones(5, 4), None), r"widths \(3,\) do not add up"),
    ],
)
def test_sizes_that_do_not_match_the_weight_are_named(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_under_autocast_they_take_F_linears_dtype_and_parameters_keep_theirs() -> None:
    gen = torch.Generator().manual_seed(5)
    x, w, b = _randn(8, 16, gen=gen), _randn(12, 16, gen=gen), _randn(12, gen=gen)
    ours, ref = _leaves(x, w, b), _leaves(x, w, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = split_linear(*ours, (5, 7))
        out = concat_linear(parts, ours[1][:, :12], None)
        ref_parts = F.linear(*ref).split([5, 7], -1)
        ref_out = F.linear(torch.cat(ref_parts, -1), ref[1][:, :12])
    assert out.dtype == ref_out.dtype == torch.bfloat16
    # concat_linear adds its groups' products into a bf16 output: one more bf16 rounding (an ulp)
    torch.testing.assert_close(out, ref_out, rtol=2e-2, atol=6e-2)
    out.float().sum().backward()
    ref_out.float().sum().backward()
    for a, r in zip(_grads(ours), _grads(ref), strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, r, rtol=5e-2, atol=5e-2)


def test_compile_without_graph_breaks() -> None:
    gen = torch.Generator().manual_seed(6)
    x, w1, b1, w2 = _randn(5, 7, gen=gen), _randn(9, 7, gen=gen), _randn(9, gen=gen), _randn(3, 9, gen=gen)

    def block(x, w1, b1, w2):
        a, c = split_linear(x, w1, b1, (4, 5))
        return concat_linear((F.gelu(a), c), w2, None)

    ours, ref = _leaves(x, w1, b1, w2), _leaves(x, w1, b1, w2)
    torch.compile(block, fullgraph=True, backend="aot_eager")(*ours).sum().backward()
    a, c = F.linear(ref[0], ref[1], ref[2]).split([4, 5], -1)
    F.linear(torch.cat([F.gelu(a), c], -1), ref[3]).sum().backward()
    _assert_same_grads(_grads(ours), _grads(ref))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_jit_trace_records_aten_linear() -> None:
    """fvcore's counts and ONNX export trace the model: they must see the linears, not Python ops."""

    class Projections(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return concat_linear(
                split_linear(x, self.fc1.weight, self.fc1.bias, (2, 4)), self.fc2.weight, None
            )

    graph = torch.jit.trace(Projections(), (torch.randn(3, 4),)).graph
    kinds = [node.kind() for node in graph.nodes()]
    assert kinds.count("aten::linear") == 2 and "prim::PythonOp" not in kinds


def test_meta_tensors_have_shapes_only() -> None:
    """Models are built on the meta device to count MACs: the ops must run there (autocast has no meta)."""
    with torch.device("meta"):
        x, w1, b1, w2 = (torch.empty(*s, requires_grad=True) for s in ((2, 5, 4), (6, 4), (6,), (3, 6)))
        parts = split_linear(x, w1, b1, (2, 4))
        out = concat_linear(parts, w2, None)
    assert [p.shape for p in parts] == [(2, 5, 2), (2, 5, 4)] and out.shape == (2, 5, 3)
    assert out.device.type == "meta"
