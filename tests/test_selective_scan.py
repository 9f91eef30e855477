"""visbench.kernels.selective_scan: ref against mamba-ssm, the cpu back end against ref, the op's plumbing."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import import_mamba_reference
from scan_cases import CASES, ScanCase, assert_backend_matches_ref, make_inputs, run_scan
from visbench.kernels import scan_cpu, selective_scan
from visbench.kernels.checks import GROUPS
from visbench.kernels.selective_scan import BACKEND_ENV, available_backends, reads_strided, resolve_backend


@pytest.fixture(params=["numba", "torch"])
def cpu_impl(request):
    """Run a test with the numba kernels and again with the pure-PyTorch fallback."""
    if request.param == "numba" and scan_cpu._numba_module() is None:
        pytest.skip("numba is not installed")
    scan_cpu.use_implementation(request.param)
    yield request.param
    scan_cpu.use_implementation(None)


# ----------------------------------------------------------------------------- ref is mamba-ssm's ref

MAMBA_CASES = [
    ScanCase(2, 24, 4, 64, "shared", True, True, True, True, True),
    ScanCase(1, 8, 16, 33, "grouped", False, False, False, False, True),
    ScanCase(3, 4, 1, 7, "grouped", True, True, False, True, True),
]


@pytest.mark.parametrize("case", MAMBA_CASES, ids=str)
def test_ref_matches_mamba_selective_scan_ref(case):
    mamba_ref = import_mamba_reference("mamba_ssm.ops.selective_scan_interface").selective_scan_ref
    results = []
    for fn in (mamba_ref, functools.partial(selective_scan, backend="ref")):
        inputs = make_inputs(case, torch.float32, requires_grad=True)
        out, last = fn(**inputs, delta_softplus=case.delta_softplus, return_last_state=True)
        present = [t for t in inputs.values() if t is not None]
        grads = torch.autograd.grad(out.square().sum(), present)
        results.append((out, last, *grads))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_constant_B_and_C_match_mamba_ref(cpu_impl):
    """B, C of shape (dim, N) (mamba's non-variable case), forward and gradients."""
    mamba_ref = import_mamba_reference("mamba_ssm.ops.selective_scan_interface").selective_scan_ref
    case = ScanCase(2, 8, 4, 19, "shared", True, True, True, True, True)
    inputs = make_inputs(case, torch.float32, requires_grad=True)
    inputs["B"] = torch.randn(8, 4, requires_grad=True)
    expected = mamba_ref(**inputs, delta_softplus=True)
    expected_grads = torch.autograd.grad(expected.square().sum(), [inputs["B"], inputs["u"]])
    out = selective_scan(**inputs, delta_softplus=True, backend="cpu")
    grads = torch.autograd.grad(out.square().sum(), [inputs["B"], inputs["u"]])
    torch.testing.assert_close(out, expected, rtol=6e-4, atol=2e-3)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=6e-4, atol=2e-3 * max(1.0, float(want.abs().max())))


# ----------------------------------------------------------------------------- cpu against ref


@pytest.mark.parametrize("case", CASES, ids=str)
def test_cpu_matches_ref_float32(case, cpu_impl):
    assert_backend_matches_ref("cpu", case, torch.float32)


@pytest.mark.parametrize("case", CASES[::3], ids=str)
def test_cpu_matches_ref_bfloat16_inputs(case, cpu_impl):
    assert_backend_matches_ref("cpu", case, torch.bfloat16)


@pytest.mark.parametrize("length", [64, 257])
def test_cpu_backward_across_checkpoint_chunks(length, monkeypatch):
    """The numba backward keeps a state every BACKWARD_CHUNK steps; lengths that cross several
    chunk borders (and end mid-chunk) must give the same gradients."""
    if scan_cpu._numba_module() is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(scan_cpu, "BACKWARD_CHUNK", 10)
    case = ScanCase(2, 8, 4, length, "grouped", True, True, True, True, True)
    assert_backend_matches_ref("cpu", case, torch.float32)


