"""Fused selective-scan kernels for CPU, compiled by numba (the `cpu` back end's fast path).

The whole op is in the kernels: the time step dt = softplus(delta + delta_bias), the recurrence, the
D skip and the silu(z) gate, and all their gradients. Nothing of size (batch, dim, L) is built
outside them except the outputs, and no (batch, dim, L, N) tensor is ever built.

Work items are (sample, group, block of dims): the dims of a group share B_t and C_t, so the state
is held as (N, dims) and every loop over a step's states runs an inner loop over the block's dims,
long and unit-stride, instead of a 16-long loop over N per chain. Time is walked in tiles of a few
dozen steps laid out (step, dim): each tile of u, delta, z and dout is read from its (b, g, d/g, L)
input (g as B's groups) along that input's unit stride (time for rows, dims for a channel-last
view), and the outputs' tiles are written back the same way.

Forward: per tile, dt and dt u (vectorised over the tile), then the recurrence and y = C x + D u in
one loop per state, then the gate.

Backward, by recomputation: each item takes the state at every ``chunk``-th step (checkpoints) from
the forward, which saved them (as mamba-ssm's CUDA kernel saves its chunk states), or else walks its
dims forward once to find them; then, chunk by chunk from the end, it recomputes that chunk's states
and decays into small buffers and runs the reverse recurrence through them, reading every gradient
off the adjoint in the same loop over dims. The gradients of B and C sum over a group's dims (and
dA, dD, ddelta_bias over the batch), so each item owns a private slice of a partial-sum buffer that
:func:`reduce_transpose` (or the caller) reduces afterwards (no atomics, deterministic results).

Arrays arrive float32 or float64. The (b, g, d/g, L) arrays (u, delta, z, dout and the row outputs)
come in any strides, each group its own ('A' layout: the caller passes views, not copies), and so do
B and C, as (b, g, L, N) views (the caller copies them only when the states are not unit-stride); the
rest is C-contiguous. Each kernel is compiled for exactly one
signature per dtype (:func:`kernel`), so a new layout never triggers a new compile; numba caches
them on disk.
Absent inputs (z, D, delta_bias) are 1-element dummies with a has_* flag.
"""

from __future__ import annotations

import math
import platform

from visbench.kernels import _numba_target

_numba_target.configure()  # before the first njit below: numba fixes its target then

import numba  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, prange  # noqa: E402
from numba.core import cgutils, types  # noqa: E402
from numba.extending import intrinsic, overload  # noqa: E402
from numba.np.arrayobj import make_array, populate_array  # noqa: E402

# ----------------------------------------------------------------------------- exp that vectorises
# The decay exp(dt * A) is the hot spot: N of them per step. LLVM (without Intel's SVML, which
# numba's wheels do not ship) calls libm's expf one element at a time; these versions are plain
# float32 arithmetic, so the loops become SIMD. For softplus and the sigmoid (one per step, from the
# raw inputs): Cody-Waite reduction x = k ln2 + r,
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
# The decays exp(dt A) = 2^(dt A log2 e), as mamba-ssm's CUDA kernel takes them (exp2f of delta times
# A * log2e): with log2(e) folded into the block's copy of A once, each decay is rint, one subtraction
# and a degree-6 polynomial for 2^r on [-1/2, 1/2] (a near-minimax fit: relative error 1.5e-8 with its
# float32 coefficients, 9e-8 as computed, under one float32 ulp), where the Cody-Waite exp takes a
# multiply-add more to find k and a degree more. Clamped to [-126, 127]: 2^-126 is the smallest normal
# float32, and 2^127 keeps a positive dt A (the op takes any A and delta) finite.
_EXP2_LO = np.float32(-126.0)
_EXP2_HI = np.float32(127.0)
_P1, _P2 = np.float32(0.6931471824645996), np.float32(0.24022647738456726)
_P3, _P4 = np.float32(0.055503327399492264), np.float32(0.009618427604436874)
_P5, _P6 = np.float32(0.0013398817973211408), np.float32(0.00015356126823462546)


@intrinsic
def _bits_to_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (a plain LLVM bitcast)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return types.float32(types.int32), codegen


