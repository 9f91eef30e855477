"""Pure-PyTorch chunked selective scan: the `cpu` back end's fallback when numba is unavailable.

Same scheme as the numba kernels (``visbench.kernels._scan_cpu_numba``), vectorised over (batch, dim, N) with
a Python loop over time: decays and drives are built one chunk of ``chunk`` steps at a time, so the
largest temporary is (batch, dim, chunk, N), never (batch, dim, L, N). The backward keeps the state at
each chunk start, then recomputes each chunk's states and runs the reverse recurrence through it.
Slower than the compiled kernels (one Python iteration per time step), but needs no compiler.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["scan_bwd", "scan_fwd"]


def _grouped(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(b, d, ...) -> (b, g, d/g, ...) view, to broadcast against B, C of shape (b, g, 1, ...)."""
    return t.unflatten(1, (groups, t.shape[1] // groups))


def _time_step(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    return F.softplus(dt) if softplus else dt


def _chunk_terms(dt, u, A, Bt, start, stop, groups):
    """Decay exp(dt A) and drive dt u B for steps [start, stop): each (b, g, d/g, T, N)."""
    dt_c = _grouped(dt[:, :, start:stop], groups)  # (b, g, h, T)
    decay = torch.exp(dt_c[..., None] * _grouped(A[None], groups)[:, :, :, None, :])
    drive = (dt_c * _grouped(u[:, :, start:stop], groups))[..., None] * Bt[:, :, None, start:stop]
    return decay, drive


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus: bool, chunk: int = 64):
    """Forward of the back-end contract: (out (b, d, L), last_state (b, d, N))."""
    batch, dim, length = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    dt = _time_step(delta, delta_bias, softplus)
    Bt, Ct = B.transpose(2, 3), C.transpose(2, 3)  # (b, g, L, N)
    x = u.new_zeros(batch, groups, dim // groups, dstate)
    y = u.new_empty(batch, groups, dim // groups, length)
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        decay, drive = _chunk_terms(dt, u, A, Bt, start, stop, groups)
        for j in range(stop - start):
            x = decay[:, :, :, j] * x + drive[:, :, :, j]
            y[..., start + j] = (x * Ct[:, :, None, start + j]).sum(-1)
    out = y.flatten(1, 2)
    if D is not None:
        out = out + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    return out, x.flatten(1, 2)


def scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus: bool, chunk: int = 64):
    """Backward of the back-end contract, by recomputation: (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)."""
    batch, dim, length = u.shape
    groups, dstate = B.shape[1], A.shape[1]
    raw = delta if delta_bias is None else delta + delta_bias[:, None]
    dt = F.softplus(raw) if softplus else raw
    Bt, Ct = B.transpose(2, 3), C.transpose(2, 3)  # (b, g, L, N)
    starts = list(range(0, length, chunk))
    # Pass 1: the state entering each chunk.
    checkpoints = []
    x = u.new_zeros(batch, groups, dim // groups, dstate)
    for start in starts:
        checkpoints.append(x)
        stop = min(start + chunk, length)
        decay, drive = _chunk_terms(dt, u, A, Bt, start, stop, groups)
        for j in range(stop - start):
            x = decay[:, :, :, j] * x + drive[:, :, :, j]
    du, ddt, dz = torch.empty_like(u), torch.empty_like(u), None if z is None else torch.empty_like(z)
    dBt, dCt = torch.empty_like(Bt), torch.empty_like(Ct)
    dA = torch.zeros_like(A)
    dD = None if D is None else torch.zeros_like(D)
    carry = torch.zeros_like(x)  # decay_{t+1} * dL/dx_{t+1}
    A_g = _grouped(A[None], groups)[:, :, :, None, :]  # (1, g, h, 1, N)
    # Pass 2: chunks from the last; recompute the states, then the reverse recurrence.
    for start, x0 in zip(reversed(starts), reversed(checkpoints)):
        stop = min(start + chunk, length)
        decay, drive = _chunk_terms(dt, u, A, Bt, start, stop, groups)
        states = [x0]
        for j in range(stop - start):
            states.append(decay[:, :, :, j] * states[-1] + drive[:, :, :, j])
        xs = torch.stack(states, dim=3)  # (b, g, h, T + 1, N): x_{start-1} .. x_{stop-1}
        c_chunk = Ct[:, :, None, start:stop]  # (b, g, 1, T, N)
        g = _grouped(dout[:, :, start:stop], groups)  # (b, g, h, T)
        u_c = _grouped(u[:, :, start:stop], groups)
        if z is not None:
            y = (xs[:, :, :, 1:] * c_chunk).sum(-1)
            if D is not None:
                y = y + u_c * _grouped(D[None, :, None], groups)
            z_c = _grouped(z[:, :, start:stop], groups)
            sig = torch.sigmoid(z_c)
            dz[:, :, start:stop] = (g * y * sig * (1 + z_c * (1 - sig))).flatten(1, 2)
            g = g * z_c * sig
        # Reverse recurrence: h_t = carry + g_t C_t; carry <- decay_t h_t.
        hs = torch.empty_like(decay)
        for j in range(stop - start - 1, -1, -1):
            hs[:, :, :, j] = carry + g[..., j, None] * c_chunk[:, :, :, j]
            carry = decay[:, :, :, j] * hs[:, :, :, j]
        dt_c = _grouped(dt[:, :, start:stop], groups)
        dax = hs * xs[:, :, :, :-1] * decay  # dL/d(dt A) per step and state
        dA += (dax * dt_c[..., None]).sum((0, 3)).flatten(0, 1)
        b_chunk = Bt[:, :, None, start:stop]
        hb = (hs * b_chunk).sum(-1)  # (b, g, h, T)
        ddt[:, :, start:stop] = ((dax * A_g).sum(-1) + hb * u_c).flatten(1, 2)
        du_c = dt_c * hb
        if D is not None:
            du_c = du_c + g * _grouped(D[None, :, None], groups)
            dD += (g * u_c).sum((0, 3)).flatten()
        du[:, :, start:stop] = du_c.flatten(1, 2)
        dBt[:, :, start:stop] = (hs * (dt_c * u_c)[..., None]).sum(2)
        dCt[:, :, start:stop] = (g[..., None] * xs[:, :, :, 1:]).sum(2)
    if softplus:
        ddt = ddt * torch.where(raw > 20.0, torch.ones_like(raw), torch.sigmoid(raw))
    ddelta_bias = None if delta_bias is None else ddt.sum((0, 2))
    return (
        du,
        ddt,
        dA,
        dBt.transpose(2, 3).contiguous(),
        dCt.transpose(2, 3).contiguous(),
        dD,
        dz,
        ddelta_bias,
    )
