"""The verdict engine on constructed result sets: statistics, the declared rule, the report and the CLI."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from visbench import verdicts as V
from visbench.results import validate_result, write_result

# ----------------------------------------------------------------------------------------------- helpers


def _result(template: dict, model: str, seed: int | None, metrics: dict, **fields) -> dict:
    r = copy.deepcopy(template)
    r.update(model=model, seed=seed, metrics=metrics, **fields)
    return validate_result(r, f"{model} seed {seed}")


def _results(template: dict, table: dict[str, list[float]], metric: str = "top1", **fields) -> list:
    """{model: [value for seed 0, 1, ...]} -> [(path, result)]; None skips that seed."""
    out = []
    filler = {} if metric == "top1" else {"top1": 0.0}  # classification results must carry top1
    for model, values in table.items():
        for seed, v in enumerate(values):
            if v is not None:
                out.append(
                    (
                        f"{model}-s{seed}/result.json",
                        _result(template, model, seed, {**filler, metric: v}, **fields),
                    )
                )
    return out


def _spec(**claim) -> V.ClaimsSpec:
    base = {
        "id": "C",
        "metric": "top1",
        "higher_is_better": True,
        "margin": 0.5,
        "baseline": "gated_cnn_tiny",
        "compared": ["ssm_causal_tiny"],
        "supports": ["no detectable difference", "worse"],
    }
    base.update(claim)
    return V.parse_claims({"claims": [base]}, "test-claims")


def _one(template: dict, base: list, comp: list, **claim) -> dict:
    spec = _spec(**claim)
    results = _results(template, {"gated_cnn_tiny": base, "ssm_causal_tiny": comp})
    return V.evaluate_claim(spec.claims[0], results)["comparisons"][0]


# ------------------------------------------------------------------------------------------- Student t


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.706205),
        (0.975, 2, 4.302653),
        (0.975, 3, 3.182446),
        (0.975, 4, 2.776445),
        (0.975, 9, 2.262157),
        (0.975, 30, 2.042272),
        (0.995, 3, 5.840909),
        (0.95, 5, 2.015048),
    ],
)
def test_t_quantile_matches_tables(p, df, expected):
    assert V.t_quantile(p, df) == pytest.approx(expected, abs=1e-6)
    assert V.t_quantile(1 - p, df) == pytest.approx(-expected, abs=1e-6)


def test_t_quantile_against_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 1.5, 2.94, 7, 60, 1000):
        for p in (0.6, 0.9, 0.975, 0.9995):
            assert V.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8)


def test_t_quantile_rejects_bad_arguments():
    with pytest.raises(ValueError, match="p must lie"):
        V.t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        V.t_quantile(0.9, 0)


def test_paired_ci_against_hand_computation(template):
    # baseline 80, 81, 82; compared 81, 83, 86 -> paired differences d = 1, 2, 4 (seeds 0, 1, 2)
    # mean = 7/3 = 2.333333; squared deviations 16/9 + 1/9 + 25/9 = 42/9; / (n - 1) = 7/3
    # sd = sqrt(7/3) = 1.527525; se = sd / sqrt(3) = 0.881917
    # half width = t_{0.975, 2} * se = 4.302653 * 0.881917 = 3.794580
    # CI = [2.333333 - 3.794580, 2.333333 + 3.794580] = [-1.461247, 6.127913]
    c = _one(template, [80.0, 81.0, 82.0], [81.0, 83.0, 86.0])
    d = c["difference"]
    assert d["n"] == 3 and d["df"] == 2
    assert d["mean"] == pytest.approx(2.333333, abs=1e-6)
    assert d["sd"] == pytest.approx(1.527525, abs=1e-6)
    assert d["ci_low"] == pytest.approx(-1.461247, abs=1e-5)
    assert d["ci_high"] == pytest.approx(6.127913, abs=1e-5)
    # baseline 80, 81, 82: mean 81, sd 1, half width 4.302653 / sqrt(3) = 2.484138
    assert c["baseline_stats"]["mean"] == pytest.approx(81.0)
    assert c["baseline_stats"]["ci_high"] == pytest.approx(83.484138, abs=1e-5)
    assert c["verdict"] == V.INCONCLUSIVE  # includes 0, reaches past +-0.5


# -------------------------------------------------------------------------------------------- verdicts


def test_every_verdict_is_reachable(template):
    base = [80.0, 81.0, 82.0, 80.5]
    better = _one(template, base, [b + d for b, d in zip(base, [1.0, 1.2, 0.9, 1.1])])
    worse = _one(template, base, [b - d for b, d in zip(base, [1.0, 1.2, 0.9, 1.1])])
    same = _one(template, base, [b + d for b, d in zip(base, [0.05, -0.05, 0.02, -0.02])])
    unsure = _one(template, base, [b + d for b, d in zip(base, [2.0, -2.0, 1.5, -1.8])])
    assert better["verdict"] == V.BETTER and "above 0" in better["reason"]
    assert worse["verdict"] == V.WORSE and "below 0" in worse["reason"]
    assert same["verdict"] == V.NO_DIFFERENCE and "margin" in same["reason"]
    assert unsure["verdict"] == V.INCONCLUSIVE and "includes 0" in unsure["reason"]
    # H1-style mapping: no difference / worse support MambaOut, better contradicts, inconclusive is neither
    assert [c["support"] for c in (better, worse, same, unsure)] == [
        V.CONTRADICTS,
        V.SUPPORTS,
        V.SUPPORTS,
        V.NEITHER,
    ]


def test_fewer_than_three_seeds_is_inconclusive_even_when_clear(template):
    c = _one(template, [80.0, 81.0], [90.0, 91.5])
    assert c["difference"]["n"] == 2 and c["difference"]["ci_low"] > 0  # a CI exists, but says nothing
    assert c["verdict"] == V.INCONCLUSIVE
    assert "fewer than 3 seeds" in c["reason"]
    assert c["support"] == V.NEITHER


def test_lower_is_better_flips_the_side(template):
    spec = _spec(metric="bits_per_pixel", higher_is_better=False, margin=0.02, supports=["worse"])
    results = _results(
        template,
        {"gated_cnn_tiny": [1.50, 1.52, 1.49], "ssm_causal_tiny": [1.40, 1.43, 1.41]},
        metric="bits_per_pixel",
    )
    results += _results(template, {"gated_cnn_tiny": [80.0] * 3}, metric="top1")  # no bits_per_pixel: ignored
    c = V.evaluate_claim(spec.claims[0], results)["comparisons"][0]
    assert c["difference"]["mean"] < 0
    assert c["verdict"] == V.BETTER  # lower bits per pixel is better
    assert c["support"] == V.CONTRADICTS


def test_precedence_equivalence_first(template):
    base = [80.0, 81.0, 82.0, 80.5]
    comp = [b + d for b, d in zip(base, [0.10, 0.12, 0.11, 0.09])]  # significant but tiny
    assert _one(template, base, comp)["verdict"] == V.BETTER
    assert _one(template, base, comp, precedence="equivalence_first")["verdict"] == V.NO_DIFFERENCE


def test_missing_pairs_are_named(template):
    c = _one(template, [80.0, 81.0, 82.0, 83.0], [80.0, None, 82.0, 83.0, 84.0])
    assert c["seeds"] == [0, 2, 3]
    assert any("seed 1: gated_cnn_tiny ran but ssm_causal_tiny did not" in m for m in c["missing"])
    assert any("seed 4: ssm_causal_tiny ran but gated_cnn_tiny did not" in m for m in c["missing"])
    absent = _one(template, [80.0, 81.0, 82.0], [])
    assert absent["verdict"] == V.INCONCLUSIVE and absent["difference"]["n"] == 0
    assert any("no result for ssm_causal_tiny" in m for m in absent["missing"])


def test_where_filters_and_duplicates_are_an_error(template):
    spec = _spec(where={"input_size": [32, 32], "dataset": ["fashion_mnist", "mnist"]})
    results = _results(
        template, {"gated_cnn_tiny": [80.0, 81.0, 82.0], "ssm_causal_tiny": [80.0, 81.0, 82.0]}
    )
    results += _results(template, {"gated_cnn_tiny": [10.0, 10.0, 10.0]}, input_size=[64, 64])
    c = V.evaluate_claim(spec.claims[0], results)["comparisons"][0]
    assert c["baseline_values"] == [80.0, 81.0, 82.0]
    with pytest.raises(
        ValueError, match=r"two results for gated_cnn_tiny seed 0.*narrow the claim's 'where'"
    ):
        V.evaluate_claim(_spec().claims[0], results)


def test_causal_claim_with_several_baselines(template):
    spec = V.parse_claims(
        {
            "margins": {"top1": 0.5},
            "claims": [
                {
                    "id": "causal",
                    "metric": "top1",
                    "higher_is_better": True,
                    "comparisons": [
                        {"baseline": "attn_tiny", "compared": "attn_causal_tiny"},
                        {"baseline": "ssm_bidir_tiny", "compared": "ssm_causal_tiny"},
                    ],
                    "supports": ["worse"],
                }
            ],
        }
    )
    results = _results(
        template,
        {
            "attn_tiny": [85.0, 86.0, 85.5],
            "attn_causal_tiny": [82.0, 83.1, 82.4],  # worse -> supports "causal hurts"
            "ssm_bidir_tiny": [85.0, 86.0, 85.5],
            "ssm_causal_tiny": [85.01, 86.02, 85.49],  # no detectable difference -> contradicts
        },
    )
    entry = V.evaluate_claim(spec.claims[0], results)
    verdicts = [(c["verdict"], c["support"]) for c in entry["comparisons"]]
    assert verdicts == [(V.WORSE, V.SUPPORTS), (V.NO_DIFFERENCE, V.CONTRADICTS)]
    assert entry["overall"] == "mixed"


def test_overall_support():
    assert V.overall_support([V.SUPPORTS, V.SUPPORTS]) == "supports"
    assert V.overall_support([V.SUPPORTS, V.NEITHER]) == "partly supports"
    assert V.overall_support([V.CONTRADICTS]) == "contradicts"
    assert V.overall_support([V.CONTRADICTS, V.NEITHER]) == "partly contradicts"
    assert V.overall_support([V.NEITHER, V.NEITHER]) == "neither"
    assert V.overall_support([]) == "neither"


def test_grouped_difference_of_differences(template):
    spec = _spec(group_by="tokens", supports=["better"])
    small = {"gated_cnn_tiny": [80.0, 81.0, 82.0], "ssm_cross2d_tiny": [80.1, 80.9, 82.0]}  # d = .1, -.1, 0
    large = {"gated_cnn_tiny": [70.0, 71.0, 72.0], "ssm_cross2d_tiny": [72.0, 73.2, 73.8]}  # d = 2, 2.2, 1.8
    spec = _spec(group_by="tokens", compared=["ssm_cross2d_tiny"], supports=["better"])
    results = _results(template, small, tokens=64) + _results(template, large, tokens=1024)
    entry = V.evaluate_claim(spec.claims[0], results)
    assert entry["groups"] == [64, 1024]
    per_group = entry["comparisons"]
    assert [c["group"] for c in per_group] == [64, 1024]
    assert per_group[0]["difference"]["mean"] == pytest.approx(0.0, abs=1e-9)
    assert per_group[1]["difference"]["mean"] == pytest.approx(2.0)
    assert all(c["support"] is None for c in per_group)  # the claim is judged on the contrast
    (k,) = entry["contrasts"]
    # Welch: group sds 0.1 and 0.2, n = 3 each: v1 = 0.01/3, v2 = 0.04/3, se = sqrt(0.05/3) = 0.129099
    # df = (0.05/3)^2 / ((0.01/3)^2 / 2 + (0.04/3)^2 / 2) = 0.0025 / 0.00085 = 2.941176
    d = k["difference"]
    assert d["mean"] == pytest.approx(2.0)
    assert d["sd"] == pytest.approx(0.129099, abs=1e-6)
    assert d["df"] == pytest.approx(2.941176, abs=1e-6)
    assert d["ci_high"] - d["mean"] == pytest.approx(V.t_quantile(0.975, 2.941176) * 0.129099, abs=1e-5)
    assert (k["first_group"], k["last_group"]) == (64, 1024)
    assert k["verdict"] == V.BETTER and k["support"] == V.SUPPORTS
    assert entry["overall"] == "supports"
    # with two seeds in one group the contrast is inconclusive
    thin = [(p, r) for p, r in results if not (r["tokens"] == 1024 and r["seed"] == 2)]
    k2 = V.evaluate_claim(spec.claims[0], thin)["contrasts"][0]
    assert k2["verdict"] == V.INCONCLUSIVE and "fewer than 3 seeds" in k2["reason"]


def test_macs_flag(template):
    spec = _spec(compared=["ssm_causal_tiny", "ssm_bidir_tiny", "attn_tiny"])
    results = _results(template, {"gated_cnn_tiny": [80.0, 81.0, 82.0]})
    results += _results(template, {"ssm_causal_tiny": [80.0, 81.0, 82.0]}, macs=130_000_000)
    results += _results(template, {"ssm_bidir_tiny": [80.0, 81.0, 82.0]}, macs=110_000_000)
    results += _results(template, {"attn_tiny": [80.0, 81.0, 82.0]}, macs=None)
    rows = V.evaluate_claim(spec.claims[0], results)["comparisons"]
    flags = [(c["fairness"]["macs_ratio"], c["fairness"]["macs_flag"]) for c in rows]
    assert flags[0] == (pytest.approx(1.3), True)
    assert flags[1] == (pytest.approx(1.1), False)
    assert flags[2] == (None, None)
    f = rows[0]["fairness"]
    assert f["baseline"]["params"] == 1_000_000 and f["baseline"]["wall_s"] == pytest.approx(120.0)


def test_wall_time_prefers_recorded_training_time(template):
    r = _result(template, "gated_cnn_tiny", 0, {"top1": 1.0}, extra={"train_wall_s": 42.5})
    assert V.wall_seconds(r) == 42.5
    assert V.wall_seconds(template) == pytest.approx(120.0)


# ----------------------------------------------------------------------------------------- claims spec


def test_spec_errors_name_the_key(tmp_path):
    ok = {"id": "H1", "metric": "top1", "higher_is_better": True, "baseline": "a", "compared": ["b"]}
    with pytest.raises(ValueError, match=r"'claims\[0\] \(H1\)\.supports' is missing"):
        V.parse_claims({"claims": [ok]}, "x.yaml")
    with pytest.raises(
        ValueError, match=r"x.yaml: 'claims\[0\] \(H1\)': no equivalence margin .*margins.top1"
    ):
        V.parse_claims({"claims": [{**ok, "supports": "worse"}]}, "x.yaml")
    with pytest.raises(
        ValueError, match=r"unknown key 'claims\[0\] \(H1\)\.suports'; did you mean 'supports'"
    ):
        V.parse_claims({"claims": [{**ok, "margin": 1, "suports": "worse"}]}, "x.yaml")
    with pytest.raises(
        ValueError, match=r"'claims\[0\] \(H1\)\.supports': 'wrose' is not a decisive verdict"
    ):
        V.parse_claims({"claims": [{**ok, "margin": 1, "supports": ["wrose"]}]}, "x.yaml")
    with pytest.raises(ValueError, match=r"unknown key 'margin'; did you mean 'margins'"):
        V.parse_claims({"margin": {}, "claims": [ok]}, "x.yaml")
    with pytest.raises(FileNotFoundError, match="claims file .*nope.yaml does not exist"):
        V.load_claims(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("claims: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        V.load_claims(bad)


def test_spec_inside_a_study_config(tmp_path):
    path = tmp_path / "study.yaml"
    claims = [{"id": "H1", "metric": "top1", "higher_is_better": True, "baseline": "a", "compared": ["b"]}]
    claims[0]["supports"] = ["worse"]
    path.write_text(
        yaml.safe_dump({"seeds": [0, 1, 2], "verdicts": {"margins": {"top1": 0.5}, "claims": claims}})
    )
    spec = V.load_claims(path)
    assert spec.claims[0].margin == 0.5 and spec.sha256.startswith("sha256:")
    assert spec.claims[0].comparisons[0].contradicts == (V.BETTER, V.NO_DIFFERENCE)


# -------------------------------------------------------------------------------------- hypotheses.json


def _report(template) -> dict:
    spec = _spec()
    results = _results(
        template, {"gated_cnn_tiny": [80.0, 81.0, 82.0], "ssm_causal_tiny": [80.2, 80.8, 82.1]}
    )
    return V.evaluate(results, spec, smoke=True)


def test_hypotheses_round_trip_and_malformed_files(template, tmp_path):
    report = _report(template)
    path = V.write_hypotheses(tmp_path / "hypotheses.json", report)
    assert V.load_hypotheses(path) == json.loads(json.dumps(report))

    broken = json.loads(path.read_text())
    del broken["claims"][0]["comparisons"][0]["difference"]["ci_low"]
    (tmp_path / "b1.json").write_text(json.dumps(broken))
    with pytest.raises(
        V.HypothesesError, match=r"b1.json: field 'claims\[0\]\.comparisons\[0\]\.difference\.ci_low'"
    ):
        V.load_hypotheses(tmp_path / "b1.json")

    broken = json.loads(path.read_text())
    broken["claims"][0]["comparisons"][0]["verdict"] = "maybe"
    (tmp_path / "b2.json").write_text(json.dumps(broken))
    with pytest.raises(V.HypothesesError, match=r"b2.json: field 'claims\[0\]\.comparisons\[0\]\.verdict'"):
        V.load_hypotheses(tmp_path / "b2.json")

    broken = json.loads(path.read_text())
    broken["schema_version"] = 99
    (tmp_path / "b3.json").write_text(json.dumps(broken))
    with pytest.raises(V.HypothesesError, match="b3.json: field 'schema_version': 99 is newer"):
        V.load_hypotheses(tmp_path / "b3.json")

    (tmp_path / "b4.json").write_text("{")
    with pytest.raises(V.HypothesesError, match="b4.json: not valid JSON"):
        V.load_hypotheses(tmp_path / "b4.json")
    with pytest.raises(FileNotFoundError, match="absent.json"):
        V.load_hypotheses(tmp_path / "absent.json")


def test_markdown_is_generated_from_numbers(template):
    from visbench.hypotheses import SMOKE_BANNER, render_markdown

    report = _report(template)
    md = render_markdown(report)
    assert SMOKE_BANNER in md
    assert "| claim | models (compared vs baseline) | metric | baseline mean ± CI | difference ± CI |" in md
    c = report["claims"][0]["comparisons"][0]
    half = c["difference"]["ci_high"] - c["difference"]["mean"]
    assert f"{c['difference']['mean']:+.2f} ± {half:.2f}" in md
    assert "smoke run" not in render_markdown({**report, "smoke": False})
    assert all(s in md for s in report["claims"][0]["sentences"])


# ------------------------------------------------------------------------------------------------- CLI


def _write_runs(template: dict, root: Path) -> None:
    values = {
        "gated_cnn_tiny": [88.0, 88.5, 88.2, 88.4],
        "ssm_causal_tiny": [88.1, 88.4, 88.3, 88.4],
        "attn_tiny": [86.0, 86.4, 86.1, 86.2],
    }
    for model, vals in values.items():
        for seed, v in enumerate(vals):
            write_result(root / f"{model}-s{seed}", _result(template, model, seed, {"top1": v}, tokens=64))
    for tokens, shift in ((256, 0.0), (4096, 3.0)):
        for seed in range(3):
            base = _result(template, "gated_cnn_tiny", seed, {"top1": 1.0, "bbox_mAP": 30.0 + seed})
            ssm = _result(template, "ssm_cross2d_tiny", seed, {"top1": 1.0, "bbox_mAP": 30.0 + seed + shift})
            for r in (base, ssm):
                r.update(task="detection", dataset="canvas", tokens=tokens)
                write_result(root / "det" / f"{r['model']}-{tokens}-s{seed}", r)


CLAIMS_YAML = """
margins: {top1: 0.5, bbox_mAP: 1.0}
claims:
  - id: H1
    title: SSM is unnecessary for short, non-causal tasks
    hypothesis: adding an SSM to the gated CNN brings no gain
    metric: top1
    higher_is_better: true
    where: {task: classification}
    baseline: gated_cnn_tiny
    compared: [ssm_causal_tiny, attn_tiny]
    supports: [no detectable difference, worse]
  - id: H2
    title: SSM may help long, non-causal tasks
    hypothesis: the SSM's advantage over the gated CNN grows with the token count
    metric: bbox_mAP
    higher_is_better: true
    where: {task: detection}
    group_by: tokens
    baseline: gated_cnn_tiny
    compared: [ssm_cross2d_tiny]
    supports: [better]
