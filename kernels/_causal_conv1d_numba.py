"""Depthwise causal conv1d (+ SiLU) for CPU, compiled by numba: forward and backward in one pass each.

Each (batch, channel) row is copied once, left-padded with width - 1 zeros, into a thread-local
buffer; the taps are then loops over time (one per tap, so each vectorises), and the activation and
its derivative are fused. The backward recomputes the pre-activation instead of storing it; its work
items are (sample, block of channels), each writing its own per-sample weight and bias gradients that
the caller sums over the batch: no atomics, deterministic. The reference this replaces (``F.conv1d``
plus about fifteen element-wise passes for the backward) moves every (batch, dim, L) tensor many times.

Like the scan kernels (``visbench.kernels._scan_cpu_numba``): x, dout, out and dx in any strides
('A'), the rest contiguous, one compiled signature per dtype. A row of x or dout is read once into its
contiguous buffer, and a row of out or dx is computed in one and written once, so a channel-last
(b, L, d) tensor costs no copy around the op (the caller allocates out in x's layout): the arithmetic
always runs on contiguous rows, where it vectorises.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange
from numba.core import types
from visbench.kernels._scan_cpu_numba import compiled_for, one_like, set_threads, sigmoid, zero_like


@njit(inline="always", fastmath=True)
def _pre_activation(x_row, weight_row, bias, padded, pre):
    """pre[t] = bias + sum_k w[k] x[t - (width - 1) + k]; ``padded`` gets x with width - 1 leading zeros."""
    width = weight_row.shape[0]
    length = pre.shape[0]
    for k in range(width - 1):
        padded[k] = 0.0
    for t in range(length):
        padded[width - 1 + t] = x_row[t]
    for t in range(length):
        pre[t] = bias
    for k in range(width):
        w = weight_row[k]
        for t in range(length):
            pre[t] += w * padded[t + k]


def conv_fwd(x, weight, bias, has_bias, silu, out):
    """out (b, d, L) = act(causal depthwise conv of x (b, d, L) with weight (d, width) and bias (d,))."""
    batch, dim, length = x.shape
    width = weight.shape[1]
    for row in prange(batch * dim):
        bi = row // dim
        di = row % dim
        zero = zero_like(weight[0, 0])
        padded = np.empty(length + width - 1, dtype=out.dtype)
        pre = np.empty(length, dtype=out.dtype)
        _pre_activation(x[bi, di], weight[di], bias[di] if has_bias else zero, padded, pre)
        if silu:
            for t in range(length):
                p = pre[t]
                pre[t] = p * sigmoid(p)
        out_row = out[bi, di]
        for t in range(length):
            out_row[t] = pre[t]


def conv_bwd(x, weight, bias, has_bias, silu, dout, n_blocks, dx, dweight_part, dbias_part):
    """dx (b, d, L) and per-sample weight and bias gradients, dweight_part (b, d, width) and dbias_part
    (b, d), of sum(dout * out); the caller sums those over b. dbias_part is written even without bias.

    Work items are (sample, block of channels): a sample's channels are done together, so a
    channel-last tensor's cache lines (each holding many channels of one step) are read while hot.
    """
    batch, dim, length = x.shape
    width = weight.shape[1]
    block_size = (dim + n_blocks - 1) // n_blocks
    for item in prange(batch * n_blocks):
        bi = item // n_blocks
        d_lo = (item % n_blocks) * block_size
        d_hi = min(d_lo + block_size, dim)
        zero = zero_like(weight[0, 0])
        one = one_like(weight[0, 0])
        padded = np.empty(length + width - 1, dtype=dx.dtype)
        pre = np.empty(length, dtype=dx.dtype)
        grad = np.empty(length + width - 1, dtype=dx.dtype)  # d loss / d pre, then width - 1 zeros
        for di in range(d_lo, d_hi):
            weight_row = weight[di]
            dout_row = dout[bi, di]
            for t in range(length):
                grad[t] = dout_row[t]
            for k in range(width - 1):
                grad[length + k] = 0.0
            _pre_activation(x[bi, di], weight_row, bias[di] if has_bias else zero, padded, pre)
            if silu:  # d silu(p) / dp = s (1 + p (1 - s)), s = sigmoid(p)
                for t in range(length):
                    p = pre[t]
                    s = sigmoid(p)
                    grad[t] = grad[t] * s * (one + p * (one - s))
            bias_sum = zero
            for t in range(length):
                bias_sum += grad[t]
            dbias_part[bi, di] = bias_sum
            # dw[k] = sum_t grad[t] x[t - (width - 1) + k]; dx[t] = sum_k w[k] grad[t + (width - 1) - k].
            for k in range(width):
                acc = zero
                for t in range(length):
                    acc += grad[t] * padded[t + k]
                dweight_part[bi, di, k] = acc
            w_last = weight_row[width - 1]
            for t in range(length):  # dx in pre's buffer (pre is not needed any more), then written out
                pre[t] = w_last * grad[t]
            for k in range(width - 1):
                w = weight_row[k]
                shift = width - 1 - k
                for t in range(length):
                    pre[t] += w * grad[t + shift]
            dx_row = dx[bi, di]
            for t in range(length):
                dx_row[t] = pre[t]


_FLAGS = dict(parallel=True, cache=True, fastmath=True)
conv_fwd = njit(**_FLAGS)(conv_fwd)
conv_bwd = njit(**_FLAGS)(conv_bwd)

_ARGS = {
    "conv_fwd": ("A3", "C2", "C1", "b", "b", "A3"),
    "conv_bwd": ("A3", "C2", "C1", "b", "b", "A3", "i", "A3", "C3", "C2"),
}
_KERNELS = {"conv_fwd": conv_fwd, "conv_bwd": conv_bwd}


def kernel(name: str, dtype: np.dtype):
    """The kernel compiled (or loaded from numba's cache) for ``dtype``, one signature per dtype."""
    scalar = numba.from_dtype(np.dtype(dtype))
    kinds = {"b": types.boolean, "i": types.int64}
    sig = tuple(kinds.get(a) or types.Array(scalar, int(a[1]), a[0]) for a in _ARGS[name])
    return compiled_for(_KERNELS[name], sig)


__all__ = ["conv_bwd", "conv_fwd", "kernel", "set_threads"]
