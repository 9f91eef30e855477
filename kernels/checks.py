"""Numerical checks of the kernels against their references, shared by the CPU tests and the GPU check.

One definition of "agrees" for each op, so that what ``tests/`` asserts on CPU (the Triton kernels under
``TRITON_INTERPRET=1``) is what ``python -m visbench.gpu_check`` asserts on a GPU:

- :func:`assert_backend_matches_ref`: ``selective_scan(..., backend=b)`` against ``backend="ref"`` on the
  same inputs: out, last_state and every gradient, within mamba-ssm's test tolerances for the input
  dtype (:data:`TOLERANCES`; gradients at twice them, as mamba-ssm's test does for ``du``, with the
  absolute part scaled by the gradient's own size for the gradients that sum over batch and time);
- :func:`assert_causal_conv1d_matches_reference`: ``causal_conv1d`` (the causal-conv1d package's CUDA
  kernels on CUDA when they import, numba on CPU) against ``causal_conv1d_reference`` (``F.conv1d``),
  forward and gradients, within causal-conv1d's test tolerances (:data:`CONV_TOLERANCES`).

Each raises ``AssertionError`` with a one-line message naming the case and the tensor at fault. Inputs
follow mamba-ssm's tests: ``A = -0.5 * rand``, ``delta = 0.5 * rand``, ``delta_bias = 0.5 * rand``, the
rest standard normal, A, D and delta_bias float32; they are drawn on CPU from a seeded generator and
moved, so every device sees the same numbers.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
from dataclasses import dataclass

import torch
from visbench.kernels.causal_conv1d import causal_conv1d, causal_conv1d_reference
from visbench.kernels.selective_scan import selective_scan

__all__ = [
    "import_without_cuda_extensions",
    "CONV_TOLERANCES",
    "GROUPS",
    "TOLERANCES",
    "ScanCase",
    "assert_backend_matches_ref",
    "assert_causal_conv1d_matches_reference",
    "make_inputs",
    "run_scan",
]

GROUPS = 4  # the grouped B/C layout uses VMamba's K = 4 directions as groups

# mamba-ssm's (rtol, atol) for out and last_state by input dtype (tests/ops/test_selective_scan.py);
# float64 is ours (gradcheck-grade inputs on the back ends that compute in float64).
TOLERANCES = {
    torch.float32: (6e-4, 2e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (3e-2, 5e-2),
    torch.float64: (1e-7, 1e-9),
}
# causal-conv1d's (rtol, atol) by dtype (tests/test_causal_conv1d.py in that repository).
CONV_TOLERANCES = {torch.float32: (3e-4, 1e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (1e-2, 5e-2)}
_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@dataclass(frozen=True)
class ScanCase:
    """One selective-scan problem: sizes, B/C layout (``shared`` (b, N, L) or ``grouped``) and options."""

    batch: int
    dim: int
    dstate: int
    length: int
    bc_layout: str
    has_z: bool
    has_D: bool
    has_delta_bias: bool
    delta_softplus: bool
    return_last_state: bool

    def __str__(self) -> str:
        flags = [
            name for name in ("has_z", "has_D", "has_delta_bias", "delta_softplus") if getattr(self, name)
        ]
        last = "-last" if self.return_last_state else ""
        return f"b{self.batch}-d{self.dim}-n{self.dstate}-L{self.length}-{self.bc_layout}{last}-" + (
            "+".join(flags) or "plain"
        )


def make_inputs(
    case: ScanCase,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    requires_grad: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor | None]:
    """Inputs for ``selective_scan`` by keyword. u, delta, z, B, C in ``dtype``; A, D, delta_bias float32
    (float64 when ``dtype`` is float64)."""
    gen = torch.Generator().manual_seed(seed)
    wtype = torch.float64 if dtype == torch.float64 else torch.float32
    b, d, n, length = case.batch, case.dim, case.dstate, case.length
    bc_shape = (b, n, length) if case.bc_layout == "shared" else (b, GROUPS, n, length)

    def rand(*shape, kind="randn", scale=1.0, dt=dtype):
        t = torch.randn(*shape, generator=gen) if kind == "randn" else torch.rand(*shape, generator=gen)
        return (scale * t).to(dt)

    inputs = {
        "u": rand(b, d, length),
        "delta": rand(b, d, length, kind="rand", scale=0.5),
        "A": rand(d, n, kind="rand", scale=-0.5, dt=wtype),
        "B": rand(*bc_shape),
        "C": rand(*bc_shape),
        "D": rand(d, dt=wtype) if case.has_D else None,
        "z": rand(b, d, length) if case.has_z else None,
        "delta_bias": rand(d, kind="rand", scale=0.5, dt=wtype) if case.has_delta_bias else None,
    }
    out = {}
    for name in _NAMES:
        t = inputs[name]
        out[name] = None if t is None else t.to(device).requires_grad_(requires_grad)
    return out


def run_scan(backend: str, case: ScanCase, inputs: dict, dout: torch.Tensor | None = None):
    """Run ``selective_scan`` on ``inputs``; with ``dout``, also back-propagate it.

    Returns (out, last_state or None, {name: grad}) with grads only for present inputs.
    """
    result = selective_scan(
        **inputs,
        delta_softplus=case.delta_softplus,
        return_last_state=case.return_last_state,
        backend=backend,
    )
    out, last_state = result if case.return_last_state else (result, None)
    grads = {}
    if dout is not None:
        present = [name for name in _NAMES if inputs[name] is not None]
        values = torch.autograd.grad(out, [inputs[name] for name in present], dout)
        grads = dict(zip(present, values))
    return out, last_state, grads


def _fresh(inputs: dict) -> dict:
    return {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}


def _dout(case: ScanCase, dtype: torch.dtype) -> torch.Tensor:
    shape = (case.batch, case.dim, case.length)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)


@functools.cache
def _ref_result(case: ScanCase, dtype: torch.dtype, check_grads: bool, device: str = "cpu"):
    """`ref` on the case's inputs on ``device``, computed once per process (the slow part of a grid)."""
    inputs = make_inputs(case, dtype, device, requires_grad=True)
    dout = _dout(case, dtype).to(device) if check_grads else None
    out, last, grads = run_scan("ref", case, inputs, dout)
    return out.detach(), None if last is None else last.detach(), grads


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str) -> None:
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: " + " ".join(m.split())
    )


