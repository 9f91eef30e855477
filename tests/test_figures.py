"""Every figure of ``visbench tables`` and the verdicts, checked as a reader would: written as PNG and
PDF, no text over other text (or legends over lines) at a paper's column width and at full width, each
family drawn in its fixed colour, identical r curves merged; and the overlap check itself can fail."""

from __future__ import annotations

import copy
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from visbench import figures as F  # noqa: E402
from visbench import hypotheses, tables  # noqa: E402
from visbench import verdicts as V  # noqa: E402
from visbench.results import validate_result  # noqa: E402

WIDTHS = ("column", "full")

# --------------------------------------------------------------------------------------------- inputs

TINY = ["gated_cnn_tiny", "ssm_causal_tiny", "ssm_bidir_tiny", "ssm_cross2d_tiny", "attn_tiny"]
TINY += ["attn_causal_tiny", "vit_tiny", "vit_causal_tiny", "seq_gated_cnn_tiny", "seq_ssm_causal_tiny"]


def _result(template: dict, model: str, seed: int, metrics: dict, **fields) -> dict:
    r = copy.deepcopy(template)
    r.update(model=model, seed=seed, metrics=metrics, **fields)
    return validate_result(r, f"{model} seed {seed}")


@pytest.fixture(scope="module")
def results(template: dict) -> list[dict]:
    """Three seeds per model with distinct accuracies, MACs and throughputs; detection at two sizes."""
    out = []
    for i, model in enumerate(TINY):
        for seed in range(3):
            tp = {"img_per_s": 500.0 + 150 * i + 10 * seed, "batch_size": 64, "device": "cpu"}
            side = 28 if model.startswith("seq_") else 32
            out.append(
                _result(
                    template,
                    model,
                    seed,
                    {"top1": 80.0 + 0.7 * i - 0.3 * seed + (0.4 if seed == 1 else 0.0)},
                    macs=(4 + 3 * i) * 10**6,
                    input_size=[side, side],
                    throughput=tp,
                    device="cpu: test",
                )
            )
    for tokens, shift in ((256, 0.0), (4096, 3.0)):
        for seed in range(3):
            for model, extra in (("gated_cnn_tiny", 0.0), ("ssm_cross2d_tiny", shift + 0.2 * seed)):
                r = _result(template, model, seed, {"top1": 1.0, "bbox_mAP": 30.0 + seed + extra})
                r.update(task="instance_segmentation", dataset="canvas", tokens=tokens, throughput=None)
                out.append(r)
    return out


CLAIMS = {
    "margins": {"top1": 0.5, "bbox_mAP": 1.0},
    "claims": [
        {
            "id": "H1",
            "title": "Short, non-causal: SSM is unnecessary (Fashion-MNIST 32x32, 64 tokens at stage 1)",
            "metric": "top1",
            "higher_is_better": True,
            "where": {"task": "classification"},
            "baseline": "gated_cnn_tiny",
            "compared": ["ssm_causal_tiny", "ssm_bidir_tiny", "ssm_cross2d_tiny", "attn_tiny"],
            "supports": ["no detectable difference", "worse"],
        },
        {
            "id": "causal",
            "title": "Causal mixing hurts understanding (the same task)",
            "metric": "top1",
            "higher_is_better": True,
            "where": {"task": "classification"},
            "comparisons": [
                {"baseline": "attn_tiny", "compared": "attn_causal_tiny"},
                {"baseline": "vit_tiny", "compared": "vit_causal_tiny"},
                {"baseline": "ssm_bidir_tiny", "compared": "ssm_causal_tiny"},
                {"baseline": "ssm_cross2d_tiny", "compared": "ssm_causal_tiny"},
            ],
            "supports": ["worse"],
        },
        {
            "id": "H2",
            "title": "Long, non-causal: Mask R-CNN on Fashion-MNIST canvases below and above L = 6D",
            "metric": "bbox_mAP",
            "higher_is_better": True,
            "where": {"task": "instance_segmentation"},
            "group_by": "tokens",
            "baseline": "gated_cnn_tiny",
            "compared": ["ssm_cross2d_tiny"],
            "supports": ["better"],
        },
    ],
}


@pytest.fixture(scope="module")
def report(results: list[dict]) -> dict:
    pairs = [(f"{r['model']}-{r['task']}-{r.get('tokens')}-s{r['seed']}/result.json", r) for r in results]
    return V.evaluate(pairs, V.parse_claims(CLAIMS, "test-claims"))


@pytest.fixture(scope="module")
def rows(results: list[dict]) -> list[tables.Row]:
    measured = tables.measured_rows(r for r in results if r["task"] == "classification")
    return measured + tables.load_reference()


