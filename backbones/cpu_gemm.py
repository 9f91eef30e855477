"""Linear layers for the blocks' no-grad inference paths: oneDNN's GEMM on CPU, PyTorch's BLAS elsewhere.

Why: for float32 on CPU, ``F.linear`` calls MKL's sgemm, which is not tuned for AMD processors, while
oneDNN (which PyTorch also ships, as ``torch.ops.mkldnn``) picks its kernels by instruction set. On a
2-core AMD EPYC (Zen 5, AVX-512) oneDNN ran ViT-S's and MambaOut-T's linear shapes 1.9x-2.1x faster
than MKL (``benchmarks/cpu_gemm.py`` measures a CPU; ``benchmarks/backbones.py`` the effect on
whole models). oneDNN also fuses GELU and the residual add into the GEMM (post-ops), which saves a
pass over the output each. Results are float32 GEMMs either
way (sums in another order: equal to float rounding).

``VISBENCH_CPU_GEMM`` picks the back end: ``auto`` (default: oneDNN on x86-64 when PyTorch has it;
measured only there), ``onednn`` (an error when it is missing) or ``blas`` (``F.linear`` /
``addmm_``, as before). Only plain eager float32 CPU tensors without autograd or autocast go to
oneDNN. Everything else takes the BLAS route, so these functions can stand in for ``F.linear``
anywhere: CUDA, other dtypes, autocast, gradients, forward-mode AD and ``torch.func`` transforms
(oneDNN's ops have no derivatives), a strided or broadcast bias, tensor subclasses (fake tensors),
``torch.jit.trace``, ``torch.compile`` (inductor makes its own choice) and any active dispatch
mode: FLOP counters (``visbench.backbones.complexity``) and other tools that read the aten ops know
``addmm`` but neither oneDNN's ops nor their cost.
"""

from __future__ import annotations

import functools
import os
import platform

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

__all__ = ["BACKEND_ENV", "gemm_backend", "linear", "linear_add", "linear_gelu"]

BACKEND_ENV = "VISBENCH_CPU_GEMM"
_BACKENDS = ("auto", "onednn", "blas")
# where the oneDNN route was measured to pay; elsewhere (Arm's oneDNN builds) auto keeps BLAS
_X86_64 = platform.machine().lower() in ("x86_64", "amd64")


@functools.cache
def _onednn_linear_available() -> bool:
    """Whether this PyTorch has oneDNN and its fused linear op (``torch.ops.mkldnn._linear_pointwise``)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def gemm_backend() -> str:
    """The CPU back end in force: ``onednn`` or ``blas`` (from ``VISBENCH_CPU_GEMM``, default ``auto``)."""
    choice = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if choice not in _BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={choice!r}: expected one of {', '.join(_BACKENDS)}")
    available = _onednn_linear_available() and torch.backends.mkldnn.enabled
    if choice == "onednn" and not available:
        raise RuntimeError(
            f"{BACKEND_ENV}=onednn, but this PyTorch has no usable oneDNN linear "
            "(torch.backends.mkldnn unavailable or disabled); use auto or blas"
        )
    if choice == "auto":
        return "onednn" if available and _X86_64 else "blas"
    return choice


def _dispatch_mode_active() -> bool:
    """Whether a Python dispatch mode (FakeTensorMode, a FLOP counter, a recorder) sees the ops."""
    stack_depth = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return stack_depth is None or stack_depth() > 0  # unknown: assume one is, and stay on aten ops


def _derivative_transform_active() -> bool:
    """Whether forward-mode AD (a dual level) or a ``torch.func`` transform (jvp, vmap, grad) is on:
    oneDNN's ops have no derivative formulas, so tangents would be dropped without a word."""
    functorch_level = getattr(getattr(torch._C, "_functorch", None), "maybe_current_level", None)
    if functorch_level is None or functorch_level() is not None:  # unknown counts as on
        return True
    return getattr(forward_ad, "_current_level", 0) >= 0


def _dense_bias(bias: torch.Tensor | None, out_features: int) -> bool:
    """oneDNN reads the bias as dense float32 memory of ``out_features`` values, ignoring strides and
    broadcasting."""
    return bias is None or (
        bias.dtype == torch.float32 and bias.shape == (out_features,) and bias.is_contiguous()
    )


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and type(x) is torch.Tensor
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dim() == 2
        and weight.dtype == torch.float32
        and _dense_bias(bias, weight.shape[0])
        and not torch.is_grad_enabled()  # the oneDNN ops have no autograd formula
        and not torch.is_autocast_enabled("cpu")  # autocast would give F.linear a bfloat16 result
        and not _derivative_transform_active()
        and not _dispatch_mode_active()
        and gemm_backend() == "onednn"
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``."""
    if _onednn_applies(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def linear_gelu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none"
) -> torch.Tensor:
    """``F.gelu(F.linear(x, weight, bias), approximate=approximate)``, GELU fused or in place."""
    if _onednn_applies(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], approximate)
    return torch.ops.aten.gelu_(F.linear(x, weight, bias), approximate=approximate)


def linear_add(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor
) -> torch.Tensor:
    """``residual + F.linear(x, weight, bias)`` as a new contiguous tensor; ``residual`` is not written.

    oneDNN adds ``residual`` inside the GEMM; the BLAS route accumulates the product into
    ``residual + bias`` with ``addmm_``, so there is no separate bias copy or residual add either.
    """
    out_features, in_features = weight.shape
    if residual.shape[-1] != out_features or residual.shape[:-1] != x.shape[:-1]:
        raise ValueError(
            f"residual of shape {tuple(residual.shape)} does not match the output of a linear layer "
            f"{in_features}->{out_features} on input {tuple(x.shape)}"
        )
    if _onednn_applies(x, weight, bias) and residual.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual.contiguous(), weight, bias, "add")
    stream = residual.clone() if bias is None else residual + bias
    stream = stream.contiguous()
    stream.view(-1, out_features).addmm_(x.reshape(-1, in_features), weight.t())
    return stream
