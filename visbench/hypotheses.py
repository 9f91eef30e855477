"""``hypotheses.md`` and the per-claim figures, written from a validated verdicts report.

Everything here reads only the report dict (:func:`visbench.verdicts.evaluate` or
:func:`visbench.verdicts.load_hypotheses`): every sentence and number comes from it, none is written by
hand, so ``visbench tables`` (or anyone) can re-render a saved ``hypotheses.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from visbench.verdicts import digits_for, fmt_num, group_label

SMOKE_BANNER = "**smoke run, not evidence**"


def _plus_minus(d: Mapping[str, Any], digits: int, sign: bool = False) -> str:
    if d.get("mean") is None:
        return "n/a"
    mean = fmt_num(d["mean"], digits, sign)
    if d.get("ci_high") is None:
        return f"{mean} (n = {d['n']}, no CI)"
    return f"{mean} ± {fmt_num(d['ci_high'] - d['mean'], digits)}"


def _params(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.2f}M"


def _gmacs(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e9:.3g}G"


def _minutes(s: float | None) -> str:
    return "?" if s is None else f"{s / 60:.1f}"


def _arrow(b: str, c: str) -> str:
    return b if b == c else f"{b} → {c}"


def _flag(f: Mapping[str, Any]) -> str:
    if f["macs_flag"] is None:
        return "MACs unknown"
    if f["macs_flag"]:
        return f"⚠ MACs ×{f['macs_ratio']:.2f}"
    return ""


def _support_cell(s: str | None) -> str:
    return "— (see contrast)" if s is None else s


def _esc(s: str) -> str:
    return s.replace("|", "\\|")


def figure_stem(claim_id: str) -> str:
    return "verdict_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", claim_id)


def table_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The one table of the report: (header, rows); also usable for LaTeX / CSV by ``visbench tables``."""
    header = [
        "claim",
        "models (compared vs baseline)",
        "metric",
        "baseline mean ± CI",
        "difference ± CI",
        "seeds",
        "verdict",
        "MambaOut",
        "params",
        "MACs",
        "train min",
        "fairness",
    ]
    rows: list[list[str]] = []
    for claim in report["claims"]:
        dg = digits_for(claim["margin"])
        metric = f"{claim['metric']} {'↑' if claim['higher_is_better'] else '↓'}"
        for c in claim["comparisons"]:
            f = c["fairness"]
            b, k = f["baseline"], f["compared"]
            where = "" if claim["group_by"] is None else f" @ {claim['group_by']} {group_label(c['group'])}"
            rows.append(
                [
                    claim["id"],
                    f"{c['compared']} vs {c['baseline']}{where}",
                    metric,
                    _plus_minus(c["baseline_stats"], dg),
                    _plus_minus(c["difference"], dg, sign=True),
                    str(c["difference"]["n"]),
                    c["verdict"],
                    _support_cell(c["support"]),
                    _arrow(_params(b["params"]), _params(k["params"])),
                    _arrow(_gmacs(b["macs"]), _gmacs(k["macs"])),
                    _arrow(_minutes(b["wall_s"]), _minutes(k["wall_s"])),
                    _flag(f) if c["difference"]["n"] else "no paired runs",
                ]
            )
        for k in claim["contrasts"]:
            span = (
                f"{group_label(k['last_group'])} minus {group_label(k['first_group'])}"
                if k["first_group"] is not None
                else "(no results)"
            )
            rows.append(
                [
                    claim["id"],
                    f"Δ({k['compared']} − {k['baseline']}): {claim['group_by']} {span}",
                    metric,
                    "—",
                    _plus_minus(k["difference"], dg, sign=True),
                    str(k["difference"]["n"]),
                    k["verdict"],
                    k["support"],
                    "",
                    "",
                    "",
                    "Welch",
                ]
            )
    return header, rows


