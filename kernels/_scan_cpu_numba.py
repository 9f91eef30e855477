"""Fused selective-scan kernels for CPU, compiled by numba (the `cpu` back end's fast path).

The whole op is in the kernels: the time step dt = softplus(delta + delta_bias), the recurrence, the
D skip and the silu(z) gate, and all their gradients. Nothing of size (batch, dim, L) is built
outside them except the outputs, and no (batch, dim, L, N) tensor is ever built.

Forward: one work item per (batch, dim) chain. It computes the chain's dt into a thread-local row
(a loop over time that vectorises), walks the recurrence with the state in L1, writes y + D u, then
applies the gate in a second vectorised loop over the row it just wrote.

Backward, by recomputation: work items are (batch, group, block of dims), since the gradients of B
and C sum over a group's dims (and dA, dD, ddelta_bias over the batch); each item owns a private
slice of a partial-sum buffer that :func:`reduce_transpose` (or the caller) reduces afterwards (no
atomics, deterministic results). Per dim the item recomputes dt and the gated gradient g into
thread-local rows, walks the chain forward keeping only the state at every ``chunk``-th step
(checkpoints), then, chunk by chunk from the end, recomputes that chunk's states into a small buffer
and runs the reverse recurrence through it. The element-wise ends (softplus' and the gate's
derivatives, the sum for ddelta_bias) are vectorised loops over the rows afterwards.

Arrays arrive float32 or float64. The (b, d, L) inputs (u, delta, z, dout) come in any strides
('A' layout: the caller passes views, not copies); the rest is C-contiguous, with B and C transposed
to (b, g, L, N) so that the loop over N is unit-stride (LLVM vectorises that loop only for a
contiguous layout: an 'A' Bt runs three times slower). Each kernel is compiled for exactly one
signature per dtype (:func:`kernel`), so a new layout never triggers a new compile; numba caches
them on disk.
Absent inputs (z, D, delta_bias) are 1-element dummies with a has_* flag.
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
# float32 arithmetic, so the loop over N becomes SIMD. Cody-Waite reduction x = k ln2 + r,
# |r| <= ln2 / 2, a degree-7 Taylor polynomial for e^r (relative error about one float32 ulp), and 2^k
# built from its exponent bits. Inputs are clamped to [-87, 88] (e^-87 ~ 1.6e-38, float32's normal
# range). k stays a float32 (np.floor, not math.floor, which returns an int64 and would turn the whole
# polynomial into float64).
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)
_LN2_LO = np.float32(1.428606765330187e-06)
_EXP_LO = np.float32(-87.0)
_EXP_HI = np.float32(88.0)
_HALF = np.float32(0.5)
_C2, _C3, _C4 = np.float32(1 / 2), np.float32(1 / 6), np.float32(1 / 24)
_C5, _C6, _C7 = np.float32(1 / 120), np.float32(1 / 720), np.float32(1 / 5040)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
# torch's (and mamba's) softplus threshold: above it softplus(x) is x and its derivative 1.
_SOFTPLUS_THRESHOLD = np.float32(20.0)
# 2 atanh(s) series for log1p, s = y / (2 + y) in [0, 1/3] for y in [0, 1].
_T3, _T5, _T7 = np.float32(1 / 3), np.float32(1 / 5), np.float32(1 / 7)
_T9, _T11, _T13, _T15 = np.float32(1 / 9), np.float32(1 / 11), np.float32(1 / 13), np.float32(1 / 15)


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
    k = np.floor(x * _LOG2E + _HALF)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _ONE + r * (_ONE + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * _C7))))))
    return p * _bits_to_float32(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))


@njit(inline="always", fastmath=True)
def _log1p_unit_float32(y):
    """log1p(y) for y in [0, 1], relative error about one ulp down to tiny y (no 1 + y rounding)."""
    s = y / (_TWO + y)
    s2 = s * s
    q = _T9 + s2 * (_T11 + s2 * (_T13 + s2 * _T15))
    return _TWO * s * (_ONE + s2 * (_T3 + s2 * (_T5 + s2 * (_T7 + s2 * q))))


@njit(inline="always", fastmath=True)
def _softplus_float32(x):
    # log1p(exp(x)) = max(x, 0) + log1p(exp(-|x|)): the exponential never overflows.
    smooth = max(x, _ZERO) + _log1p_unit_float32(_exp_float32(-abs(x)))
    return x if x > _SOFTPLUS_THRESHOLD else smooth


@njit(inline="always", fastmath=True)
def _sigmoid_float32(x):
    return _ONE / (_ONE + _exp_float32(-x))


def fast_exp(x):
    """exp(x): the SIMD-friendly version for float32, math.exp otherwise (float64 stays exact)."""
    return math.exp(x)


def softplus(x):
    """torch's softplus (threshold 20); SIMD-friendly for float32, libm for float64."""
    return x if x > 20.0 else math.log1p(math.exp(x))