# ----------------------------------------------------------------------------- subnormals flushed to zero
# An adjoint that decays over a long run of zero gradients (a causal model whose loss reads only its last
# token) goes subnormal, and x86 cores take a microcode assist of about a hundred cycles for each
# subnormal operand or result: the scan backward of the causal 1-D body ran 4.2x slower with its
# gradient on the last step only (77 against 18 ms, same shapes). So every work item of the scan and
# conv1d kernels runs with the MXCSR's flush-to-zero and denormals-are-zero bits on, and puts the
# caller's bits back before it ends (numba's worker threads are the ones torch's OpenMP ops run on):
# results that would be subnormal, under 1.2e-38 in float32, are zeros instead, far below every
# tolerance. Other architectures keep their own mode (the intrinsics below are no-ops there).
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
FLUSH_SUBNORMALS = 0x8040  # MXCSR's FTZ (bit 15) and DAZ (bit 6)


def _mxcsr_call(builder, name: str, slot) -> None:
    fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    builder.call(fn, [builder.bitcast(slot, ir.IntType(8).as_pointer())])


@intrinsic
def fp_mode(typingctx):
    """This thread's floating-point control bits (x86's MXCSR; 0 elsewhere)."""

    def codegen(context, builder, signature, args):
        if not _X86:
            return ir.Constant(ir.IntType(64), 0)
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", slot)
        return builder.zext(builder.load(slot), ir.IntType(64))

    return types.int64(), codegen


@intrinsic
def set_fp_mode(typingctx, mode):
    """Set this thread's floating-point control bits to ``mode`` (x86's MXCSR; a no-op elsewhere)."""
    if mode != types.int64:
        return None

    def codegen(context, builder, signature, args):
        if _X86:
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(builder.trunc(args[0], ir.IntType(32)), slot)
            _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
        return context.get_dummy_value()

    return types.void(types.int64), codegen


def _borrowed_run(axis: int):
    """An intrinsic run(rows, i, t, n): the n elements of the 2-D ``rows`` from [i, t] on along
    ``axis`` (0: rows[i : i + n, t], 1: rows[i, t : t + n]), as a C-contiguous 1-D array with no
    reference count of its own. The caller knows that axis has a stride of one element and that the
    run is in bounds; ``rows`` keeps the memory alive."""

    @intrinsic
    def run(typingctx, rows, i, t, n):
        if not (isinstance(rows, types.Array) and rows.ndim == 2):
            return None
        ret = types.Array(rows.dtype, 1, "C")

        def codegen(context, builder, signature, args):
            src = make_array(rows)(context, builder, value=args[0])
            i_, t_, n_ = (
                context.cast(builder, v, ty, types.intp) for v, ty in zip(args[1:], signature.args[1:])
            )
            strides = cgutils.unpack_tuple(builder, src.strides)
            offset = builder.add(builder.mul(i_, strides[0]), builder.mul(t_, strides[1]))
            first = builder.gep(builder.bitcast(src.data, cgutils.voidptr_t), [offset])
            out = make_array(ret)(context, builder)
            itemsize = context.get_constant(
                types.intp, context.get_abi_sizeof(context.get_data_type(rows.dtype))
            )
            populate_array(
                out,
                data=builder.bitcast(first, src.data.type),
                shape=cgutils.pack_array(builder, [n_]),
                strides=cgutils.pack_array(builder, [itemsize]),
                itemsize=src.itemsize,
                meminfo=None,
            )
            return out._getvalue()

        return ret(rows, i, t, n), codegen

    return run


_dims_run = _borrowed_run(0)
_time_run = _borrowed_run(1)

# Square blocks that the tile copies transpose in registers: 16 floats are one 512-bit vector.
_BLOCK = 16


def _transpose_masks(width: int) -> list[tuple[int, list[int], list[int]]]:
    """(h, first, second) shufflevector masks of a width x width transpose in log2(width) stages.
    The stage of bit h pairs rows i and i | h (i without bit h) and swaps bit h between row and
    column index: the first row of the pair keeps its columns without bit h and takes the partner's
    others, the second the reverse. After every stage, element (i, j) is at (j, i)."""
    stages = []
    h = 1
    while h < width:
        first = [j if not j & h else width + (j ^ h) for j in range(width)]
        second = [(j ^ h) if not j & h else width + j for j in range(width)]
        stages.append((h, first, second))
        h *= 2
    return stages