def render_markdown(report: Mapping[str, Any], figures: Mapping[str, Sequence[str]] | None = None) -> str:
    """The text of hypotheses.md: one table, then a few generated sentences (and the figure) per claim."""
    figures = figures or {}
    lines = ["# Verdicts on MambaOut's claims", ""]
    if report["smoke"]:
        lines += [f"> {SMOKE_BANNER}: too little training or too few seeds for any conclusion.", ""]
    lines += [
        f"Claims declared in `{report['claims_source']}`"
        + (f" ({report['claims_sha256'][:19]}…)" if report["claims_sha256"] else "")
        + f"; {len(report['result_files'])} result files; written {report['created']}.",
        "",
        "Rule, applied mechanically: runs are paired by seed and each row's difference is compared minus "
        "baseline, with a two-sided t-interval over the paired seeds (the baseline mean ± CI is over the "
        "same seeds). Fewer seeds than the claim's minimum: "
        "*inconclusive at this scale*; the CI excludes 0: *better* / *worse* (the compared model's side); "
        "the CI lies inside ± the margin: *no detectable difference*; otherwise *inconclusive at this "
        "scale*. A grouped claim is judged on the contrast between its last and first group (Welch "
        "interval). ± is the CI half-width. params, MACs and training minutes read baseline → compared; "
        f"⚠ marks MACs more than {100 * report['macs_tolerance']:g}% from the baseline's.",
        "",
    ]
    header, rows = table_rows(report)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_esc(x) for x in row) + " |")
    lines.append("")
    for claim in report["claims"]:
        lines += [f"## {claim['id']}: {claim['title']}", ""]
        margin = fmt_num(claim["margin"], digits_for(claim["margin"]))
        lines += [
            f"Metric `{claim['metric']}` ({'higher' if claim['higher_is_better'] else 'lower'} is better), "
            f"equivalence margin ±{margin}, {round(100 * claim['confidence'], 4):g}% CIs, at least "
            f"{claim['min_seeds']} seeds; overall: **{claim['overall']}**.",
            "",
        ]
        lines += [f"- {s}" for s in claim["sentences"]]
        lines.append("")
        missing = [m for c in claim["comparisons"] for m in c["missing"]]
        if missing:
            lines += ["Missing or unpaired runs:", ""] + [f"- {m}" for m in dict.fromkeys(missing)] + [""]
        for name in figures.get(claim["id"], []):
            if name.endswith(".png"):
                lines += [f"![{claim['id']}]({name})", ""]
    if report["skipped_files"]:
        lines += ["## Skipped result files", ""] + [f"- `{p}`: {why}" for p, why in report["skipped_files"]]
        lines.append("")
    return "\n".join(lines)


def _seeds_text(ns: Sequence[int]) -> str:
    ns = sorted({n for n in ns if n})
    if not ns:
        return "no seeds"
    if len(ns) > 1:
        return f"{ns[0]}-{ns[-1]} seeds"
    return "1 seed (no CI)" if ns[0] == 1 else f"{ns[0]} seeds"


_METRIC_UNITS = {  # metric -> (unit of a value, unit of a difference)
    "top1": ("%", "pp"),
    "top5": ("%", "pp"),
    "bits_per_pixel": ("", ""),  # the name says the unit
}


_METRIC_NAMES = {"top1": "top-1 accuracy", "top5": "top-5 accuracy", "bits_per_pixel": "bits per pixel"}
_METRIC_NAMES.update({"bbox_mAP": "box AP", "segm_mAP": "mask AP"})


def _metric_name(metric: str) -> str:
    return _METRIC_NAMES.get(metric, metric)


def _units(metric: str) -> tuple[str, str]:
    """(unit of the metric, unit of a difference of it): AP in points, top-1 in % / percentage points."""
    if metric in _METRIC_UNITS:
        return _METRIC_UNITS[metric]
    if metric.endswith("mAP") or "_mAP" in metric:
        return "AP", "AP points"
    return "", ""


def _with_unit(label: str, unit: str) -> str:
    return f"{label} ({unit})" if unit else label


def _err(d: Mapping[str, Any]) -> list[list[float]] | None:
    """Asymmetric error bar from a mean / ci_low / ci_high mapping; None without an interval."""
    if d.get("ci_low") is None or d.get("ci_high") is None:
        return None
    return [[d["mean"] - d["ci_low"]], [d["ci_high"] - d["mean"]]]


def _margin_band(ax: Any, margin: float, vertical: bool) -> None:
    """Zero line and the shaded equivalence margin around it."""
    span, line = (ax.axvspan, ax.axvline) if vertical else (ax.axhspan, ax.axhline)
    span(-margin, margin, color="0.88", lw=0, zorder=0)
    line(0.0, color="black", lw=0.7, zorder=1)


