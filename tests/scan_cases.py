"""The selective-scan test grid, shared by every back end's tests (cpu here, triton in its own file).

``CASES`` covers every value of every axis and every pair of values of any two axes (a pairwise
covering array, built greedily and deterministically), which keeps the grid to a few dozen cases
instead of the full product. Inputs follow mamba-ssm's own tests (tests/ops/test_selective_scan.py):
``A = -0.5 * rand``, ``delta = 0.5 * rand``, ``delta_bias = 0.5 * rand``, the rest standard normal,
with A, D and delta_bias kept in float32 as mamba's kernels require.

Use: ``for case in CASES: assert_backend_matches_ref("triton", case, torch.float32, device)``.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass

import torch
from visbench.kernels import selective_scan

# Axis values (issue 3, section 4). L values divide no chunk size; dims are divisible by GROUPS.
AXES: dict[str, tuple] = {
    "batch": (1, 2, 3),
    "dim": (4, 24, 64),
    "dstate": (1, 4, 16),
    "length": (1, 7, 64, 257, 1000),
    "bc_layout": ("shared", "grouped"),  # B, C as (b, N, L) or (b, G, N, L)
    "has_z": (False, True),
    "has_D": (False, True),
    "has_delta_bias": (False, True),
    "delta_softplus": (False, True),
    "return_last_state": (False, True),
}
GROUPS = 4  # the grouped layout uses VMamba's K = 4 directions as groups

# Tolerances: mamba-ssm's (rtol, atol) for float32, and for bfloat16 inputs.
TOLERANCES = {torch.float32: (6e-4, 2e-3), torch.bfloat16: (3e-2, 5e-2), torch.float64: (1e-7, 1e-9)}


@dataclass(frozen=True)
class ScanCase:
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


# `ref`'s backward is mamba-ssm's: autograd through one slice per time step, each slice's gradient a
# full (b, d, L, N) tensor, so its cost grows as b * d * N * L^2. Cases above this budget are left out
# of the grid (and so are value pairs that only occur above it); every axis value still occurs.
REF_COST_BUDGET = 2.5e7


def ref_cost(values: dict) -> float:
    return values["batch"] * values["dim"] * values["dstate"] * values["length"] ** 2


def _cheapest_with(axes: dict[str, tuple], fixed: dict) -> dict:
    return {n: fixed.get(n, axes[n][0]) for n in axes}  # the first value of each axis is its smallest


def _pairwise_cases(axes: dict[str, tuple], seed: int = 0, candidates: int = 60) -> list[ScanCase]:
    """Greedy pairwise covering array within the cost budget: each new case covers as many uncovered
    value pairs as possible."""
    names = list(axes)
    uncovered = {
        (a, va, b, vb)
        for a, b in itertools.combinations(names, 2)
        for va in axes[a]
        for vb in axes[b]
        if ref_cost(_cheapest_with(axes, {a: va, b: vb})) <= REF_COST_BUDGET
    }
    rng = random.Random(seed)
    cases = []
    while uncovered:
        best, best_gain = None, -1
        for _ in range(candidates):
            # Seed each candidate with one uncovered pair so that progress is guaranteed.
            a, va, b, vb = min(uncovered) if not cases else rng.choice(sorted(uncovered))
            values = {n: rng.choice(axes[n]) for n in names}
            values[a], values[b] = va, vb
            for n in ("dim", "dstate", "batch"):  # shrink free sizes until the case fits the budget
                if ref_cost(values) > REF_COST_BUDGET and n not in (a, b):
                    values[n] = axes[n][0]
            if ref_cost(values) > REF_COST_BUDGET:
                continue
            gain = sum((x, values[x], y, values[y]) in uncovered for x, y in itertools.combinations(names, 2))
            if gain > best_gain:
                best, best_gain = values, gain
        for x, y in itertools.combinations(names, 2):
            uncovered.discard((x, best[x], y, best[y]))
        cases.append(ScanCase(**best))
    return cases


CASES: list[ScanCase] = _pairwise_cases(AXES)
# A smaller set for slow back ends (the Triton interpreter): every value of every axis at least once.
SMALL_CASES: list[ScanCase] = [
    ScanCase(1, 4, 1, 1, "shared", False, False, False, False, True),
    ScanCase(2, 24, 4, 7, "grouped", True, True, True, True, False),
    ScanCase(3, 64, 16, 64, "shared", True, False, True, False, True),
    ScanCase(2, 4, 16, 257, "grouped", False, True, False, True, True),
    ScanCase(3, 4, 1, 1000, "shared", True, True, True, True, False),
]

_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


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
def _ref_result(case: ScanCase, dtype: torch.dtype, check_grads: bool):
    """`ref` on the case's CPU inputs, computed once per process (it is the slow part of the grid)."""
    inputs = make_inputs(case, dtype, "cpu", requires_grad=True)
    out, last, grads = run_scan("ref", case, inputs, _dout(case, dtype) if check_grads else None)
    return out.detach(), None if last is None else last.detach(), grads


def assert_backend_matches_ref(
    backend: str,
    case: ScanCase,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    check_grads: bool = True,
) -> None:
    """``backend`` agrees with ``ref`` (run on the same inputs, on CPU) in out, last_state and every
    gradient, within mamba-ssm's tolerances for ``dtype``. Output and gradient dtypes must match too."""
    rtol, atol = TOLERANCES[dtype]
    inputs = make_inputs(case, dtype, device, requires_grad=True)
    dout = _dout(case, dtype)
    ref = _ref_result(case, dtype, check_grads)
    got = run_scan(backend, case, _fresh(inputs), dout.to(device) if check_grads else None)
    assert got[0].dtype == dtype, f"{backend} {case}: out dtype {got[0].dtype}, expected {dtype}"
    torch.testing.assert_close(
        got[0].cpu(), ref[0], rtol=rtol, atol=atol, msg=lambda m: f"{backend} {case} out: {m}"
    )
    if case.return_last_state:
        torch.testing.assert_close(
            got[1].cpu(), ref[1], rtol=rtol, atol=atol, msg=lambda m: f"{backend} {case} last_state: {m}"
        )
    for name, expected in ref[2].items():
        actual = got[2][name]
        assert actual.dtype == inputs[name].dtype, f"{backend} {case}: d{name} dtype {actual.dtype}"
        # Gradients that sum over batch and/or time (A, D, delta_bias, B and C when shared by dims) grow
        # with the number of terms; compare them relative to their own scale, as mamba's test does with
        # its looser weight tolerances.
        scale = max(1.0, float(expected.abs().max()))
        torch.testing.assert_close(
            actual.cpu().float(),
            expected.float(),
            rtol=rtol * 2,
            atol=atol * 2 * scale,
            msg=lambda m, name=name: f"{backend} {case} d{name}: {m}",
        )
