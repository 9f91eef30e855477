"""``visbench tables``: Markdown, LaTeX (booktabs) and CSV tables, and plots, from result files.

Inputs: every ``result.json`` under the given run folders (validated by :mod:`visbench.results`) and
the published numbers in ``configs/reference/*.yaml`` (each row carries its source). Measured rows and
published rows sit side by side; the ``source`` column says which is which (``measured`` or
``published: <source>``), and published rows are listed after measured ones.

Tables written (each as ``.md``, ``.tex``, ``.csv``):

- ``classification``: model, mixer, order, body, dataset, input, params, MACs in PyTorch's convention,
  MACs in fvcore's (the convention of the published rows), throughput, top-1 (mean ± std over seeds, n),
  source;
- ``detection``: params, MACs, AP^b, AP^b50, AP^b75, AP^m, AP^m50, AP^m75;
- ``segmentation``: ADE20K semantic segmentation, params, MACs, mIoU single- / multi-scale
  (published rows only: visbench does not run segmentation);
- ``causal``: measured classification grouped by (family, body, dataset), causal vs non-causal orders;
- ``long_short``: the study's rows grouped by dataset / input, with tokens L, r = L / 6D and "long";
- ``bench``: MACs (both conventions), engine, throughput, train throughput, peak memory per model and
  input size, and the speed ratio to the partner of a paired run.

Plots (PNG and SVG): accuracy vs MACs, throughput vs resolution per family, r vs resolution with the
r = 1 line. ``summary.md`` gathers all Markdown tables. :func:`generate` is what ``visbench study`` calls.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visbench.resources import CONFIG_ROOT
from visbench.results import BBOX_METRICS, SEGM_METRICS, load_results

REFERENCE_DIR = CONFIG_ROOT / "reference"
MEASURED = "measured"
CAUSAL_ORDERS = ("causal",)
SEMSEG_METRICS = ("miou_ss", "miou_ms")  # semantic segmentation mIoU, single- / multi-scale (%)
_REF_REQUIRED = ("model", "task", "dataset")
_REF_NUMERIC = (
    "params_m",
    "macs_g",
    "top1",
    "top5",
    "img_per_s",
    *BBOX_METRICS,
    *SEGM_METRICS,
    *SEMSEG_METRICS,
)
_REF_KEYS = {
    *_REF_REQUIRED,
    *_REF_NUMERIC,
    "timm_name",
    "input_size",
    "family",
    "mixer",
    "order",
    "body",
    "throughput_device",
    "note",
}


# --------------------------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One line of a table: a group of measured runs (seeds averaged) or one published row."""

    model: str
    task: str
    dataset: str
    input_size: tuple[int, int] | None
    family: str = ""
    mixer: str = ""
    order: str = ""
    body: str = ""
    source: str = MEASURED
    params: float | None = None  # count
    macs: float | None = None  # count; measured: PyTorch's convention; published: as printed (fvcore's)
    macs_fvcore: float | None = None  # count in fvcore's convention (normalisation layers counted too)
    img_per_s: float | None = None
    metrics: dict[str, list[float]] = field(default_factory=dict)
    tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.source == MEASURED

    def metric(self, key: str) -> tuple[float | None, float | None, int]:
        """(mean, std or None, n) of a metric over the runs of this row."""
        values = self.metrics.get(key) or []
        if not values:
            return None, None, 0
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else None
        return mean, std, len(values)


