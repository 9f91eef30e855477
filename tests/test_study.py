"""`visbench study`: the default config is the four-claim experiment, a tiny study judges its claims, resumes
with the same verdicts, and the plan / dry run and the quick mode say what they are."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from visbench.backbones.naming import describe

from visbench import study
from visbench.config import ConfigError
from visbench.results import read_result
from visbench.verdicts import load_claims, load_hypotheses

# Tiny sizes of every part; the detection part needs mmdet and is left out here (tests/test_detection.py
# trains the detection jobs the study schedules).
TINY = [
    "seeds=[0, 1, 2]",
    "workers=0",
    "parts.classification.models=[gated_cnn_tiny, ssm_causal_tiny]",
    "parts.classification.kwargs.hierarchical={dims: [8, 16, 16, 16], depths: [1, 1, 1, 1]}",
    "parts.classification.train.data.train_subset=64",
    "parts.classification.train.data.val_subset=32",
    "parts.classification.train.sched.epochs=1",
    "parts.classification.train.train.batch_size=32",
    "parts.next_pixel.models=[seq_gated_cnn_tiny, seq_ssm_causal_tiny]",
    "parts.next_pixel.kwargs.sequence={embed_dim: 8, depth: 1}",
    "parts.next_pixel.next_pixel.steps=2",
    "parts.next_pixel.next_pixel.batch_size=4",
    "parts.next_pixel.next_pixel.test_images=8",
]


def _args(out: Path, extra: list[str], resume: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    argv = [str(study.DEFAULT_CONFIG), *extra, "--parts", "classification,next_pixel"]
    argv += ["--resume", resume] if resume else ["--out", str(out)]
    return parser.parse_args(argv)


def test_default_study_holds_the_four_claims_with_three_seeds_and_one_recipe_per_part() -> None:
    cfg, parts = study.load_study_config(study.DEFAULT_CONFIG)
    assert len(cfg.seeds) >= 3 and cfg.time_budget_min <= 45
    assert {p.kind for p in parts.values()} == {"classification", "next_pixel", "detection"}
    claims = load_claims(study.claims_source(study.DEFAULT_CONFIG, cfg))
    assert [c.id for c in claims.claims] == ["H1", "causal", "long_causal", "H2"]
    planned = {m for p in parts.values() for m in p.models}
    assert all(set(c.models) <= planned for c in claims.claims), "every claimed model is trained"

    jobs = study.plan_jobs(cfg, parts, Path("out"))
    classification = [j.payload for j in jobs if j.kind == "classification"]
    assert all(
        p["data"]["input_size"] == [32, 32] and not p["data"].get("train_subset") for p in classification
    )
    assert all(p["aug"]["hflip"] == 0.0 for p in classification)  # paired runs see identical batches
    hierarchical = [
        p["model"]["kwargs"] for p in classification if describe(p["model"]["name"]).body == "hierarchical"
    ]
    assert all(kw == hierarchical[0] for kw in hierarchical)
    # seed-major: a study cut by its budget holds whole seeds
    seeds = [j.seed for j in jobs]
    assert seeds == sorted(seeds)
    sides = {j.payload["side"] for j in jobs if j.kind == "detection"}
    dim = parts["detection"].detection["dims"][0]
    assert min(sides) ** 2 / 16 < 6 * dim < max(sides) ** 2 / 16, "one canvas below and one above L = 6D"


def test_isotropic_bodies_of_the_study_see_as_many_tokens_as_stage_one() -> None:
    from visbench.backbones.naming import tokens_per_stage

    _, parts = study.load_study_config(study.DEFAULT_CONFIG)
    part = parts["classification"]
    size = [32, 32]
    patch = part.kwargs["isotropic"]["patch_size"]
    assert tokens_per_stage("vit_tiny", size, patch)[0] == tokens_per_stage("gated_cnn_tiny", size)[0] == 64


def test_misspelt_study_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"'parts.classification.modles'.*did you mean 'models'"):
        study.load_study_config(study.DEFAULT_CONFIG, ["parts.classification.modles=[x]"])
    with pytest.raises(ConfigError, match=r"parts.classification.*'sched.epoch'.*did you mean 'epochs'"):
        study.load_study_config(study.DEFAULT_CONFIG, ["parts.classification.train.sched.epoch=3"])
    with pytest.raises(
        ConfigError, match=r"default.yaml: .*'parts.next_pixel.next_pixel.step'; did you mean 'steps'"
    ):
        study.load_study_config(study.DEFAULT_CONFIG, ["parts.next_pixel.next_pixel.step=3"])
    with pytest.raises(ConfigError, match=r"parts.detection.*unknown setting.*'iterations'"):
        study.load_study_config(study.DEFAULT_CONFIG, ["parts.detection.detection.iterations=3"])
    with pytest.raises(ConfigError, match=r"parts.x.kind: expected one of"):
        study.load_study_config(study.DEFAULT_CONFIG, ["parts.x={kind: regression, models: [a]}"])


def test_quick_mode_shrinks_every_part_and_keeps_the_claims() -> None:
    full, full_parts = study.load_study_config(study.DEFAULT_CONFIG)
    quick, quick_parts = study.load_study_config(study.DEFAULT_CONFIG, quick=True)
    assert quick.seeds == full.seeds and quick.claims == full.claims
    assert set(quick_parts) == set(full_parts)
    assert quick_parts["next_pixel"].next_pixel["steps"] < full_parts["next_pixel"].next_pixel["steps"]
    assert quick_parts["detection"].detection["iters"] < full_parts["detection"].detection["iters"]
    assert quick_parts["classification"].train["data"]["train_subset"] <= 2000


def test_tiny_study_judges_its_claims_and_resumes_with_the_same_verdicts(
    tmp_path: Path, fashion_mnist_dir: Path, capsys
) -> None:
    out = tmp_path / "study-test"
    assert study.run(_args(out, TINY)) == 0
    results = sorted(out.glob("*/*/seed*/result.json"))
    assert len(results) == 12
    tasks = {read_result(p)["task"] for p in results}
    assert tasks == {"classification", "next_pixel"}
    pixel = read_result(out / "next_pixel" / "seq_ssm_causal_tiny" / "seed1" / "result.json")
    assert (
        pixel["tokens"] == 784
        and pixel["metrics"]["bits_per_pixel"] > 0
        and pixel["extra"]["train_wall_s"] > 0
    )
    assert read_result(results[0])["extra"]["train_wall_s"] > 0

    # The claims were frozen in the folder before the runs, and judged from the results.
    assert (out / study.CLAIMS_COPY).is_file()
    report = load_hypotheses(out / "hypotheses.json")
    by_id = {c["id"]: c for c in report["claims"]}
    h1 = {c["compared"]: c for c in by_id["H1"]["comparisons"]}
    assert h1["ssm_causal_tiny"]["difference"]["n"] == 3
    assert by_id["long_causal"]["comparisons"][0]["difference"]["n"] == 3
    assert not report["smoke"]
    assert (out / "verdict_H1.png").is_file() and (out / "verdict_H1.pdf").is_file()
    summary = (out / "summary.md").read_text()
    assert "seq_ssm_causal_tiny" in summary and "bits_per_pixel: mean [95% CI]" in summary
    tables = (out / "tables" / "summary.md").read_text()
    assert "Verdicts on MambaOut's claims" in tables and "Next-pixel modelling" in tables
    capsys.readouterr()

    # Resume: a job whose result is gone is redone, the others are kept; the verdicts come out the same.
    before = {c["id"]: [x["verdict"] for x in c["comparisons"]] for c in report["claims"]}
    (out / "classification" / "gated_cnn_tiny" / "seed1" / "result.json").unlink()
    assert study.run(_args(out, [], resume=str(out))) == 0
    printed = capsys.readouterr().out
    assert printed.count("done earlier, kept") == 11
    assert "classification: gated_cnn_tiny seed 1: training" in printed
    again = load_hypotheses(out / "hypotheses.json")
    assert {c["id"]: [x["verdict"] for x in c["comparisons"]] for c in again["claims"]} == before
    assert "over 2 invocations" in (out / "summary.md").read_text()


def test_quick_study_report_says_smoke_run(tmp_path: Path, fashion_mnist_dir: Path, capsys) -> None:
    out = tmp_path / "quick"
    extra = [*TINY, "seeds=[0]", "--quick"]
    assert study.run(_args(out, extra)) == 0
    assert "smoke run, not evidence" in (out / "hypotheses.md").read_text()
    assert load_hypotheses(out / "hypotheses.json")["smoke"] is True


def test_dry_run_prints_the_plan_and_costs_from_bench_results(tmp_path: Path, capsys) -> None:
    from visbench.results import make_result, now_iso, write_result

    bench = tmp_path / "bench"
    write_result(
        bench / "one",
        make_result(
            model="gated_cnn_tiny",
            task="bench",
            dataset="synthetic",
            input_size=[32, 32],
            params=1,
            macs=1,
            metrics={},
            start_time=now_iso(),
            throughput={"img_per_s": 900.0, "train_img_per_s": 300.0, "batch_size": 8, "device": "cpu"},
        ),
    )
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    args = parser.parse_args(
        [str(study.DEFAULT_CONFIG), "--dry-run", "--throughput", str(bench), "--out", str(tmp_path / "s")]
    )
    assert study.run(args) == 0
    printed = capsys.readouterr().out
    assert "# visbench study plan:" in printed and "detection (detection)" in printed
    # 3 seeds x 2 epochs x 60k images at 300 img/s = 0.33 h
    assert "gated_cnn_tiny: 3 runs x 120,000 training images at 32x32: 0.33 h at 300 img/s" in printed
    assert "no measured throughput" in printed and not (tmp_path / "s").exists()


def test_gpu_scale_study_config_plans_the_same_claims(capsys) -> None:
    from visbench.resources import CONFIG_ROOT

    path = CONFIG_ROOT / "study" / "imagenet_coco.yaml"
    cfg, parts = study.load_study_config(path, ["parts.classification.train.data.root=/nonexistent"])
    claims = load_claims(study.claims_source(path, cfg))
    assert {c.id for c in claims.claims} == {"H1", "causal", "long_causal", "H2"}
    jobs = study.plan_jobs(cfg, parts, Path("out"))
    assert {j.payload["data"]["input_size"][0] for j in jobs if j.kind == "classification"} == {224}
    text = study.dry_run(jobs, parts, [])
    assert "dataset not found here" in text


def test_resumed_study_reports_the_wall_time_of_every_invocation(tmp_path) -> None:
    assert study._accumulate_wall_time(tmp_path, 600.0) == (600.0, 1)
    assert study._accumulate_wall_time(tmp_path, 90.0) == (690.0, 2)
    assert json.loads((tmp_path / "wall_time.json").read_text())["invocations"] == 2


def test_resume_of_a_folder_that_is_not_a_study_is_one_clear_error(tmp_path) -> None:
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    with pytest.raises(ConfigError, match="not a study folder"):
        study.run(parser.parse_args(["--resume", str(tmp_path)]))