def sigmoid(x):
    """1 / (1 + exp(-x)); SIMD-friendly for float32, libm for float64."""
    return 1.0 / (1.0 + math.exp(-x))


def zero_like(x):
    """A zero of x's type (a literal 0.0 would turn float32 accumulators into float64)."""
    return 0.0


def one_like(x):
    """A one of x's type."""
    return 1.0


@overload(fast_exp, inline="always")
def _fast_exp_overload(x):
    if x == types.float32:
        return lambda x: _exp_float32(x)
    return lambda x: math.exp(x)


@overload(softplus, inline="always")
def _softplus_overload(x):
    if x == types.float32:
        return lambda x: _softplus_float32(x)
    return lambda x: x if x > 20.0 else math.log1p(math.exp(x))


@overload(sigmoid, inline="always")
def _sigmoid_overload(x):
    if x == types.float32:
        return lambda x: _sigmoid_float32(x)
    return lambda x: 1.0 / (1.0 + math.exp(-x))


@overload(zero_like, inline="always")
def _zero_like_overload(x):
    if x == types.float32:
        return lambda x: np.float32(0.0)
    return lambda x: 0.0


@overload(one_like, inline="always")
def _one_like_overload(x):
    if x == types.float32:
        return lambda x: np.float32(1.0)
    return lambda x: 1.0


# ----------------------------------------------------------------------------- element-wise ends


# The (b, d, L) inputs are 'A' arrays (any strides), and LLVM does not vectorise a loop over an 'A'
# row; so a row is first copied into a contiguous thread-local buffer (a cheap load-store loop) and
# the arithmetic runs on that buffer, where it vectorises.


@njit(inline="always", fastmath=True)
def _time_steps(delta_row, bias, delta_softplus, raw, dt):
    """raw[t] = delta[t] + bias and dt[t] = softplus(raw[t]) (or raw[t]), vectorised over t."""
    for t in range(dt.shape[0]):
        raw[t] = delta_row[t] + bias
    if delta_softplus:
        for t in range(dt.shape[0]):
            dt[t] = softplus(raw[t])
    else:
        for t in range(dt.shape[0]):
            dt[t] = raw[t]


@njit(inline="always", fastmath=True)
def _copy_row(row, buffer):
    for t in range(buffer.shape[0]):
        buffer[t] = row[t]


# ----------------------------------------------------------------------------- the kernels
# Loops over N (N = 16, Mamba's state size, in every model here) are short, so what a step costs is
# mostly how many of them it runs. Measured at one thread (batch 8, dim 64, L 784): the forward's
# recurrence and its y reduction stay two loops (merged, the loop ran in the scalar remainder, 5x
# slower); in the backward, fewer loops per step won: the recompute writes each state straight into
# the chunk's buffer (no copy loop), and one loop reads dA, d dt and h.B off h (three loops before):
# 2.95 -> 2.51 ns per update. Merging further (dB into either loop, dC into dB's) was slower.


