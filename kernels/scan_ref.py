"""`ref` back end: the selective scan written as its sequential definition. The source of truth.

It follows mamba-ssm's ``selective_scan_ref`` step by step (same operations, same order), on the
normalised inputs of the back-end contract (see ``visbench.kernels.selective_scan``): B and C grouped
(batch, groups, N, L). It computes in the dtype it is given (float32, or float64 for gradcheck).
Its backward is plain autograd through that definition, so it holds (batch, dim, L, N) tensors and
one graph node per time step: slow and memory-hungry by design, and obviously right. Because of
that, the front end calls :func:`scan` directly instead of going through the custom op (autograd is
switched off inside a custom op's implementation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SUPPORTS_FLOAT64", "is_available", "scan"]

SUPPORTS_FLOAT64 = True


def is_available(device: torch.device) -> bool:
    """`ref` is plain PyTorch: it runs wherever the tensors are."""
    return True


def scan(
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
    """x_t = exp(dt_t A) x_{t-1} + dt_t B_t u_t;  y_t = <C_t, x_t> + D u_t;  out = y * silu(z).

    Shapes: u, delta, z (b, d, L); A (d, N); B, C (b, g, N, L); D, delta_bias (d,). Differentiable.
    Returns out (b, d, L) and the last state x_{L-1} (b, d, N).
    """
    batch, dim, length = u.shape
    dstate = A.shape[1]
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    # Each group's B, C serve dims_per_group consecutive dims (mamba's "B G N L -> B (G H) N L").
    B_per_dim = B.repeat_interleave(dim // B.shape[1], dim=1)  # (b, d, N, L)
    C_per_dim = C.repeat_interleave(dim // C.shape[1], dim=1)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", dt, A))  # (b, d, L, N)
    drive = torch.einsum("bdl,bdnl,bdl->bdln", dt, B_per_dim, u)  # (b, d, L, N)
    x = u.new_zeros(batch, dim, dstate)
    ys = []
    for t in range(length):
        x = decay[:, :, t] * x + drive[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", x, C_per_dim[:, :, :, t]))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(batch, dim, 0)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    return out, x
