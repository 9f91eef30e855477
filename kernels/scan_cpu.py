"""`cpu` back end: fused numba kernels, or a pure-PyTorch chunked fallback when numba is missing.

Why numba: it is a pip dependency with its own LLVM (no C++ toolchain, no ninja), compiles the two
kernels once per machine (tens of seconds on a busy 2-core box) and then loads them from its on-disk
cache in about a second; ``torch.utils.cpp_extension`` would need ninja, g++ and a minute per build
for the same loop. Speed comes from the kernel shape, not the JIT: the state stays in registers, the
loop over N is SIMD (see ``_scan_cpu_numba.fast_exp``), and the element-wise ends (bias, softplus,
silu gate) are vectorised torch ops around it.

``VISBENCH_SCAN_CPU_IMPL=torch`` (or :func:`use_implementation`) forces the fallback, e.g. for tests.
numba writes its cache next to ``kernels/_scan_cpu_numba.py`` (``__pycache__``), or, when that folder
is read-only, to its user-wide cache; ``NUMBA_CACHE_DIR`` overrides both.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

import torch
import torch.nn.functional as F

__all__ = [
    "BACKWARD_CHUNK",
    "SUPPORTS_FLOAT64",
    "implementation",
    "is_available",
    "selective_scan_bwd",
    "selective_scan_fwd",
    "use_implementation",
]

SUPPORTS_FLOAT64 = True
IMPL_ENV = "VISBENCH_SCAN_CPU_IMPL"
# Steps between state checkpoints in the numba backward. Sequences up to this length are done in one
# chunk (one thread-local buffer of BACKWARD_CHUNK x N states); longer ones pay one extra forward pass.
BACKWARD_CHUNK = 2048
_forced: str | None = None


def is_available(device: torch.device) -> bool:
    """The `cpu` back end runs CPU tensors (with numba or, failing that, the PyTorch fallback)."""
    return torch.device(device).type == "cpu"


@functools.cache
def _numba_module() -> ModuleType | None:
    try:
        return importlib.import_module("visbench.kernels._scan_cpu_numba")
    except Exception:  # numba missing or broken: the fallback takes over
        return None


def use_implementation(name: str | None) -> None:
    """Force ``"numba"`` or ``"torch"`` for this process; ``None`` goes back to the default."""
    global _forced
    if name not in (None, "numba", "torch"):
        raise ValueError(f"use_implementation: expected 'numba', 'torch' or None, got {name!r}")
    _forced = name


def implementation() -> str:
    """``"numba"`` when importable (unless forced otherwise), else ``"torch"``."""
    wanted = _forced or os.environ.get(IMPL_ENV, "").strip().lower() or "numba"
    if wanted not in ("numba", "torch"):
        raise ValueError(f"{IMPL_ENV}={wanted!r}: expected 'numba' or 'torch'")
    if wanted == "numba" and _numba_module() is None:
        return "torch"
    return wanted


def _numpy(t: torch.Tensor):
    return t.detach().numpy()


def _bt(t: torch.Tensor) -> torch.Tensor:
    """(b, g, N, L) -> (b, g, L, N) contiguous: the kernels' inner loop over N is then unit-stride."""
    return t.transpose(2, 3).contiguous()


def _time_step(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool):
    """(raw, dt): delta + delta_bias, and its softplus when asked (torch's threshold 20, as mamba)."""
    raw = delta if delta_bias is None else delta + delta_bias[:, None]
    return raw, (F.softplus(raw) if softplus else raw).contiguous()


def _d_skip(D: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return D if D is not None else like.new_zeros(1)


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool):
    """Back-end contract forward: (out (b, d, L), last_state (b, d, N))."""
    if implementation() == "torch":
        from visbench.kernels import _scan_cpu_torch

        return _scan_cpu_torch.scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    kern = _numba_module()
    batch, dim, length = u.shape
    _, dt = _time_step(delta, delta_bias, delta_softplus)
    out = u.new_empty(batch, dim, length)
    last_state = u.new_empty(batch, dim, A.shape[1])
    kern.set_threads(torch.get_num_threads())
    kern.scan_fwd(
        _numpy(u),
        _numpy(dt),
        _numpy(A),
        _numpy(_bt(B)),
        _numpy(_bt(C)),
        _numpy(_d_skip(D, u)),
        D is not None,
        _numpy(out),
        _numpy(last_state),
    )
    if z is not None:
        out = out * F.silu(z)
    return out, last_state


def _blocks_per_group(batch: int, groups: int, dims_per_group: int) -> int:
    """Split each group's dims into blocks so that there are a couple of work items per thread."""
    items_wanted = 2 * torch.get_num_threads()
    return max(1, min(dims_per_group, -(-items_wanted // (batch * groups))))


def selective_scan_bwd(
    dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, chunk: int | None = None
):
    """Back-end contract backward: (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), None for absent inputs.

    ``chunk`` overrides :data:`BACKWARD_CHUNK` (the tests use small values to cross chunk borders).
    """
    if implementation() == "torch":
        from visbench.kernels import _scan_cpu_torch

        return _scan_cpu_torch.scan_bwd(
            dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk=chunk or 64
        )
    kern = _numba_module()
    batch, dim, length = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    n_blocks = _blocks_per_group(batch, groups, dim // groups)
    chunk = max(1, min(chunk or BACKWARD_CHUNK, max(length, 1)))
    raw, dt = _time_step(delta, delta_bias, delta_softplus)
    # The gate out = pre * silu(z): the kernel wants d loss / d pre, and gives pre back for dz.
    gate_sigmoid = torch.sigmoid(z) if z is not None else None
    g = dout if z is None else dout * z * gate_sigmoid
    du, ddt, pre = torch.empty_like(u), torch.empty_like(u), torch.empty_like(u)
    dA_part = u.new_empty(batch, dim, dstate)
    dBt_part = u.new_zeros(batch, groups, n_blocks, length, dstate)
    dCt_part = u.new_zeros(batch, groups, n_blocks, length, dstate)
    dD_part = u.new_empty(batch, dim)
    kern.set_threads(torch.get_num_threads())
    kern.scan_bwd(
        _numpy(g.contiguous()),
        _numpy(u),
        _numpy(dt),
        _numpy(A),
        _numpy(_bt(B)),
        _numpy(_bt(C)),
        _numpy(_d_skip(D, u)),
        D is not None,
        chunk,
        n_blocks,
        _numpy(du),
        _numpy(ddt),
        _numpy(pre),
        _numpy(dA_part),
        _numpy(dBt_part),
        _numpy(dCt_part),
        _numpy(dD_part),
    )
    dz = None
    if z is not None:
        dz = dout * pre * gate_sigmoid * (1 + z * (1 - gate_sigmoid))
    # softplus' gradient is sigmoid, and 1 above torch's threshold of 20 (where softplus is the identity).
    ddelta = ddt * torch.where(raw > 20.0, 1.0, torch.sigmoid(raw)) if delta_softplus else ddt
    dB = dBt_part.sum(2).transpose(2, 3).contiguous()
    dC = dCt_part.sum(2).transpose(2, 3).contiguous()
    dD = dD_part.sum(0) if D is not None else None
    ddelta_bias = ddelta.sum((0, 2)) if delta_bias is not None else None
    return du, ddelta, dA_part.sum(0), dB, dC, dD, dz, ddelta_bias
