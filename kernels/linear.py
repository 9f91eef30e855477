"""The shared block's projections: one linear layer split over its outputs, one over its inputs.

MambaOut's Gated CNN block applies ``fc1`` and then splits its output into channel groups (gate,
identity, token-mixed), and ``fc2`` reads their concatenation. Done as one GEMM, the element-wise ops
that follow would run on strided column views, which are not vectorised, and the split and the
concatenation would each copy (B, H, W, ~2 hidden) tensors forward and backward. These two ops compute
the same products one GEMM per group, with contiguous results and no concatenation:

- :func:`split_linear` is ``F.linear(x, weight, bias).split(sizes, -1)``. Its input gradient, a sum over
  the groups, is accumulated inside the GEMMs (``addmm`` into its own output) instead of by autograd's
  separate additions.
- :func:`concat_linear` is ``F.linear(torch.cat(xs, -1), weight, bias)``. Its forward accumulates the
  groups' products inside the GEMMs the same way.

Both take the bias gradient as a GEMV (``gradᵀ · 1``): torch's ``grad.sum(0)`` over all rows is slow on
CPU when the width is not a multiple of the vector width (on the 1-D bodies' (50176, 53) gate gradient
1.57 ms against 0.36 ms). Values are the same products as ``F.linear``'s, summed in another order.
Under ``torch.jit.trace`` (fvcore's counts, ONNX) and without autograd they run as plain ``F.linear``
calls; under autocast their operands are cast to autocast's dtype first, as autocast does for
``F.linear`` (``concat_linear`` then adds its groups' products into an output of that dtype: one more
rounding than a single GEMM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["concat_linear", "split_linear"]


def _column_sums(rows: torch.Tensor) -> torch.Tensor:
    """``rows.sum(0)`` of a (tokens, features) gradient, as one GEMV."""
    return torch.mv(rows.t(), rows.new_ones(rows.shape[0]))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., features) as (tokens, features)."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])  # not -1: a group may have no features


def _add_product(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``acc + a @ b`` written into acc by the GEMM itself (``addmm(out=acc)``, which FlopCounterMode
    counts as the addmm it is; it does not count ``addmm_``), out of place where autograd records
    (a double backward)."""
    if torch.is_grad_enabled():
        return torch.addmm(acc, a, b)
    return torch.addmm(acc, a, b, out=acc)


def _split_values(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sizes: Sequence[int]
) -> tuple[torch.Tensor, ...]:
    biases = bias.split(sizes) if bias is not None else (None,) * len(sizes)
    return tuple(F.linear(x, w, b) for w, b in zip(weight.split(sizes), biases, strict=True))


def _concat_values(
    xs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    weights = weight.split([x.shape[-1] for x in xs], dim=1)
    out = F.linear(xs[0], weights[0], bias)
    out_rows = _rows(out)  # a view: F.linear's output is contiguous
    for x, w in zip(xs[1:], weights[1:], strict=True):
        out_rows = _add_product(out_rows, _rows(x), w.t())
    return out_rows.view(out.shape)


class _SplitLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias).split(sizes, -1)``, one GEMM per group; see the module docstring."""

    @staticmethod
    def forward(ctx, x, weight, bias, sizes):  # noqa: ANN001, ANN205 (autograd.Function's signature)
        ctx.save_for_backward(x, weight)
        ctx.sizes, ctx.has_bias = tuple(sizes), bias is not None
        return _split_values(x, weight, bias, sizes)

    @staticmethod
    def backward(ctx, *grads):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias, _ = ctx.needs_input_grad
        grad_rows = [_rows(g) for g in grads]
        grad_x = grad_weight = grad_bias = None
        if need_x:
            weights = weight.split(ctx.sizes)
            acc = torch.mm(grad_rows[0], weights[0])
            for g, w in zip(grad_rows[1:], weights[1:], strict=True):
                acc = _add_product(acc, g, w)  # the groups' sum inside the GEMMs
            grad_x = acc.view(x.shape)
        if need_weight:
            x_rows = _rows(x)
            grad_weight = torch.cat([g.t() @ x_rows for g in grad_rows])
        if ctx.has_bias and need_bias:
            grad_bias = torch.cat([_column_sums(g) for g in grad_rows])
        return grad_x, grad_weight, grad_bias, None


class _ConcatLinear(torch.autograd.Function):
    """``F.linear(torch.cat(xs, -1), weight, bias)`` without the concatenation; see the module docstring."""

    @staticmethod
    def forward(ctx, weight, bias, *xs):  # noqa: ANN001, ANN205
        ctx.save_for_backward(weight, *xs)
        ctx.has_bias = bias is not None
        return _concat_values(xs, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        weight, *xs = ctx.saved_tensors
        need_weight, need_bias, *need_xs = ctx.needs_input_grad
        rows = _rows(grad)
        weights = weight.split([x.shape[-1] for x in xs], dim=1)
        grad_xs = [grad @ w if need else None for w, need in zip(weights, need_xs, strict=True)]
        grad_weight = torch.cat([rows.t() @ _rows(x) for x in xs], dim=1) if need_weight else None
        grad_bias = _column_sums(rows) if ctx.has_bias and need_bias else None
        return (grad_weight, grad_bias, *grad_xs)


def _needs_backward(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will need a backward of these inputs (else the plain F.linear calls run)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """Autocast's dtype when it is on for this device type (never for ``meta``, which it does not know)."""
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def split_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sizes: Sequence[int]
) -> tuple[torch.Tensor, ...]:
    """``F.linear(x, weight, bias).split(sizes, -1)`` with contiguous parts (x: ``(..., in)``, weight:
    ``(sum(sizes), in)``); the input gradient is summed inside the GEMMs, the bias gradient a GEMV."""
    if sum(sizes) != weight.shape[0]:
        raise ValueError(f"sizes {tuple(sizes)} do not add up to weight's {weight.shape[0]} output features")
    if torch.jit.is_tracing():  # one aten::linear, as the layer is declared (fvcore's count, ONNX)
        return tuple(F.linear(x, weight, bias).split(list(sizes), -1))
    if not _needs_backward(x, weight, bias):
        return _split_values(x, weight, bias, sizes)
    dtype = _autocast_dtype(x.device.type)
    if dtype is not None:  # autocast's rule for linear, as graph ops outside the Function
        with torch.autocast(x.device.type, enabled=False):
            return _SplitLinear.apply(x.to(dtype), weight.to(dtype), _cast(bias, dtype), tuple(sizes))
    return _SplitLinear.apply(x, weight, bias, tuple(sizes))


def concat_linear(
    xs: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``F.linear(torch.cat(xs, -1), weight, bias)`` (xs: ``(..., in_i)``, weight: ``(out, sum(in_i))``)
    without the concatenation; the groups' products are summed inside the GEMMs, the bias gradient a GEMV."""
    if sum(x.shape[-1] for x in xs) != weight.shape[1]:
        widths = tuple(x.shape[-1] for x in xs)
        raise ValueError(f"input widths {widths} do not add up to weight's {weight.shape[1]} input features")
    if torch.jit.is_tracing():
        return F.linear(torch.cat(list(xs), -1), weight, bias)
    if not _needs_backward(weight, bias, *xs):
        return _concat_values(xs, weight, bias)
    dtype = _autocast_dtype(xs[0].device.type)
    if dtype is not None:
        with torch.autocast(xs[0].device.type, enabled=False):
            return _ConcatLinear.apply(weight.to(dtype), _cast(bias, dtype), *(x.to(dtype) for x in xs))
    return _ConcatLinear.apply(weight, bias, *xs)