def test_cpu_forward_saves_the_chunk_start_states_for_the_backward(monkeypatch):
    """save_states=True keeps the state at every chunk start (each equals the last state of the
    prefix before it); the backward given them skips its first pass and gives the same gradients as
    the one that walks the forward again, and saved states of another chunking are not used."""
    if scan_cpu._numba_module() is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(scan_cpu, "BACKWARD_CHUNK", 32)
    case = ScanCase(2, 8, 4, 150, "grouped", True, True, True, True, False)
    made = make_inputs(case, torch.float32)
    args = [made[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out, last, saved = scan_cpu.selective_scan_fwd(*args, True, save_states=True)
    assert saved.shape == scan_cpu.saved_states_shape(2, 8, 150, 4) == (2, 5, 4, 8)
    torch.testing.assert_close(out, scan_cpu.selective_scan_fwd(*args, True)[0])
    assert saved[:, 0].abs().max() == 0
    for c in range(1, 5):
        prefix = {k: v[..., : 32 * c] if k in ("u", "delta", "z", "B", "C") else v for k, v in made.items()}
        _, state = selective_scan(**prefix, delta_softplus=True, return_last_state=True, backend="ref")
        torch.testing.assert_close(saved[:, c].transpose(1, 2), state, rtol=1e-4, atol=1e-5)
    dout = torch.randn(2, 8, 150, generator=torch.Generator().manual_seed(3))
    walked = scan_cpu.selective_scan_bwd(dout, *args, True)
    for chunk in (None, 7):  # 7: saved states of another chunking, ignored
        kept = scan_cpu.selective_scan_bwd(dout, *args, True, chunk=chunk, saved_states=saved)
        for name, want, got in zip(("u", "delta", "A", "B", "C", "D", "z", "bias"), walked, kept):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("save_states", [False, True])
@pytest.mark.parametrize("layout", ["rows", "route_major"])
def test_scan_op_registrations_pass_opcheck(save_states, layout):
    """opcheck compares the fake (compile-time) outputs, saved states included, with the real ones,
    and the autograd registration with the op's own backward."""
    case = ScanCase(2, 8, 4, 70, "grouped", True, True, True, True, False)
    made = make_inputs(case, torch.float32, requires_grad=True)
    args = [_grouped(layout, k, made[k]) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    args = [a.detach().requires_grad_(True) for a in args]
    fwd_args = (*args, True, save_states, "cpu")
    out, _, saved = torch.ops.visbench.selective_scan_fwd(*fwd_args)
    assert tuple(saved.shape) == (scan_cpu.saved_states_shape(2, 8, 70, 4) if save_states else (0,))
    torch.library.opcheck(torch.ops.visbench.selective_scan_fwd.default, fwd_args)
    dout = torch.randn_like(out)
    bwd_args = (dout, *[a.detach() for a in args], True, saved.detach(), "cpu")
    torch.library.opcheck(torch.ops.visbench.selective_scan_bwd.default, bwd_args)


@pytest.mark.parametrize("block_dims", [1, 3, 5])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_tiles_and_blocks_of_dims(block_dims, layout, monkeypatch):
    """The numba kernels walk time in tiles (FORWARD_TILE, BACKWARD_CHUNK steps) and split each group's
    dims into blocks of at most MAX_BLOCK_DIMS (blocks that do not divide the group, and empty ones):
    small values cross every border, in both input layouts."""
    if scan_cpu._numba_module() is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(scan_cpu, "FORWARD_TILE", 7)
    monkeypatch.setattr(scan_cpu, "BACKWARD_CHUNK", 6)
    monkeypatch.setattr(scan_cpu, "MAX_BLOCK_DIMS", block_dims)
    case = ScanCase(2, 16, 4, 23, "grouped", True, True, True, True, True)
    dout = torch.randn(2, 16, 23, generator=torch.Generator().manual_seed(2))
    want = _grads_through_layout(functools.partial(selective_scan, backend="ref"), case, "contiguous", dout)
    got = _grads_through_layout(functools.partial(selective_scan, backend="cpu"), case, layout, dout)
    torch.testing.assert_close(got[0], want[0], rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(got[1], want[1], rtol=6e-4, atol=2e-3)
    for name, expected in want[2].items():
        scale = max(1.0, float(expected.abs().max()))
        torch.testing.assert_close(got[2][name], expected, rtol=1.2e-3, atol=4e-3 * scale, msg=name)


def test_cpu_outputs_keep_a_channel_last_layout():
    """A channel-last u (a (b, d, L) view of (b, L, d) memory) is read as it is, and the output and
    du come back in that layout, so the caller's next op reads them without a copy."""
    if scan_cpu._numba_module() is None:
        pytest.skip("numba is not installed")
    case = ScanCase(2, 8, 4, 11, "grouped", False, True, True, True, False)
    made = make_inputs(case, torch.float32)
    inputs = {k: None if v is None else _channels_last(k, v) for k, v in made.items()}
    u = inputs.pop("u").requires_grad_(True)
    out = selective_scan(u, **inputs, delta_softplus=True, backend="cpu")
    assert out.transpose(1, 2).is_contiguous()
    (du,) = torch.autograd.grad(out, u, torch.randn_like(out))
    assert du.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_tiles_transposed_in_blocks_agree_exactly_with_channel_last(dtype):
    """Row inputs (time unit-stride) reach the kernels' (step, dim) tiles through 16 x 16 transposes
    in registers plus element-wise remainders, and row outputs and gradients leave them the same way;
    channel-last ones through contiguous runs. The arithmetic is the same, so every output and
    gradient agrees bit for bit, and with the reference within tolerance. 40 dims (two blocks and 8
    over) and 100 steps (tiles of 64 and 36: full blocks and 4 over) cross every border."""
    if scan_cpu._numba_module() is None:
        pytest.skip("numba is not installed")
    case = ScanCase(2, 40, 4, 100, "shared", True, True, True, True, True)
    dout = torch.randn(2, 40, 100, generator=torch.Generator().manual_seed(3), dtype=dtype)

    def run(layout, backend):
        inputs = make_inputs(case, dtype, requires_grad=True)
        laid = {k: None if v is None else LAYOUTS[layout](k, v) for k, v in inputs.items()}
        out, last = selective_scan(**laid, delta_softplus=True, return_last_state=True, backend=backend)
        present = [k for k, v in inputs.items() if v is not None]
        return [out, last, *torch.autograd.grad(out, [inputs[k] for k in present], dout)]

    rows, channel_last, want = run("contiguous", "cpu"), run("channels_last", "cpu"), run("contiguous", "ref")
    for got_rows, got_cl, expected in zip(rows, channel_last, want, strict=True):
        assert torch.equal(got_rows, got_cl)
        scale = max(1.0, float(expected.abs().max()))
        torch.testing.assert_close(got_rows, expected, rtol=1.2e-3, atol=4e-3 * scale)


def test_B_and_C_with_unit_stride_states_are_read_in_place_and_agree_exactly():
    """B and C as an SSM mixer hands them over, slices of one route-major (K, b, L, R + 2N) projection
    with the states unit-stride, go to the numba kernels as views (no copy) and give the same outputs and
    gradients, bit for bit, as the same values contiguous in mamba-ssm's (b, G, N, L) layout."""
    if scan_cpu._numba_module() is None:
        pytest.skip("numba is not installed")
    gen = torch.Generator().manual_seed(5)
    batch, groups, dims, dstate, length = 2, 2, 8, 4, 70
    proj = torch.randn(groups, batch, length, 3 + 2 * dstate, generator=gen)
    u = torch.randn(batch, groups * dims, length, generator=gen)
    delta = 0.5 * torch.rand(batch, groups * dims, length, generator=gen)
    A = -0.5 * torch.rand(groups * dims, dstate, generator=gen)
    dout = torch.randn(batch, groups * dims, length, generator=gen)

    def run(in_place: bool):
        leaves = [t.clone().requires_grad_(True) for t in (u, delta, A, proj)]
        b_view = leaves[3][..., 3 : 3 + dstate].permute(1, 0, 3, 2)  # (b, G, N, L), N unit-stride
        c_view = leaves[3][..., 3 + dstate :].permute(1, 0, 3, 2)
        B, C = (b_view, c_view) if in_place else (b_view.contiguous(), c_view.contiguous())
        assert (scan_cpu._bt(B).data_ptr() == leaves[3].data_ptr() + 3 * proj.element_size()) == in_place
        out = selective_scan(*leaves[:3], B, C, delta_softplus=True, backend="cpu")
        return [out, *torch.autograd.grad(out, [*leaves[:3], B, C], dout)]

    for got, want in zip(run(in_place=True), run(in_place=False), strict=True):
        assert torch.equal(got, want)


def _ref_and_cpu(case: ScanCase, inputs: dict, dout: torch.Tensor) -> list[tuple]:
    """run_scan's (out, last_state, grads) on `ref`, then on `cpu`, each on fresh copies of ``inputs``."""
    results = []
    for backend in ("ref", "cpu"):
        fresh = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
        results.append(run_scan(backend, case, fresh, dout))
    return results


def test_grouped_B_with_shared_C():
    """B grouped (b, G, N, L) with C shared (b, N, L): each keeps its own layout and gradient shape."""
    case = ScanCase(2, 8, 4, 9, "grouped", False, True, False, False, False)
    inputs = make_inputs(case, torch.float32, requires_grad=True)
    inputs["C"] = torch.randn(2, 4, 9, requires_grad=True)
    dout = torch.randn(2, 8, 9)
    (ref_out, _, ref_grads), (out, _, grads) = _ref_and_cpu(case, inputs, dout)
    torch.testing.assert_close(out, ref_out, rtol=6e-4, atol=2e-3)
    assert grads["C"].shape == (2, 4, 9) and grads["B"].shape == (2, 4, 4, 9)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-3, atol=4e-3)


# ----------------------------------------------------------------------------- grouped (b, G, d/G, L) inputs
# A multi-route mixer hands the scan u, delta and z as (b, K, d/K, L) views whose routes have strides of
# their own (its per-route projections write route-major memory). The `cpu` back end reads them as they
# are; `ref` (and the GPU back ends) get them flattened.

GROUPED_LAYOUTS = ("rows", "route_major", "token_major")


def _grouped(layout: str, name: str, t: torch.Tensor) -> torch.Tensor:
    """u, delta, z (b, d, L) as (b, G, d/G, L) with the same values, in ``layout``'s memory: rows
    (b, G, d/G, L), route-major (G, b, L, d/G) or token-major (b, L, G, d/G). Differentiable."""
    if name not in ("u", "delta", "z") or t is None:
        return t
    grouped = t.unflatten(1, (GROUPS, -1))
    if layout == "route_major":
        return grouped.permute(1, 0, 3, 2).contiguous().permute(1, 0, 3, 2)
    if layout == "token_major":
        return grouped.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    return grouped


@pytest.mark.parametrize("layout", GROUPED_LAYOUTS)
@pytest.mark.parametrize("backend", ["cpu", "ref"])
def test_grouped_inputs_match_mamba_ref(layout, backend, cpu_impl):
    """Forward and every gradient of grouped, strided u / delta / z equal mamba-ssm's
    selective_scan_ref on the flat tensors; out and du come back grouped, in u's layout (cpu)."""
    mamba_ref = import_mamba_reference("mamba_ssm.ops.selective_scan_interface").selective_scan_ref
    case = ScanCase(2, 8, 4, 37, "grouped", True, True, True, True, True)
    dout = torch.randn(2, 8, 37, generator=torch.Generator().manual_seed(1))
    want = _grads_through_layout(mamba_ref, case, "contiguous", dout)
    inputs = make_inputs(case, torch.float32, requires_grad=True)
    laid = {k: _grouped(layout, k, v) for k, v in inputs.items()}
    out, last = selective_scan(**laid, delta_softplus=True, return_last_state=True, backend=backend)
    assert out.shape == (2, GROUPS, 8 // GROUPS, 37)
    if backend == "cpu":
        assert out.stride() == laid["u"].stride()
    present = [k for k, v in inputs.items() if v is not None]
    grads = torch.autograd.grad(
        out, [laid[k] if k == "u" else inputs[k] for k in present], dout.view(out.shape)
    )
    if backend == "cpu":
        assert grads[0].stride() == laid["u"].stride()
    torch.testing.assert_close(out.flatten(1, 2), want[0], rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last, want[1], rtol=6e-4, atol=2e-3)
    for name, got in zip(present, grads):
        expected = want[2][name].view(got.shape)
        scale = max(1.0, float(expected.abs().max()))
        torch.testing.assert_close(
            got, expected, rtol=1.2e-3, atol=4e-3 * scale, msg=lambda m, n=name: f"d{n}: {m}"
        )


def test_grouped_u_refines_ungrouped_B_and_C():
    """A grouped u with shared (b, N, L) B and C: the groups come from u, the values from the flat call."""
    case = ScanCase(2, 8, 4, 13, "shared", True, True, True, True, False)
    inputs = make_inputs(case, torch.float32)
    want = selective_scan(**inputs, delta_softplus=True, backend="ref")
    laid = {k: _grouped("route_major", k, v) for k, v in inputs.items()}
    got = selective_scan(**laid, delta_softplus=True, backend="cpu")
    torch.testing.assert_close(got.flatten(1, 2), want, rtol=6e-4, atol=2e-3)


def test_reads_strided_names_the_back_ends_that_take_views():
    assert reads_strided("cpu") and reads_strided("cpu", "cpu")
    assert not reads_strided("cpu", "ref")


# ----------------------------------------------------------------------------- fused pieces and layouts
# The cpu back end fuses softplus(delta + delta_bias), the D skip and the silu(z) gate into its kernels
# and reads inputs in the layouts callers produce. Each piece's forward and gradients are checked
# against mamba-ssm's selective_scan_ref, on inputs laid out as a model lays them out.


def _channels_last(name: str, t: torch.Tensor) -> torch.Tensor:
    """The same values with L innermost-but-one: (b, L, d) memory for u, delta, z; (b, g, L, N) for B, C."""
    if name in ("u", "delta", "z", "B", "C"):
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return t


def _strided(name: str, t: torch.Tensor) -> torch.Tensor:
    """The same values as every-other slices of a twice larger tensor (dim axis; N for B, C; L kept unit)."""
    axis = {"B": 2, "C": 2}.get(name, 1 if t.dim() > 1 else 0)
    return t.repeat_interleave(2, dim=axis).narrow(axis, 0, 2 * t.shape[axis] - 1)[
        (slice(None),) * axis + (slice(None, None, 2),)
    ]


def _time_strided(name: str, t: torch.Tensor) -> torch.Tensor:
    """The same values with stride 2 along L (the back end copies these once)."""
    if name in ("u", "delta", "z", "B", "C"):
        return t.repeat_interleave(2, dim=-1)[..., ::2]
    return t


LAYOUTS = {
    "contiguous": lambda name, t: t,
    "channels_last": _channels_last,
    "strided": _strided,
    "time_strided": _time_strided,
}
# (has_delta_bias + delta_softplus, has_D, has_z): each fused piece alone, then all together.
FUSED = {"softplus_bias": (True, False, False), "D": (False, True, False), "z": (False, False, True)}
FUSED["all"] = (True, True, True)


def _grads_through_layout(fn, case, layout, dout):
    """fn on the case's inputs laid out by ``layout`` (a name in LAYOUTS or such a function,
    differentiably): out, last_state, input grads."""
    inputs = make_inputs(case, torch.float32, requires_grad=True)
    lay = LAYOUTS[layout] if isinstance(layout, str) else layout
    laid = {k: None if v is None else lay(k, v) for k, v in inputs.items()}
    out, last = fn(**laid, delta_softplus=case.delta_softplus, return_last_state=True)
    present = [k for k, v in inputs.items() if v is not None]
    grads = torch.autograd.grad(out, [inputs[k] for k in present], dout)
    return out, last, dict(zip(present, grads)), laid


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("fused", list(FUSED))
def test_fused_pieces_match_mamba_ref_in_every_layout(fused, layout, cpu_impl):
    mamba_ref = import_mamba_reference("mamba_ssm.ops.selective_scan_interface").selective_scan_ref
    bias_softplus, has_D, has_z = FUSED[fused]
    case = ScanCase(2, 8, 4, 37, "grouped", has_z, has_D, bias_softplus, bias_softplus, True)
    dout = torch.randn(2, 8, 37, generator=torch.Generator().manual_seed(1))
    want = _grads_through_layout(mamba_ref, case, "contiguous", dout)
    got = _grads_through_layout(functools.partial(selective_scan, backend="cpu"), case, layout, dout)
    if layout != "contiguous":
        assert not got[3]["u"].is_contiguous() and not got[3]["B"].is_contiguous()
    torch.testing.assert_close(got[0], want[0], rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(got[1], want[1], rtol=6e-4, atol=2e-3)
    assert got[2].keys() == want[2].keys()
    for name, expected in want[2].items():
        scale = max(1.0, float(expected.abs().max()))
        torch.testing.assert_close(
            got[2][name], expected, rtol=1.2e-3, atol=4e-3 * scale, msg=lambda m, n=name: f"d{n}: {m}"
        )


def _single_step_gapped(name: str, t: torch.Tensor) -> torch.Tensor:
    """(b, d, 1) inputs whose dims are 2 apart and whose one step is 2d apart: neither stride is one
    element, which the back end takes as it is (a single step needs no copy) and the kernels read
    element by element."""
    if name in ("u", "delta", "z"):
        return t.transpose(1, 2).repeat_interleave(2, dim=2)[:, :, ::2].transpose(1, 2)
    return t


def test_single_step_inputs_with_no_unit_stride_match_ref(cpu_impl):
    case = ScanCase(2, 8, 4, 1, "grouped", True, True, True, True, True)
    dout = torch.randn(2, 8, 1, generator=torch.Generator().manual_seed(3))
    want = _grads_through_layout(functools.partial(selective_scan, backend="ref"), case, "contiguous", dout)
    cpu = functools.partial(selective_scan, backend="cpu")
    got = _grads_through_layout(cpu, case, _single_step_gapped, dout)
    assert got[3]["u"].stride()[1:] == (2, 16)
    torch.testing.assert_close(got[0], want[0], rtol=6e-4, atol=2e-3)
    for name, expected in want[2].items():
        torch.testing.assert_close(
            got[2][name], expected, rtol=1.2e-3, atol=4e-3, msg=lambda m, n=name: f"d{n}: {m}"
        )


def test_subnormals_are_flushed_in_the_kernels_and_the_callers_mode_is_kept():
    """A gradient on the last step only decays into float32's subnormal range over 784 steps, where x86
    cores slow down about a hundredfold per operation. The numba kernels run with flush-to-zero (and
    denormals-are-zero) on, so their gradients hold zeros there, agree with ref, and the caller's mode
    is back afterwards: torch, on every thread, still makes subnormals after a scan or a conv1d call."""
    kern = scan_cpu._numba_module()
    if kern is None:
        pytest.skip("numba is not installed")
    if not kern._X86:
        pytest.skip("the kernels set flush-to-zero on x86 only")
    from visbench.kernels import causal_conv1d

    tiny = torch.finfo(torch.float32).tiny
    gen = torch.Generator().manual_seed(0)
    batch, dim, dstate, length = 2, 8, 4, 784
    inputs = {
        "u": torch.randn(batch, dim, length, generator=gen),
        "delta": 0.5 * torch.rand(batch, dim, length, generator=gen),
        "A": -torch.arange(1.0, dstate + 1).repeat(dim, 1),
        "B": torch.randn(batch, dstate, length, generator=gen),
        "C": torch.randn(batch, dstate, length, generator=gen),
        "D": torch.ones(dim),
    }
    dout = torch.zeros(batch, dim, length)
    dout[..., -1] = 1.0
    grads = {}
    for backend in ("ref", "cpu"):
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        out = selective_scan(**leaves, delta_softplus=True, backend=backend)
        grads[backend] = dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()), dout), strict=True))
    subnormal = {b: (g["delta"] != 0) & (g["delta"].abs() < tiny) for b, g in grads.items()}
    assert subnormal["ref"].any() and not subnormal["cpu"].any()
    for name, want in grads["ref"].items():
        torch.testing.assert_close(grads["cpu"][name], want, rtol=1.2e-3, atol=4e-3, msg=name)
    causal_conv1d(inputs["u"], torch.randn(dim, 4), None, "silu")
    assert (torch.full((1 << 20,), tiny) / 16).ne(0).all()  # split over torch's threads


def test_positive_A_grows_the_state_as_ref_does(cpu_impl):
    """The op takes any A: with A > 0 every decay is a growth (in the numba kernels, 2^x of a positive
    x, where rint and the exponent bits take the other sign), and the states and gradients follow ref."""
    case = ScanCase(2, 8, 4, 64, "shared", True, True, True, True, False)
    inputs = make_inputs(case, torch.float32, requires_grad=True)
    with torch.no_grad():
        inputs["A"].neg_().mul_(0.2)  # mamba-ssm's A is -0.5 rand: now 0 .. 0.1, a growth of up to e^8
    dout = torch.randn(2, 8, 64)
    (ref_out, _, ref_grads), (out, _, grads) = _ref_and_cpu(case, inputs, dout)
    assert bool((ref_out.abs().amax(-1) > 10 * ref_out[..., :8].abs().amax(-1)).any())  # it does grow
    torch.testing.assert_close(out, ref_out, rtol=6e-4, atol=2e-3 * float(ref_out.abs().max()))
    for name in ref_grads:
        scale = max(1.0, float(ref_grads[name].abs().max()))
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1.2e-3, atol=4e-3 * scale, msg=name)


