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
    return f"{ns[0]} seeds" if len(ns) == 1 else f"{ns[0]}-{ns[-1]} seeds"


def plot_claim(claim: Mapping[str, Any], out_dir: Path, smoke: bool = False) -> list[Path]:
    """A figure per claim, PNG + PDF: the metric per model with CIs; grouped: the difference per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    pct = f"{round(100 * claim['confidence'], 4):g}% CI"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if claim["group_by"] is None:
        entries = [m for m in claim["models"] if m.get("group") is None]
        baselines = {c["baseline"] for c in claim["comparisons"]}
        for i, m in enumerate(entries):
            color = "tab:gray" if m["model"] in baselines else "tab:blue"
            if m["mean"] is not None:
                err = (
                    None if m["ci_high"] is None else [[m["mean"] - m["ci_low"]], [m["ci_high"] - m["mean"]]]
                )
                ax.errorbar([i], [m["mean"]], yerr=err, fmt="o", color=color, capsize=4, markersize=7)
            offsets = [(j - (len(m["values"]) - 1) / 2) * 0.06 for j in range(len(m["values"]))]
            ax.scatter([i + o for o in offsets], m["values"], s=10, color=color, alpha=0.45, zorder=1)
            judged = [c for c in claim["comparisons"] if c["compared"] == m["model"]]
            if len(judged) == 1 and m["mean"] is not None:
                label = f"{judged[0]['verdict']}\nvs {judged[0]['baseline']}"
                ax.annotate(label, (i, m["mean"]), xytext=(8, 0), textcoords="offset points", fontsize=6)
        names = [m["model"] + (" (baseline)" if m["model"] in baselines else "") for m in entries]
        ax.set_xticks(range(len(entries)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"{claim['metric']} ({'higher' if claim['higher_is_better'] else 'lower'} is better)")
        n_text = _seeds_text([m["n"] for m in entries])
        ax.set_title(f"{claim['id']}: {claim['metric']} per model, {pct} over {n_text}", fontsize=9)
        if not entries:
            ax.text(0.5, 0.5, "no matching results", ha="center", transform=ax.transAxes)
    else:
        groups = claim["groups"]
        numeric = bool(groups) and all(
            isinstance(g, (int, float)) and not isinstance(g, bool) for g in groups
        )
        xpos = {group_label(g): (g if numeric else i) for i, g in enumerate(groups)}
        pairs = list(dict.fromkeys((c["baseline"], c["compared"]) for c in claim["comparisons"]))
        ns = []
        for k, (base, comp) in enumerate(pairs):
            rows = [
                c
                for c in claim["comparisons"]
                if (c["baseline"], c["compared"]) == (base, comp) and c["difference"]["mean"] is not None
            ]
            xs = [xpos[group_label(c["group"])] for c in rows]
            ys = [c["difference"]["mean"] for c in rows]
            lo = [
                0.0 if c["difference"]["ci_low"] is None else y - c["difference"]["ci_low"]
                for c, y in zip(rows, ys)
            ]
            hi = [
                0.0 if c["difference"]["ci_high"] is None else c["difference"]["ci_high"] - y
                for c, y in zip(rows, ys)
            ]
            ns += [c["difference"]["n"] for c in rows]
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=4, label=f"{comp} − {base}", color=f"C{k}")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.axhspan(
            -claim["margin"], claim["margin"], color="tab:green", alpha=0.12, label="equivalence margin"
        )
        if numeric:
            ax.set_xscale(
                "log" if groups and min(groups) > 0 and max(groups) / min(groups) >= 8 else "linear"
            )
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xticks(groups, [group_label(g) for g in groups])
        else:
            ax.set_xticks(range(len(groups)), [group_label(g) for g in groups])
        ax.set_xlabel(claim["group_by"])
        ax.set_ylabel(f"paired difference in {claim['metric']}")
        ax.set_title(
            f"{claim['id']}: difference vs {claim['group_by']}, {pct} over {_seeds_text(ns)}", fontsize=9
        )
        ax.legend(fontsize=7)
    if smoke:
        ax.set_title(ax.get_title() + "\nsmoke run, not evidence", fontsize=9, color="tab:red")
    fig.tight_layout()
    out_dir = Path(out_dir)
    paths = [out_dir / f"{figure_stem(claim['id'])}.png", out_dir / f"{figure_stem(claim['id'])}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150)
    plt.close(fig)
    return paths