def _claim_titles(fig: Any, claim: Mapping[str, Any], smoke: bool, width_in: float) -> None:
    """The caption-ready title: the claim's id and title; a smoke run says so, in red."""
    from visbench.figures import wrap

    head = f"{claim['id']}: {claim.get('title') or claim['metric']}"
    if smoke:
        head += " [smoke run, not evidence]"
    fig.suptitle(wrap(head, width_in - 0.2, 8.0), color="#B00000" if smoke else "black")


def _claim_figure(claim: Mapping[str, Any], smoke: bool = False, width: str | float = "column") -> Any:
    """The figure of one claim at ``width``: built, not saved (the tests check its layout).

    Not grouped: (a) the metric per model, mean and CI over seeds (seeds as dots); (b) each comparison's
    paired difference with its CI against the shaded equivalence margin, the verdict at the right.
    Grouped: the paired difference per group, one line per comparison, the contrast's verdict in the
    title. Colours and markers: the family of the (compared) model, as in every visbench figure.
    """
    from visbench.figures import figure_style, figure_width, fit_titles

    w = figure_width(width)
    pct = f"{round(100 * claim['confidence'], 4):g}%"
    unit, dunit = _units(claim["metric"])
    better = "higher" if claim["higher_is_better"] else "lower"
    margin = fmt_num(claim["margin"], digits_for(claim["margin"]))
    with figure_style():
        if claim["group_by"] is None:
            fig = _ungrouped_claim(claim, w, pct, unit, dunit, better, margin)
        else:
            fig = _grouped_claim(claim, w, pct, dunit, margin)
        _claim_titles(fig, claim, smoke, w)
        fit_titles(fig)
    return fig


def _ungrouped_claim(
    claim: Mapping[str, Any], w: float, pct: str, unit: str, dunit: str, better: str, margin: str
) -> Any:
    from visbench.figures import model_style, new_figure, set_title, wrap

    entries = [m for m in claim["models"] if m.get("group") is None and m["mean"] is not None]
    comps = [c for c in claim["comparisons"] if c.get("group") is None]
    baselines = {c["baseline"] for c in comps}
    one_base = len(baselines) == 1
    row_b = 0.3  # verdicts (and labels when the baselines differ) take two lines
    ha, hb = 0.35 + 0.2 * max(1, len(entries)), 0.35 + row_b * max(1, len(comps))
    fig, axes = new_figure(w, ha + hb + 1.55, 2, 1, gridspec_kw={"height_ratios": [ha, hb]})
    ax, bx = axes[0][0], axes[1][0]
    for i, m in enumerate(entries):
        st = {**model_style(m["model"]), "linestyle": "none"}
        ax.scatter(m["values"], [i] * len(m["values"]), s=6, color="0.55", zorder=2, lw=0)
        ax.errorbar([m["mean"]], [i], xerr=_err(m), zorder=3, elinewidth=0.9, **st)
    ax.set_yticks(range(len(entries)), [m["model"] for m in entries])
    for tick, m in zip(ax.get_yticklabels(), entries):
        if m["model"] in baselines:
            tick.set_fontweight("bold")
    ax.set_ylim(max(1, len(entries)) - 0.5, -0.5)
    if unit == "%":  # a CI beyond 0-100% says "too few seeds"; the axis stays on the metric's range
        lo, hi = ax.get_xlim()
        ax.set_xlim(max(lo, 0.0), min(hi, 100.0))
    ax.set_xlabel(f"{_metric_name(claim['metric'])}{f' ({unit})' if unit else ''}, {better} is better")
    ax.grid(True, axis="x")
    n_models = _seeds_text([m["n"] for m in entries])
    set_title(ax, f"(a) mean and {pct} CI over {n_models} (dots: seeds); bold: baseline")
    if not entries:
        ax.text(0.5, 0.5, "no matching results", ha="center", va="center", transform=ax.transAxes)

    _margin_band(bx, claim["margin"], vertical=True)
    labels, verdicts = [], []
    for i, c in enumerate(comps):
        d = c["difference"]
        if d["mean"] is not None:
            st = {**model_style(c["compared"]), "linestyle": "none"}
            bx.errorbar([d["mean"]], [i], xerr=_err(d), zorder=3, elinewidth=0.9, **st)
        labels.append(c["compared"] if one_base else f"{c['compared']}\nvs {c['baseline']}")
        verdicts.append(wrap(c["verdict"], 0.85, 6.0))
    bx.set_yticks(range(len(comps)), labels)
    bx.set_ylim(max(1, len(comps)) - 0.5, -0.5)
    right = bx.secondary_yaxis("right")
    right.set_yticks(range(len(comps)), verdicts)
    right.tick_params(labelsize=6, length=0)
    base = f" vs {next(iter(baselines))}" if one_base else ""
    bx.set_xlabel(_with_unit(f"paired difference{base}", dunit))
    bx.grid(True, axis="x")
    n_pairs = _seeds_text([c["difference"]["n"] for c in comps])
    set_title(
        bx,
        f"(b) compared \u2212 baseline, {pct} CI over {n_pairs}; shaded: \u00b1{margin} margin; "
        f"overall: {claim['overall']}",
    )
    return fig


