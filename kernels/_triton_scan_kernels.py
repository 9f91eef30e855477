"""Triton kernels of the selective scan (Mamba-1), forward and backward.

Loaded by ``visbench.kernels.scan_triton`` (never imported directly): that loader imports this file once per
execution mode, because ``triton.jit`` decides at decoration time whether a kernel is compiled for
the GPU or run by the interpreter (``TRITON_INTERPRET=1``, the CPU test path).

Layout (the front end normalises to it): ``u``, ``delta``, ``z``, ``out``: (batch, dim, L) contiguous;
``A``: (dim, N); ``B``, ``C``: (batch, groups, N, L); channel ``c`` reads group ``c // (dim // groups)``.

One program owns one batch element and a block of ``BLOCK_D`` channels inside one group (so every
channel of the program shares the same ``B_t``/``C_t``), keeps the ``(BLOCK_D, BLOCK_N)`` state in
registers and walks the sequence step by step. Only the interpreter-safe subset of Triton is used:
no libdevice, no inline asm, no ``tl.dot``; softplus/sigmoid are written with ``tl.exp``/``tl.log``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _add(a, b):
    return a + b


# ``tl.sum`` is itself a jit function, and the interpreter re-patches triton.language on every jit call
# (milliseconds each). ``tl.reduce`` with triton's own add-combiner is the same reduction compiled, and
# the interpreter runs it as one numpy sum. triton's combiner is only usable when it was built in this
# module's mode (triton.language is decorated once, in the mode of its first import); otherwise ours.
_std_add = getattr(getattr(tl, "standard", None), "_sum_combine", None)
if _std_add is not None and type(_std_add) is type(_add):
    _add = _std_add


@triton.jit
def _program_layout(
    A_ptr,
    D_ptr,
    bias_ptr,
    dim,
    L,
    N,
    groups,
    dg,
    nblk,
    HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Channels, masks, row offsets and per-channel parameters of this program."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_gj = tl.program_id(1)
    g = pid_gj // nblk
    j = pid_gj % nblk
    offs_j = j * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_j < dg
    ch = g * dg + offs_j
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    # Padded states get A = 0 (decay 1) and B = 0, so they stay exactly zero.
    A = tl.load(A_ptr + ch[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0)
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0)
    else:
        Dv = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0)
    else:
        bias = tl.zeros((BLOCK_D,), tl.float32)
    row = (pid_b * dim + ch) * L
    bc_off = (pid_b * groups + g) * N * L + offs_n * L
    return pid_b, ch, mask_d, offs_n, mask_n, mask_dn, A, Dv, bias, row, bc_off


@triton.jit
def scan_fwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    out_ptr,
    last_ptr,
    dim,
    L,
    N,
    groups,
    dg,
    nblk,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_b, ch, mask_d, offs_n, mask_n, mask_dn, A, Dv, bias, row, bc_off = _program_layout(
        A_ptr, D_ptr, bias_ptr, dim, L, N, groups, dg, nblk, HAS_D, HAS_BIAS, BLOCK_D, BLOCK_N
    )
    # Row pointers hoisted out of the loop (one op less per access; it matters in the interpreter).
    u_row = u_ptr + row
    dt_row = delta_ptr + row
    z_row = z_ptr + row
    out_row = out_ptr + row
    B_row = B_ptr + bc_off
    C_row = C_ptr + bc_off
    h = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    for t in range(0, L):
        # Step inputs are loaded inline (not through a jit helper): in the interpreter every helper
        # call re-patches triton.language, which costs more than the step itself.
        u = tl.load(u_row + t, mask=mask_d, other=0.0)
        dt = tl.load(dt_row + t, mask=mask_d, other=0.0)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:  # F.softplus with threshold 20, from exp/log only (no libdevice)
            dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
        Bt = tl.load(B_row + t, mask=mask_n, other=0.0)
        Ct = tl.load(C_row + t, mask=mask_n, other=0.0)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
        y = tl.reduce(h * Ct[None, :], 1, _add)
        if HAS_D:
            y += Dv * u
        if HAS_Z:
            zt = tl.load(z_row + t, mask=mask_d, other=0.0)
            y = y * zt / (1.0 + tl.exp(-zt))
        tl.store(out_row + t, y, mask=mask_d)
    tl.store(last_ptr + (pid_b * dim + ch)[:, None] * N + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def scan_bwd_kernel(
    dout_ptr,
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    ckpt_ptr,
    scratch_ptr,
    du_ptr,
    ddelta_ptr,
    dz_ptr,
    dB_ptr,
    dC_ptr,
    dA_part_ptr,
    dD_part_ptr,
    dbias_part_ptr,
    dim,
    L,
    N,
    groups,
    dg,
    nblk,
    nchunks,
    chunk,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    ATOMIC_BC: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Reverse-mode scan without (batch, dim, L, N) storage.

    Pass 1 runs the recurrence forward and checkpoints the state at every chunk start
    (``ckpt``: per program, ``nchunks`` tiles). Pass 2 walks the chunks backwards: it recomputes
    the chunk's states from its checkpoint into a per-program scratch of ``chunk`` tiles, then runs
    the adjoint recurrence ``dh_{t-1} = exp(delta_t A) * dh_t`` step by step through the chunk.
    """
    pid_b, ch, mask_d, offs_n, mask_n, mask_dn, A, Dv, bias, row, bc_off = _program_layout(
        A_ptr, D_ptr, bias_ptr, dim, L, N, groups, dg, nblk, HAS_D, HAS_BIAS, BLOCK_D, BLOCK_N
    )
    prog = pid_b * tl.num_programs(1) + tl.program_id(1)
    tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :]
    ckpt_base = ckpt_ptr + prog * nchunks * (BLOCK_D * BLOCK_N) + tile
    scratch_base = scratch_ptr + prog * chunk * (BLOCK_D * BLOCK_N) + tile

    # Row pointers hoisted out of the loops (one op less per access; it matters in the interpreter).
    u_row = u_ptr + row
    dt_row = delta_ptr + row
    z_row = z_ptr + row
    dout_row = dout_ptr + row
    du_row = du_ptr + row
    ddt_row = ddelta_ptr + row
    dz_row = dz_ptr + row
    B_row = B_ptr + bc_off
    C_row = C_ptr + bc_off
    dB_row = dB_ptr + bc_off
    dC_row = dC_ptr + bc_off

    # Pass 1: the state entering each chunk.
    h = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    for c in range(0, nchunks):
        tl.store(ckpt_base + c * (BLOCK_D * BLOCK_N), h)
        if c + 1 < nchunks:
            for t in range(c * chunk, (c + 1) * chunk):
                u = tl.load(u_row + t, mask=mask_d, other=0.0)
                dt = tl.load(dt_row + t, mask=mask_d, other=0.0)
                if HAS_BIAS:
                    dt += bias
                if SOFTPLUS:
                    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
                Bt = tl.load(B_row + t, mask=mask_n, other=0.0)
                h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
    tl.debug_barrier()

    dh = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), tl.float32)
    for cc in range(0, nchunks):
        c = nchunks - 1 - cc
        t0 = c * chunk
        steps = tl.minimum(L - t0, chunk)
        # Pass 2a: scratch[k] = state entering step t0 + k; h ends as the state leaving the chunk.
        h = tl.load(ckpt_base + c * (BLOCK_D * BLOCK_N))
        for k in range(0, steps):
            tl.store(scratch_base + k * (BLOCK_D * BLOCK_N), h)
            t = t0 + k
            u = tl.load(u_row + t, mask=mask_d, other=0.0)
            dt = tl.load(dt_row + t, mask=mask_d, other=0.0)
            if HAS_BIAS:
                dt += bias
            if SOFTPLUS:
                dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
            Bt = tl.load(B_row + t, mask=mask_n, other=0.0)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
        tl.debug_barrier()
        # Pass 2b: the adjoint recurrence, last step first; h is the state leaving step t.
        for kk in range(0, steps):
            k = steps - 1 - kk
            t = t0 + k
            h_prev = tl.load(scratch_base + k * (BLOCK_D * BLOCK_N))
            u = tl.load(u_row + t, mask=mask_d, other=0.0)
            dt = tl.load(dt_row + t, mask=mask_d, other=0.0)
            if HAS_BIAS:
                dt += bias
            if SOFTPLUS:
                e = tl.exp(tl.minimum(dt, 20.0))
                dsoftplus = e / (1.0 + e)  # sigmoid(pre-activation)
                dt = tl.where(dt > 20.0, dt, tl.log(1.0 + e))
            Bt = tl.load(B_row + t, mask=mask_n, other=0.0)
            Ct = tl.load(C_row + t, mask=mask_n, other=0.0)
            decay = tl.exp(dt[:, None] * A)
            x = dt * u
            dy = tl.load(dout_row + t, mask=mask_d, other=0.0)
            if HAS_Z:
                zt = tl.load(z_row + t, mask=mask_d, other=0.0)
                sig = 1.0 / (1.0 + tl.exp(-zt))
                out_pre = tl.reduce(h * Ct[None, :], 1, _add)
                if HAS_D:
                    out_pre += Dv * u
                tl.store(dz_row + t, dy * out_pre * sig * (1.0 + zt * (1.0 - sig)), mask=mask_d)
                dy = dy * zt * sig
            dC_t = tl.reduce(h * dy[:, None], 0, _add)
            dh += dy[:, None] * Ct[None, :]
            dB_t = tl.reduce(dh * x[:, None], 0, _add)
            dx = tl.reduce(dh * Bt[None, :], 1, _add)
            ddecay = dh * h_prev * decay  # gradient with respect to delta_t * A
            ddt = dx * u + tl.reduce(ddecay * A, 1, _add)
            dA_acc += ddecay * dt[:, None]
            du = dx * dt
            if HAS_D:
                dD_acc += dy * u
                du += dy * Dv
            if SOFTPLUS:
                ddt = ddt * dsoftplus
            if HAS_BIAS:
                dbias_acc += ddt
            tl.store(du_row + t, du, mask=mask_d)
            tl.store(ddt_row + t, ddt, mask=mask_d)
            if ATOMIC_BC:
                tl.atomic_add(dB_row + t, dB_t, mask=mask_n, sem="relaxed")
                tl.atomic_add(dC_row + t, dC_t, mask=mask_n, sem="relaxed")
            else:
                tl.store(dB_row + t, dB_t, mask=mask_n)
                tl.store(dC_row + t, dC_t, mask=mask_n)
            dh = dh * decay
            h = h_prev
        tl.debug_barrier()

    # Per-(batch, channel) partial sums; the wrapper sums them over the batch.
    tl.store(dA_part_ptr + (pid_b * dim + ch)[:, None] * N + offs_n[None, :], dA_acc, mask=mask_dn)
    tl.store(dD_part_ptr + pid_b * dim + ch, dD_acc, mask=mask_d)
    tl.store(dbias_part_ptr + pid_b * dim + ch, dbias_acc, mask=mask_d)
