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

Figures (PNG at 300 dpi and vector PDF, in :mod:`visbench.figures`' style): accuracy vs MACs (one panel
per dataset and source), throughput vs resolution, r vs resolution with the r = 1 line (identical curves
merged). ``summary.md`` gathers all Markdown tables and shows the figures; each table's ``.md`` shows the
figure that draws it. :func:`generate` is what ``visbench study`` calls.
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


def next_pixel_table(rows: list[Row]) -> Table:
    """Measured next-pixel modelling (``visbench.next_pixel``): held-out bits per pixel, lower is better."""
    cols = ["model", "mixer", "order", "body", "tokens", "params (M)", "MACs (G)", "bits / pixel"]
    body = []
    for r in _sorted([r for r in rows if r.task == "next_pixel"]):
        mean, std, n = r.metric("bits_per_pixel")
        value = "" if mean is None else f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
        body.append(
            [
                r.model,
                r.mixer,
                r.order,
                r.body,
                str(r.tokens or ""),
                _num(r.params, 1e6, 3),
                _num(r.macs, 1e9, 3),
                f"{value} (n={n})" if mean is not None else "",
            ]
        )
    notes = [
        "Negative log-likelihood of held-out test images in bits per pixel (mean ± std over seeds); each "
        "image is a causal sequence of its quantised pixels (visbench.next_pixel documents the levels)."
    ]
    return Table("next_pixel", "Next-pixel modelling (long, causal)", cols, body, notes)


def hypotheses_tables(run_dirs: Iterable[Path | str]) -> list[tuple[Path, Table]]:
    """The verdict table of every ``hypotheses.json`` under ``run_dirs`` (validated), with its path."""
    from visbench.hypotheses import table_rows
    from visbench.verdicts import HYPOTHESES_JSON, load_hypotheses

    found: list[tuple[Path, Table]] = []
    for entry in run_dirs:
        root = Path(entry)
        paths = [root] if root.is_file() else sorted(root.rglob(HYPOTHESES_JSON)) if root.is_dir() else []
        for path in paths:
            if path.name != HYPOTHESES_JSON:
                continue
            report = load_hypotheses(path)
            header, body = table_rows(report)
            notes = [
                f"From {path} (claims {report['claims_source']}); verdicts by the rule declared there, "
                "95% t-intervals over paired seeds."
            ]
            if report["smoke"]:
                notes.insert(0, "smoke run, not evidence")
            found.append((path, Table("hypotheses", "Verdicts on MambaOut's claims", header, body, notes)))
    return found


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
#
# One figure per question, in the style of visbench.figures (a family's colour and marker are the same
# in every figure): each ``*_figure`` function builds the figure at a width ("column" or "full") and
# returns it, so the tests can check it for overlapping text; each ``plot_*`` function saves it as PNG +
# PDF at the width it is meant to be printed at.

DATASET_NAMES = {
    "fashion_mnist": "Fashion-MNIST",
    "imagenet": "ImageNet-1k",
    "coco": "COCO",
    "ade20k": "ADE20K",
}
FIGURES = {  # stem -> (caption, the table it illustrates)
    "accuracy_vs_macs": (
        "Top-1 accuracy vs MACs per image, one panel per dataset and source",
        "classification",
    ),
    "throughput_vs_resolution": ("Inference throughput vs input resolution", "bench"),
    "r_vs_resolution": (
        "r = L / 6D vs input resolution: when a task becomes long (MambaOut Eq. 6)",
        "long_short",
    ),
}


def _dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    """PNG (300 dpi) + PDF (vector); SVG is no longer written: the PDF is the vector copy."""
    from visbench.figures import save_figure

    return save_figure(fig, out_dir, stem)