def load_reference(reference_dir: Path = REFERENCE_DIR) -> list[Row]:
    """Published rows from ``reference_dir/*.yaml``; a malformed file is a ``ValueError`` naming it."""
    rows: list[Row] = []
    paths = sorted(reference_dir.glob("*.yaml")) if reference_dir.is_dir() else []
    if not paths:  # a table without its published rows would look complete: refuse
        raise FileNotFoundError(f"reference data: no *.yaml files in {reference_dir}")
    for path in paths:
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
            raise ValueError(f"{path}: expected a mapping with a 'rows' list")
        src = doc.get("source") or {}
        if not isinstance(src, dict) or not src.get("short") or not src.get("url"):
            raise ValueError(f"{path}: 'source' needs 'short' and 'url' (where the numbers come from)")
        defaults = doc.get("defaults") or {}
        for i, raw in enumerate(doc["rows"]):
            entry = {**defaults, **(raw or {})}
            unknown = set(entry) - _REF_KEYS
            if unknown:
                raise ValueError(
                    f"{path}: row {i}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_REF_KEYS)}"
                )
            for key in _REF_REQUIRED:
                if key not in entry:
                    raise ValueError(f"{path}: row {i}: missing {key!r}")
            for key in _REF_NUMERIC:
                if key in entry and not isinstance(entry[key], (int, float)):
                    raise ValueError(f"{path}: row {i} ({entry['model']}): {key!r} must be a number")
            size = entry.get("input_size")
            metrics = {
                k: [float(entry[k])]
                for k in ("top1", "top5", *BBOX_METRICS, *SEGM_METRICS, *SEMSEG_METRICS)
                if k in entry
            }
            rows.append(
                Row(
                    model=str(entry["model"]),
                    task=str(entry["task"]),
                    dataset=str(entry["dataset"]),
                    input_size=tuple(size) if size else None,
                    family=str(entry.get("family", "")),
                    mixer=str(entry.get("mixer", "")),
                    order=str(entry.get("order", "")),
                    body=str(entry.get("body", "")),
                    source=f"published: {src['short']}",
                    params=entry["params_m"] * 1e6 if "params_m" in entry else None,
                    macs=entry["macs_g"] * 1e9 if "macs_g" in entry else None,
                    # published tables (MambaOut, VMamba, timm, DeiT) count MACs with fvcore
                    macs_fvcore=entry["macs_g"] * 1e9 if "macs_g" in entry else None,
                    img_per_s=entry.get("img_per_s"),
                    metrics=metrics,
                    extra={
                        "url": src["url"],
                        "table": src.get("table", ""),
                        "device": entry.get("throughput_device"),
                    },
                )
            )
    return rows


def measured_rows(results: Iterable[dict[str, Any]]) -> list[Row]:
    """Group runs that differ only by seed into one row (metrics kept per seed)."""
    groups: dict[tuple[Any, ...], Row] = {}
    for r in results:
        key = (r["model"], r["task"], r["dataset"], tuple(r["input_size"]))
        row = groups.get(key)
        if row is None:
            tp = r.get("throughput") or {}
            row = groups[key] = Row(
                model=r["model"],
                task=r["task"],
                dataset=r["dataset"],
                input_size=tuple(r["input_size"]),
                family=r["family"],
                mixer=r["mixer"],
                order=r["order"],
                body=r["body"],
                params=r["params"],
                macs=r["macs"],
                macs_fvcore=(r.get("extra") or {}).get("macs_fvcore"),
                img_per_s=tp.get("img_per_s"),
                tokens=r.get("tokens"),
                extra={"throughput": tp, "device": r.get("device")},
            )
        for k, v in r["metrics"].items():
            if v is not None:
                row.metrics.setdefault(k, []).append(float(v))
    return list(groups.values())