@pytest.mark.parametrize("fused", ["softplus_bias", "z"])
def test_fused_pieces_at_extreme_arguments_match_ref(fused, cpu_impl):
    """softplus on both sides of torch's threshold of 20 and far below 0; the gate where silu saturates."""
    case = ScanCase(1, 8, 4, 64, "shared", fused == "z", True, True, True, False)
    inputs = make_inputs(case, torch.float32)
    wide = torch.linspace(-40.0, 40.0, 8 * 64).reshape(1, 8, 64)
    if fused == "z":
        inputs["z"] = wide
    else:
        inputs["delta"] = wide / 2  # dt up to 20: decays underflow to 0, as they do in ref
        inputs["A"] = inputs["A"] / 4
    results = []
    for backend in ("ref", "cpu"):
        leaves = {k: None if v is None else v.clone().requires_grad_(True) for k, v in inputs.items()}
        out = selective_scan(**leaves, delta_softplus=True, backend=backend)
        wrt = [leaves["delta"], leaves["z"] if fused == "z" else leaves["u"]]
        grads = torch.autograd.grad(out.square().sum(), wrt)
        results.append((out.detach(), *grads))
    for got, want in zip(results[1], results[0]):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=6e-4, atol=2e-3 * max(1.0, float(want.abs().max())))


