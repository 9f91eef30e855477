"""visbench bench: a real (tiny) measurement gives a valid result file; no timed assertions."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from visbench import bench
from visbench.results import read_result


def test_quartiles_give_median_and_iqr() -> None:
    assert bench._quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, 2.0)
    assert bench._quartiles([7.0]) == (7.0, 0.0)


def test_time_steps_counts_warmup_and_windows() -> None:
    import torch

    calls = []
    times = bench.time_steps(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=3, iters=4)
    assert len(times) == 3 and len(calls) == 2 + 3 * 4
    assert all(t >= 0 for t in times)


def test_cli_writes_valid_bench_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        ["--models", "test_vit", "--tokens", "4,16", "--device", "cpu", "--batch-size", "2", "--warmup", "1"]
        + ["--repeats", "2", "--iters", "1", "--memory", "process", "--out", str(tmp_path)]
    )
    assert bench.run(args) == 0
    files = sorted(tmp_path.rglob("result.json"))
    assert len(files) == 2
    results = [read_result(f) for f in files]
    sizes = sorted(tuple(r["input_size"]) for r in results)
    assert sizes == [(32, 32), (64, 64)]  # 4 and 16 tokens at stride 16
    for r in results:
        tp = r["throughput"]
        assert r["task"] == "bench" and r["tokens"] in (4, 16)
        assert tp["img_per_s"] > 0 and tp["img_per_s_iqr"] >= 0 and tp["train_img_per_s"] > 0
        assert tp["peak_memory_bytes"] > 0 and "ru_maxrss" in tp["peak_memory_method"]
        assert r["environment"]["threads"] >= 1 and r["macs"] > 0
    out = capsys.readouterr().out
    assert "test_vit" in out and "median of 2 windows" in out
    # Printed as figures, never asserted: how much slower is the 4x larger input?
    by_tokens = {r["tokens"]: r["throughput"]["img_per_s"] for r in results}
    print(f"img/s ratio 4 -> 16 tokens: {by_tokens[4] / by_tokens[16]:.2f}")


def test_unknown_model_is_an_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--models", "no_such_net", "--device", "cpu", "--out", str(tmp_path)])
    assert bench.run(args) == 2
    assert "no_such_net" in capsys.readouterr().err
