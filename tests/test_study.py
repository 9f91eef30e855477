"""`visbench study`: the default config is valid, a tiny study writes results + summary, a re-run resumes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from visbench import study
from visbench.config import ConfigError
from visbench.results import read_result

TINY = [
    "seeds=[0, 1]",
    "parts.short.models=[gated_cnn_tiny]",
    "parts.short.kwargs.hierarchical={dims: [8, 16, 16, 16], depths: [1, 1, 1, 1]}",
    "parts.short.train.data.train_subset=64",
    "parts.short.train.data.val_subset=32",
    "parts.long.models=[seq_ssm_causal_tiny]",
    "parts.long.kwargs.sequence={embed_dim: 8, depth: 1}",
    "parts.long.train.data.train_subset=64",
    "parts.long.train.data.val_subset=32",
    "train.sched.epochs=1",
    "train.train.batch_size=32",
    "threads=1",
]


def _args(out: Path, overrides: list[str], resume: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    argv = [str(study.DEFAULT_CONFIG), *overrides, "--no-detection"]
    argv += ["--resume", resume] if resume else ["--out", str(out)]
    return parser.parse_args(argv)


def test_default_study_config_covers_every_family_with_equal_bodies() -> None:
    cfg, parts = study.load_study_config(study.DEFAULT_CONFIG)
    assert len(cfg.seeds) >= 2
    assert set(parts["short"].models) == {
        "gated_cnn_tiny",
        "ssm_causal_tiny",
        "ssm_bidir_tiny",
        "ssm_cross2d_tiny",
        "attn_tiny",
        "attn_causal_tiny",
        "vit_tiny",
        "vit_causal_tiny",
    }
    assert {m.split("_", 1)[1].rsplit("_", 1)[0] for m in parts["long"].models} >= {
        "gated_cnn",
        "ssm_causal",
        "attn_causal",
    }
    runs = study.plan_runs(cfg, parts, Path("out"))
    short = [r.raw for r in runs if r.part == "short"]
    assert all(r["data"]["input_size"] == [64, 64] for r in short)
    hierarchical = [r["model"]["kwargs"] for r in short if not r["model"]["name"].startswith("vit")]
    assert all(kw == hierarchical[0] for kw in hierarchical)
    assert [r.seed for r in runs][: len(runs) // 2] == [cfg.seeds[0]] * (len(runs) // 2)  # seed-major order
    assert cfg.detection_budget_min > 0 and cfg.time_budget_min <= 20


def test_misspelt_study_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'parts.short.modles'.*did you mean 'models'"):
        study.load_study_config(study.DEFAULT_CONFIG, ["parts.short.modles=[x]"])
    with pytest.raises(ConfigError, match=r"parts.long.*'sched.epoch'.*did you mean 'epochs'"):
        study.load_study_config(study.DEFAULT_CONFIG, ["parts.long.train.sched.epoch=3"])


def test_tiny_study_writes_results_summary_plot_and_resumes(
    tmp_path: Path, fashion_mnist_dir: Path, capsys
) -> None:
    out = tmp_path / "study-test"
    assert study.run(_args(out, TINY)) == 0
    results = sorted(out.glob("*/*/seed*/result.json"))
    assert len(results) == 4
    for path in results:
        result = read_result(path)
        assert result["dataset"] == "fashion_mnist" and 0 <= result["metrics"]["top1"] <= 100
    summary = (out / "summary.md").read_text()
    assert "| seq_ssm_causal_tiny | ssm | ssm | causal | sequence | 784 |" in summary
    assert " ± " in summary  # spread over two seeds
    assert (out / "study.png").stat().st_size > 0 and (out / "summary.csv").is_file()
    capsys.readouterr()

    # Resume: a run whose result is gone is redone; the others are skipped.
    (out / "short" / "gated_cnn_tiny" / "seed1" / "result.json").unlink()
    assert study.run(_args(out, TINY, resume=str(out))) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier, skipped") == 3
    assert "short: gated_cnn_tiny seed 1: training" in printed


def test_resumed_study_reports_the_wall_time_of_every_invocation(tmp_path) -> None:
    from visbench.study import _accumulate_wall_time

    assert _accumulate_wall_time(tmp_path, 600.0) == (600.0, 1)
    assert _accumulate_wall_time(tmp_path, 90.0) == (690.0, 2)