def test_layouts_share_one_compiled_kernel_per_dtype():
    """Strided inputs run the same compiled kernel as contiguous ones (no compile per layout)."""
    if scan_cpu._numba_module() is None:
        pytest.skip("numba is not installed")
    kern = scan_cpu._numba_module()
    case = ScanCase(2, 8, 4, 9, "grouped", True, True, True, True, False)
    dout = torch.randn(2, 8, 9)
    for layout in LAYOUTS:
        _grads_through_layout(functools.partial(selective_scan, backend="cpu"), case, layout, dout)
    assert len(kern.scan_fwd.overloads) <= 2 and len(kern.scan_bwd.overloads) <= 2  # float32, float64


def test_numba_kernels_load_from_the_disk_cache():
    """Every kernel's compiled version is in numba's on-disk cache, so a new process loads it in about
    a second instead of compiling for tens of seconds. numba silently declines to cache a function that
    uses a dynamic global (``numba.get_num_threads()`` inside a kernel did that to the backward once)."""
    kern = scan_cpu._numba_module()
    if kern is None:
        pytest.skip("numba is not installed")
    from visbench.kernels import _causal_conv1d_numba

    for module in (kern, _causal_conv1d_numba):
        for name in module._KERNELS:
            fn = module.kernel(name, np.float32)
            for sig in fn.signatures:
                assert fn._cache.load_overload(sig, fn.targetctx) is not None, f"{module.__name__}.{name}"


