"""Depthwise causal 1-D convolution with the `causal-conv1d` package's conventions.

``causal_conv1d(x, weight, bias, activation)`` computes, per channel ``d`` and step ``t``::

    out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - (width - 1) + k])

with zeros before the sequence start, so ``out[..., t]`` depends on ``x[..., :t + 1]`` only. It is the
short convolution in front of Mamba's selective scan.

Back ends, behind one ``torch.library`` custom op (``visbench::causal_conv1d``):

- the `causal-conv1d` package's CUDA kernels, when ``x`` is on CUDA and the package with its compiled
  ``causal_conv1d_cuda`` module imports (looked up lazily, never at import of this module);
- on CPU, numba kernels (``visbench.kernels._causal_conv1d_numba``: one pass per direction, SiLU
  fused) when numba imports;
- otherwise a reference through ``F.conv1d`` (groups = dim, left padding ``width - 1``), computed in
  float32 (float64 for float64 inputs) and cast back to ``x.dtype``, like the CUDA kernel.

The op has a fake implementation (``torch.compile`` / meta tensors), autograd (the backward is its own
op, ``visbench::causal_conv1d_bwd``, which recomputes the pre-activation instead of storing it), and
FLOP formulas for ``torch.utils.flop_counter.FlopCounterMode``: ``2 * batch * dim * seqlen * width``
forward, twice that backward. Double backward is not supported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import flop_registry, register_flop_formula
from visbench.kernels.layouts import in_layout_of
from visbench.kernels.scan_cpu import work_blocks

__all__ = ["ACTIVATIONS", "causal_conv1d", "causal_conv1d_reference", "package_available"]

ACTIVATIONS = (None, "silu", "swish")
_PACKAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _shape(t: object) -> object:
    return tuple(t.shape) if isinstance(t, Tensor) else t if t is None else type(t).__name__


def _check_inputs(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> None:
    """Raise ValueError naming the argument at fault."""
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a (batch, dim, seqlen) tensor, got shape {_shape(x)}")
    if x.shape[-1] < 1:
        raise ValueError(f"x must have seqlen >= 1, got shape {_shape(x)}")
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"weight must be (dim, width) with dim = x.shape[1] = {x.shape[1]}, got weight shape "
            f"{_shape(weight)} for x of shape {_shape(x)}"
        )
    if weight.shape[1] < 1:
        raise ValueError(f"weight must have width >= 1, got weight shape {_shape(weight)}")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (x.shape[1],)):
        raise ValueError(f"bias must be (dim,) = ({x.shape[1]},), got shape {_shape(bias)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; put them on one device")


@functools.cache
def _package_functions() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """The causal-conv1d package's (fwd, bwd) CUDA functions, or None when they cannot be used."""
    try:
        import causal_conv1d_cuda  # noqa: F401  (compiled extension; may be a test placeholder)

        if not hasattr(causal_conv1d_cuda, "causal_conv1d_fwd"):
            return None
        from causal_conv1d.cpp_functions import causal_conv1d_bwd_function, causal_conv1d_fwd_function
    except Exception:  # ImportError, or a build made for another torch / CUDA
        return None
    return causal_conv1d_fwd_function, causal_conv1d_bwd_function


def package_available() -> bool:
    """True when the causal-conv1d package's compiled CUDA kernels can be used."""
    return _package_functions() is not None


