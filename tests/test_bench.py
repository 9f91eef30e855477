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


def test_unknown_model_is_one_line_naming_it_and_close_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from visbench.cli import main

    assert main(["bench", "--models", "gated_cnn_tiyn", "--device", "cpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'gated_cnn_tiyn'" in err and "'gated_cnn_tiny'" in err


def test_interleaved_windows_alternate_abba() -> None:
    import torch

    calls: list[str] = []
    times = bench.time_interleaved(
        [lambda: calls.append("a"), lambda: calls.append("b")],
        torch.device("cpu"),
        warmup=1,
        repeats=4,
        iters=1,
    )
    assert "".join(calls) == "ab" + "ab" + "ba" + "ab" + "ba"  # warm-up, then A B, B A, A B, B A
    assert [len(t) for t in times] == [4, 4]


def test_speed_ratio_is_partner_time_over_this_time_per_repeat() -> None:
    median, q1, q3 = bench.speed_ratio([1.0, 2.0, 1.0, 2.0, 1.0], [2.0, 4.0, 3.0, 2.0, 2.0])
    assert median == 2.0 and q1 == 2.0 and q3 == 2.0
    assert bench.speed_ratio([1.0, 1.0], [1.0, 3.0]) == (2.0, 1.0, 3.0)  # < 4 repeats: min and max


def test_pair_with_needs_one_partner_per_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from visbench.cli import main

    argv = ["bench", "--models", "test_vit,test_mambaout", "--pair-with", "test_vit", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pair-with: expected 2 names" in err


def test_paired_run_records_engine_ratio_and_both_mac_conventions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        ["--models", "test_vit", "--pair-with", "test_mambaout", "--device", "cpu", "--batch-size", "1"]
        + [
            "--sizes",
            "32",
            "--warmup",
            "1",
            "--repeats",
            "4",
            "--iters",
            "1",
            "--no-train",
            "--memory",
            "none",
        ]
        + ["--out", str(tmp_path)]
    )
    assert bench.run(args) == 0
    results = {r["model"]: r for r in (read_result(f) for f in tmp_path.rglob("result.json"))}
    assert set(results) == {"test_vit", "test_mambaout"}
    for name, other in (("test_vit", "test_mambaout"), ("test_mambaout", "test_vit")):
        extra = results[name]["extra"]
        assert extra["engine"] == "eager" and extra["compile"] == "none"
        (paired,) = extra["paired"]
        assert paired["model"] == other and paired["engine"] == "eager"
        assert paired["speed_ratio_q1"] <= paired["speed_ratio"] <= paired["speed_ratio_q3"]
        assert extra["macs_fvcore"] > results[name]["macs"] > 0  # fvcore's count adds the norms
    vit, mambaout = (results[n]["extra"]["infer_s_per_step"] for n in ("test_vit", "test_mambaout"))
    ratios = sorted(m / v for v, m in zip(vit, mambaout, strict=True))  # the recorded windows, paired
    assert results["test_vit"]["extra"]["paired"][0]["speed_ratio"] == pytest.approx(
        (ratios[1] + ratios[2]) / 2
    )
    assert "paired (windows interleaved ABBA" in capsys.readouterr().out


def test_paired_training_prints_the_cost_per_mac_against_the_partner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The per-MAC ratio of a training step (issue 13's measure) comes from the same interleaved windows."""
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    argv = ["--models", "test_vit", "--pair-with", "test_mambaout", "--device", "cpu", "--batch-size", "1"]
    argv += ["--sizes", "32", "--warmup", "1", "--repeats", "3", "--iters", "1", "--memory", "none"]
    assert bench.run(parser.parse_args([*argv, "--out", str(tmp_path)])) == 0
    results = {r["model"]: r for r in (read_result(f) for f in tmp_path.rglob("result.json"))}
    (paired,) = results["test_vit"]["extra"]["paired"]
    macs_ratio = results["test_vit"]["macs"] / results["test_mambaout"]["macs"]
    assert paired["macs_ratio"] == pytest.approx(macs_ratio)
    assert paired["train_cost_per_mac_ratio"] == pytest.approx(1 / (paired["train_speed_ratio"] * macs_ratio))
    (back,) = results["test_mambaout"]["extra"]["paired"]
    # three repeats: the median of the reversed ratios is exactly the reciprocal
    assert back["train_cost_per_mac_ratio"] == pytest.approx(1 / paired["train_cost_per_mac_ratio"])
    out = capsys.readouterr().out
    assert "train s/MAC" in out and f"{paired['train_cost_per_mac_ratio']:.2f}" in out


def test_compile_choice_is_recorded_for_every_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[str] = []

    def record_engine(model, compile):  # the recording, not inductor, is under test here
        compiled.append(compile)
        return model

    monkeypatch.setattr(bench, "apply_engine", record_engine)
    (result,) = bench.measure_group(
        [("test_vit", "inductor-freeze")], (32, 32), batch_size=1, warmup=0, repeats=1, iters=1, train=False
    )
    assert compiled == ["inductor-freeze"]
    assert result["extra"]["engine"] == "torch.compile(inductor, freezing)"
    assert result["throughput"]["warmup"] == 1  # compilation happens in a warm-up step, never timed


def test_inductor_freeze_engine_matches_eager_output() -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()).eval()
    x = torch.randn(2, 8)
    forward = bench.apply_engine(model, "inductor-freeze")
    with bench.engine_context("inductor-freeze"), torch.inference_mode():
        assert torch.allclose(forward(x), model(x), atol=1e-6)
    import torch._inductor.config as inductor_config

    assert inductor_config.freezing is False  # the setting lasts for the block only


def test_threads_option_sets_torch_and_numba_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from visbench.cli import main

    before = torch.get_num_threads()
    monkeypatch.setenv("NUMBA_NUM_THREADS", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    try:
        argv = ["bench", "--models", "test_vit", "--threads", "1", "--sizes", "32", "--batch-size", "1"]
        argv += ["--warmup", "0", "--repeats", "1", "--iters", "1", "--no-train", "--memory", "none"]
        assert main([*argv, "--device", "cpu", "--out", str(tmp_path)]) == 0
        (result,) = [read_result(f) for f in tmp_path.rglob("result.json")]
        assert result["environment"]["threads"] == 1 and result["extra"]["threads_at_start"] == 1
        assert result["environment"]["omp_num_threads"] == "1"
        assert len(result["extra"]["load_average"]) == 2  # the machine's load, before and after
    finally:
        torch.set_num_threads(before)


def test_model_kwargs_reach_every_model_and_are_recorded(tmp_path: Path) -> None:
    """--model-kwargs builds both members of a pair at other widths (issue 13's narrow setting)."""
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    argv = ["--models", "gated_cnn_femto", "--pair-with", "ssm_causal_femto", "--device", "cpu"]
    argv += ["--sizes", "32", "--batch-size", "1", "--warmup", "0", "--repeats", "1", "--iters", "1"]
    argv += [
        "--memory",
        "none",
        "--no-train",
        "--model-kwargs",
        '{"dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1]}',
    ]
    assert bench.run(parser.parse_args([*argv, "--out", str(tmp_path / "narrow")])) == 0
    assert bench.run(parser.parse_args([*argv[:-2], "--out", str(tmp_path / "default")])) == 0
    narrow = {r["model"]: r for r in (read_result(f) for f in (tmp_path / "narrow").rglob("result.json"))}
    default = {r["model"]: r for r in (read_result(f) for f in (tmp_path / "default").rglob("result.json"))}
    for name in ("gated_cnn_femto", "ssm_causal_femto"):
        assert narrow[name]["extra"]["model_kwargs"] == {"dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1]}
        assert default[name]["extra"]["model_kwargs"] == {}
        assert narrow[name]["params"] < default[name]["params"] / 10
        assert narrow[name]["macs"] < default[name]["macs"]


@pytest.mark.parametrize(
    ("text", "match"),
    [('{"dims": [8', "not JSON"), ("[1, 2]", "expected a JSON object"), ('{"dimz": [8]}', "does not take")],
)
def test_bad_model_kwargs_are_one_line_naming_the_option(
    text: str, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from visbench.cli import main

    argv = ["bench", "--models", "gated_cnn_femto", "--device", "cpu", "--model-kwargs", text]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model-kwargs" in err and match in err
