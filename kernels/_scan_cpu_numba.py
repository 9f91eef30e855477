"""Fused selective-scan kernels for CPU, compiled by numba (the `cpu` back end's fast path).

One kernel call walks each (batch, dim) chain through the sequence with the state in registers /
L1, so no (batch, dim, L, N) tensor is ever built. The backward pass recomputes: it first walks the
chain forward keeping only the state at every ``chunk``-th step (checkpoints), then, chunk by chunk
from the end, recomputes that chunk's states into a small thread-local buffer and runs the reverse
recurrence through it. Memory is O(threads * chunk * N) beyond the inputs and gradients.

Chains are independent in the forward pass (parallel over batch * dim). In the backward pass the
gradients of B and C sum over the dims of a group and dA, dD, ddelta_bias over the batch, so the work
items are (batch, group, block of dims); each item owns a private slice of a partial-sum buffer that
the caller reduces afterwards (no atomics, deterministic results).

Arrays arrive float32 or float64 (numba compiles one version per dtype and caches it on disk), with
B and C transposed to (batch, groups, L, N) so that the inner loop over N is contiguous. The
element-wise ends of the op (delta_bias and softplus before, the silu(z) gate after, and their
gradients) are done by the caller with vectorised torch ops: inside the time loop they would cost
more than the N-wide state update. D, when absent, is a 1-element dummy with a has_D flag, which
keeps one compiled signature per dtype.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic, overload

# ----------------------------------------------------------------------------- exp that vectorises
# The decay exp(dt * A) is the hot spot: N of them per step. LLVM (without Intel's SVML, which
# numba's wheels do not ship) calls libm's expf one element at a time; this version is plain
# arithmetic, so the loop over N becomes SIMD. Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2, a
# degree-7 Taylor polynomial for e^r (relative error about one float32 ulp), and 2^k built
# from its exponent bits. Inputs are clamped to [-87, 88] (e^-87 ~ 1.6e-38, float32's normal range).
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)
_LN2_LO = np.float32(1.428606765330187e-06)
_EXP_LO = np.float32(-87.0)
_EXP_HI = np.float32(88.0)
_HALF = np.float32(0.5)
_C2, _C3, _C4 = np.float32(1 / 2), np.float32(1 / 6), np.float32(1 / 24)
_C5, _C6, _C7 = np.float32(1 / 120), np.float32(1 / 720), np.float32(1 / 5040)
_ONE = np.float32(1.0)


@intrinsic
def _bits_to_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (a plain LLVM bitcast)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return types.float32(types.int32), codegen


@njit(inline="always", fastmath=True)
def _exp_float32(x):
    x = min(max(x, _EXP_LO), _EXP_HI)
    k = math.floor(x * _LOG2E + _HALF)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _ONE + r * (_ONE + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * _C7))))))
    return p * _bits_to_float32(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))


def fast_exp(x):
    """exp(x): the SIMD-friendly version for float32, math.exp otherwise (float64 stays exact)."""
    return math.exp(x)


@overload(fast_exp, inline="always")
def _fast_exp_overload(x):
    if x == types.float32:
        return lambda x: _exp_float32(x)
    return lambda x: math.exp(x)


def zero_like(x):
    """A zero of x's type (a literal 0.0 would turn float32 accumulators into float64)."""
    return 0.0


@overload(zero_like, inline="always")
def _zero_like_overload(x):
    if x == types.float32:
        return lambda x: np.float32(0.0)
    return lambda x: 0.0


@njit(parallel=True, cache=True, fastmath=True)
def scan_fwd(u, dt, A, Bt, Ct, D, has_D, out, last_state):
    """out = y + D u (b, d, l), last_state (b, d, n) from u, dt (b, d, l), A (d, n), Bt, Ct (b, g, l, n)."""
    batch, dim, length = u.shape
    dstate = A.shape[1]
    dims_per_group = dim // Bt.shape[1]
    for chain in prange(batch * dim):
        bi = chain // dim
        di = chain % dim
        gi = di // dims_per_group
        x = np.zeros(dstate, dtype=out.dtype)
        a_row = A[di]
        d_skip = D[di] if has_D else zero_like(a_row[0])
        for t in range(length):
            step = dt[bi, di, t]
            ut = u[bi, di, t]
            dtu = step * ut
            y = zero_like(dtu)
            b_row = Bt[bi, gi, t]
            c_row = Ct[bi, gi, t]
            for k in range(dstate):
                x[k] = fast_exp(step * a_row[k]) * x[k] + dtu * b_row[k]
                y += x[k] * c_row[k]
            out[bi, di, t] = y + d_skip * ut
        for k in range(dstate):
            last_state[bi, di, k] = x[k]