def assert_backend_matches_ref(
    backend: str,
    case: ScanCase,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    check_grads: bool = True,
    ref_device: torch.device | str | None = "cpu",
) -> None:
    """``backend`` agrees with ``ref`` (same inputs, run on ``ref_device``; None: on ``device``) in out,
    last_state and every gradient, within mamba-ssm's tolerances for ``dtype``. Output and gradient dtypes
    must match too. On a GPU, ``ref_device=None`` keeps `ref`'s per-step loop on the GPU (fast)."""
    rtol, atol = TOLERANCES[dtype]
    ref_at = str(torch.device(device if ref_device is None else ref_device))
    inputs = make_inputs(case, dtype, device, requires_grad=True)
    dout = _dout(case, dtype)
    ref = _ref_result(case, dtype, check_grads, ref_at)
    got = run_scan(backend, case, _fresh(inputs), dout.to(device) if check_grads else None)
    assert got[0].dtype == dtype, f"{backend} {case}: out dtype {got[0].dtype}, expected {dtype}"
    _close(got[0].to(ref_at), ref[0], rtol, atol, f"{backend} {case} out")
    if case.return_last_state:
        _close(got[1].to(ref_at), ref[1], rtol, atol, f"{backend} {case} last_state")
    for name, expected in ref[2].items():
        actual = got[2][name]
        assert actual.dtype == inputs[name].dtype, f"{backend} {case}: d{name} dtype {actual.dtype}"
        # Gradients that sum over batch and/or time (A, D, delta_bias, B and C when shared by dims) grow
        # with the number of terms; compare them relative to their own scale, as mamba's test does with
        # its looser weight tolerances.
        scale = max(1.0, float(expected.abs().max()))
        _close(
            actual.to(ref_at).float(),
            expected.float(),
            rtol * 2,
            atol * 2 * scale,
            f"{backend} {case} d{name}",
        )


def assert_causal_conv1d_matches_reference(
    dim: int,
    width: int,
    seqlen: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    activation: str | None = "silu",
    with_bias: bool = True,
    batch: int = 2,
    channel_last: bool = False,
    seed: int = 0,
) -> None:
    """``causal_conv1d`` agrees with ``causal_conv1d_reference`` on ``device``: output (dtype included) and
    the gradients of x, weight and bias (at 4x the tolerances: they sum over batch and time).

    x, weight and bias are all in ``dtype``; ``channel_last`` lays x out with the channels innermost, the
    layout a model's (B, L, C) activations give.
    """
    rtol, atol = CONV_TOLERANCES[dtype]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, seqlen, generator=gen).to(dtype)
    weight = torch.randn(dim, width, generator=gen).to(dtype)
    bias = torch.randn(dim, generator=gen).to(dtype) if with_bias else None
    grad_out = torch.randn(batch, dim, seqlen, generator=gen).to(dtype).to(device)
    what = f"causal_conv1d dim{dim}-w{width}-L{seqlen}-{str(dtype).removeprefix('torch.')}-{activation}"
    what += ("-bias" if with_bias else "") + ("-channel_last" if channel_last else "")
    results = []
    for fn in (causal_conv1d, causal_conv1d_reference):
        leaves = [t.to(device).requires_grad_() for t in (x, weight) + ((bias,) if with_bias else ())]
        x_in = leaves[0].transpose(1, 2).contiguous().transpose(1, 2) if channel_last else leaves[0]
        out = fn(x_in, leaves[1], leaves[2] if with_bias else None, activation)
        results.append((out, *torch.autograd.grad(out, leaves, grad_out)))
    (out, *grads), (ref, *ref_grads) = results
    assert out.dtype == dtype and out.shape == ref.shape, f"{what}: out {out.dtype} {tuple(out.shape)}"
    _close(out, ref, rtol, atol, f"{what} out")
    for name, got, want in zip(("x", "weight", "bias"), grads, ref_grads):
        assert got.dtype == want.dtype, f"{what}: d{name} dtype {got.dtype}, expected {want.dtype}"
        _close(got, want, rtol * 4, atol * 4, f"{what} d{name}")


def import_without_cuda_extensions(module: str) -> types.ModuleType:
    """Import a pure-PyTorch module of mamba-ssm / causal-conv1d (their references) without their CUDA parts.

    Their PyPI releases import the compiled ``selective_scan_cuda`` / ``causal_conv1d_cuda`` at module
    import; where that build is absent a placeholder module stands in (the references are plain PyTorch).
    ``ImportError`` when the package itself is not installed.
    """
    for compiled in ("selective_scan_cuda", "causal_conv1d_cuda"):
        if compiled not in sys.modules:
            try:
                importlib.import_module(compiled)
            except ImportError:
                sys.modules[compiled] = types.ModuleType(compiled)
    return importlib.import_module(module)