# --------------------------------------------------------------------------------------------- tables


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def _num(v: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "" if v is None else f"{v / scale:.{digits}f}"


def _gmacs(macs: float | None) -> str:
    """MACs in G with about three significant figures (a tiny detector and COCO's 262G alike)."""
    if macs is None:
        return ""
    giga = macs / 1e9
    return f"{giga:.{2 if giga < 10 else 1 if giga < 100 else 0}f}"


def _metric(row: Row, key: str) -> str:
    mean, std, n = row.metric(key)
    if mean is None:
        return ""
    if std is not None:
        return f"{mean:.1f} ± {std:.1f} (n={n})"
    return f"{mean:.1f}" if not row.measured or n == 1 else f"{mean:.1f} (n={n})"


def _size(size: tuple[int, int] | None) -> str:
    return "" if not size else (f"{size[0]}²" if size[0] == size[1] else f"{size[0]}×{size[1]}")


def _sorted(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (not r.measured, r.dataset, r.source, r.family, r.model))


def classification_table(rows: list[Row]) -> Table:
    cols = [
        "model",
        "mixer",
        "order",
        "body",
        "dataset",
        "input",
        "params (M)",
        "MACs (G)",
        "MACs fvcore (G)",
        "img/s",
        "top-1 (%)",
        "source",
    ]
    body = [
        [
            r.model,
            r.mixer,
            r.order,
            r.body,
            r.dataset,
            _size(r.input_size),
            _num(r.params, 1e6),
            _num(r.macs, 1e9, 2) if r.measured else "",  # a published figure is fvcore's: next column
            _num(r.macs_fvcore, 1e9, 2),
            _num(r.img_per_s, 1, 0),
            _metric(r, "top1"),
            r.source,
        ]
        for r in _sorted([r for r in rows if r.task == "classification"])
    ]
    notes = [
        "measured: this suite's runs (mean ± std over seeds); published: numbers quoted from the named "
        "source (configs/reference/*.yaml gives the exact table and commit).",
        "Published throughput comes from other hardware (e.g. A100, batch 128): compare within a source.",
        "MACs (G): PyTorch's FlopCounterMode (matmuls and convolutions); MACs fvcore (G): fvcore's "
        "convention (normalisation layers counted too), the one published tables use: compare published "
        "rows with that column.",
    ]
    return Table("classification", "Image classification", cols, body, notes)


def _dense_task_table(
    rows: list[Row], tasks: tuple[str, ...], metrics: dict[str, str], name: str, title: str, notes: list[str]
) -> Table:
    """Detection-style table: one row per model with params, MACs, then ``metrics`` (key -> column)."""
    cols = ["model", "mixer", "order", "dataset", "input", "params (M)", "MACs (G)"]
    cols += [*metrics.values(), "source"]
    body = [
        [r.model, r.mixer, r.order, r.dataset, _size(r.input_size), _num(r.params, 1e6), _gmacs(r.macs)]
        + [_metric(r, k) for k in metrics]
        + [r.source]
        for r in _sorted([r for r in rows if r.task in tasks])
    ]
    return Table(name, title, cols, body, notes)


def detection_table(rows: list[Row]) -> Table:
    metrics = {
        "bbox_mAP": "AP^b",
        "bbox_mAP_50": "AP^b_50",
        "bbox_mAP_75": "AP^b_75",
        "segm_mAP": "AP^m",
        "segm_mAP_50": "AP^m_50",
        "segm_mAP_75": "AP^m_75",
    }
    notes = [
        "Published rows: Mask R-CNN 1x on COCO; params and MACs count the whole detector (MACs at 800×1280).",
        "Measured rows: MACs of the whole detector on the first test image after padding (its size is "
        "extra.macs_input_shape in result.json); the RoI heads' share depends on how many proposals "
        "survive the RPN.",
    ]
    tasks = ("detection", "instance_segmentation")
    title = "Object detection and instance segmentation"
    return _dense_task_table(rows, tasks, metrics, "detection", title, notes)


def segmentation_table(rows: list[Row]) -> Table:
    """Semantic segmentation rows: params, MACs, single- and multi-scale mIoU."""
    notes = [
        "Published rows: UperNet, 160k iterations, on ADE20K; params and MACs count the whole "
        "segmentor (MACs at 512×2048). SS / MS: single- / multi-scale evaluation.",
        "visbench does not run segmentation itself, so only published rows appear here.",
    ]
    metrics = dict(zip(SEMSEG_METRICS, ("mIoU SS (%)", "mIoU MS (%)"), strict=True))
    return _dense_task_table(
        rows, ("semantic_segmentation",), metrics, "segmentation", "Semantic segmentation", notes
    )


def causal_table(rows: list[Row]) -> Table:
    """Measured classification, per (family, body, dataset, input): each order's top-1, causal marked."""
    cols = ["family", "body", "dataset", "input", "model", "order", "causal", "top-1 (%)"]
    body: list[list[str]] = []
    groups: dict[tuple[Any, ...], list[Row]] = defaultdict(list)
    for r in rows:
        if r.measured and r.task == "classification":
            groups[(r.family, r.body, r.dataset, r.input_size)].append(r)
    for (family, b, dataset, size), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        for r in sorted(members, key=lambda r: (r.order in CAUSAL_ORDERS, r.order, r.model)):
            causal = "yes" if r.order in CAUSAL_ORDERS else "no"
            body.append([family, b, dataset, _size(size), r.model, r.order, causal, _metric(r, "top1")])
    notes = [
        "Rows of one group share family, body, data and input size; only the scan / attention order differs."
    ]
    return Table("causal", "Causal vs non-causal token mixing (measured)", cols, body, notes)


def _r_of(row: Row) -> tuple[int | None, float | None]:
    """(tokens, r) of a measured row: from its result's tokens, else from the model's reference stage."""
    try:
        from visbench.analyze import analyze_model, build_meta_model

        model = build_meta_model(row.model)
        h, w = row.input_size or (0, 0)
        a = analyze_model(row.model, h, w, measure=False, model=model)
    except (ValueError, RuntimeError, AssertionError, ImportError):
        return row.tokens, None
    tokens = row.tokens if row.tokens is not None else a.tokens
    dim = a.stages[a.reference_stage].dim
    return tokens, tokens / (6 * dim)


def long_short_table(rows: list[Row]) -> Table:
    cols = [
        "dataset",
        "input",
        "tokens L",
        "r = L/6D",
        "long",
        "model",
        "mixer",
        "order",
        "body",
        "top-1 (%)",
    ]
    body: list[list[str]] = []
    measured = [r for r in rows if r.measured and r.task == "classification"]
    cache: dict[str, Any] = {}
    for r in sorted(measured, key=lambda r: (r.dataset, r.input_size or (0, 0), r.mixer, r.order, r.model)):
        key = f"{r.model}@{r.input_size}"
        if key not in cache:
            cache[key] = _r_of(r)
        tokens, ratio = cache[key]
        long = "" if ratio is None else ("yes" if ratio > 1 else "no")
        body.append(
            [
                r.dataset,
                _size(r.input_size),
                "" if tokens is None else str(tokens),
                "" if ratio is None else f"{ratio:.3f}",
                long,
                r.model,
                r.mixer,
                r.order,
                r.body,
                _metric(r, "top1"),
            ]
        )
    notes = [
        "tokens L: from the run's result (sequence models) or the model's reference stage at its input "
        "size; r = L / 6D (MambaOut Eq. 6); long when r > 1.",
    ]
    return Table("long_short", "Long vs short sequences (study)", cols, body, notes)


def _paired_text(extra: dict[str, Any]) -> str:
    """``0.98x vs mambaout_tiny [0.95-1.01]``: speed ratio to the partner of a paired run (> 1: faster)."""
    return "; ".join(
        f"{p['speed_ratio']:.2f}x vs {p['model']}"
        + (f" ({p['engine']})" if p["engine"] != extra.get("engine") else "")
        + f" [{p['speed_ratio_q1']:.2f}-{p['speed_ratio_q3']:.2f}]"
        for p in extra.get("paired", [])
    )


def bench_table(results: list[dict[str, Any]]) -> Table:
    cols = [
        "model",
        "input",
        "tokens",
        "params (M)",
        "MACs (G)",
        "MACs fvcore (G)",
        "engine",
        "img/s (IQR)",
        "paired speed ratio [IQR]",
        "train img/s (IQR)",
        "peak mem (MiB)",
        "device",
    ]
    body = []
    for r in sorted(
        (r for r in results if r["task"] == "bench"),
        key=lambda r: (r["model"], r["input_size"][0] * r["input_size"][1]),
    ):
        tp = r["throughput"] or {}
        extra = r.get("extra") or {}

        def pair(a: str, b: str, tp: dict[str, Any] = tp) -> str:
            if tp.get(a) is None:
                return ""
            return f"{tp[a]:.1f} ({tp[b]:.1f})" if tp.get(b) is not None else f"{tp[a]:.1f}"

        mem = tp.get("peak_memory_bytes")
        body.append(
            [
                r["model"],
                _size(tuple(r["input_size"])),
                str(r.get("tokens") or ""),
                _num(r["params"], 1e6),
                _num(r["macs"], 1e9, 2),
                _num(extra.get("macs_fvcore"), 1e9, 2),
                extra.get("engine", "eager"),
                pair("img_per_s", "img_per_s_iqr"),
                _paired_text(extra),
                pair("train_img_per_s", "train_img_per_s_iqr"),
                "" if mem is None else f"{mem / 2**20:.0f}",
                r["device"],
            ]
        )
    notes = [
        "Median over repeats after warm-up, device synchronised; IQR in brackets (see each result.json).",
        "engine: how every model of the run was executed (visbench bench --compile), the same for all.",
        "Paired runs: windows interleaved ABBA; ratio = partner's time / this model's, median over repeats "
        "with quartiles; > 1: this model is faster.",
        "MACs (G): PyTorch's FlopCounterMode; MACs fvcore (G): fvcore's convention (normalisation counted).",
    ]
    return Table("bench", "Speed and memory (measured)", cols, body, notes)


# --------------------------------------------------------------------------------------------- writers


def to_markdown(t: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [f"### {t.title}", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in t.rows]
    if not t.rows:
        lines.append("| " + " | ".join(["(no rows)"] + [""] * (len(t.columns) - 1)) + " |")
    lines += [""] + [f"_{n}_" for n in t.notes]
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_"}
_TEX_ESCAPES.update({"{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"})


_AP = re.compile(r"AP\^([bm])(?:_(\d+))?")


def _tex(s: str) -> str:
    parts = _AP.split(s)  # "AP^b_50" -> AP$^{b}_{50}$
    if len(parts) > 1:
        out = _tex(parts[0])
        for i in range(1, len(parts), 3):
            sub = f"_{{{parts[i + 1]}}}" if parts[i + 1] else ""
            out += f"AP$^{{{parts[i]}}}{sub}$" + _tex(parts[i + 2])
        return out
    out = "".join(_TEX_ESCAPES.get(ch, ch) for ch in s)
    return out.replace("±", r"$\pm$").replace("²", r"$^2$").replace("×", r"$\times$")


def to_latex(t: Table) -> str:
    lines = [
        r"% requires \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex(t.title)}}}",
        rf"\label{{tab:{t.name}}}",
        r"\begin{tabular}{" + "l" * len(t.columns) + "}",
        r"\toprule",
        " & ".join(_tex(c) for c in t.columns) + r" \\",
        r"\midrule",
    ]
    prev_measured: bool | None = None
    for row in t.rows:
        is_measured = row[-1] == MEASURED if t.columns[-1] == "source" else None
        if prev_measured is True and is_measured is False:
            lines.append(r"\midrule")
        prev_measured = is_measured
        lines.append(" & ".join(_tex(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(t.columns)
    writer.writerows(t.rows)
    return buf.getvalue()


def write_table(t: Table, out_dir: Path) -> list[Path]:
    paths = []
    for suffix, render in ((".md", to_markdown), (".tex", to_latex), (".csv", to_csv)):
        path = out_dir / f"{t.name}{suffix}"
        path.write_text(render(t), encoding="utf-8")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------- plots


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    fig.tight_layout()
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def plot_accuracy_vs_macs(rows: list[Row], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    by_dataset: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.task == "classification" and r.macs and r.metric("top1")[0] is not None:
            by_dataset[f"{r.dataset} ({'measured' if r.measured else 'published'})"].append(r)
    for label, members in sorted(by_dataset.items()):
        # fvcore's count where there is one: the published rows' convention, so like is plotted with like
        xs = [(r.macs_fvcore or r.macs) / 1e9 for r in members]
        ys = [r.metric("top1")[0] for r in members]
        errs = [r.metric("top1")[1] or 0.0 for r in members]
        marker = "o" if "measured" in label else "s"
        ax.errorbar(xs, ys, yerr=errs, fmt=marker, capsize=2, label=label)
        for r, x, y in zip(members, xs, ys):
            ax.annotate(r.model, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    if not by_dataset:
        ax.text(0.5, 0.5, "no classification rows with MACs", ha="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_xlabel("MACs (G, one image; fvcore's convention where counted)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy vs MACs")
    if by_dataset:
        ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    return _save(fig, out_dir, "accuracy_vs_macs")


def plot_throughput_vs_resolution(results: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    series: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for r in results:
        tp = r.get("throughput") or {}
        if tp.get("img_per_s"):
            side = math.sqrt(r["input_size"][0] * r["input_size"][1])
            series[f"{r['model']} ({r['family']})"].append(
                (side, tp["img_per_s"], tp.get("img_per_s_iqr") or 0.0)
            )
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            yerr=[p[2] / 2 for p in pts],
            marker="o",
            ms=3,
            label=label,
        )
    if not series:
        ax.text(0.5, 0.5, "no throughput measurements", ha="center", transform=ax.transAxes)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("input side (sqrt(H·W))")
    ax.set_ylabel("inference img/s (median)")
    ax.set_title("Throughput vs resolution")
    if series:
        ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, out_dir, "throughput_vs_resolution")


def plot_r_vs_resolution(models: Sequence[str], out_dir: Path) -> list[Path]:
    from visbench.analyze import build_meta_model
    from visbench.analyze import plot_r_vs_resolution as analyze_plot

    usable = []
    for name in models:
        try:
            build_meta_model(name)
            usable.append(name)
        except (ValueError, RuntimeError):
            continue
    return analyze_plot(
        usable or ["vit_small_patch16_224", "vit_base_patch16_224"], out_dir / "r_vs_resolution.png"
    )


# --------------------------------------------------------------------------------------------- entry points


def generate(
    run_dirs: Sequence[Path | str],
    out_dir: Path | str,
    skip_invalid: bool = False,
    reference_dir: Path | None = REFERENCE_DIR,
) -> list[Path]:
    """Read results under ``run_dirs`` (+ published rows) and write all tables and plots to ``out_dir``.

    Returns the files written. A malformed result raises ``ResultError`` naming it, unless
    ``skip_invalid`` (then it is listed on stderr and in ``skipped.txt``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded, skipped = load_results(run_dirs, skip_invalid=skip_invalid)
    results = [r for _, r in loaded]
    rows = measured_rows(r for r in results if r["task"] != "bench")
    rows += load_reference(reference_dir) if reference_dir is not None else []
    tables = [classification_table(rows), detection_table(rows), segmentation_table(rows)]
    tables += [causal_table(rows), long_short_table(rows), bench_table(results)]
    written: list[Path] = []
    for t in tables:
        written += write_table(t, out)
    summary = out / "summary.md"
    header = [f"# visbench results ({len(results)} result files)", ""]
    if skipped:
        header += ["Skipped (invalid) result files:", ""] + [f"- `{p}`: {why}" for p, why in skipped] + [""]
        (out / "skipped.txt").write_text("".join(f"{p}\t{why}\n" for p, why in skipped))
        written.append(out / "skipped.txt")
    summary.write_text("\n".join(header) + "\n".join(to_markdown(t) for t in tables), encoding="utf-8")
    written.append(summary)
    written += plot_accuracy_vs_macs(rows, out)
    written += plot_throughput_vs_resolution(results, out)
    models = sorted({r["model"] for r in results})
    written += plot_r_vs_resolution(models, out)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, help="run folders (searched for result.json) or files"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/tables"), help="output folder (default: %(default)s)"
    )
    parser.add_argument("--skip-invalid", action="store_true", help="list and skip malformed result files")
    parser.add_argument(
        "--reference", type=Path, default=REFERENCE_DIR, help="published numbers (YAML folder)"
    )
    parser.add_argument("--no-reference", action="store_true", help="measured rows only")


def run(args: argparse.Namespace) -> int:
    # A missing folder or malformed file raises; `visbench` (cli.main) turns it into one line and exit 2.
    written = generate(
        args.run_dirs,
        args.out,
        skip_invalid=args.skip_invalid,
        reference_dir=None if args.no_reference else args.reference,
    )
    skipped = args.out / "skipped.txt"
    if skipped.exists() and skipped in written:
        for line in skipped.read_text().splitlines():
            print(f"skipped invalid result: {line}", file=sys.stderr)
    for path in written:
        print(path)
    return 0