def _ci95(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(low, high) of the 95% t-interval over seeds (the verdicts' interval); None below two seeds."""
    from visbench.verdicts import t_interval

    iv = t_interval(values, 0.95)
    return iv.ci_low, iv.ci_high


def _strip_common_size(names: Sequence[str]) -> tuple[list[str], str]:
    """Drop a ``_<size>`` suffix that all names share: (short names, the size or "")."""
    from visbench.backbones.naming import SIZES

    sizes = {n.rpartition("_")[2] for n in names}
    if len(sizes) == 1 and (size := next(iter(sizes))) in SIZES and all("_" in n for n in names):
        return [n.rpartition("_")[0] for n in names], size
    return list(names), ""


def _pareto_first(points: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Points ``(cost, accuracy, ...)`` on the front first (by cost), then the rest by accuracy."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    rest = sorted((p for p in points if p not in front), key=lambda p: -p[1])
    return front + rest


def _family_legend(fig: Any, families: Iterable[str], orders: Iterable[str], max_cols: int = 7) -> Any:
    """A figure legend below the axes: one entry per family (fixed style, fixed order), then the key of
    the marker fills for the scan / attention orders present."""
    from matplotlib.lines import Line2D

    from visbench.figures import FAMILY_STYLES, ORDER_FILLS, family_of

    present = {family_of(f or "unknown") for f in families}
    handles = []
    for fam, st in FAMILY_STYLES.items():
        if fam in present:
            handles.append(Line2D([], [], color=st.color, marker=st.marker, linestyle="none", label=st.label))
    for order, fill in ORDER_FILLS.items():
        if order in set(orders) and len(set(orders) & set(ORDER_FILLS)) > 1:
            handles.append(
                Line2D(
                    [],
                    [],
                    color="black",
                    marker="o",
                    linestyle="none",
                    label=order,
                    fillstyle="full" if fill == "none" else fill,
                    markerfacecolor="white" if fill == "none" else "black",
                    markerfacecoloralt="white",
                )
            )
    return fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), max_cols))


def accuracy_vs_macs_figure(rows: list[Row], width: str | float = "full") -> Any:
    """Top-1 vs MACs, one panel per (dataset, measured / published): never two such sets on one axis.

    Measured points carry 95% CIs over seeds; a few points are labelled (the accuracy / MACs front
    first) where a label fits; colours and markers are the families'.
    """
    from visbench.figures import (
        figure_style,
        figure_width,
        fit_titles,
        model_style,
        new_figure,
        place_labels,
        set_title,
    )

    panels: dict[tuple[bool, str], list[Row]] = defaultdict(list)
    seen: set[tuple[Any, ...]] = set()
    for r in rows:
        if r.task != "classification" or not r.macs or r.metric("top1")[0] is None:
            continue
        key = (r.model, r.dataset, r.measured, r.macs_fvcore or r.macs, r.metric("top1")[0])
        if key not in seen:  # the same published row quoted by two sources is one point
            seen.add(key)
            panels[(not r.measured, r.dataset)].append(r)
    order = sorted(panels)
    n = max(1, len(order))
    w = figure_width(width)
    full = w >= 5.0
    nrows, ncols = (1, n) if full else (n, 1)
    height = (2.7 if full else 2.2 * n) + (0.45 if full else 0.6)
    with figure_style():
        fig, axes = new_figure(w, height, nrows, ncols)
        axes = list(axes.flat)
        families: list[str] = []
        orders: list[str] = []
        labelled: dict[int, list[tuple[float, float, str, tuple[float, float]]]] = {}
        for ax, (published, dataset) in zip(axes, order):
            members = sorted(panels[(published, dataset)], key=lambda r: r.model)
            giga = max((r.macs_fvcore or r.macs) for r in members) >= 1e9
            scale, unit = (1e9, "G") if giga else (1e6, "M")
            short, size = (
                _strip_common_size([r.model for r in members])
                if not published
                else (
                    [r.model for r in members],
                    "",
                )
            )
            points, extents = [], []
            for r, label in zip(members, short):
                x = (r.macs_fvcore or r.macs) / scale
                mean, _, nseeds = r.metric("top1")
                lo, hi = _ci95(r.metrics.get("top1", [])) if r.measured else (None, None)
                st = model_style(r.model, family=r.family or None, order=r.order or None)
                orders.append(r.order)
                families.append(r.family or "unknown")
                yerr = None if lo is None else [[mean - lo], [hi - mean]]
                ax.errorbar([x], [mean], yerr=yerr, elinewidth=0.8, zorder=3, **{**st, "linestyle": "none"})
                points.append((x, mean, label))
                extents.append((mean, mean) if lo is None else (lo, hi))
            ax.set_xscale("log")
            _log_axis_ticks(ax.xaxis)
            ys = [e for pair in extents for e in pair]
            pad = 0.08 * ((max(ys) - min(ys)) or 10.0)
            ax.set_ylim(max(0.0, min(ys) - pad), min(100.0, max(ys) + pad))
            xs = [p[0] for p in points]
            ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
            ax.set_xlabel(f"MACs per image ({unit}, log scale)")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.grid(True, which="major")
            if published:
                nsrc = len({r.source for r in members})
                title = (
                    f"{_dataset_name(dataset)}, published ({nsrc} source{'s' * (nsrc > 1)}, "
                    "see classification.md): no CIs"
                )
            else:
                nseeds = sorted({r.metric("top1")[2] for r in members})
                seeds = f"{nseeds[0]}" if len(nseeds) == 1 else f"{nseeds[0]}-{nseeds[-1]}"
                title = (
                    f"{_dataset_name(dataset)}, measured{f' ({size} models)' if size else ''}: "
                    f"mean and 95% CI over {seeds} seeds"
                )
            set_title(ax, title)
            labelled[id(ax)] = _pareto_first([(*p, e) for p, e in zip(points, extents)])
        if not order:
            axes[0].text(
                0.5, 0.5, "no classification rows with MACs", ha="center", transform=axes[0].transAxes
            )
            axes[0].set_axis_off()
        else:
            _family_legend(fig, families, orders, 7 if full else 4)
        fit_titles(fig)  # the layout is final: labels go where they fit
        for ax in axes:
            if id(ax) in labelled:
                pts = labelled[id(ax)]
                place_labels(ax, [p[:3] for p in pts], [p[3] for p in pts])
    return fig