def scan_fwd(u, delta, delta_bias, has_bias, delta_softplus, A, Bt, Ct, D, has_D, z, has_z, out, last_state):
    """out = (y + D u) * silu(z) (b, d, l), last_state (b, d, n).

    u, delta, z (b, d, l); A (d, n); Bt, Ct (b, g, l, n); D, delta_bias (d,).
    """
    batch, dim, length = u.shape
    dstate = A.shape[1]
    dims_per_group = dim // Bt.shape[1]
    for chain in prange(batch * dim):
        bi = chain // dim
        di = chain % dim
        gi = di // dims_per_group
        a_row = A[di]
        zero = zero_like(a_row[0])
        bias = delta_bias[di] if has_bias else zero
        d_skip = D[di] if has_D else zero
        raw = np.empty(length, dtype=out.dtype)
        dt = np.empty(length, dtype=out.dtype)
        _time_steps(delta[bi, di], bias, delta_softplus, raw, dt)
        u_row = u[bi, di]
        out_row = out[bi, di]
        x = np.zeros(dstate, dtype=out.dtype)
        for t in range(length):
            step = dt[t]
            ut = u_row[t]
            dtu = step * ut
            y = zero
            b_row = Bt[bi, gi, t]
            c_row = Ct[bi, gi, t]
            for k in range(dstate):
                x[k] = fast_exp(step * a_row[k]) * x[k] + dtu * b_row[k]
            for k in range(dstate):  # a loop of its own: see "Loops over N" above
                y += x[k] * c_row[k]
            out_row[t] = y + d_skip * ut
        if has_z:
            z_row = raw  # reuse the buffer
            _copy_row(z[bi, di], z_row)
            for t in range(length):
                zt = z_row[t]
                out_row[t] = out_row[t] * zt * sigmoid(zt)
        for k in range(dstate):
            last_state[bi, di, k] = x[k]