def _use_package(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    return (
        x.is_cuda
        and 2 <= weight.shape[1] <= 4
        and x.dtype in _PACKAGE_DTYPES
        and weight.dtype in _PACKAGE_DTYPES
        and (bias is None or bias.dtype == weight.dtype)
        and _package_functions() is not None
    )


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    return (
        torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
    )


def _pre_activation(x_padded: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Depthwise valid convolution of an already left-padded input (all in one dtype)."""
    return F.conv1d(x_padded, weight.unsqueeze(1), bias, groups=weight.shape[0])


def causal_conv1d_reference(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """Plain-PyTorch definition (differentiable by autograd); the spec the op is tested against."""
    _check_inputs(x, weight, bias, activation)
    dtype = _compute_dtype(x, weight, bias)
    width = weight.shape[1]
    bias_c = None if bias is None else bias.to(dtype)
    out = _pre_activation(F.pad(x.to(dtype), (width - 1, 0)), weight.to(dtype), bias_c)
    if activation is not None:
        out = F.silu(out)
    return out.to(x.dtype)


# --------------------------------------------------------------------------- CPU kernels (numba)


@functools.cache
def _numba_kernels() -> Any:
    """``visbench.kernels._causal_conv1d_numba``, or None without numba (the reference runs then)."""
    try:
        from visbench.kernels import _causal_conv1d_numba

        return _causal_conv1d_numba
    except Exception:  # numba missing or broken
        return None


def _use_numba(x: Tensor) -> bool:
    return x.device.type == "cpu" and _numba_kernels() is not None


def _numpy(t: Tensor) -> Any:
    return t.detach().numpy()


def _cpu_operands(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Any]:
    """x in the compute dtype and its own strides (the kernels read any), weight and bias contiguous."""
    dtype = _compute_dtype(x, weight, bias)
    x = x.to(dtype)
    weight = weight.to(dtype).contiguous()
    bias = weight.new_zeros(1) if bias is None else bias.to(dtype).contiguous()
    return x, weight, bias, _numba_kernels()


# Rows of at most this many steps go to the channel-last kernels even when x is contiguous (one
# transposing copy in, one out): the row kernels' fixed cost per row dominates short rows. Measured at
# one thread, fwd + bwd, width 4, batch 128 (the study's later stages): 16 steps x 128 channels 3.1 ->
# 1.7 ms, 4 x 256 6.0 -> 1.3 ms, 1 x 384 5.9 -> 0.4 ms; at 64 steps the row kernels were faster.
SHORT_ROWS = 16


def _use_channel_last_kernels(x: Tensor) -> bool:
    """Whether (b, d, L) x goes to the channel-last kernels: it is a transposed C-contiguous (b, L, d)
    tensor (a projection's output transposed; also any x with L = 1), or its rows are short."""
    return x.transpose(1, 2).is_contiguous() or x.shape[-1] <= SHORT_ROWS


def _tile_steps(batch: int, length: int, dim: int) -> int:
    """Steps per work item of the channel-last kernels: tiles of about 4096 elements (their buffers
    stay in L1 / L2), made smaller when that leaves fewer than two items per thread."""
    steps = max(1, min(length, 4096 // max(dim, 1)))
    per_sample = -(-2 * torch.get_num_threads() // batch)
    return max(1, min(steps, -(-length // per_sample)))


def _cpu_forward(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    """The activation in x's layout when the kernels allow it (the op copies it there otherwise)."""
    xc, w, b, kern = _cpu_operands(x, weight, bias)
    kern.set_threads(torch.get_num_threads())
    if _use_channel_last_kernels(xc):
        batch, dim, length = xc.shape
        x_steps = xc.transpose(1, 2).contiguous()  # (b, L, d): no copy for a channel-last x
        out_steps = torch.empty_like(x_steps)
        kern.kernel("conv_fwd_channel_last", _numpy(out_steps).dtype)(
            _numpy(x_steps),
            _numpy(w),
            _numpy(b),
            bias is not None,
            silu,
            _tile_steps(batch, length, dim),
            _numpy(out_steps),
        )
        return out_steps.transpose(1, 2).to(x.dtype)
    out = torch.empty_like(xc)  # x's layout
    kern.kernel("conv_fwd", _numpy(out).dtype)(
        _numpy(xc), _numpy(w), _numpy(b), bias is not None, silu, _numpy(out)
    )
    return out.to(x.dtype)


def _cpu_backward(
    x: Tensor, weight: Tensor, bias: Tensor | None, dout: Tensor, silu: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx in x's layout when the kernels allow it, dweight, dbias); see :func:`_cpu_forward`.

    The kernels write per-work-item weight and bias gradients, summed here (deterministic, no atomics).
    """
    xc, w, b, kern = _cpu_operands(x, weight, bias)
    grad = dout.to(xc.dtype)
    batch, dim, length = xc.shape
    kern.set_threads(torch.get_num_threads())
    if _use_channel_last_kernels(xc):
        steps = _tile_steps(batch, length, dim)
        groups = work_blocks(batch, -(-length // steps))  # tiles per sample, split for the threads
        dweight_part, dbias_part = w.new_empty(batch * groups, *w.shape), w.new_empty(batch * groups, dim)
        x_steps = xc.transpose(1, 2).contiguous()
        dx_steps = torch.empty_like(x_steps)
        kern.kernel("conv_bwd_channel_last", _numpy(dx_steps).dtype)(
            _numpy(x_steps),
            _numpy(w),
            _numpy(b),
            bias is not None,
            silu,
            _numpy(grad.transpose(1, 2).contiguous()),
            steps,
            groups,
            _numpy(dx_steps),
            _numpy(dweight_part),
            _numpy(dbias_part),
        )
        dx = dx_steps.transpose(1, 2)
    else:
        dx = torch.empty_like(xc)
        dweight_part, dbias_part = w.new_empty(batch, *w.shape), w.new_empty(batch, dim)
        kern.kernel("conv_bwd", _numpy(dx).dtype)(
            _numpy(xc),
            _numpy(w),
            _numpy(b),
            bias is not None,
            silu,
            _numpy(grad),
            work_blocks(batch, dim),
            _numpy(dx),
            _numpy(dweight_part),
            _numpy(dbias_part),
        )
    dweight = dweight_part.sum(0)
    dbias = weight.new_zeros((weight.shape[0],)) if bias is None else dbias_part.sum(0).to(bias.dtype)
    return dx.to(x.dtype), dweight.to(weight.dtype), dbias


# --------------------------------------------------------------------------- custom ops


# The output's layout follows x's (torch.empty_like), so inductor must hand the ops their inputs in the
# stride order they were traced with, not a layout of its choosing.
_LAYOUT_TAGS = (torch.Tag.needs_fixed_stride_order,)


@torch.library.custom_op("visbench::causal_conv1d", mutates_args=(), tags=_LAYOUT_TAGS)
def _causal_conv1d_op(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    if _use_package(x, weight, bias):
        fwd, _ = _package_functions()
        x_in = x if x.stride(-1) == 1 else x.contiguous()
        bias = None if bias is None else bias.contiguous()
        return in_layout_of(x, fwd(x_in, weight.contiguous(), bias, None, None, None, silu))
    if _use_numba(x):
        return in_layout_of(x, _cpu_forward(x, weight, bias, silu))
    return in_layout_of(x, causal_conv1d_reference(x, weight, bias, "silu" if silu else None))


@_causal_conv1d_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("visbench::causal_conv1d_bwd", mutates_args=(), tags=_LAYOUT_TAGS)
def _causal_conv1d_bwd_op(
    x: Tensor, weight: Tensor, bias: Tensor | None, dout: Tensor, silu: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dx, dweight, dbias); without bias, dbias is zeros (the schema has no optional outputs)."""
    if _use_package(x, weight, bias) and dout.dtype == x.dtype:
        _, bwd = _package_functions()
        x_in = x if x.stride(-1) == 1 else x.contiguous()
        dout = dout if dout.stride(-1) == 1 else dout.contiguous()
        b = None if bias is None else bias.contiguous()
        dx, dweight, dbias, _ = bwd(x_in, weight.contiguous(), b, dout, None, None, None, None, False, silu)
        if dbias is None:
            dbias = weight.new_zeros((weight.shape[0],))
        return in_layout_of(x, dx), dweight, dbias
    if _use_numba(x):
        dx, dweight, dbias = _cpu_backward(x, weight, bias, dout, silu)
        return in_layout_of(x, dx), dweight, dbias

    dim, width = weight.shape
    seqlen = x.shape[-1]
    dtype = _compute_dtype(x, weight, bias, dout)
    x_c, w, grad = x.to(dtype), weight.to(dtype), dout.to(dtype)
    if silu:  # recompute the pre-activation p; d silu(p) / dp = s * (1 + p * (1 - s)), s = sigmoid(p)
        pre = _pre_activation(F.pad(x_c, (width - 1, 0)), w, None if bias is None else bias.to(dtype))
        sig = torch.sigmoid(pre)
        grad = grad * sig * (1 + pre * (1 - sig))
    # out[t] = sum_k w[k] * x[t - s_k] with s_k = width - 1 - k, so
    # dx[t] = sum_k w[k] * grad[t + s_k] and dw[k] = sum_{b,t} grad[t] * x[t - s_k]. One pass per tap:
    # measured about 3x faster on CPU than aten.convolution_backward, which unfolds per group.
    dx = grad * w[:, -1, None]
    dweight = torch.zeros((dim, width), dtype=dtype, device=x.device)
    dweight[:, -1] = (grad * x_c).sum(dim=(0, 2))
    for k in range(width - 1):
        shift = width - 1 - k
        if shift < seqlen:
            dx[..., : seqlen - shift].addcmul_(grad[..., shift:], w[:, k, None])
            dweight[:, k] = (grad[..., shift:] * x_c[..., : seqlen - shift]).sum(dim=(0, 2))
    dbias = weight.new_zeros((dim,)) if bias is None else grad.sum(dim=(0, 2)).to(bias.dtype)
    return in_layout_of(x, dx.to(x.dtype)), dweight.to(weight.dtype), dbias


@_causal_conv1d_bwd_op.register_fake
def _(
    x: Tensor, weight: Tensor, bias: Tensor | None, dout: Tensor, silu: bool
) -> tuple[Tensor, Tensor, Tensor]:
    bias_dtype = weight.dtype if bias is None else bias.dtype
    return (
        torch.empty_like(x),
        weight.new_empty(weight.shape),
        weight.new_empty((weight.shape[0],), dtype=bias_dtype),
    )


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, weight, bias, silu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu = silu


def _backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
    x, weight, bias = ctx.saved_tensors
    dx, dweight, dbias = torch.ops.visbench.causal_conv1d_bwd(x, weight, bias, dout, ctx.silu)
    return dx, dweight, (dbias if bias is not None else None), None


_causal_conv1d_op.register_autograd(_backward, setup_context=_setup_context)


def _forward_flops(x_shape: tuple[int, ...], weight_shape: tuple[int, ...]) -> int:
    batch, dim, seqlen = x_shape
    return 2 * batch * dim * seqlen * weight_shape[1]


# Guarded so that re-importing the module (importlib.reload) does not raise "duplicate registrations".
if torch.ops.visbench.causal_conv1d not in flop_registry:

    @register_flop_formula(torch.ops.visbench.causal_conv1d)
    def _causal_conv1d_flop(x_shape, weight_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return _forward_flops(x_shape, weight_shape)

    @register_flop_formula(torch.ops.visbench.causal_conv1d_bwd)
    def _causal_conv1d_bwd_flop(
        x_shape, weight_shape, *args: Any, out_shape: Any = None, **kwargs: Any
    ) -> int:
        return 2 * _forward_flops(x_shape, weight_shape)


# --------------------------------------------------------------------------- public function


def causal_conv1d(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """Depthwise causal conv1d, a drop-in for ``causal_conv1d.causal_conv1d_fn`` (without its state args).

    Args:
        x: (batch, dim, seqlen), any float dtype; channel-first or channel-last strides.
        weight: (dim, width).
        bias: (dim,) or None.
        activation: None, "silu" or "swish" (the same as "silu").

    Returns:
        (batch, dim, seqlen) tensor of ``x.dtype`` in ``x``'s memory layout (``torch.empty_like(x)``):
        a channel-last ``x`` (a (batch, seqlen, dim) tensor's transpose) gives a channel-last output, so
        a channels-last caller transposes back for free.
    """
    _check_inputs(x, weight, bias, activation)
    return torch.ops.visbench.causal_conv1d(x, weight, bias, activation is not None)