def _log_axis_ticks(axis: Any, values: Sequence[float] | None = None) -> None:
    """Plain-number ticks on a log axis: the given values (near ones merged), else 1-2-5 per decade."""
    import matplotlib.ticker as mt

    if values:
        kept: list[float] = []
        for v in sorted(set(values)):
            if not kept or v / kept[-1] > 1.25:  # ticks closer than that would print on top of each other
                kept.append(v)
        axis.set_major_locator(mt.FixedLocator(kept))
    else:
        axis.set_major_locator(mt.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(mt.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(mt.NullFormatter())


def throughput_vs_resolution_figure(results: list[dict[str, Any]], width: str | float = "column") -> Any:
    """Inference img/s vs input side, one line per model (seeds merged: median), one panel per device.

    Bars: the interquartile range over timed repeats where a single bench run gives one; colour and
    marker are the model's family, the marker's fill its order, the line style its body.
    """
    from matplotlib.lines import Line2D

    from visbench.figures import (
        FAMILY_STYLES,
        family_of,
        figure_style,
        figure_width,
        fit_titles,
        model_style,
        new_figure,
        set_title,
    )

    # device -> model -> side -> [(img/s, iqr or None)]
    data: dict[str, dict[str, dict[float, list[tuple[float, float | None]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in results:
        tp = r.get("throughput") or {}
        if tp.get("img_per_s"):
            side = math.sqrt(r["input_size"][0] * r["input_size"][1])
            data[str(r.get("device") or "unknown device")][r["model"]][side].append(
                (float(tp["img_per_s"]), tp.get("img_per_s_iqr"))
            )
    devices = sorted(data)
    w = figure_width(width)
    n = max(1, len(devices))
    models = sorted({m for d in data.values() for m in d})
    ncol = 2 if w < 5.0 else 4
    legend_rows = math.ceil(len(models) / ncol)
    height = 2.1 * n + 0.45 + 0.13 * legend_rows
    with figure_style():
        fig, axes = new_figure(w, height, n, 1, sharex=True)
        axes = list(axes.flat)
        handles: dict[str, Any] = {}
        sides: list[float] = []
        bars = False
        for ax, device in zip(axes, devices):
            for model in sorted(data[device]):
                pts = sorted(data[device][model].items())
                xs = [side for side, _ in pts]
                ys = [statistics.median(v for v, _ in runs) for _, runs in pts]
                iqr = [runs[0][1] if len(runs) == 1 and runs[0][1] else 0.0 for _, runs in pts]
                st = model_style(model)
                bars |= any(iqr)
                ax.errorbar(xs, ys, yerr=[q / 2 for q in iqr] if any(iqr) else None, elinewidth=0.7, **st)
                handles.setdefault(model, Line2D([], [], label=model, **st))
                sides += xs
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            _log_axis_ticks(ax.yaxis)
            ax.set_ylabel("images / s (median)")
            ax.grid(True, which="major")
            set_title(ax, f"Inference throughput on {device}")
        if not devices:
            axes[0].text(0.5, 0.5, "no throughput measurements", ha="center", transform=axes[0].transAxes)
            axes[0].set_axis_off()
        else:
            xs = sorted(set(sides))
            _log_axis_ticks(axes[-1].xaxis, xs)
            axes[-1].set_xlim(min(xs) / 1.3, max(xs) * 1.3)
            axes[-1].set_xlabel("input side \u221a(H\u00b7W) (px, log scale)")
            ranked = sorted(handles, key=lambda m: (list(FAMILY_STYLES).index(family_of(m)), m))
            legend = [handles[m] for m in ranked]
            if bars:
                legend.append(Line2D([], [], linestyle="none", label="bars: IQR over timed repeats"))
            fig.legend(handles=legend, loc="outside lower center", ncol=ncol, handlelength=2.6)
        fit_titles(fig)
    return fig


def _merged_names(names: Sequence[str]) -> str:
    """``{attn, attn_causal, gated_cnn}_tiny`` for names sharing a size; else the names, comma-joined."""
    short, size = _strip_common_size(names)
    if size and len(short) > 1:
        return "{" + ", ".join(sorted(short)) + "}_" + size
    return ", ".join(sorted(names))


R_SIDES = [2**k for k in range(5, 13)]


def r_curves(models: Sequence[str], sides: Sequence[int] = R_SIDES) -> list[dict[str, Any]]:
    """The distinct r = L / 6D curves of ``models`` (reference stage, square inputs): models whose curves
    are identical (same width and stride at the reference stage) are merged into one entry."""
    from visbench.analyze import SETTINGS, build_meta_model, model_stages, ratio, reference_stage, stage_grids

    sides = sorted(set(sides) | {round(math.sqrt(h * w)) for h, w in SETTINGS.values()})
    curves: dict[tuple[float, ...], dict[str, Any]] = {}
    for name in models:
        try:
            stages = model_stages(build_meta_model(name))
        except (ValueError, RuntimeError):
            continue
        stage = reference_stage(stages)
        grids = [stage_grids(name, stages, s, s)[stage.index] for s in sides]
        rs = tuple(ratio(h * w, stage.dim) for h, w in grids)
        entry = curves.setdefault(
            tuple(round(r, 12) for r in rs),
            {"sides": sides, "r": list(rs), "dim": stage.dim, "stride": stage.reduction, "models": []},
        )
        entry["models"].append(name)
    return sorted(curves.values(), key=lambda c: (c["stride"], c["dim"]))


def r_vs_resolution_figure(models: Sequence[str], width: str | float = "column") -> Any:
    """r = L / 6D of each distinct curve vs square input side, log-log, with the r = 1 line.

    Models with the same width and stride at the reference stage draw the same curve: one line, its
    legend entry naming them all. The study's settings (ImageNet, COCO, ADE20K) are ticks on the top axis.
    """
    import matplotlib.ticker as mt

    from visbench.analyze import SETTINGS
    from visbench.figures import (
        NEUTRAL_STYLES,
        family_of,
        family_style,
        figure_style,
        figure_width,
        new_figure,
        wrap,
    )

    curves = r_curves(models) or r_curves(["vit_small_patch16_224", "vit_base_patch16_224"])
    w = figure_width(width)
    ncol = 1 if w < 5.0 else 2
    labels = []
    for c in curves:
        n = len(c["models"])
        head = f"stride {c['stride']}, D = {c['dim']}" + (f" ({n} models)" if n > 1 else "")
        labels.append(wrap(f"{head}: {_merged_names(c['models'])}", (w - 0.6) / ncol - 0.45, 6.5))
    legend_lines = sum(lb.count("\n") + 1 for lb in labels) / ncol + 1.5
    height = 2.3 + 0.45 + 0.115 * legend_lines
    with figure_style():
        fig, axes = new_figure(w, height)
        ax = axes[0][0]
        neutral = iter(NEUTRAL_STYLES)
        for c, label in zip(curves, labels):
            fams = {family_of(m) for m in c["models"]}
            if len(fams) == 1:  # one family: its colours; a curve of several families: neutral greys
                st = family_style(next(iter(fams))).kwargs()
            else:
                st = next(neutral, NEUTRAL_STYLES[-1])
            ax.plot(c["sides"], c["r"], ms=3, label=label, **st)
        ax.axhline(1.0, color="black", lw=0.8, ls=(0, (6, 3)), label="r = 1 (L = 6D): long above")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        sides = curves[0]["sides"]
        ax.xaxis.set_major_locator(mt.FixedLocator(R_SIDES))
        ax.xaxis.set_major_formatter(mt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(mt.NullLocator())
        ax.yaxis.set_major_locator(mt.LogLocator(base=10, numticks=12))
        ax.yaxis.set_minor_formatter(mt.NullFormatter())
        ax.set_xlim(min(sides) / 1.15, max(sides) * 1.15)
        ax.set_xlabel("input side (px, square input, log scale)")
        ax.set_ylabel("r = L / 6D at the reference stage")
        ax.grid(True, which="major")
        # the study's settings on the top axis; settings closer than 10% share one tick
        ticks: list[tuple[float, list[str]]] = []
        for name, (h, wd) in sorted(SETTINGS.items(), key=lambda kv: kv[1][0] * kv[1][1]):
            side = math.sqrt(h * wd)
            short = {"imagenet": "ImageNet"}.get(name, _dataset_name(name))
            label = f"{short} {h}\u00d7{wd}" if h != wd else f"{short} {h}\u00b2"
            if ticks and side / ticks[-1][0] < 1.1:
                ticks[-1][1].append(label)
            else:
                ticks.append((side, [label]))
        for side, _ in ticks:
            ax.axvline(side, color="0.45", lw=0.6, ls=":")
        top = ax.secondary_xaxis("top")
        top.set_xticks([t[0] for t in ticks], ["\n".join(t[1]) for t in ticks])
        top.xaxis.set_minor_locator(mt.NullLocator())
        top.tick_params(labelsize=6)
        fig.suptitle(wrap("When is a task long? r = L / 6D against input side (long: r > 1)", w - 0.3, 8.0))
        fig.legend(loc="outside lower center", ncol=ncol, handlelength=2.6)
    return fig


def plot_accuracy_vs_macs(rows: list[Row], out_dir: Path, width: str | float = "full") -> list[Path]:
    """``accuracy_vs_macs.png`` / ``.pdf`` (full width: two panels side by side)."""
    return _save(accuracy_vs_macs_figure(rows, width), out_dir, "accuracy_vs_macs")


def plot_throughput_vs_resolution(
    results: list[dict[str, Any]], out_dir: Path, width: str | float = "column"
) -> list[Path]:
    """``throughput_vs_resolution.png`` / ``.pdf`` (column width)."""
    return _save(throughput_vs_resolution_figure(results, width), out_dir, "throughput_vs_resolution")


def plot_r_vs_resolution(models: Sequence[str], out_dir: Path, width: str | float = "column") -> list[Path]:
    """``r_vs_resolution.png`` / ``.pdf`` (column width); falls back to two ViTs when no model builds."""
    return _save(r_vs_resolution_figure(models, width), out_dir, "r_vs_resolution")


def figures_markdown(paths: Sequence[Path], table: str | None = None) -> str:
    """Markdown that shows the written figures (PNG inline, PDF linked); only those of ``table`` if given."""
    names = {p.name for p in paths}
    lines = []
    for stem, (caption, of_table) in FIGURES.items():
        if f"{stem}.png" in names and (table is None or of_table == table):
            pdf = f" ([PDF]({stem}.pdf))" if f"{stem}.pdf" in names else ""
            lines += [f"![{caption}]({stem}.png)", "", f"_Figure: {caption}_{pdf}", ""]
    return "\n".join(lines)


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
    tables += [next_pixel_table(rows), causal_table(rows), long_short_table(rows), bench_table(results)]
    verdicts = hypotheses_tables(run_dirs)
    if verdicts:  # the newest report found leads the summary; hypotheses.md beside it has the figures
        tables.insert(0, verdicts[-1][1])
    figures = plot_accuracy_vs_macs(rows, out)
    figures += plot_throughput_vs_resolution(results, out)
    figures += plot_r_vs_resolution(sorted({r["model"] for r in results}), out)
    written: list[Path] = []
    for t in tables:
        written += write_table(t, out)
        shown = figures_markdown(figures, t.name)
        if shown:  # the Markdown table shows (and links) the figure that draws it
            md = out / f"{t.name}.md"
            md.write_text(md.read_text(encoding="utf-8") + "\n" + shown, encoding="utf-8")
    summary = out / "summary.md"
    header = [f"# visbench results ({len(results)} result files)", ""]
    if skipped:
        header += ["Skipped (invalid) result files:", ""] + [f"- `{p}`: {why}" for p, why in skipped] + [""]
        (out / "skipped.txt").write_text("".join(f"{p}\t{why}\n" for p, why in skipped))
        written.append(out / "skipped.txt")
    body = "\n".join(to_markdown(t) for t in tables)
    summary.write_text(
        "\n".join(header) + body + "\n## Figures\n\n" + figures_markdown(figures), encoding="utf-8"
    )
    written.append(summary)
    written += figures
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