def _grouped_claim(claim: Mapping[str, Any], w: float, pct: str, dunit: str, margin: str) -> Any:
    import matplotlib.ticker

    from visbench.figures import model_style, new_figure, set_title

    groups = claim["groups"]
    numeric = bool(groups) and all(isinstance(g, (int, float)) and not isinstance(g, bool) for g in groups)
    xpos = {group_label(g): (g if numeric else i) for i, g in enumerate(groups)}
    pairs = list(dict.fromkeys((c["baseline"], c["compared"]) for c in claim["comparisons"]))
    fig, axes = new_figure(w, 2.2 + 1.0 + 0.15 * len(pairs))
    ax = axes[0][0]
    _margin_band(ax, claim["margin"], vertical=False)
    ns: list[int] = []
    for base, comp in pairs:
        rows = [
            c
            for c in claim["comparisons"]
            if (c["baseline"], c["compared"]) == (base, comp) and c["difference"]["mean"] is not None
        ]
        ds = [c["difference"] for c in rows]
        ys = [d["mean"] for d in ds]
        lo = [0.0 if d["ci_low"] is None else d["mean"] - d["ci_low"] for d in ds]
        hi = [0.0 if d["ci_high"] is None else d["ci_high"] - d["mean"] for d in ds]
        ns += [c["difference"]["n"] for c in rows]
        ax.errorbar(
            [xpos[group_label(c["group"])] for c in rows],
            ys,
            yerr=[lo, hi],
            elinewidth=0.9,
            label=f"{comp} \u2212 {base}",
            **model_style(comp),
        )
    if numeric:
        log = bool(groups) and min(groups) > 0 and max(groups) / min(groups) >= 8
        ax.set_xscale("log" if log else "linear")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(groups, [group_label(g) for g in groups])
        if log:
            ax.set_xlim(min(groups) / 1.5, max(groups) * 1.5)
    else:
        ax.set_xticks(range(len(groups)), [group_label(g) for g in groups])
        ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_xlabel(claim["group_by"] + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(_with_unit(f"paired difference in {_metric_name(claim['metric'])}", dunit))
    ax.grid(True, axis="y")
    verdicts = "; ".join(
        f"{k['verdict']}" + ("" if len(pairs) == 1 else f" ({k['compared']})") for k in claim["contrasts"]
    )
    set_title(
        ax,
        f"compared \u2212 baseline per {claim['group_by']}, {pct} CI over {_seeds_text(ns)}; shaded: "
        f"\u00b1{margin} margin; last \u2212 first group: {verdicts or 'n/a'} (overall: {claim['overall']})",
    )
    if pairs:
        fig.legend(loc="outside lower center", ncol=1 if w < 5 else 2)
    else:
        ax.text(0.5, 0.5, "no matching results", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_claim(claim: Mapping[str, Any], out_dir: Path, smoke: bool = False) -> list[Path]:
    """A figure per claim at column width, PNG + PDF (``figure_stem``): CIs over seeds, stated in it."""
    from visbench.figures import save_figure

    return save_figure(_claim_figure(claim, smoke, "column"), Path(out_dir), figure_stem(claim["id"]))