def scan_bwd(
    dout,
    u,
    delta,
    delta_bias,
    has_bias,
    delta_softplus,
    A,
    Bt,
    Ct,
    D,
    has_D,
    z,
    has_z,
    chunk,
    n_blocks,
    du,
    ddelta,
    dz,
    dA_part,
    dBt_part,
    dCt_part,
    dD_part,
    dbias_part,
):
    """Gradients by recomputation; see the module docstring for the scheme.

    Outputs: du, ddelta, dz (b, d, l; dz a dummy without z); dA_part (b, d, n), dD_part and
    dbias_part (b, d), summed over b by the caller; dBt_part, dCt_part (b, g, n_blocks, l, n), summed
    over blocks by the caller (:func:`reduce_transpose`). Every output element is written here.
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
        for t in range(length):
            for k in range(dstate):
                dB_acc[t, k] = 0.0
                dC_acc[t, k] = 0.0
        # Thread-local buffers: state at each chunk start, one chunk's states, decays and adjoints h,
        # and rows of the chain's dt and of g = d loss / d (y + D u).
        checkpoints = np.zeros((n_chunks, dstate), dtype=du.dtype)
        xs = np.empty((chunk + 1, dstate), dtype=du.dtype)
        decays = np.empty((chunk, dstate), dtype=du.dtype)
        carry = np.empty(dstate, dtype=du.dtype)
        dA_acc = np.empty(dstate, dtype=du.dtype)
        hs = np.empty((chunk, dstate), dtype=du.dtype)
        raw = np.empty(length, dtype=du.dtype)
        dt = np.empty(length, dtype=du.dtype)
        g = np.empty(length, dtype=du.dtype)
        z_row = np.empty(length if has_z else 1, dtype=du.dtype)
        dout_row = np.empty(length if has_z else 1, dtype=du.dtype)
        for di in range(d_lo, d_hi):
            a_row = A[di]
            zero = zero_like(a_row[0])
            one = one_like(a_row[0])
            bias = delta_bias[di] if has_bias else zero
            d_skip = D[di] if has_D else zero
            _time_steps(delta[bi, di], bias, delta_softplus, raw, dt)
            u_row = u[bi, di]
            du_row = du[bi, di]
            ddt_row = ddelta[bi, di]  # d loss / d dt first; softplus' derivative is applied at the end
            _copy_row(dout[bi, di], g)
            if has_z:
                pre_row = dz[bi, di]  # holds pre = y + D u until dz replaces it at the end
                _copy_row(z[bi, di], z_row)
                for t in range(length):
                    dout_row[t] = g[t]
                for t in range(length):
                    zt = z_row[t]
                    g[t] = g[t] * zt * sigmoid(zt)
            # Pass 1: states at the start of every chunk (the first one is zero).
            x = xs[0]
            for k in range(dstate):
                x[k] = 0.0
            for c in range(n_chunks - 1):
                for t in range(c * chunk, (c + 1) * chunk):
                    step = dt[t]
                    dtu = step * u_row[t]
                    b_row = Bt[bi, gi, t]
                    for k in range(dstate):
                        x[k] = fast_exp(step * a_row[k]) * x[k] + dtu * b_row[k]
                for k in range(dstate):
                    checkpoints[c + 1, k] = x[k]
            # Pass 2: chunks from the last to the first; recompute, then run the reverse recurrence.
            for k in range(dstate):
                carry[k] = 0.0
                dA_acc[k] = 0.0
            dD_sum = zero
            for c in range(n_chunks - 1, -1, -1):
                start = c * chunk
                stop = min(start + chunk, length)
                for k in range(dstate):
                    xs[0, k] = checkpoints[c, k]
                for t in range(start, stop):
                    j = t - start
                    step = dt[t]
                    dtu = step * u_row[t]
                    b_row = Bt[bi, gi, t]
                    dec = decays[j]
                    x_next = xs[j + 1]
                    x_prev = xs[j]  # the state goes straight into the chunk's buffer, row j -> j + 1
                    for k in range(dstate):
                        a = fast_exp(step * a_row[k])
                        dec[k] = a
                        x_next[k] = a * x_prev[k] + dtu * b_row[k]
                    if has_z:  # the gate's gradient needs the pre-gate output
                        c_row = Ct[bi, gi, t]
                        y = zero
                        for k in range(dstate):
                            y += x_next[k] * c_row[k]
                        pre_row[t] = y + d_skip * u_row[t]
                # The reverse recurrence alone, h_t = d loss / d x_t = carry + g_t C_t (this step's
                # output plus what flows back from x_{t+1}), carry = decay_t h_t; the gradients
                # that need h are read off it afterwards, each in a loop over few arrays (a loop
                # that writes many arrays is not vectorised: too many possible overlaps to check).
                for t in range(stop - 1, start - 1, -1):
                    j = t - start
                    gt = g[t]
                    c_row = Ct[bi, gi, t]
                    dec = decays[j]
                    h_row = hs[j]
                    for k in range(dstate):
                        hk = carry[k] + gt * c_row[k]
                        h_row[k] = hk
                        carry[k] = dec[k] * hk
                for t in range(start, stop):
                    j = t - start
                    step = dt[t]
                    ut = u_row[t]
                    gt = g[t]
                    dD_sum += gt * ut
                    b_row = Bt[bi, gi, t]
                    dec = decays[j]
                    x_prev = xs[j]
                    h_row = hs[j]
                    dstep = zero  # d loss / d dt: sum over states of h x_{t-1} decay A
                    hb = zero  # sum over states of h B
                    for k in range(dstate):
                        hk = h_row[k]
                        w = hk * x_prev[k] * dec[k]
                        dA_acc[k] += step * w
                        dstep += w * a_row[k]
                        hb += hk * b_row[k]
                    du_row[t] = gt * d_skip + step * hb
                    ddt_row[t] = dstep + hb * ut
                for t in range(start, stop):
                    j = t - start
                    dtu = dt[t] * u_row[t]
                    h_row = hs[j]
                    db_row = dB_acc[t]
                    for k in range(dstate):
                        db_row[k] += dtu * h_row[k]
                for t in range(start, stop):
                    gt = g[t]
                    x_next = xs[t - start + 1]
                    dc_row = dC_acc[t]
                    for k in range(dstate):
                        dc_row[k] += gt * x_next[k]
            # The element-wise ends, vectorised over t.
            if has_z:
                for t in range(length):
                    zt = z_row[t]
                    sz = sigmoid(zt)
                    pre_row[t] = dout_row[t] * pre_row[t] * sz * (one + zt * (one - sz))
            bias_sum = zero
            if delta_softplus:
                for t in range(length):
                    x_t = raw[t]
                    grad = ddt_row[t] * (one if x_t > _SOFTPLUS_THRESHOLD else sigmoid(x_t))
                    ddt_row[t] = grad
                    bias_sum += grad
            else:
                for t in range(length):
                    bias_sum += ddt_row[t]
            for k in range(dstate):
                dA_part[bi, di, k] = dA_acc[k]
            dD_part[bi, di] = dD_sum
            dbias_part[bi, di] = bias_sum


def reduce_transpose(part, out):
    """out (b, g, n, l) = part (b, g, blocks, l, n) summed over blocks, in B's own layout."""
    batch, groups, n_blocks, length, dstate = part.shape
    for item in prange(batch * groups):
        bi = item // groups
        gi = item % groups
        for t in range(length):
            for k in range(dstate):
                acc = part[bi, gi, 0, t, k]
                for blk in range(1, n_blocks):
                    acc += part[bi, gi, blk, t, k]
                out[bi, gi, k, t] = acc


