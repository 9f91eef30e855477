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
    assert result["seconds"] > 0 and 1 <= result["runs"] <= 2
    if sys.platform.startswith("linux"):
        assert result["peak_bytes"] is not None and result["peak_bytes"] >= 0


def test_cli_parses_quick(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    scan_bench.add_arguments(parser)
    args = parser.parse_args(["--quick", "--repeats", "1"])
    assert args.quick and args.repeats == 1 and args.device == "cpu"