# ----------------------------------------------------------------------------- gradcheck (float64)


@pytest.mark.parametrize("backend", ["ref", "cpu"])
def test_gradcheck_float64(backend, monkeypatch):
    if backend == "cpu":
        monkeypatch.setattr(scan_cpu, "BACKWARD_CHUNK", 4)  # cross checkpoint chunks
    impls = ["numba", "torch"] if backend == "cpu" and scan_cpu._numba_module() is not None else [None]
    case = ScanCase(2, 4, 3, 9, "grouped", True, True, True, True, False)
    inputs = make_inputs(case, torch.float64, requires_grad=True)
    names = list(inputs)

    def fn(*tensors):
        return selective_scan(*tensors, delta_softplus=True, backend=backend)

    for impl in impls:
        if impl is not None:
            scan_cpu.use_implementation(impl)
        try:
            assert torch.autograd.gradcheck(
                fn, tuple(inputs[n] for n in names), eps=1e-6, atol=1e-5, fast_mode=True
            )
        finally:
            scan_cpu.use_implementation(None)


# ----------------------------------------------------------------------------- dtypes and last_state


def test_output_dtype_follows_u_and_last_state_is_float32():
    case = ScanCase(1, 4, 2, 5, "shared", True, True, True, True, True)
    inputs = make_inputs(case, torch.bfloat16, requires_grad=True)
    out, last = selective_scan(**inputs, return_last_state=True, backend="cpu")
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    grads = torch.autograd.grad(out.float().sum(), [inputs["u"], inputs["A"]])
    assert grads[0].dtype == torch.bfloat16 and grads[1].dtype == torch.float32