# ----------------------------------------------------------------------------- compiled versions

_FLAGS = dict(parallel=True, cache=True, fastmath=True)
scan_fwd = njit(**_FLAGS)(scan_fwd)
scan_bwd = njit(**_FLAGS)(scan_bwd)
reduce_transpose = njit(**_FLAGS)(reduce_transpose)

# Argument kinds per kernel: "A3" a 3-D array of any strides, "C2" a 2-D C-contiguous one, "b" a flag,
# "i" an integer. The (b, d, L) inputs take any strides; everything else is contiguous.
_ARGS = {
    "scan_fwd": ("A3", "A3", "C1", "b", "b", "C2", "C4", "C4", "C1", "b", "A3", "b", "C3", "C3"),
    "scan_bwd": (
        *("A3", "A3", "A3", "C1", "b", "b", "C2", "C4", "C4", "C1", "b", "A3", "b", "i", "i"),
        *("C3", "C3", "C3", "C3", "C5", "C5", "C2", "C2"),
    ),
    "reduce_transpose": ("C5", "C4"),
}
_KERNELS = {"scan_fwd": scan_fwd, "scan_bwd": scan_bwd, "reduce_transpose": reduce_transpose}


def _signature(name: str, dtype: np.dtype) -> tuple:
    scalar = numba.from_dtype(np.dtype(dtype))

    def kind(arg):
        if arg == "b":
            return types.boolean
        if arg == "i":
            return types.int64
        return types.Array(scalar, int(arg[1]), arg[0])

    return tuple(kind(arg) for arg in _ARGS[name])


def kernel(name: str, dtype: np.dtype):
    """The kernel ``name`` compiled (or loaded from numba's cache) for ``dtype``, one signature.

    Compilation is switched off between calls, so (b, d, L) arrays of any layout use this one
    version (numba converts a contiguous array to 'A') instead of compiling one per layout.
    """
    return compiled_for(_KERNELS[name], _signature(name, dtype))


def compiled_for(fn, sig: tuple):
    """``fn`` with ``sig`` compiled (or loaded from numba's cache), compilation off again afterwards."""
    if sig not in fn.overloads:
        fn.disable_compile(False)
        try:
            fn.compile(sig)
        finally:
            fn.disable_compile()
    return fn


def set_threads(n: int) -> None:
    """Use ``n`` threads (capped at numba's pool size) for the next kernel calls, ``n`` being torch's count.

    The first call starts numba's OpenMP pool, which sets the process's OpenMP thread count to the pool
    size (``NUMBA_NUM_THREADS``, the core count); torch reads that count as its own, so a run asked for
    one thread (``OMP_NUM_THREADS=1``) went on with two. Put torch's back.
    """
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    import torch  # the callers hold torch; imported here so that the kernels module itself needs none

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


__all__ = [
    "compiled_for",
    "fast_exp",
    "kernel",
    "reduce_transpose",
    "scan_bwd",
    "scan_fwd",
    "set_threads",
    "sigmoid",
    "softplus",
    "zero_like",
]