def _claim(report: dict, claim_id: str) -> dict:
    return next(c for c in report["claims"] if c["id"] == claim_id)


# One builder per figure: name -> (figure at a width, files written by the saving function).
def _builders(rows, results, report):
    models = sorted({r["model"] for r in results})
    return {
        "accuracy_vs_macs": (
            lambda w: tables.accuracy_vs_macs_figure(rows, w),
            lambda out: tables.plot_accuracy_vs_macs(rows, out),
        ),
        "throughput_vs_resolution": (
            lambda w: tables.throughput_vs_resolution_figure(results, w),
            lambda out: tables.plot_throughput_vs_resolution(results, out),
        ),
        "r_vs_resolution": (
            lambda w: tables.r_vs_resolution_figure(models, w),
            lambda out: tables.plot_r_vs_resolution(models, out),
        ),
        **{
            f"verdict_{cid}": (
                lambda w, cid=cid: hypotheses._claim_figure(_claim(report, cid), False, w),
                lambda out, cid=cid: hypotheses.plot_claim(_claim(report, cid), out),
            )
            for cid in ("H1", "causal", "H2")
        },
    }


FIGURE_NAMES = [
    "accuracy_vs_macs",
    "throughput_vs_resolution",
    "r_vs_resolution",
    "verdict_H1",  # one baseline, five models
    "verdict_causal",  # four comparisons, four baselines
    "verdict_H2",  # grouped by tokens
]


@pytest.fixture(scope="module")
def builders(rows, results, report):
    return _builders(rows, results, report)


# --------------------------------------------------------------------------------------------- per figure


@pytest.mark.parametrize("name", FIGURE_NAMES)
def test_figure_is_written_as_png_and_vector_pdf(name, builders, tmp_path: Path) -> None:
    paths = builders[name][1](tmp_path)
    assert [p.name for p in paths] == [f"{name}.png", f"{name}.pdf"]
    png, pdf = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as im:
        width_px = im.size[0]
    assert width_px >= 3.3 * 200, "PNG at >= 200 dpi at the printed width"
    data = pdf.read_bytes()
    assert data[:5] == b"%PDF-" and b"/Subtype /Image" not in data, "the PDF is vector, not a raster"
    plt.close("all")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", FIGURE_NAMES)
def test_figure_has_no_overlapping_or_clipped_text(name, width, builders) -> None:
    fig = builders[name][0](width)
    try:
        assert abs(fig.get_figwidth() - F.figure_width(width)) < 1e-6
        assert F.describe_overlaps(F.overlapping_texts(fig)) == []
        assert [t.get_text() for t in F.clipped_texts(fig)] == []
    finally:
        plt.close(fig)


@pytest.mark.parametrize("name", FIGURE_NAMES)
def test_figure_says_what_its_bars_are(name, builders) -> None:
    """Every figure with error bars names them (95% CI over seeds; IQR over repeats for speed)."""
    fig = builders[name][0]("column")
    try:
        fig.canvas.draw()
        text = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text)).replace("\n", " ")
    finally:
        plt.close(fig)
    if name == "accuracy_vs_macs" or name.startswith("verdict_"):
        assert "95% CI" in text
    assert fig.get_suptitle() or any(ax.get_title(loc="left") for ax in fig.get_axes()), "a title"


# --------------------------------------------------------------------------------------------- style


def _marker_colors(fig) -> set[str]:
    """Colours of the drawn markers (data points) of a figure."""
    fig.canvas.draw()
    return {
        to_hex(line.get_color())
        for ax in fig.get_axes()
        for line in ax.lines
        if line.get_marker() not in (None, "None", "none", "") and len(line.get_xydata())
    }


def test_family_colours_are_fixed_across_figures(builders, rows, results, report) -> None:
    families = {to_hex(s.color) for s in F.FAMILY_STYLES.values()}
    neutral = {to_hex(s["color"]) for s in F.NEUTRAL_STYLES}
    used = {}
    for name in FIGURE_NAMES:
        fig = builders[name][0]("column")
        used[name] = _marker_colors(fig)
        plt.close(fig)
        assert used[name] <= families | neutral, name
    three = {to_hex(F.family_style(f).color) for f in ("gated_cnn", "ssm", "attention")}
    assert len(three) == 3
    # the verdict figure of H1 draws gated CNN, SSM and attention models: exactly their three colours
    assert used["verdict_H1"] == three
    # a model is drawn in its family's colour everywhere: the throughput legend names each model
    fig = tables.throughput_vs_resolution_figure(results, "column")
    handles = {h.get_label(): h for h in fig.legends[0].legend_handles}
    plt.close(fig)
    for model in TINY:
        assert to_hex(handles[model].get_color()) == to_hex(F.family_style(model).color), model
    assert F.family_style("ssm_bidir_tiny") == F.family_style("ssm") == F.family_style("vim_small")
    assert F.family_style("mambaout_tiny") == F.family_style("gated_cnn")
    assert F.family_style("no_such_model").family == "unknown"