@pytest.mark.parametrize("backend", ["ref", "cpu"])
def test_last_state_is_not_differentiable(backend):
    inputs = make_inputs(
        ScanCase(1, 4, 2, 5, "shared", False, False, False, False, True), torch.float32, requires_grad=True
    )
    out, last = selective_scan(**inputs, return_last_state=True, backend=backend)
    assert out.requires_grad and not last.requires_grad


# ----------------------------------------------------------------------------- back-end choice


def test_auto_on_cpu_picks_cpu(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert resolve_backend("cpu") == "cpu"
    assert available_backends("cpu")[:2] == ["cpu", "ref"]
    assert "cuda" not in available_backends("cpu")


def test_environment_variable_forces_backend_for_auto_only(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "ref")
    assert resolve_backend("cpu") == "ref"
    assert resolve_backend("cpu", "cpu") == "cpu"  # an explicit argument wins
    monkeypatch.setenv(BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        resolve_backend("cpu")
    monkeypatch.setenv(BACKEND_ENV, "fastest")
    with pytest.raises(ValueError, match="fastest"):
        resolve_backend("cpu")


def test_cuda_backend_on_cpu_tensors_is_a_clear_error():
    inputs = make_inputs(ScanCase(1, 4, 2, 5, "shared", False, False, False, False, False), torch.float32)
    with pytest.raises(ValueError, match="backend='cuda' is not available for tensors on cpu"):
        selective_scan(**inputs, backend="cuda")


def test_cuda_backend_is_unavailable_without_raising():
    from visbench.kernels import scan_cuda

    assert scan_cuda.is_available(torch.device("cpu")) is False
    assert scan_cuda.is_available(torch.device("cuda")) is (
        torch.cuda.is_available() and scan_cuda._extension() is not None
    )


def test_unknown_backend_name():
    inputs = make_inputs(ScanCase(1, 4, 2, 5, "shared", False, False, False, False, False), torch.float32)
    with pytest.raises(ValueError, match="backend='fast'"):
        selective_scan(**inputs, backend="fast")


def test_cpu_fallback_is_used_when_forced(monkeypatch):
    monkeypatch.setenv(scan_cpu.IMPL_ENV, "torch")
    assert scan_cpu.implementation() == "torch"
    monkeypatch.setenv(scan_cpu.IMPL_ENV, "gpu")
    with pytest.raises(ValueError, match=scan_cpu.IMPL_ENV):
        scan_cpu.implementation()


# ----------------------------------------------------------------------------- bad input


def _good():
    return make_inputs(ScanCase(2, 8, 4, 6, "grouped", True, True, True, False, False), torch.float32)


BAD_INPUTS = [
    ("u must have 3 or 4 dims", lambda x: x.update(u=x["u"][0])),
    ("delta must have 4 dims", lambda x: x.update(u=x["u"].unflatten(1, (2, 4)))),
    ("delta must have u's shape", lambda x: x.update(delta=x["delta"][:, :, :5])),
    (r"A must be \(dim, N\)", lambda x: x.update(A=x["A"][:7])),
    ("B must be", lambda x: x.update(B=x["B"][:, :, :3])),
    ("C .* groups, which do not divide dim=8", lambda x: x.update(C=torch.randn(2, 3, 4, 6))),
    (r"D must be \(dim,\)", lambda x: x.update(D=x["D"][:5])),
    ("z must have u's shape", lambda x: x.update(z=x["z"].transpose(1, 2))),
    ("delta_bias must have 1 dims", lambda x: x.update(delta_bias=x["delta_bias"][None])),
    ("u has dtype torch.int64", lambda x: x.update(u=x["u"].long())),
    ("A is complex", lambda x: x.update(A=x["A"].to(torch.complex64))),
    ("B is on meta but u is on cpu", lambda x: x.update(B=x["B"].to("meta"))),
    ("C has layout torch.sparse_coo", lambda x: x.update(C=x["C"].to_sparse())),
    ("delta must be a torch.Tensor, got ndarray", lambda x: x.update(delta=x["delta"].numpy())),
]


@pytest.mark.parametrize("message, spoil", BAD_INPUTS, ids=[m for m, _ in BAD_INPUTS])
def test_bad_input_is_a_value_error_naming_the_argument(message, spoil):
    inputs = _good()
    spoil(inputs)
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs, backend="cpu")


def test_non_contiguous_inputs_are_accepted():
    case = ScanCase(2, 8, 4, 6, "shared", True, True, False, False, False)
    inputs = make_inputs(case, torch.float32)
    expected = selective_scan(**inputs, backend="ref")
    strided = {
        k: None if v is None else v.transpose(-1, 0).contiguous().transpose(-1, 0) for k, v in inputs.items()
    }
    assert not strided["u"].is_contiguous()
    torch.testing.assert_close(selective_scan(**strided, backend="cpu"), expected, rtol=6e-4, atol=2e-3)


# ----------------------------------------------------------------------------- FLOPs and torch.compile


def test_flop_counter_sees_the_op():
    from torch.utils.flop_counter import FlopCounterMode

    b, d, n, length = 2, 8, 4, 16
    case = ScanCase(b, d, n, length, "shared", True, True, False, False, False)
    inputs = make_inputs(case, torch.float32, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        selective_scan(**inputs, backend="cpu").sum().backward()
    counts = {str(op): c for op, c in counter.get_flop_counts()["Global"].items()}
    forward = 9 * b * length * d * n + 2 * b * d * length  # + D skip + z gate
    assert counts["visbench.selective_scan_fwd"] == forward
    assert counts["visbench.selective_scan_bwd"] == 2 * forward


def test_meta_tensors_go_through_the_op_so_flops_are_counted():
    """Models counted on the meta device must see the scan's formula, not ref's elementwise ops."""
    from torch.utils.flop_counter import FlopCounterMode

    b, d, n, length = 2, 8, 4, 16
    case = ScanCase(b, d, n, length, "shared", False, False, False, False, False)
    inputs = {k: v.to("meta") for k, v in make_inputs(case, torch.float32).items() if v is not None}
    with FlopCounterMode(display=False) as counter:
        out = selective_scan(**inputs)
    assert out.shape == (b, d, length) and out.device.type == "meta"
    counts = {str(op): c for op, c in counter.get_flop_counts()["Global"].items()}
    assert counts == {"visbench.selective_scan_fwd": 9 * b * length * d * n}


@pytest.mark.slow
def test_torch_compile_fullgraph():
    case = ScanCase(2, 8, 4, 16, "grouped", True, True, True, True, False)
    inputs = make_inputs(case, torch.float32, requires_grad=True)

    def block(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u * 2, delta, A, B, C, D, z, delta_bias, delta_softplus=True).tanh()

    # aot_eager runs what matters for a custom op (Dynamo, fake tensors, AOTAutograd with the registered
    # backward) without spending a minute on Inductor code generation for the surrounding ops.
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out = compiled(*args)
    expected = block(*args)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), args)
    expected_grads = torch.autograd.grad(expected.sum(), args)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_the_cpu_kernels_leave_torch_thread_count_as_asked() -> None:
    # Starting numba's OpenMP pool sets the process's OpenMP thread count to the pool size, which torch
    # reads as its own; a fresh process (the pool is process-wide) asked for one thread must keep one.
    import os
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from visbench.kernels import causal_conv1d, selective_scan\n"
        "u = torch.randn(1, 4, 16, requires_grad=True)\n"
        "args = (torch.rand(1, 4, 16), -torch.rand(4, 4), torch.randn(1, 4, 16), torch.randn(1, 4, 16))\n"
        "selective_scan(u, *args, backend='cpu').sum().backward()\n"
        "causal_conv1d(torch.randn(1, 4, 16, requires_grad=True), torch.randn(4, 4), activation='silu')\n"
        "print(torch.get_num_threads())\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2", VISBENCH_SCAN_CPU_IMPL="numba")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "1", out.stdout