"""


def test_cli_end_to_end(template, tmp_path, capsys):
    from visbench.cli import main

    runs = tmp_path / "runs"
    _write_runs(template, runs)
    claims = tmp_path / "claims.yaml"
    claims.write_text(CLAIMS_YAML)
    out = tmp_path / "out"
    assert main(["verdicts", str(runs), "--claims", str(claims), "--out", str(out), "--smoke"]) == 0
    printed = capsys.readouterr().out
    assert "H1: ssm_causal_tiny vs gated_cnn_tiny: no detectable difference (supports)" in printed
    assert "H1: attn_tiny vs gated_cnn_tiny: worse (supports)" in printed
    assert "H2: ssm_cross2d_tiny vs gated_cnn_tiny: better (supports)" in printed
    report = V.load_hypotheses(out / "hypotheses.json")
    assert report["smoke"] is True and len(report["result_files"]) == 24
    h2 = report["claims"][1]
    assert [c["difference"]["mean"] for c in h2["comparisons"]] == [pytest.approx(0.0), pytest.approx(3.0)]
    md = (out / "hypotheses.md").read_text()
    assert "smoke run, not evidence" in md and "![H1](verdict_H1.png)" in md
    for stem in ("verdict_H1", "verdict_H2"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.pdf").stat().st_size > 0

    # a malformed result file is named, with its field; exit status 2
    bad = runs / "broken" / "result.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({**template, "params": -1}))
    assert main(["verdicts", str(runs), "--claims", str(claims), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'params'" in err and err.startswith("visbench verdicts: error: ")
    # a missing claims file is named
    assert main(["verdicts", str(runs), "--claims", str(tmp_path / "none.yaml"), "--out", str(out)]) == 2
    assert "none.yaml" in capsys.readouterr().err
    # a malformed spec: one line naming the file and the key
    (tmp_path / "typo.yaml").write_text(CLAIMS_YAML.replace("group_by:", "groupby:"))
    assert main(["verdicts", str(runs), "--claims", str(tmp_path / "typo.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "typo.yaml: unknown key 'claims[1] (H2).groupby'; did you mean 'group_by'?" in err
    assert len(err.strip().splitlines()) == 1


def test_interval_degenerate_cases():
    assert V.t_interval([]).mean is None
    one = V.t_interval([3.0])
    assert one.mean == 3.0 and one.ci_low is None
    flat = V.t_interval([1.0, 1.0, 1.0])
    assert flat.ci_low == flat.ci_high == 1.0
    verdict, _ = V.decide(flat, 0.5, True)
    assert verdict == V.BETTER  # a constant positive difference excludes 0
    assert math.isfinite(V.t_quantile(0.975, 2.941176))


def test_packaged_rules_parse():
    from visbench.resources import CONFIG_ROOT

    spec = V.load_claims(CONFIG_ROOT / "study" / "verdict_rules.yaml")
    assert [c.id for c in spec.claims] == ["H1", "causal", "long_causal", "H2"]
    assert spec.claims[2].higher_is_better is False and spec.claims[2].margin == 0.02
    assert spec.claims[3].group_by == "tokens"
