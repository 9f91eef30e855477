"""The op outputs' layout rule, shared by causal_conv1d and selective_scan: an output (or an input's
gradient) takes the strides ``torch.empty_like(input)`` gives, so a channel-last (b, d, L) view of
(b, L, d) memory comes back channel-last and the caller's next op reads it without a copy, while a
contiguous input gets a contiguous result and a non-dense one (a slice) a contiguous one.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["in_layout_of"]


def in_layout_of(x: Tensor, t: Tensor) -> Tensor:
    """``t`` in the strides of ``torch.empty_like(x)`` (copied only if they differ).

    The strides are read off a meta tensor, so the common case (they match) allocates nothing.
    """
    if t.stride() == torch.empty_like(x, device="meta").stride():
        return t
    return torch.empty_like(x, dtype=t.dtype).copy_(t)
