"""`cuda` back end: mamba-ssm's compiled selective-scan kernel (``selective_scan_cuda``).

Imported lazily: mamba-ssm's PyPI release fails at import without its CUDA extension, so
:func:`is_available` answers False (never raises) when it is missing or the tensors are not on CUDA.
The forward and backward are the very calls mamba-ssm's ``SelectiveScanFn`` makes. The back-end
contract gives the backward no saved forward state, so it reruns mamba's forward to get the chunk
states ``x`` (and the pre-gate output when there is a z) that mamba's backward needs.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

__all__ = ["is_available", "selective_scan_bwd", "selective_scan_fwd"]


@functools.cache
def _extension() -> ModuleType | None:
    try:
        return importlib.import_module("selective_scan_cuda")
    except Exception:  # not installed, or built without CUDA: not available
        return None


def is_available(device: torch.device) -> bool:
    """True when the tensors are on CUDA and mamba-ssm's compiled kernel imports."""
    try:
        if torch.device(device).type != "cuda" or not torch.cuda.is_available():
            return False
        extension = _extension()
        return extension is not None and hasattr(extension, "fwd")
    except Exception:
        return False


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool):
    """Back-end contract forward: (out, last_state) from ``selective_scan_cuda.fwd``."""
    out, x, *rest = _extension().fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    last_state = x[:, :, -1, 1::2].contiguous()  # as mamba-ssm: (batch, dim, dstate)
    return (rest[0] if z is not None else out), last_state


def selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool):
    """Back-end contract backward through ``selective_scan_cuda.bwd`` (after recomputing the forward)."""
    extension = _extension()
    out, x, *_ = extension.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = extension.bwd(
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        dout.contiguous(),
        x,
        out if z is not None else None,
        None,
        delta_softplus,
        False,
    )
    dz = rest[0] if z is not None else None
    return (
        du,
        ddelta,
        dA,
        dB,
        dC,
        dD if D is not None else None,
        dz,
        ddelta_bias if delta_bias is not None else None,
    )