@intrinsic
def _transpose_block(typingctx, src, i, t, dst, s, j):
    """dst[s + q, j + p] = src[i + p, t + q] for p, q < _BLOCK: one square block transposed in
    registers (_BLOCK vector loads along src's rows, log2(_BLOCK) stages of shuffles, _BLOCK vector
    stores along dst's rows). Both arrays are 2-D with a unit stride along axis 1 (the caller checks
    the input's; the tiles are C-contiguous), and the block is in bounds. A scatter or gather per
    element, what LLVM makes of the plain loops, ran at about 2 cycles an element."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array) and src.ndim == dst.ndim == 2):
        return None
    if src.dtype != dst.dtype:
        return None

    def codegen(context, builder, signature, args):
        element = context.get_data_type(src.dtype)
        vector = ir.VectorType(element, _BLOCK)
        align = context.get_abi_sizeof(element)
        src_arr = make_array(signature.args[0])(context, builder, value=args[0])
        dst_arr = make_array(signature.args[3])(context, builder, value=args[3])
        i_, t_, s_, j_ = (context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 2, 4, 5))

        def row_pointers(arr, row, col):
            """Vector pointers to arr[row + r, col] for r < _BLOCK."""
            strides = cgutils.unpack_tuple(builder, arr.strides)
            base = builder.bitcast(arr.data, cgutils.voidptr_t)
            start = builder.add(builder.mul(row, strides[0]), builder.mul(col, strides[1]))
            pointers = []
            for r in range(_BLOCK):
                offset = builder.add(start, builder.mul(context.get_constant(types.intp, r), strides[0]))
                pointers.append(builder.bitcast(builder.gep(base, [offset]), vector.as_pointer()))
            return pointers

        rows = [builder.load(ptr, align=align) for ptr in row_pointers(src_arr, i_, t_)]
        for h, first, second in _transpose_masks(_BLOCK):
            mask_first = ir.Constant(ir.VectorType(ir.IntType(32), _BLOCK), first)
            mask_second = ir.Constant(ir.VectorType(ir.IntType(32), _BLOCK), second)
            for r in range(_BLOCK):
                if r & h:
                    continue
                a, c = rows[r], rows[r | h]
                rows[r] = builder.shuffle_vector(a, c, mask_first)
                rows[r | h] = builder.shuffle_vector(a, c, mask_second)
        for value, ptr in zip(rows, row_pointers(dst_arr, s_, j_)):
            builder.store(value, ptr, align=align)
        return context.get_dummy_value()

    return types.void(src, i, t, dst, s, j), codegen


@njit(inline="always", fastmath=True)
def _pow2(k):
    """2^k for a whole float32 k in float32's normal exponent range, built from its exponent bits."""
    return _bits_to_float32(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))


@njit(inline="always", fastmath=True)
def _exp_float32(x):
    x = min(max(x, _EXP_LO), _EXP_HI)
    k = np.floor(x * _LOG2E + _HALF)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _ONE + r * (_ONE + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * _C7))))))
    return p * _pow2(k)


@njit(inline="always", fastmath=True)
def _exp2_float32(y):
    y = min(max(y, _EXP2_LO), _EXP2_HI)
    k = np.rint(y)
    r = y - k
    p = _ONE + r * (_P1 + r * (_P2 + r * (_P3 + r * (_P4 + r * (_P5 + r * _P6)))))
    return p * _pow2(k)


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


def decay_rate(a):
    """A in the units decay_exp takes: A log2(e) for float32 (whose decays are powers of 2), A for float64."""
    return a


def decay_exp(x):
    """The decay from dt * decay_rate(A): 2^x for float32 (SIMD-friendly), libm's exp for float64."""
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


@overload(decay_rate, inline="always")
def _decay_rate_overload(a):
    if a == types.float32:
        return lambda a: a * _LOG2E
    return lambda a: a


@overload(decay_exp, inline="always")
def _decay_exp_overload(x):
    if x == types.float32:
        return lambda x: _exp2_float32(x)
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


# ----------------------------------------------------------------------------- tiles
# The kernels work on tiles of a few dozen time steps laid out (step, dim): a block of dims of one
# group shares B_t and C_t, so each step's loops over N run an inner loop over the block's dims, long
# and unit-stride. With the loop over N innermost (one chain at a time, N = 16: two or four SIMD
# iterations per loop) each step paid a loop's fixed cost many times over; measured at one thread
# (batch 8, dim 128, two groups, L 784, N 16): forward 0.60 -> 0.35 ns per update, backward
# 2.2-2.4 -> 1.3-1.4. The (b, g, d/g, L) inputs arrive in any strides and are read into the tiles
# along their unit stride, through borrowed contiguous runs (_dims_run, _time_run); the outputs are
# written back the same way. Read through 'A' views instead, these copies ran one element at a time
# with a run-time stride, a chain of dependent loads too long for the core to keep more than a few
# cache misses in flight: in a perf profile of the backward (b 4, 4 groups of 64 dims, L 1024,
# channel-last) the four tile loads were 28 % of its samples; as runs, forward 17.7 -> 9.9 ms and
# backward 40 -> 28 ms at one thread, 6.5 -> 3.8 and 16.0 -> 10.6 at two.
# The hot loops index their thread-local buffers directly ([s, k, j]) instead of taking row views:
# each numba view takes a reference (an atomic add and subtract) on its parent, and in the backward,
# too large for numba to prune them, those were 14 % of the samples; indexed, the backward at two
# threads 12.3 -> 10.9 ms.
# Rows (time unit-stride, mamba-ssm's (b, d, L) layout) need a transpose into the tiles: written as
# plain loops, LLVM made it a scatter (or gather) per element, and in a perf profile of the forward
# (b 2, d 192, L 3136, 1 thread, Xeon) the three tile loads and the store were 31 % of the samples.
# _transpose_block does 16 x 16 blocks in registers: at two threads forward 8.2 -> 6.9 ms and
# backward 20.2 -> 17.1 ms, outputs bit-identical (channel-last inputs: 6.1 and 15.7 ms).


