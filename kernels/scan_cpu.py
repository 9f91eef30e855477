"""`cpu` back end: fused numba kernels, or a pure-PyTorch chunked fallback when numba is missing.

Why numba: it is a pip dependency with its own LLVM (no C++ toolchain, no ninja), compiles the two
kernels once per machine (tens of seconds on a busy 2-core box) and then loads them from its on-disk
cache in about a second; ``torch.utils.cpp_extension`` would need ninja, g++ and a minute per build
for the same loop. Speed comes from the kernel shape, not the JIT: the state of a block of dims stays
in L1, the loops over those dims are SIMD (see ``_scan_cpu_numba.decay_exp``), and the element-wise
ends (bias, softplus, the D skip, the silu gate, and their gradients) are fused into the kernels as
vectorised loops over (step, dim) tiles, so the op builds no (batch, dim, L) temporaries besides its
outputs.

Layouts (``STRIDED_INPUTS``: the front end leaves inputs in their strides and this module decides):
the (b, d, L) or grouped (b, G, d/G, L) tensors u, delta, z and dout are read by the kernels as
(b, g, d/g, L) views (g = B's groups, each group in strides of its own, e.g. route-major memory),
whenever L or the dims are unit-stride (rows, or channel-last views such as a channel-last conv1d's
output), and copied once otherwise; out, du, ddelta and dz come back in u's (delta's, z's) layout.
B and C are read as (b, g, L, N) views whenever their states are unit-stride (slices of a projection's
output, as the SSM mixer hands them over), and copied once, a small copy, otherwise.

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

__all__ = [
    "BACKWARD_CHUNK",
    "FORWARD_TILE",
    "MAX_BLOCK_DIMS",
    "SAVES_STATES",
    "STRIDED_INPUTS",
    "SUPPORTS_FLOAT64",
    "implementation",
    "is_available",
    "saved_states_shape",
    "selective_scan_bwd",
    "selective_scan_fwd",
    "use_implementation",
    "work_blocks",
]

SUPPORTS_FLOAT64 = True
STRIDED_INPUTS = True
# The forward can save the state at every chunk start for the backward (selective_scan_fwd's
# save_states), which then skips its first pass: one exponential per state update instead of two.
SAVES_STATES = True
IMPL_ENV = "VISBENCH_SCAN_CPU_IMPL"
# Steps between state checkpoints in the numba backward: each chunk's states and decays, (chunk, N,
# dims of a block) each, stay in L2 (0.5 MiB together at 64 dims). Measured at one thread (batch 8,
# dim 128, two groups, L 784, 15 interleaved rounds): 32 steps 2.10, 64 1.88, 128 1.84, 256 1.83 ns
# per state update.
BACKWARD_CHUNK = 64
# Steps per tile in the numba forward (its (step, dim) buffers are all it keeps besides the state).
FORWARD_TILE = 64
# At most this many dims per backward work item: its buffers grow with the block, and its dB / dC
# partial sums with the number of blocks. Larger blocks did not run faster: one group of 128 dims as
# one block against two of 64, 2.12 against 2.04 ns per state update (1 thread, b 8, L 784, 21 rounds).
MAX_BLOCK_DIMS = 64
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


def _grouped(t: torch.Tensor, groups: int) -> torch.Tensor:
    """A (b, d, L) or (b, G, d/G, L) tensor as (b, groups, d/groups, L), the kernels' view of it: a
    view of a 3-D input, the tensor itself when G == groups, and a reshape (a copy where the strides
    need one) otherwise."""
    if t.dim() == 3:
        return t.unflatten(1, (groups, -1))
    if t.shape[1] == groups:
        return t
    return t.reshape(t.shape[0], groups, -1, t.shape[-1])


def _along_time(t: torch.Tensor) -> torch.Tensor:
    """A (b, g, d/g, L) input as it is when L or the dims are unit-stride (the kernels read either,
    walking the unit stride), else a copy."""
    return t if t.stride(-1) == 1 or t.stride(2) == 1 or t.shape[-1] == 1 else t.contiguous()


def _kernel_view(t: torch.Tensor, groups: int) -> torch.Tensor:
    return _along_time(_grouped(t, groups))


def _flat(t: torch.Tensor | None) -> torch.Tensor | None:
    """(b, G, d/G, L) -> (b, d, L) for the PyTorch fallback, which takes the plain shape."""
    return t.flatten(1, 2) if t is not None and t.dim() == 4 else t


def _bt(t: torch.Tensor) -> torch.Tensor:
    """(b, g, N, L) -> (b, g, L, N), the layout of the kernels' inner loop over N: a view when the
    states are unit-stride (an SSM mixer's B and C, slices of its route-major x_proj output), one copy
    (of a tensor dims-per-group times smaller than u) otherwise. The kernels read B and C in any
    strides; the copies of the views were 2.5 % of the bidir 1-D body's step (four a call of 6.4 MB)."""
    bt = t.transpose(2, 3)
    return bt if bt.stride(-1) == 1 else bt.contiguous()


def _dummy(like: torch.Tensor, ndim: int) -> torch.Tensor:
    """Stand-in for an absent input (the kernels take a has_* flag and one signature per dtype)."""
    return like.new_zeros((1,) * ndim)


def _optional(t: torch.Tensor | None, like: torch.Tensor, ndim: int, groups: int = 1) -> torch.Tensor:
    if t is None:
        return _dummy(like, ndim)
    return _kernel_view(t, groups) if ndim == 4 else t.contiguous()


def _chunk(length: int, chunk: int | None = None) -> int:
    """Steps between the backward's checkpoints (``chunk`` or BACKWARD_CHUNK, at most the length)."""
    return max(1, min(chunk or BACKWARD_CHUNK, max(length, 1)))


def _checkpoints_shape(batch: int, dim: int, length: int, dstate: int, chunk: int) -> tuple[int, ...]:
    """The numba kernels' checkpoints: the state at every chunk start, (batch, chunks, N, dim)."""
    return (batch, -(-length // chunk), dstate, dim)


def saved_states_shape(batch: int, dim: int, length: int, dstate: int) -> tuple[int, ...]:
    """Shape of what ``selective_scan_fwd(..., save_states=True)`` saves for the backward: its
    checkpoints, a quarter of u's size at N 16 and 64-step chunks; (0,) (nothing) for the PyTorch
    fallback."""
    if implementation() != "numba":
        return (0,)
    return _checkpoints_shape(batch, dim, length, dstate, _chunk(length))


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, save_states: bool = False):
    """Back-end contract forward: (out in u's shape, (b, d, L) or (b, G, d/G, L); last_state (b, d, N)),
    and with ``save_states`` a third tensor for :func:`selective_scan_bwd`'s ``saved_states``."""
    batch, dim, length, dstate = u.shape[0], A.shape[0], u.shape[-1], A.shape[1]
    saved = u.new_empty(saved_states_shape(batch, dim, length, dstate) if save_states else (0,))
    if implementation() == "torch":
        from visbench.kernels import _scan_cpu_torch

        out, last_state = _scan_cpu_torch.scan_fwd(
            _flat(u), _flat(delta), A, B, C, D, _flat(z), delta_bias, delta_softplus
        )
        out = out.reshape(u.shape)
        return (out, last_state, saved) if save_states else (out, last_state)
    kern = _numba_module()
    groups = B.shape[1]
    u4 = _kernel_view(u, groups)
    dims_per_group = u4.shape[2]
    out = torch.empty_like(u4)  # u's layout (visbench.kernels.layouts)
    last_state = u.new_empty(batch, dim, dstate)
    # Saving states puts them at the backward's chunk starts: the tiles are its chunks then.
    tile = _chunk(length) if save_states else max(1, min(FORWARD_TILE, length))
    kern.set_threads(torch.get_num_threads())
    kern.kernel("scan_fwd", _numpy(out).dtype)(
        _numpy(u4),
        _numpy(_kernel_view(delta, groups)),
        _numpy(_optional(delta_bias, u4, 1)),
        delta_bias is not None,
        bool(delta_softplus),
        _numpy(A.contiguous()),
        _numpy(_bt(B)),
        _numpy(_bt(C)),
        _numpy(_optional(D, u4, 1)),
        D is not None,
        _numpy(_optional(z, u4, 4, groups)),
        z is not None,
        tile,
        work_blocks(batch * groups, dims_per_group),
        saved.numel() > 0,
        _numpy(out),
        _numpy(last_state),
        _numpy(saved if saved.numel() else _dummy(out, 4)),
    )
    out = out.reshape(u.shape)
    return (out, last_state, saved) if save_states else (out, last_state)


def work_blocks(outer_items: int, inner: int) -> int:
    """Blocks to split each of ``outer_items`` ranges of ``inner`` rows into, so that the CPU kernels'
    backward passes (scan: per (sample, group), conv1d: per sample) get a couple of work items per thread.
    """
    items_wanted = 2 * torch.get_num_threads()
    return max(1, min(inner, -(-items_wanted // outer_items)))


def selective_scan_bwd(
    dout,
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    delta_softplus: bool,
    chunk: int | None = None,
    saved_states: torch.Tensor | None = None,
):
    """Back-end contract backward: (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), None for absent inputs.

    ``chunk`` overrides :data:`BACKWARD_CHUNK` (the tests use small values to cross chunk borders).
    ``saved_states``, the forward's (``save_states=True``), are its checkpoints when they have this
    chunking's shape; otherwise (and without them) the kernel walks the forward again to find them.
    """
    if implementation() == "torch":
        from visbench.kernels import _scan_cpu_torch

        grads = _scan_cpu_torch.scan_bwd(
            *(_flat(dout), _flat(u), _flat(delta), A, B, C, D, _flat(z), delta_bias, delta_softplus),
            chunk=chunk or 64,
        )
        like = (u, delta, A, B, C, D, z, delta_bias)
        return tuple(g if g is None else g.reshape(x.shape) for g, x in zip(grads, like, strict=True))
    kern = _numba_module()
    groups, dstate = B.shape[1], A.shape[1]
    u4, delta4 = _kernel_view(u, groups), _kernel_view(delta, groups)
    z4 = _optional(z, u4, 4, groups)
    batch, _, dims_per_group, length = u4.shape
    dim = groups * dims_per_group
    n_blocks = max(work_blocks(batch * groups, dims_per_group), -(-dims_per_group // MAX_BLOCK_DIMS))
    chunk = _chunk(length, chunk)
    use_saved = saved_states is not None and tuple(saved_states.shape) == _checkpoints_shape(
        batch, dim, length, dstate, chunk
    )
    du, ddelta = torch.empty_like(u4), torch.empty_like(delta4)  # their inputs' layouts
    dz = torch.empty_like(z4)
    dA_part = u.new_empty(batch, dim, dstate)
    dBt_part = u.new_empty(batch, groups, n_blocks, length, dstate)  # each work item zeroes its slice
    dCt_part = u.new_empty(batch, groups, n_blocks, length, dstate)
    dD_part, dbias_part = u.new_empty(batch, dim), u.new_empty(batch, dim)
    dtype = _numpy(du).dtype
    dB, dC = u.new_empty(B.shape), u.new_empty(C.shape)
    kern.set_threads(torch.get_num_threads())
    kern.kernel("scan_bwd", dtype)(
        _numpy(_kernel_view(dout, groups)),
        _numpy(u4),
        _numpy(delta4),
        _numpy(_optional(delta_bias, u, 1)),
        delta_bias is not None,
        bool(delta_softplus),
        _numpy(A.contiguous()),
        _numpy(_bt(B)),
        _numpy(_bt(C)),
        _numpy(_optional(D, u, 1)),
        D is not None,
        _numpy(z4),
        z is not None,
        chunk,
        n_blocks,
        min(torch.get_num_threads(), batch * groups * n_blocks),  # workers, one per thread
        _numpy(saved_states.contiguous() if use_saved else _dummy(u, 4)),
        use_saved,
        _numpy(du),
        _numpy(ddelta),
        _numpy(dz),
        _numpy(dA_part),
        _numpy(dBt_part),
        _numpy(dCt_part),
        _numpy(dD_part),
        _numpy(dbias_part),
    )
    # dB, dC summed over the blocks of dims and written in B's (b, g, N, L) layout by one kernel.
    reduce = kern.kernel("reduce_transpose", dtype)
    reduce(_numpy(dBt_part), _numpy(dB))
    reduce(_numpy(dCt_part), _numpy(dC))
    dD = dD_part.sum(0) if D is not None else None
    ddelta_bias = dbias_part.sum(0) if delta_bias is not None else None
    dz = dz.reshape(z.shape) if z is not None else None
    return du.reshape(u.shape), ddelta.reshape(delta.shape), dA_part.sum(0), dB, dC, dD, dz, ddelta_bias
