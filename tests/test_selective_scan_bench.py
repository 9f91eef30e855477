"""visbench scan-bench: the measurement worker and the case list (the full run is the benchmark itself)."""

from __future__ import annotations

import sys

import pytest

from visbench import scan_bench


def test_cases_follow_the_issue():
    full = {(c.mode, c.length): c.variants for c in scan_bench.cases(quick=False, device="cpu")}
    assert full[("fwd", 3136)][0] == "ref" and "cpu" in full[("fwd", 3136)]
    assert full[("fwd+bwd", 784)][0] == "ref"
    assert full[("fwd+bwd", 3136)] == ("cpu",) and full[("fwd+bwd", 16384)] == ("cpu",)


@pytest.mark.parametrize("variant", ["ref", "cpu", "cpu-torch"])
def test_measure_reports_time_and_memory(variant):
    case = {"mode": "fwd+bwd", "batch": 1, "dim": 8, "dstate": 4, "length": 32}
    result = scan_bench.measure(variant, case, "cpu", repeats=2, time_budget=5.0)
    assert result["seconds"] > 0 and result["runs"] >= 2
    if sys.platform.startswith("linux"):
        assert result["peak_bytes"] is not None and result["peak_bytes"] >= 0


def test_a_measurement_repeats_for_its_least_runs_and_time_within_the_budget():
    """A fast case repeats past ``repeats`` until MIN_SECONDS; the budget stops it first; one run always."""
    least = scan_bench.MIN_SECONDS
    assert scan_bench._keep_repeating(1, 0.0, repeats=3, time_budget=10.0)
    assert scan_bench._keep_repeating(5, least / 2, repeats=3, time_budget=10.0)  # fast: keeps going
    assert not scan_bench._keep_repeating(5, least, repeats=3, time_budget=10.0)
    assert scan_bench._keep_repeating(2, 3.0, repeats=3, time_budget=10.0)  # slow: its least runs
    assert not scan_bench._keep_repeating(1, 0.5, repeats=3, time_budget=0.5)  # the budget ends it
    case = {"mode": "fwd", "batch": 1, "dim": 4, "dstate": 2, "length": 8}
    assert scan_bench.measure("cpu-torch", case, "cpu", repeats=3, time_budget=0.0)["runs"] == 1


def test_cli_parses_quick(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    scan_bench.add_arguments(parser)
    args = parser.parse_args(["--quick", "--repeats", "1"])
    assert args.quick and args.repeats == 1 and args.device == "cpu"


def test_floor_is_the_larger_of_compute_and_memory_time():
    """The forward's floor: exps and multiply-adds at their rates (added), against bytes at the copy rate."""
    work = scan_bench.forward_work(2, 192, 16, 3136)
    steps = 2 * 192 * 3136
    assert work == {
        "exps": steps * 16 + 2 * steps,
        "madds": 4 * steps * 16,
        "bytes": 4 * (4 * steps + 2 * 2 * 16 * 3136),
    }
    rates = {"exp_per_s": 1e9, "madd_per_s": 1e11, "bytes_per_s": 1e10, "exp_source": "the kernels' exp"}
    floor = scan_bench.floor_seconds(work, rates)
    assert floor["compute_s"] == pytest.approx(work["exps"] / 1e9 + work["madds"] / 1e11)
    assert floor["floor_s"] == max(floor["compute_s"], floor["memory_s"])
    case = next(c for c in scan_bench.cases(quick=True, device="cpu") if c.mode == "fwd")
    text, row = scan_bench.floor_report(case, 2.5 * floor["floor_s"], rates)
    assert "(the kernels' exp)" in text and "2.5x the floor" in text and "met" in text
    assert row["floor_ratio"] == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("kernel_seconds", "source"), [(1e-9, "the kernels' exp"), (None, "torch.exp"), (1e3, "torch.exp")]
)
def test_rates_take_the_faster_exponential(kernel_seconds, source, monkeypatch):
    """The exp rate is the faster of torch.exp and the kernels' own (a floor at the slower is none)."""
    monkeypatch.setattr(scan_bench, "_kernel_exp_seconds", lambda x, y, repeats: kernel_seconds)
    rates = scan_bench.measure_rates(repeats=2)
    assert rates["exp_source"] == source
    if kernel_seconds == 1e-9:
        assert rates["exp_per_s"] == pytest.approx((1 << 18) / 1e-9)
    assert all(rates[k] > 0 for k in ("exp_per_s", "madd_per_s", "bytes_per_s"))


def test_the_kernels_exponential_is_timed_when_numba_is_there():
    """The kernels' own exponential, timed for the floor, is the decays' 2^x (their A is in log2 units)
    to float32 rounding."""
    import torch
    from visbench.kernels import scan_cpu

    if scan_cpu._numba_module() is None:
        pytest.skip("numba is not installed")
    x = -4.0 * torch.rand(1 << 10)
    y = torch.empty_like(x)
    assert scan_bench._kernel_exp_seconds(x, y, repeats=2) > 0
    torch.testing.assert_close(y, torch.exp2(x.double()).float(), rtol=2e-7, atol=0)
