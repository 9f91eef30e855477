"""The selective-scan test grid, shared by every back end's tests (cpu here, triton in its own file).

``CASES`` covers every value of every axis and every pair of values of any two axes (a pairwise
covering array, built greedily and deterministically), which keeps the grid to a few dozen cases
instead of the full product. The case type, the inputs (mamba-ssm's test distributions), the tolerances
and the comparison itself live in ``visbench.kernels.checks``, which ``python -m visbench.gpu_check``
calls too: the CPU tests and the GPU check assert the same thing. They are re-exported here.

Use: ``for case in CASES: assert_backend_matches_ref("triton", case, torch.float32, device)``.
"""

from __future__ import annotations

import itertools
import random

from visbench.kernels.checks import (
    GROUPS,
    TOLERANCES,
    ScanCase,
    assert_backend_matches_ref,
    make_inputs,
    run_scan,
)

__all__ = [
    "AXES",
    "CASES",
    "GROUPS",
    "SMALL_CASES",
    "TOLERANCES",
    "ScanCase",
    "assert_backend_matches_ref",
    "make_inputs",
    "run_scan",
]

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