@njit(inline="always", fastmath=True)
def _load_tile(rows, lo, t0, steps, tile):
    """tile[s, j] = rows[lo + j, t0 + s] for the first ``steps`` steps (rows: one sample's group,
    (d/g, L)), walking the source along its unit stride: dims for a channel-last view, time for rows,
    whose full 16 x 16 blocks are transposed in registers (_transpose_block) and the rest element-wise."""
    nd = tile.shape[1]
    if rows.strides[0] == rows.itemsize:
        for s in range(steps):
            step = _dims_run(rows, lo, t0 + s, nd)
            for j in range(nd):
                tile[s, j] = step[j]
    elif rows.strides[1] == rows.itemsize:
        full_steps = steps - steps % _BLOCK
        full_dims = nd - nd % _BLOCK
        for j0 in range(0, full_dims, _BLOCK):
            for s0 in range(0, full_steps, _BLOCK):
                _transpose_block(rows, lo + j0, t0 + s0, tile, s0, j0)
        for j in range(nd):
            first = full_steps if j < full_dims else 0
            row = _time_run(rows, lo + j, t0 + first, steps - first)
            for s in range(steps - first):
                tile[first + s, j] = row[s]
    else:
        for s in range(steps):
            for j in range(nd):
                tile[s, j] = rows[lo + j, t0 + s]


@njit(inline="always", fastmath=True)
def _store_tile(tile, steps, rows, lo, t0):
    """rows[lo + j, t0 + s] = tile[s, j] for the first ``steps`` steps (the transpose of _load_tile)."""
    nd = tile.shape[1]
    if rows.strides[0] == rows.itemsize:
        for s in range(steps):
            step = _dims_run(rows, lo, t0 + s, nd)
            for j in range(nd):
                step[j] = tile[s, j]
    elif rows.strides[1] == rows.itemsize:
        full_steps = steps - steps % _BLOCK
        full_dims = nd - nd % _BLOCK
        for j0 in range(0, full_dims, _BLOCK):
            for s0 in range(0, full_steps, _BLOCK):
                _transpose_block(tile, s0, j0, rows, lo + j0, t0 + s0)
        for j in range(nd):
            first = full_steps if j < full_dims else 0
            row = _time_run(rows, lo + j, t0 + first, steps - first)
            for s in range(steps - first):
                row[s] = tile[first + s, j]
    else:
        for s in range(steps):
            for j in range(nd):
                rows[lo + j, t0 + s] = tile[s, j]


@njit(inline="always", fastmath=True)
def _time_step_tile(delta_rows, u_rows, lo, t0, steps, bias, delta_softplus, raw, dt, u_tile, dtu):
    """For one tile's first ``steps`` steps: raw = delta + bias, dt = softplus(raw) (or raw), u, and
    dt * u, all (step, dim). Tiles are passed whole (a slice of one is an 'A' array, whose loops do not
    vectorise)."""
    _load_tile(delta_rows, lo, t0, steps, raw)
    _load_tile(u_rows, lo, t0, steps, u_tile)
    nd = raw.shape[1]
    for s in range(steps):
        for j in range(nd):
            raw[s, j] = raw[s, j] + bias[j]
        if delta_softplus:
            for j in range(nd):
                dt[s, j] = softplus(raw[s, j])
        else:
            for j in range(nd):
                dt[s, j] = raw[s, j]
        for j in range(nd):
            dtu[s, j] = dt[s, j] * u_tile[s, j]


