"""Triton back end of the selective scan: forward and backward kernels (Mamba-1 semantics).

Backend contract (called by ``visbench.kernels.selective_scan``, which normalises the inputs first): all
tensors float32 and contiguous; ``u``, ``delta``, ``z``: (batch, dim, L); ``A``: (dim, N); ``B``, ``C``:
(batch, groups, N, L); ``D``, ``delta_bias``: (dim,) or None; ``z`` may be None.

On CUDA the kernels are compiled by Triton. On CPU they run in Triton's interpreter (how the tests
check them without a GPU), which needs ``TRITON_INTERPRET=1`` set before triton is first imported:
triton builds its own library (``tl.zeros``, ``tl.sum``) in one mode at import, and our kernels must
match it. ``triton.jit`` also picks the mode at decoration time, so the kernel file is imported lazily,
in triton's mode, whatever the environment says at that moment (see ``_load_kernels``).

The backward stores no (batch, dim, L, N) tensor: it keeps one state per chunk of ``CHUNK`` steps and
a per-program scratch of ``CHUNK`` states, and recomputes the rest.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["is_available", "selective_scan_bwd", "selective_scan_fwd"]

CHUNK = 64  # steps between state checkpoints in the backward
_MAX_N = 256
_KERNEL_FILE = Path(__file__).with_name("_triton_scan_kernels.py")
_LOAD_LOCK = threading.Lock()


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _triton_mode() -> str | None:
    """``"interpret"`` or ``"compile"``: the mode triton.language was built in; None without triton.

    Triton decorates its own library (``tl.zeros``, ``tl.sum``, ...) once, at its first import, in the
    mode ``TRITON_INTERPRET`` asked for then; our kernels call that library, so they must run in the
    same mode. Interpreting therefore needs ``TRITON_INTERPRET=1`` before triton is first imported.
    """
    try:
        import triton.language as tl
    except Exception:
        return None
    return "interpret" if type(tl.zeros).__name__ == "InterpretedFunction" else "compile"


def is_available(device: torch.device) -> bool:
    """Whether the Triton back end can run on ``device`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    try:
        device = torch.device(device)
        if device.type == "cuda":
            return torch.cuda.is_available() and _triton_mode() is not None
        if device.type == "cpu":
            return _interpret_env() and _triton_mode() == "interpret"
    except Exception:
        return False
    return False


@functools.cache
def _load_kernels(interpret: bool) -> ModuleType:
    """Import the kernel file with ``triton.jit`` in the requested mode (compiled or interpreted)."""
    name = f"visbench.kernels._triton_scan_kernels_{'interp' if interpret else 'jit'}"
    with _LOAD_LOCK:
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        try:
            spec = importlib.util.spec_from_file_location(name, _KERNEL_FILE)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        finally:
            if old is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = old
    got = type(module.scan_fwd_kernel).__name__
    if interpret != (got == "InterpretedFunction"):
        raise RuntimeError(
            f"triton.jit built {got} kernels although interpret={interpret} was requested; "
            "triton.knobs.runtime.interpret is probably overridden in this process"
        )
    return module


def _kernels(device: torch.device) -> ModuleType:
    mode = _triton_mode()
    if mode is None:
        raise RuntimeError("the Triton selective scan needs the triton package, which is not importable")
    if device.type == "cuda":
        # A process that imported triton under TRITON_INTERPRET=1 interprets CUDA launches too.
        return _load_kernels(mode == "interpret")
    if device.type == "cpu" and _interpret_env() and mode == "interpret":
        return _load_kernels(True)
    raise RuntimeError(
        f"the Triton selective scan runs on CUDA tensors, or on CPU in Triton's interpreter; got device "
        f"{device} with TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r} and triton imported in "
        f"{mode} mode (set TRITON_INTERPRET=1 before triton is first imported)"
    )


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _launch_config(batch: int, groups: int, dg: int, n: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_N, num_warps) for ``dg`` channels per group and ``n`` states.

    States are padded to a power of two. A program holds at most 512 state elements. Each program is a
    sequential chain over L, so on a GPU the channel block shrinks (down to 4) until there are about
    four programs per SM; the interpreter runs programs one after another and prefers few, large ones.
    (A heuristic: the kernels have not been timed on a GPU here.)
    """
    block_n = _next_pow2(n)
    block_d = min(_next_pow2(dg), max(1, 512 // block_n), 64)
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
        while block_d > 4 and batch * groups * _cdiv(dg, block_d) < target:
            block_d //= 2
    elements = block_d * block_n
    num_warps = 4 if elements >= 512 else 2 if elements >= 128 else 1
    return block_d, block_n, num_warps


def _check(u, delta, A, B, C, D, z, delta_bias) -> tuple[int, int, int, int, int]:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
    b, d, L = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (dim={d}, N), got shape {tuple(A.shape)}")
    n = A.shape[1]
    if n > _MAX_N:
        raise ValueError(f"A has N={n} states; the Triton scan supports N <= {_MAX_N}")
    if B.dim() != 4 or B.shape[0] != b or B.shape[2:] != (n, L):
        raise ValueError(f"B must be (batch={b}, groups, N={n}, L={L}), got shape {tuple(B.shape)}")
    g = B.shape[1]
    if g < 1 or d % g:
        raise ValueError(f"B has {g} groups, which does not divide dim={d}")
    if C.shape != B.shape:
        raise ValueError(f"C must have B's shape {tuple(B.shape)}, got {tuple(C.shape)}")
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, t in named.items():
        if t is None:
            continue
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32 for the Triton scan, got {t.dtype}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous for the Triton scan (shape {tuple(t.shape)})")
        if t.device != u.device:
            raise ValueError(f"{name} is on {t.device} but u is on {u.device}")
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and t.shape != u.shape:
            raise ValueError(f"{name} must have u's shape {tuple(u.shape)}, got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d,):
            raise ValueError(f"{name} must be (dim={d},), got shape {tuple(t.shape)}")
    return b, d, L, n, g


def selective_scan_fwd(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward scan: ``(out (batch, dim, L), last_state (batch, dim, N))``, both float32."""
    b, d, L, n, g = _check(u, delta, A, B, C, D, z, delta_bias)
    out = torch.empty_like(u)
    last_state = torch.zeros(b, d, n, device=u.device, dtype=torch.float32)
    if L == 0 or b == 0 or d == 0:
        return out, last_state
    dg = d // g
    block_d, block_n, num_warps = _launch_config(b, g, dg, n, u.device)
    nblk = _cdiv(dg, block_d)
    _kernels(u.device).scan_fwd_kernel[(b, g * nblk)](
        u,
        delta,
        A,
        B,
        C,
        u if D is None else D,
        u if z is None else z,
        u if delta_bias is None else delta_bias,
        out,
        last_state,
        d,
        L,
        n,
        g,
        dg,
        nblk,
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus),
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return out, last_state


def selective_scan_bwd(
    dout: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)``; None where the input was None."""
    b, d, L, n, g = _check(u, delta, A, B, C, D, z, delta_bias)
    if dout.shape != u.shape or dout.dtype != torch.float32 or dout.device != u.device:
        raise ValueError(
            f"dout must be float32 {tuple(u.shape)} on {u.device}, got {dout.dtype} {tuple(dout.shape)} "
            f"on {dout.device}"
        )
    dout = dout.contiguous()
    dev = u.device
    du = torch.zeros_like(u)
    ddelta = torch.zeros_like(u)
    dz = torch.zeros_like(u) if z is not None else None
    dg = d // g
    block_d, block_n, num_warps = _launch_config(b, g, dg, n, u.device)
    nblk = _cdiv(dg, block_d)
    atomic_bc = nblk > 1
    # Several channel blocks add into the same group's dB/dC: those need a zeroed buffer and atomics.
    dB = torch.zeros_like(B)
    dC = torch.zeros_like(C)
    dA_part = torch.zeros(b, d, n, device=dev, dtype=torch.float32)
    dD_part = torch.zeros(b, d, device=dev, dtype=torch.float32)
    dbias_part = torch.zeros(b, d, device=dev, dtype=torch.float32)
    if L > 0 and b > 0 and d > 0:
        chunk = min(CHUNK, L)
        nchunks = _cdiv(L, chunk)
        programs = b * g * nblk
        tile = block_d * block_n
        ckpt = torch.empty(programs * nchunks * tile, device=dev, dtype=torch.float32)
        scratch = torch.empty(programs * chunk * tile, device=dev, dtype=torch.float32)
        _kernels(dev).scan_bwd_kernel[(b, g * nblk)](
            dout,
            u,
            delta,
            A,
            B,
            C,
            u if D is None else D,
            u if z is None else z,
            u if delta_bias is None else delta_bias,
            ckpt,
            scratch,
            du,
            ddelta,
            du if dz is None else dz,
            dB,
            dC,
            dA_part,
            dD_part,
            dbias_part,
            d,
            L,
            n,
            g,
            dg,
            nblk,
            nchunks,
            chunk,
            HAS_D=D is not None,
            HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus),
            ATOMIC_BC=atomic_bc,
            BLOCK_D=block_d,
            BLOCK_N=block_n,
            num_warps=num_warps,
        )
    dA = dA_part.sum(0)
    dD = dD_part.sum(0) if D is not None else None
    ddelta_bias = dbias_part.sum(0) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias
