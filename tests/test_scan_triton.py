"""The Triton selective-scan kernels: compiled on a GPU, or run by Triton's interpreter on CPU.

The back end is checked directly against mamba-ssm's ``selective_scan_ref`` (the independent
reference), forward and every gradient, and through ``visbench.kernels.selective_scan`` against
``backend="ref"``.
Cases are small: the interpreter executes each Triton op in Python.

Triton picks interpreted or compiled once, when it is first imported. This module sets
``TRITON_INTERPRET=1`` (CPU-only machines) before importing triton; when another test module imported
triton first, the in-process tests skip and ``test_rerun_in_a_fresh_interpreter_process`` runs this
file in a subprocess instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before anything below imports triton

import pytest  # noqa: E402
from conftest import import_mamba_reference  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

from visbench.kernels import scan_triton  # noqa: E402

try:  # the shared grid of tests/scan_cases.py (it imports visbench.kernels.selective_scan, the front end)
    import scan_cases  # noqa: E402

    SMALL_CASES = scan_cases.SMALL_CASES
except ImportError:  # pragma: no cover - both are part of the repository
    scan_cases, SMALL_CASES = None, []

IN_PROCESS = scan_triton.is_available(torch.device(DEVICE))
in_process = pytest.mark.skipif(
    not IN_PROCESS,
    reason="triton was imported before TRITON_INTERPRET=1 was set; "
    "test_rerun_in_a_fresh_interpreter_process runs these tests in a subprocess",
)

RTOL, ATOL = 6e-4, 2e-3  # mamba-ssm's float32 tolerances
INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

# (batch, dim, L, N, groups, has_D, has_z, has_delta_bias, delta_softplus)
CASES = {
    "L1_N1_all_options": (2, 4, 1, 1, 1, True, True, True, True),
    "L7_N4_grouped_plain": (1, 8, 7, 4, 2, True, False, False, False),
    "L257_N16_chunks_masked": (1, 8, 257, 16, 1, True, True, True, True),
    "N5_padded_bias_no_softplus": (2, 6, 9, 5, 3, False, True, True, False),
    "N16_two_channel_blocks_atomics": (1, 80, 7, 16, 2, True, True, False, True),
    "N37_padded_to_64": (1, 4, 5, 37, 1, True, False, True, True),
}


def _make_inputs(batch, dim, L, N, groups, has_D, has_z, has_bias, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    return {
        "u": randn(batch, dim, L),
        "delta": 0.5 * torch.rand(batch, dim, L, generator=g),
        "A": -(0.5 + torch.rand(dim, N, generator=g)),
        "B": randn(batch, groups, N, L),
        "C": randn(batch, groups, N, L),
        "D": randn(dim) if has_D else None,
        "z": randn(batch, dim, L) if has_z else None,
        "delta_bias": 0.1 * randn(dim) if has_bias else None,
    }


def _on_device(inputs):
    return {k: (v.to(DEVICE) if v is not None else None) for k, v in inputs.items()}


def _reference(inputs, softplus):
    """mamba-ssm's selective_scan_ref: output, last state and autograd gradients for ``dout``."""
    ref = import_mamba_reference("mamba_ssm.ops.selective_scan_interface").selective_scan_ref
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    out, last = ref(
        leaves["u"],
        leaves["delta"],
        leaves["A"],
        leaves["B"],
        leaves["C"],
        D=leaves["D"],
        z=leaves["z"],
        delta_bias=leaves["delta_bias"],
        delta_softplus=softplus,
        return_last_state=True,
    )
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    present = [k for k in INPUT_NAMES if leaves[k] is not None]
    grads = torch.autograd.grad(out, [leaves[k] for k in present], dout)
    return out.detach(), last.detach(), dout, dict(zip(present, grads))


@in_process
@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter path is the CPU path")
def test_available_on_cpu_only_under_the_interpreter(monkeypatch):
    assert scan_triton.is_available(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not scan_triton.is_available(torch.device("cpu"))
    assert not scan_triton.is_available(torch.device("meta"))


@in_process
@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter path is the CPU path")
def test_interpreted_kernels_do_not_depend_on_the_environment_at_load(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    module = scan_triton._load_kernels(True)
    assert type(module.scan_fwd_kernel).__name__ == "InterpretedFunction"
    assert os.environ["TRITON_INTERPRET"] == "0"


@in_process
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_forward_and_gradients_match_mamba_reference(case):
    batch, dim, L, N, groups, has_D, has_z, has_bias, softplus = CASES[case]
    inputs = _make_inputs(batch, dim, L, N, groups, has_D, has_z, has_bias)
    ref_out, ref_last, dout, ref_grads = _reference(inputs, softplus)

    out, last = scan_triton.selective_scan_fwd(*_on_device(inputs).values(), softplus)
    torch.testing.assert_close(out.cpu(), ref_out, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(last.cpu(), ref_last, rtol=RTOL, atol=ATOL)

    grads = scan_triton.selective_scan_bwd(dout.to(DEVICE), *_on_device(inputs).values(), softplus)
    grads = [g.cpu() if g is not None else None for g in grads]
    assert len(grads) == len(INPUT_NAMES)
    for name, grad in zip(INPUT_NAMES, grads):
        if inputs[name] is None:
            assert grad is None, f"d{name} should be None when {name} is None"
            continue
        assert grad.shape == inputs[name].shape and grad.dtype == torch.float32, name
        torch.testing.assert_close(
            grad, ref_grads[name], rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"d{n}: {m}"
        )


@in_process
def test_large_softplus_arguments_stay_finite():
    inputs = _make_inputs(1, 4, 6, 4, 1, True, False, True, seed=3)
    inputs["delta"] = inputs["delta"] * 80.0 - 40.0  # beyond softplus' threshold both ways
    ref_out, _, dout, ref_grads = _reference(inputs, True)
    out, _ = scan_triton.selective_scan_fwd(*_on_device(inputs).values(), True)
    torch.testing.assert_close(out.cpu(), ref_out, rtol=RTOL, atol=ATOL)
    grads = [
        g.cpu()
        for g in scan_triton.selective_scan_bwd(dout.to(DEVICE), *_on_device(inputs).values(), True)[:3]
    ]
    torch.testing.assert_close(grads[1], ref_grads["delta"], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(grads[2], ref_grads["A"], rtol=RTOL, atol=ATOL)


@in_process
def test_backward_allocates_no_batch_dim_length_state_tensor(monkeypatch):
    batch, dim, L, N = 1, 2, 200, 4
    inputs = _on_device(_make_inputs(batch, dim, L, N, 1, True, True, True))
    sizes = []
    for factory in ("empty", "zeros", "empty_like", "zeros_like"):
        original = getattr(torch, factory)

        def recording(*args, _original=original, **kwargs):
            tensor = _original(*args, **kwargs)
            sizes.append(tensor.numel())
            return tensor

        monkeypatch.setattr(torch, factory, recording)
    dout = torch.ones(batch, dim, L, device=DEVICE)
    scan_triton.selective_scan_bwd(dout, *inputs.values(), True)
    assert sizes and max(sizes) < batch * dim * L * N, sizes


@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        ("A", torch.zeros(3, 4), "A must be"),
        ("B", torch.zeros(1, 3, 4, 5), "does not divide"),
        ("delta", torch.zeros(1, 4, 5, dtype=torch.float64), "delta must be float32"),
        ("u", torch.zeros(1, 5, 4).transpose(1, 2), "u must be contiguous"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(name, bad, message):
    inputs = _make_inputs(1, 4, 5, 4, 1, False, False, False)
    inputs[name] = bad
    with pytest.raises(ValueError, match=message):
        scan_triton.selective_scan_fwd(*_on_device(inputs).values(), False)


@in_process
@pytest.mark.parametrize("case", SMALL_CASES, ids=str)
def test_front_end_triton_matches_ref_float32(case):
    """``selective_scan(..., backend="triton")`` against ``backend="ref"`` on the shared small grid."""
    scan_cases.assert_backend_matches_ref("triton", case, torch.float32, DEVICE)


@in_process
@pytest.mark.skipif(scan_cases is None, reason="tests/scan_cases.py is not importable")
def test_front_end_triton_matches_ref_bfloat16_inputs():
    case = scan_cases.ScanCase(2, 8, 4, 19, "grouped", True, True, True, True, True)
    scan_cases.assert_backend_matches_ref("triton", case, torch.bfloat16, DEVICE)


_COMPILE_SCRIPT = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from visbench.kernels import scan_triton

    module = scan_triton._load_kernels(False)
    for options in (True, False):
        flags = {"HAS_D": options, "HAS_Z": options, "HAS_BIAS": options, "SOFTPLUS": options}
        launches = [
            (module.scan_fwd_kernel, {**flags, "BLOCK_D": 32, "BLOCK_N": 16}),
            (module.scan_bwd_kernel, {**flags, "ATOMIC_BC": options, "BLOCK_D": 8, "BLOCK_N": 64}),
        ]
        for kernel, constexprs in launches:
            signature = {
                name: "constexpr" if name in constexprs else "*fp32" if name.endswith("_ptr") else "i32"
                for name in kernel.arg_names
            }
            try:
                compiled = triton.compile(
                    ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32)
                )
            except (FileNotFoundError, PermissionError) as err:
                print("SKIP: Triton's CUDA toolchain (ptxas) is not usable here:", err)
                raise SystemExit(0)
            assert ".entry " + kernel.__name__ in compiled.asm["ptx"], kernel.__name__
    print("COMPILED")
    """
)


def _run_python(args: list[str], interpret: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=850
    )


def test_kernels_compile_for_a_gpu_target_without_a_gpu():
    """The interpreter skips Triton's compiler; this compiles the same kernels for sm_90 (to a cubin).

    A fresh process: triton's library must be in compiled mode, which this one may not be.
    """
    result = _run_python(["-c", _COMPILE_SCRIPT], interpret=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if result.stdout.startswith("SKIP"):
        pytest.skip(result.stdout.strip())
    assert "COMPILED" in result.stdout


@pytest.mark.skipif(IN_PROCESS, reason="the tests above ran in this process")
@pytest.mark.skipif(DEVICE != "cpu", reason="on a GPU the compiled kernels run in process")
def test_rerun_in_a_fresh_interpreter_process():
    args = ["-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider", "-k", "not compile_for_a_gpu"]
    result = _run_python(args, interpret=True)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert " passed" in result.stdout, result.stdout[-5000:]
