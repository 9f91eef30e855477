"""``F.linear`` whose bias gradient is a matrix-vector product, the projection op of the shared block.

torch's autograd reduces a linear layer's bias gradient with ``grad.sum(0)`` over all rows. On CPU that
reduction is slow when the width is not a multiple of the vector width: on a (50176, 53) gradient, the
1-D bodies' gate width, it took 1.57 ms against 0.36 ms for the same sum as a GEMV (``gradᵀ · 1``), and
the bias gradients were about 5 % of the gated CNN body's train step. The forward and the input and
weight gradients are the products autograd computes for ``F.linear``; only the bias sum changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["linear"]


class _LinearGemvBiasGrad(torch.autograd.Function):
    """``F.linear``; the backward takes the bias gradient as ``gradᵀ · ones`` (one GEMV)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad
        rows = grad.reshape(-1, grad.shape[-1])  # (tokens, out_features)
        grad_x = grad @ weight if need_x else None
        grad_weight = rows.t() @ x.reshape(-1, x.shape[-1]) if need_weight else None
        grad_bias = None
        if ctx.has_bias and need_bias:
            grad_bias = torch.mv(rows.t(), rows.new_ones(rows.shape[0]))
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (x: ``(..., in)``, weight: ``(out, in)``), with a GEMV bias gradient.

    Same values as ``F.linear``; the gradients are the same products, summed in another order for the
    bias. Without autograd (no input needs a gradient) and under ``torch.jit.trace`` it is ``F.linear``
    itself; under autocast its operands are cast to autocast's dtype first, as autocast does.
    """
    needs_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if not torch.is_grad_enabled() or not needs_grad or torch.jit.is_tracing():
        return F.linear(x, weight, bias)  # a trace (fvcore, ONNX) records aten::linear, not a Python op
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # Autocast's own rule for linear (all operands in its dtype), as graph ops outside the
        # Function, so the backward gets its inputs and gradient in one dtype.
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device_type, enabled=False):
            return _LinearGemvBiasGrad.apply(x, weight, bias)
    return _LinearGemvBiasGrad.apply(x, weight, bias)