def test_families_differ_in_marker_and_line_style_too() -> None:
    """Grayscale and colour-blind readers: colour is never the only difference."""
    styles = [F.family_style(f) for f in ("gated_cnn", "ssm", "attention")]
    assert len({s.marker for s in styles}) == 3 and len({str(s.linestyle) for s in styles}) == 3
    causal, full = F.model_style("attn_causal_tiny"), F.model_style("attn_tiny")
    assert causal["markerfacecolor"] == "white" and full["markerfacecolor"] == full["color"]


def test_identical_r_curves_are_merged(results) -> None:
    models = sorted({r["model"] for r in results})
    curves = tables.r_curves(models)
    assert sum(len(c["models"]) for c in curves) == len(models)
    assert len(curves) < len(models)
    by_model = {m: i for i, c in enumerate(curves) for m in c["models"]}
    # the hierarchical bodies share width and stride at the reference stage: one curve
    assert by_model["gated_cnn_tiny"] == by_model["ssm_causal_tiny"] == by_model["attn_causal_tiny"]
    assert by_model["vit_tiny"] == by_model["vit_causal_tiny"] != by_model["gated_cnn_tiny"]
    fig = tables.r_vs_resolution_figure(models, "column")
    entries = [t.get_text() for t in fig.legends[0].get_texts()]
    plt.close(fig)
    assert len(entries) == len(curves) + 1 < len(models), "one entry per distinct curve, plus r = 1"
    merged = next(e for e in entries if "ssm_causal" in e)
    assert "gated_cnn" in merged and "models" in merged


# --------------------------------------------------------------------------------------------- the check


def test_overlapping_texts_detects_overlaps() -> None:
    with F.figure_style():
        fig, axes = F.new_figure("column")
        ax = axes[0][0]
        ax.text(0.5, 0.5, "first label", transform=ax.transAxes)
        ax.text(0.5, 0.5, "second label", transform=ax.transAxes)
        pairs = F.overlapping_texts(fig)
    assert F.describe_overlaps(pairs) == ["text 'first label' overlaps text 'second label'"]
    plt.close(fig)


def test_overlapping_texts_detects_a_legend_over_a_line() -> None:
    with F.figure_style():
        fig, axes = F.new_figure("column")
        ax = axes[0][0]
        ax.plot([0, 1], [1, 1], label="a line along the top")
        ax.plot([0, 1], [0, 0.5], label="a line below")
        ax.set_ylim(0, 1.05)
        ax.legend(loc="upper right")
        names = F.describe_overlaps(F.overlapping_texts(fig))
    assert names == ["Legend '' overlaps Line2D 'a line along the top'"]
    plt.close(fig)


def test_overlapping_texts_detects_crowded_tick_labels_and_clipping() -> None:
    with F.figure_style():
        fig, axes = F.new_figure("column")
        ax = axes[0][0]
        ax.set_xticks(range(30), [f"label {i}" for i in range(30)])
        outside = ax.text(1.3, 0.5, "far outside the canvas", transform=ax.transAxes)
        outside.set_in_layout(False)  # else constrained layout shrinks the axes to make room
        assert F.overlapping_texts(fig), "crowded tick labels overlap"
        assert [t.get_text() for t in F.clipped_texts(fig)] == ["far outside the canvas"]
    plt.close(fig)


def test_place_labels_never_piles_labels_up() -> None:
    with F.figure_style():
        fig, axes = F.new_figure("column")
        ax = axes[0][0]
        pts = [(1.0 + 0.01 * i, 1.0, f"model number {i}") for i in range(20)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o")
        ax.set_xlim(0, 2)
        ax.set_ylim(0, 2)
        placed = F.place_labels(ax, pts)
        assert 1 <= len(placed) < len(pts)
        assert F.overlapping_texts(fig) == []
    plt.close(fig)


def test_figure_width_helper() -> None:
    assert F.figure_width("column") == F.COLUMN_WIDTH == 3.3
    assert F.figure_width("full") == F.FULL_WIDTH and F.figure_width(5) == 5.0
    with pytest.raises(ValueError, match="width 'wide'"):
        F.figure_width("wide")