@njit(parallel=True, cache=True, fastmath=True)
def scan_bwd(
    g, u, dt, A, Bt, Ct, D, has_D, chunk, n_blocks, du, ddt, pre, dA_part, dBt_part, dCt_part, dD_part
):
    """Gradients by recomputation; see the module docstring for the scheme.

    g is d loss / d (y + D u). Outputs: du, ddt (d loss / d dt) and pre = y + D u (b, d, l); dA_part
    (b, d, n), summed over b by the caller; dBt_part, dCt_part (b, g, n_blocks, l, n), summed over
    blocks by the caller; dD_part (b, d).
    """
    batch, dim, length = u.shape
    dstate = A.shape[1]
    groups = Bt.shape[1]
    dims_per_group = dim // groups
    block_size = (dims_per_group + n_blocks - 1) // n_blocks
    n_chunks = (length + chunk - 1) // chunk
    for item in prange(batch * groups * n_blocks):
        bi = item // (groups * n_blocks)
        gi = (item // n_blocks) % groups
        blk = item % n_blocks
        d_lo = gi * dims_per_group + blk * block_size
        d_hi = min(d_lo + block_size, (gi + 1) * dims_per_group)
        dB_acc = dBt_part[bi, gi, blk]
        dC_acc = dCt_part[bi, gi, blk]
        # Thread-local buffers: state at each chunk start, and one chunk's states and decays.
        checkpoints = np.zeros((n_chunks, dstate), dtype=u.dtype)
        xs = np.empty((chunk + 1, dstate), dtype=u.dtype)
        decays = np.empty((chunk, dstate), dtype=u.dtype)
        carry = np.empty(dstate, dtype=u.dtype)
        dA_acc = np.empty(dstate, dtype=u.dtype)
        for di in range(d_lo, d_hi):
            a_row = A[di]
            d_skip = D[di] if has_D else zero_like(a_row[0])
            # Pass 1: states at the start of every chunk (the first one is zero).
            x = xs[0]
            for k in range(dstate):
                x[k] = 0.0
            for c in range(n_chunks - 1):
                for t in range(c * chunk, (c + 1) * chunk):
                    step = dt[bi, di, t]
                    dtu = step * u[bi, di, t]
                    b_row = Bt[bi, gi, t]
                    for k in range(dstate):
                        x[k] = fast_exp(step * a_row[k]) * x[k] + dtu * b_row[k]
                for k in range(dstate):
                    checkpoints[c + 1, k] = x[k]
            # Pass 2: chunks from the last to the first; recompute, then run the reverse recurrence.
            for k in range(dstate):
                carry[k] = 0.0
                dA_acc[k] = 0.0
            dD_sum = zero_like(a_row[0])
            for c in range(n_chunks - 1, -1, -1):
                start = c * chunk
                stop = min(start + chunk, length)
                for k in range(dstate):
                    xs[0, k] = checkpoints[c, k]
                for t in range(start, stop):
                    j = t - start
                    step = dt[bi, di, t]
                    ut = u[bi, di, t]
                    dtu = step * ut
                    b_row = Bt[bi, gi, t]
                    c_row = Ct[bi, gi, t]
                    y = zero_like(dtu)
                    for k in range(dstate):
                        a = fast_exp(step * a_row[k])
                        decays[j, k] = a
                        xs[j + 1, k] = a * xs[j, k] + dtu * b_row[k]
                        y += xs[j + 1, k] * c_row[k]
                    pre[bi, di, t] = y + d_skip * ut
                for t in range(stop - 1, start - 1, -1):
                    j = t - start
                    step = dt[bi, di, t]
                    ut = u[bi, di, t]
                    gt = g[bi, di, t]
                    dD_sum += gt * ut
                    b_row = Bt[bi, gi, t]
                    c_row = Ct[bi, gi, t]
                    db_row = dB_acc[t]
                    dc_row = dC_acc[t]
                    dstep = zero_like(step)
                    hb = zero_like(step)
                    dtu = step * ut
                    for k in range(dstate):
                        # h = d loss / d x_t: this step's output plus what flows back from x_{t+1}.
                        hk = carry[k] + gt * c_row[k]
                        dc_row[k] += gt * xs[j + 1, k]
                        a = decays[j, k]
                        dax = hk * xs[j, k] * a  # d loss / d (dt A) for this state
                        dA_acc[k] += dax * step
                        dstep += dax * a_row[k]
                        hb += hk * b_row[k]
                        db_row[k] += hk * dtu
                        carry[k] = a * hk
                    du[bi, di, t] = gt * d_skip + step * hb
                    ddt[bi, di, t] = dstep + hb * ut
            for k in range(dstate):
                dA_part[bi, di, k] = dA_acc[k]
            dD_part[bi, di] = dD_sum


def set_threads(n: int) -> None:
    """Use ``n`` threads (capped at numba's pool size) for the next kernel calls."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


__all__ = ["fast_exp", "scan_bwd", "scan_fwd", "set_threads", "zero_like"]