@njit(inline="always", fastmath=True)
def _block_of_A(A, lo, nd):
    """A's rows lo .. lo + nd transposed to (N, nd), the layout of the loops over dims."""
    a_blk = np.empty((A.shape[1], nd), dtype=A.dtype)
    for k in range(A.shape[1]):
        for j in range(nd):
            a_blk[k, j] = A[lo + j, k]
    return a_blk


@njit(inline="always", fastmath=True)
def _decay_rates(a_blk):
    """decay_rate of a block of A: what the decays' exponentials take, dt times these."""
    rates = np.empty_like(a_blk)
    for k in range(a_blk.shape[0]):
        for j in range(a_blk.shape[1]):
            rates[k, j] = decay_rate(a_blk[k, j])
    return rates


@njit(inline="always", fastmath=True)
def _vector_or_fill(values, has_values, lo, nd, fill):
    """values[lo : lo + nd] (a copy), or nd times ``fill`` when the input is absent."""
    out = np.empty(nd, dtype=values.dtype)
    for j in range(nd):
        out[j] = values[lo + j] if has_values else fill
    return out


@njit(inline="always", fastmath=True)
def _block_bounds(item, groups, n_blocks, dims_per_group):
    """(sample, group, block, first dim, number of dims) of a work item; a block may be empty."""
    bi = item // (groups * n_blocks)
    gi = (item // n_blocks) % groups
    blk = item % n_blocks
    block_size = (dims_per_group + n_blocks - 1) // n_blocks
    lo = gi * dims_per_group + blk * block_size
    hi = min(lo + block_size, (gi + 1) * dims_per_group)
    return bi, gi, blk, lo, max(hi - lo, 0)


# ----------------------------------------------------------------------------- the kernels


def scan_fwd(
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
    tile,
    n_blocks,
    save_states,
    out,
    last_state,
    saved_states,
):
    """out = (y + D u) * silu(z) (b, g, d/g, l), last_state (b, d, n), and with ``save_states`` the
    state at the start of every tile, saved_states (b, tiles, n, d), which the backward reads instead
    of walking the forward again.

    u, delta, z (b, g, d/g, l); A (d, n); Bt, Ct (b, g, l, n); D, delta_bias (d,). Work items are
    (sample, group, block of dims); each walks time in tiles of ``tile`` steps, the state (N, dims)
    in L1.
    """
    batch, groups, dims_per_group, length = u.shape
    dstate = A.shape[1]
    for item in prange(batch * groups * n_blocks):
        caller_fp_mode = fp_mode()
        set_fp_mode(caller_fp_mode | FLUSH_SUBNORMALS)
        bi, gi, _, lo, nd = _block_bounds(item, groups, n_blocks, dims_per_group)
        lo_g = lo - gi * dims_per_group  # the block's first dim within its group
        zero = zero_like(A[0, 0])
        rates = _decay_rates(_block_of_A(A, lo, nd))
        bias = _vector_or_fill(delta_bias, has_bias, lo, nd, zero)
        d_skip = _vector_or_fill(D, has_D, lo, nd, zero)
        x = np.zeros((dstate, nd), dtype=out.dtype)
        raw = np.empty((tile, nd), dtype=out.dtype)
        dt = np.empty((tile, nd), dtype=out.dtype)
        u_tile = np.empty((tile, nd), dtype=out.dtype)
        dtu = np.empty((tile, nd), dtype=out.dtype)
        y = np.empty((tile, nd), dtype=out.dtype)
        for t0 in range(0, length, tile):
            steps = min(tile, length - t0)
            if save_states:
                saved = saved_states[bi, t0 // tile]
                for k in range(dstate):
                    for j in range(nd):
                        saved[k, lo + j] = x[k, j]
            _time_step_tile(
                delta[bi, gi], u[bi, gi], lo_g, t0, steps, bias, delta_softplus, raw, dt, u_tile, dtu
            )
            for s in range(steps):
                t = t0 + s
                for j in range(nd):
                    y[s, j] = d_skip[j] * u_tile[s, j]
                for k in range(dstate):
                    bk = Bt[bi, gi, t, k]
                    ck = Ct[bi, gi, t, k]
                    for j in range(nd):
                        state = decay_exp(dt[s, j] * rates[k, j]) * x[k, j] + dtu[s, j] * bk
                        x[k, j] = state
                        y[s, j] += state * ck
            if has_z:
                z_tile = raw  # reuse the buffer
                _load_tile(z[bi, gi], lo_g, t0, steps, z_tile)
                for s in range(steps):
                    for j in range(nd):
                        zj = z_tile[s, j]
                        y[s, j] = y[s, j] * zj * sigmoid(zj)
            _store_tile(y, steps, out[bi, gi], lo_g, t0)
        for j in range(nd):
            for k in range(dstate):
                last_state[bi, lo + j, k] = x[k, j]
        set_fp_mode(caller_fp_mode)


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
    workers,
    saved_states,
    has_saved_states,
    du,
    ddelta,
    dz,
    dA_part,
    dBt_part,
    dCt_part,
    dD_part,
    dbias_part,
):
    """Gradients by recomputation; see the module docstring for the scheme. With
    ``has_saved_states``, the forward's saved_states (b, chunks, n, d) are the checkpoints, and the
    first pass is skipped. The work items are dealt to ``workers`` lists (worker w takes items w,
    w + workers, ...), one per thread, each with its own buffers.

    Outputs: du, ddelta, dz (b, g, d/g, l; dz a dummy without z); dA_part (b, d, n), dD_part and
    dbias_part (b, d), summed over b by the caller; dBt_part, dCt_part (b, g, n_blocks, l, n), summed
    over blocks by the caller (:func:`reduce_transpose`). Every output element is written here.
    """
    batch, groups, dims_per_group, length = u.shape
    dstate = A.shape[1]
    n_chunks = (length + chunk - 1) // chunk
    n_items = batch * groups * n_blocks
    most_dims = (dims_per_group + n_blocks - 1) // n_blocks
    for worker in prange(workers):
        caller_fp_mode = fp_mode()
        set_fp_mode(caller_fp_mode | FLUSH_SUBNORMALS)
        # The three large buffers (a chunk's states and decays, the checkpoints) once per thread, for
        # all its items: allocations this large (hundreds of KiB) are mapped afresh by malloc each
        # time, and their first touch cost a page fault per 4 KiB, 8 % of the backward's samples.
        checkpoints_store = np.empty(n_chunks * dstate * most_dims, dtype=du.dtype)
        xs_store = np.empty((chunk + 1) * dstate * most_dims, dtype=du.dtype)
        decays_store = np.empty(chunk * dstate * most_dims, dtype=du.dtype)
        for item in range(worker, n_items, workers):
            bi, gi, blk, lo, nd = _block_bounds(item, groups, n_blocks, dims_per_group)
            lo_g = lo - gi * dims_per_group  # the block's first dim within its group
            u_rows, delta_rows = u[bi, gi], delta[bi, gi]
            zero = zero_like(A[0, 0])
            one = one_like(A[0, 0])
            a_blk = _block_of_A(A, lo, nd)  # for d dt; the decays take the rates
            rates = _decay_rates(a_blk)
            bias = _vector_or_fill(delta_bias, has_bias, lo, nd, zero)
            d_skip = _vector_or_fill(D, has_D, lo, nd, zero)
            dB_acc = dBt_part[bi, gi, blk]
            dC_acc = dCt_part[bi, gi, blk]
            # The item's buffers: the state at each chunk start and one chunk's states and decays (views
            # of the thread's stores above), and the chunk's (step, dim) tiles of the inputs and of the
            # row gradients.
            checkpoints = checkpoints_store[: n_chunks * dstate * nd].reshape((n_chunks, dstate, nd))
            for k in range(dstate):
                for j in range(nd):
                    checkpoints[0, k, j] = zero
            xs = xs_store[: (chunk + 1) * dstate * nd].reshape((chunk + 1, dstate, nd))
            decays = decays_store[: chunk * dstate * nd].reshape((chunk, dstate, nd))
            carry = np.zeros((dstate, nd), dtype=du.dtype)
            dA_acc = np.zeros((dstate, nd), dtype=du.dtype)
            dstep = np.empty(nd, dtype=du.dtype)
            hb = np.empty(nd, dtype=du.dtype)
            dD_acc = np.zeros(nd, dtype=du.dtype)
            dbias_acc = np.zeros(nd, dtype=du.dtype)
            raw = np.empty((chunk, nd), dtype=du.dtype)
            dt = np.empty((chunk, nd), dtype=du.dtype)
            u_tile = np.empty((chunk, nd), dtype=du.dtype)
            dtu = np.empty((chunk, nd), dtype=du.dtype)
            g = np.empty((chunk, nd), dtype=du.dtype)  # d loss / d (y + D u)
            du_tile = np.empty((chunk, nd), dtype=du.dtype)
            ddt = np.empty((chunk, nd), dtype=du.dtype)  # d loss / d dt, then d loss / d delta
            z_tile = np.empty((chunk if has_z else 1, nd), dtype=du.dtype)
            dout_tile = np.empty((chunk if has_z else 1, nd), dtype=du.dtype)
            pre = np.empty((chunk if has_z else 1, nd), dtype=du.dtype)  # y + D u, then dz
            # Pass 1: states at the start of every chunk (the first one is zero), walked in place in
            # carry (free until pass 2). In place through one name: a second name for the same row
            # fails LLVM's run-time overlap check and sends the loop to its scalar version (9x slower).
            if has_saved_states:
                for c in range(1, n_chunks):
                    saved = saved_states[bi, c]
                    cp = checkpoints[c]
                    for k in range(dstate):
                        for j in range(nd):
                            cp[k, j] = saved[k, lo + j]
            for c in range(0 if has_saved_states else n_chunks - 1):
                t0 = c * chunk
                _time_step_tile(
                    delta_rows, u_rows, lo_g, t0, chunk, bias, delta_softplus, raw, dt, u_tile, dtu
                )
                for s in range(chunk):
                    b_row = Bt[bi, gi, t0 + s]
                    dt_s = dt[s]
                    dtu_s = dtu[s]
                    for k in range(dstate):
                        bk = b_row[k]
                        x_k = carry[k]
                        rate_k = rates[k]
                        for j in range(nd):
                            x_k[j] = decay_exp(dt_s[j] * rate_k[j]) * x_k[j] + dtu_s[j] * bk
                cp = checkpoints[c + 1]
                for k in range(dstate):
                    for j in range(nd):
                        cp[k, j] = carry[k, j]
            for k in range(dstate):
                for j in range(nd):
                    carry[k, j] = zero
            # Pass 2: chunks from the last to the first; recompute, then run the reverse recurrence.
            for c in range(n_chunks - 1, -1, -1):
                t0 = c * chunk
                steps = min(chunk, length - t0)
                _time_step_tile(
                    delta_rows, u_rows, lo_g, t0, steps, bias, delta_softplus, raw, dt, u_tile, dtu
                )
                _load_tile(dout[bi, gi], lo_g, t0, steps, g)
                if has_z:
                    _load_tile(z[bi, gi], lo_g, t0, steps, z_tile)
                    for s in range(steps):
                        for j in range(nd):
                            zj = z_tile[s, j]
                            dout_tile[s, j] = g[s, j]
                            g[s, j] = g[s, j] * zj * sigmoid(zj)
                x0 = xs[0]
                cp = checkpoints[c]
                for k in range(dstate):
                    for j in range(nd):
                        x0[k, j] = cp[k, j]
                for s in range(steps):
                    t = t0 + s
                    if has_z:  # the gate's gradient needs the pre-gate output
                        for j in range(nd):
                            pre[s, j] = d_skip[j] * u_tile[s, j]
                    for k in range(dstate):
                        bk = Bt[bi, gi, t, k]
                        ck = Ct[bi, gi, t, k]
                        for j in range(nd):
                            a = decay_exp(dt[s, j] * rates[k, j])
                            decays[s, k, j] = a
                            xs[s + 1, k, j] = a * xs[s, k, j] + dtu[s, j] * bk
                        if has_z:
                            for j in range(nd):
                                pre[s, j] += xs[s + 1, k, j] * ck
                # The reverse recurrence, h_t = d loss / d x_t = carry + g_t C_t (this step's output plus
                # what flows back from x_{t+1}), carry = decay_t h_t, with every gradient that needs h
                # read off it in the same loop over dims: dA, d dt (sum over states of h x_{t-1} decay A),
                # h B for du and d dt, and the sums over dims that make dB and dC.
                for s in range(steps - 1, -1, -1):
                    t = t0 + s
                    for j in range(nd):
                        dstep[j] = zero
                        hb[j] = zero
                    for k in range(dstate):
                        bk = Bt[bi, gi, t, k]
                        ck = Ct[bi, gi, t, k]
                        sum_b = zero
                        sum_c = zero
                        for j in range(nd):
                            h = carry[k, j] + g[s, j] * ck
                            decay = decays[s, k, j]
                            carry[k, j] = decay * h
                            w = h * xs[s, k, j] * decay
                            dA_acc[k, j] += dt[s, j] * w
                            dstep[j] += w * a_blk[k, j]
                            hb[j] += h * bk
                            sum_b += dtu[s, j] * h
                            sum_c += g[s, j] * xs[s + 1, k, j]
                        dB_acc[t, k] = sum_b
                        dC_acc[t, k] = sum_c
                    for j in range(nd):
                        du_tile[s, j] = g[s, j] * d_skip[j] + dt[s, j] * hb[j]
                        ddt[s, j] = dstep[j] + hb[j] * u_tile[s, j]
                        dD_acc[j] += g[s, j] * u_tile[s, j]
                # The element-wise ends of the chunk: the gate's and softplus' derivatives.
                for s in range(steps):
                    if delta_softplus:
                        for j in range(nd):
                            r = raw[s, j]
                            ddt[s, j] = ddt[s, j] * (one if r > _SOFTPLUS_THRESHOLD else sigmoid(r))
                    for j in range(nd):
                        dbias_acc[j] += ddt[s, j]
                if has_z:
                    for s in range(steps):
                        for j in range(nd):
                            zj = z_tile[s, j]
                            sz = sigmoid(zj)
                            pre[s, j] = dout_tile[s, j] * pre[s, j] * sz * (one + zj * (one - sz))
                    _store_tile(pre, steps, dz[bi, gi], lo_g, t0)
                _store_tile(du_tile, steps, du[bi, gi], lo_g, t0)
                _store_tile(ddt, steps, ddelta[bi, gi], lo_g, t0)
            for j in range(nd):
                for k in range(dstate):
                    dA_part[bi, lo + j, k] = dA_acc[k, j]
                dD_part[bi, lo + j] = dD_acc[j]
                dbias_part[bi, lo + j] = dbias_acc[j]
        set_fp_mode(caller_fp_mode)


def exp_into(x, out):
    """out = decay_exp(x) element-wise: the exponential the kernels' decays take (2^x for float32), so
    that a floor can be set at the rate this machine does it (``visbench scan-bench``)."""
    for i in prange(x.shape[0]):
        out[i] = decay_exp(x[i])


# Steps per tile in reduce_transpose: one 64-byte line of each state's float32 row.
_REDUCE_TILE_STEPS = 16


def reduce_transpose(part, out):
    """out (b, g, n, l) = part (b, g, blocks, l, n) summed over blocks, in B's own layout.

    Time is walked in tiles of _REDUCE_TILE_STEPS steps and each state's tile written as one run: written
    step by step with the states innermost, every store went to a different row of out, L floats apart."""
    batch, groups, n_blocks, length, dstate = part.shape
    for item in prange(batch * groups):
        bi = item // groups
        gi = item % groups
        for t0 in range(0, length, _REDUCE_TILE_STEPS):
            t1 = min(t0 + _REDUCE_TILE_STEPS, length)
            for k in range(dstate):
                for t in range(t0, t1):
                    acc = part[bi, gi, 0, t, k]
                    for blk in range(1, n_blocks):
                        acc += part[bi, gi, blk, t, k]
                    out[bi, gi, k, t] = acc


# ----------------------------------------------------------------------------- compiled versions

_FLAGS = dict(parallel=True, cache=True, fastmath=True)
scan_fwd = njit(**_FLAGS)(scan_fwd)
scan_bwd = njit(**_FLAGS)(scan_bwd)
reduce_transpose = njit(**_FLAGS)(reduce_transpose)
exp_into = njit(**_FLAGS)(exp_into)

# Argument kinds per kernel: "A4" a 4-D array of any strides, "C2" a 2-D C-contiguous one, "b" a flag,
# "i" an integer. The (b, g, d/g, L) inputs and B, C (b, g, L, N) take any strides; the rest is contiguous.
_ARGS = {
    "scan_fwd": (
        *("A4", "A4", "C1", "b", "b", "C2", "A4", "A4", "C1", "b", "A4", "b", "i", "i", "b"),
        *("A4", "C3", "C4"),
    ),
    "scan_bwd": (
        *("A4", "A4", "A4", "C1", "b", "b", "C2", "A4", "A4", "C1", "b", "A4", "b", "i", "i", "i", "C4", "b"),
        *("A4", "A4", "A4", "C3", "C5", "C5", "C2", "C2"),
    ),
    "reduce_transpose": ("C5", "C4"),
    "exp_into": ("C1", "C1"),
}
_KERNELS = {
    "scan_fwd": scan_fwd,
    "scan_bwd": scan_bwd,
    "reduce_transpose": reduce_transpose,
    "exp_into": exp_into,
}


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

    Compilation is switched off between calls, so (b, g, d/g, L) arrays of any layout use this one
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
    "decay_exp",
    "decay_rate",
    "exp_into",
    "FLUSH_SUBNORMALS",
    "fp_mode",
    "kernel",
    "reduce_transpose",
    "scan_bwd",
    "scan_fwd",
    "set_fp_mode",
    "set_threads",
    "sigmoid",
    "softplus",
    "zero_like",
]
