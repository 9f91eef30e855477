"""``visbench verdicts``: paired statistics and mechanical verdicts on declared claims, from result files.

The study ends here, and so can a user's own ImageNet / COCO runs: give the ``result.json`` files
(:mod:`visbench.results`) and a **claims spec** written before the runs; this module pairs runs by
seed, computes each paired difference with its t-interval, applies the declared verdict rule and
says, for each comparison, whether the outcome supports or contradicts MambaOut's hypothesis.
Output: ``hypotheses.json`` (versioned, validated on load), ``hypotheses.md`` and a figure per claim
(:mod:`visbench.hypotheses`).

Claims spec (YAML mapping; in a study config it may sit under a top-level ``verdicts:`` key)::

    schema_version: 1          # optional
    confidence: 0.95           # two-sided level of every interval (default 0.95)
    min_seeds: 3               # fewer paired seeds -> "inconclusive at this scale" (default 3)
    macs_tolerance: 0.2        # flag compared models whose MACs differ from the baseline's by more
    precedence: difference_first   # or equivalence_first (see the rule below)
    margins: {top1: 0.5, bits_per_pixel: 0.02, bbox_mAP: 1.0}   # equivalence margins, metric units
    claims:
      - id: H1
        title: SSM is unnecessary for short, non-causal tasks
        hypothesis: adding an SSM (any order) to the gated CNN brings no gain
        metric: top1
        higher_is_better: true
        where: {task: classification, dataset: fashion_mnist, input_size: [32, 32]}
        baseline: gated_cnn_tiny
        compared: [ssm_causal_tiny, ssm_bidir_tiny, ssm_cross2d_tiny, attn_tiny]
        supports: [no detectable difference, worse]
      - id: causal
        ...
        comparisons:           # several baselines: one mapping per pair
          - {baseline: attn_tiny, compared: attn_causal_tiny}
          - {baseline: ssm_bidir_tiny, compared: ssm_causal_tiny}
        supports: [worse]
      - id: H2
        ...
        group_by: tokens       # a result field (dotted paths reach extra.* / metrics.*)
        baseline: gated_cnn_tiny
        compared: [ssm_cross2d_tiny]
        supports: [better]     # judged on the contrast: (difference at the last group) - (at the first)

Statistics. Runs are paired by seed (same seed = same data order and augmentation stream). For a
comparison, d_s = metric(compared, s) - metric(baseline, s) over the seeds both have; the interval
is mean(d) +- t_{(1+c)/2, n-1} * sd(d) / sqrt(n) (Student t, sample sd with n - 1). A grouped claim
(``group_by``) computes that per group and then the contrast between the last and the first group
(``group_order`` or sorted values): the difference of the two mean paired differences, with a Welch
interval (per-group variances, Welch-Satterthwaite degrees of freedom), since runs of different
groups are different experiments. The t quantile is computed here (regularised incomplete beta by
continued fraction, inverted by bisection; :func:`t_quantile`), so scipy is not needed.

Verdict rule (applied mechanically, in this order with the default ``precedence: difference_first``):
fewer than ``min_seeds`` paired seeds -> "inconclusive at this scale" ("fewer than 3 seeds"); the
CI excludes 0 -> "better" / "worse" (the compared model's side, by ``higher_is_better``); the whole CI
inside [-margin, +margin] -> "no detectable difference"; otherwise "inconclusive at this scale".
``equivalence_first`` checks the margin before the sign. A decisive verdict listed in the
comparison's ``supports`` SUPPORTS MambaOut's hypothesis; one in ``contradicts`` (default: every other
decisive verdict) CONTRADICTS it; anything else, and every inconclusive verdict, is "neither".

Fairness: params, MACs and training wall time (``extra.train_wall_s`` when a run records it, else
end_time - start_time) of each model sit next to its metric; a compared model whose MACs differ from
its baseline's by more than ``macs_tolerance`` (or are unknown) is flagged.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visbench.atomic import atomic_write_text

SCHEMA_VERSION = 1
SPEC_SCHEMA_VERSION = 1
HYPOTHESES_JSON = "hypotheses.json"
HYPOTHESES_MD = "hypotheses.md"

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no detectable difference"
INCONCLUSIVE = "inconclusive at this scale"
VERDICTS = (BETTER, WORSE, NO_DIFFERENCE, INCONCLUSIVE)
DECISIVE = (BETTER, WORSE, NO_DIFFERENCE)
SUPPORTS, CONTRADICTS, NEITHER = "supports", "contradicts", "neither"
SUPPORT_VALUES = (SUPPORTS, CONTRADICTS, NEITHER)
OVERALL_VALUES = ("supports", "partly supports", "contradicts", "partly contradicts", "mixed", "neither")
PRECEDENCES = ("difference_first", "equivalence_first")
WALL_TIME_KEY = "train_wall_s"


class HypothesesError(ValueError):
    """A hypotheses.json (or report dict) that does not follow the schema; names the file and field."""


# ============================================================================ Student t, by hand


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (real df allowed, for Welch)."""
    if df <= 0:
        raise ValueError(f"t_cdf: degrees of freedom must be positive, got {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom, e.g. t_quantile(0.975, 2) = 4.302653.

    Method: :func:`t_cdf` through the regularised incomplete beta function (continued fraction), inverted
    by bisection to 1e-12 relative; accurate to ~1e-10 for df >= 1 (tested against tabulated values).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must lie in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"t_quantile: degrees of freedom must be positive, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with its two-sided t-interval; bounds are None below 2 values."""

    n: int
    mean: float | None
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    df: float | None
    confidence: float

    @property
    def half_width(self) -> float | None:
        return None if self.ci_high is None or self.mean is None else self.ci_high - self.mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean": self.mean,
            "sd": self.sd,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "df": self.df,
            "confidence": self.confidence,
        }


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """mean +- t_{(1+c)/2, n-1} * sd / sqrt(n) (sample sd with n - 1); bounds None when n < 2."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Interval(0, None, None, None, None, None, confidence)
    mean = math.fsum(xs) / n
    if n == 1:
        return Interval(1, mean, None, None, None, None, confidence)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(n, mean, sd, mean - half, mean + half, float(n - 1), confidence)


def welch_interval(first: Interval, last: Interval, confidence: float = 0.95) -> Interval:
    """(mean of ``last``) - (mean of ``first``) with a Welch t-interval (independent samples).

    ``n`` of the result is the smaller sample size (what the seed rule looks at). Degrees of freedom by
    Welch-Satterthwaite; when both variances are 0 the interval is the point and df = n1 + n2 - 2.
    """
    if first.mean is None or last.mean is None:
        return Interval(min(first.n, last.n), None, None, None, None, None, confidence)
    mean = last.mean - first.mean
    n = min(first.n, last.n)
    if first.sd is None or last.sd is None:
        return Interval(n, mean, None, None, None, None, confidence)
    v1, v2 = first.sd**2 / first.n, last.sd**2 / last.n
    se = math.sqrt(v1 + v2)
    if se == 0.0:
        return Interval(n, mean, 0.0, mean, mean, float(first.n + last.n - 2), confidence)
    df = (v1 + v2) ** 2 / (v1**2 / (first.n - 1) + v2**2 / (last.n - 1))
    half = t_quantile((1.0 + confidence) / 2.0, df) * se
    return Interval(n, mean, se, mean - half, mean + half, df, confidence)


def decide(
    interval: Interval,
    margin: float,
    higher_is_better: bool,
    min_seeds: int = 3,
    precedence: str = "difference_first",
) -> tuple[str, str]:
    """(verdict, reason) of a compared-minus-baseline interval under the declared rule."""
    if interval.n < min_seeds:
        return INCONCLUSIVE, f"fewer than {min_seeds} seeds ({interval.n} paired)"
    lo, hi, mean = interval.ci_low, interval.ci_high, interval.mean
    if lo is None or hi is None or mean is None:
        return INCONCLUSIVE, "no interval"
    pct = f"{round(100 * interval.confidence, 4):g}%"

    def by_sign() -> tuple[str, str] | None:
        if lo > 0 or hi < 0:
            ahead = (mean > 0) == higher_is_better
            side = "above" if lo > 0 else "below"
            return (BETTER if ahead else WORSE), f"the {pct} CI lies {side} 0"
        return None

    def by_margin() -> tuple[str, str] | None:
        if -margin <= lo and hi <= margin:
            return NO_DIFFERENCE, f"the {pct} CI lies inside the equivalence margin ±{margin:g}"
        return None

    order = (by_sign, by_margin) if precedence == "difference_first" else (by_margin, by_sign)
    for rule in order:
        out = rule()
        if out is not None:
            return out
    return INCONCLUSIVE, f"the {pct} CI includes 0 and reaches past the equivalence margin ±{margin:g}"


def support_of(verdict: str, supports: Sequence[str], contradicts: Sequence[str]) -> str:
    """ "supports" / "contradicts" / "neither" for a verdict, by the comparison's declared lists."""
    if verdict in supports:
        return SUPPORTS
    if verdict in contradicts:
        return CONTRADICTS
    return NEITHER


def overall_support(values: Iterable[str | None]) -> str:
    """A claim's summary over its judged comparisons (see OVERALL_VALUES)."""
    vals = [v for v in values if v is not None]
    s, c = vals.count(SUPPORTS), vals.count(CONTRADICTS)
    if s and c:
        return "mixed"
    if s:
        return "supports" if s == len(vals) else "partly supports"
    if c:
        return "contradicts" if c == len(vals) else "partly contradicts"
    return "neither"


# ============================================================================ claims spec


@dataclass(frozen=True)
class Comparison:
    baseline: str
    compared: str
    supports: tuple[str, ...]
    contradicts: tuple[str, ...]


@dataclass(frozen=True)
class Claim:
    id: str
    title: str
    hypothesis: str
    metric: str
    higher_is_better: bool
    margin: float
    comparisons: tuple[Comparison, ...]
    confidence: float = 0.95
    min_seeds: int = 3
    precedence: str = "difference_first"
    where: Mapping[str, Any] = field(default_factory=dict)
    group_by: str | None = None
    group_order: tuple[Any, ...] | None = None

    @property
    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for c in self.comparisons:
            seen.setdefault(c.baseline)
            seen.setdefault(c.compared)
        return list(seen)


@dataclass(frozen=True)
class ClaimsSpec:
    claims: tuple[Claim, ...]
    source: str = "claims"
    sha256: str | None = None
    macs_tolerance: float = 0.2


_SPEC_KEYS = (
    "schema_version",
    "confidence",
    "min_seeds",
    "macs_tolerance",
    "precedence",
    "margins",
    "claims",
)
_CLAIM_KEYS = (
    "id",
    "title",
    "hypothesis",
    "metric",
    "higher_is_better",
    "margin",
    "confidence",
    "min_seeds",
    "precedence",
    "where",
    "group_by",
    "group_order",
    "baseline",
    "compared",
    "comparisons",
    "supports",
    "contradicts",
)
_CLAIM_REQUIRED = ("id", "metric", "higher_is_better", "supports")
_COMPARED_KEYS = ("model", "supports", "contradicts")
_PAIR_KEYS = ("baseline", "compared", "supports", "contradicts")


def _hint(key: str, valid: Sequence[str]) -> str:
    from visbench.config import closest_key_hint

    return closest_key_hint(key, list(valid))


def _check_keys(mapping: Mapping[str, Any], valid: Sequence[str], where: str, source: str) -> None:
    for key in mapping:
        if key not in valid:
            raise ValueError(f"{source}: unknown key '{where}{key}'{_hint(str(key), valid)}")


def _verdict_list(value: Any, where: str, source: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{source}: '{where}' must be a verdict or a list of verdicts, got {value!r}")
    for v in items:
        if v not in DECISIVE:
            raise ValueError(
                f"{source}: '{where}': {v!r} is not a decisive verdict; choose from {', '.join(DECISIVE)}"
            )
    return tuple(items)


def _number(value: Any, where: str, source: str, lo: float, hi: float, open_lo: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{source}: '{where}' must be a number, got {value!r}")
    if value < lo or value > hi or (open_lo and value == lo):
        bound = f"({lo:g}, {hi:g}]" if open_lo else f"[{lo:g}, {hi:g}]"
        raise ValueError(f"{source}: '{where}' must lie in {bound}, got {value!r}")
    return float(value)


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def parse_claims(raw: Any, source: str = "claims", sha256: str | None = None) -> ClaimsSpec:
    """Validate a claims mapping (see the module docstring); errors name ``source`` and the key."""
    if isinstance(raw, Mapping) and "verdicts" in raw:
        source, raw = f"{source} (verdicts)", raw["verdicts"]
    if not isinstance(raw, Mapping):
        raise ValueError(f"{source}: expected a mapping with a 'claims' list, got {type(raw).__name__}")
    _check_keys(raw, _SPEC_KEYS, "", source)
    version = raw.get("schema_version", SPEC_SCHEMA_VERSION)
    if version != SPEC_SCHEMA_VERSION:
        raise ValueError(f"{source}: 'schema_version' {version!r} is not one this visbench reads (1)")
    confidence = _number(raw.get("confidence", 0.95), "confidence", source, 0.0, 1.0, open_lo=True)
    if confidence >= 1.0:
        raise ValueError(f"{source}: 'confidence' must be below 1, got {confidence}")
    min_seeds = raw.get("min_seeds", 3)
    if isinstance(min_seeds, bool) or not isinstance(min_seeds, int) or min_seeds < 2:
        raise ValueError(f"{source}: 'min_seeds' must be an int >= 2, got {min_seeds!r}")
    tolerance = _number(raw.get("macs_tolerance", 0.2), "macs_tolerance", source, 0.0, math.inf)
    precedence = raw.get("precedence", "difference_first")
    if precedence not in PRECEDENCES:
        raise ValueError(f"{source}: 'precedence' must be one of {PRECEDENCES}, got {precedence!r}")
    margins = raw.get("margins", {}) or {}
    if not isinstance(margins, Mapping):
        raise ValueError(f"{source}: 'margins' must map metric -> margin, got {margins!r}")
    for metric, value in margins.items():
        _number(value, f"margins.{metric}", source, 0.0, math.inf, open_lo=True)
    claims_raw = raw.get("claims")
    if not isinstance(claims_raw, list) or not claims_raw:
        raise ValueError(f"{source}: 'claims' must be a non-empty list, got {claims_raw!r}")

    claims: list[Claim] = []
    seen_ids: set[str] = set()
    for i, c in enumerate(claims_raw):
        here = f"claims[{i}]"
        if not isinstance(c, Mapping):
            raise ValueError(f"{source}: '{here}' must be a mapping, got {c!r}")
        if isinstance(c.get("id"), str):
            here = f"claims[{i}] ({c['id']})"
        _check_keys(c, _CLAIM_KEYS, f"{here}.", source)
        for key in _CLAIM_REQUIRED:
            if key not in c:
                raise ValueError(f"{source}: '{here}.{key}' is missing")
        cid = c["id"]
        if not isinstance(cid, (str, int)) or isinstance(cid, bool) or str(cid) == "":
            raise ValueError(f"{source}: '{here}.id' must be a non-empty string, got {cid!r}")
        cid = str(cid)
        if cid in seen_ids:
            raise ValueError(f"{source}: '{here}.id' {cid!r} is used by an earlier claim")
        seen_ids.add(cid)
        for key in ("title", "hypothesis", "metric", "group_by"):
            if key in c and not isinstance(c[key], str):
                raise ValueError(f"{source}: '{here}.{key}' must be a string, got {c[key]!r}")
        if not isinstance(c["higher_is_better"], bool):
            raise ValueError(f"{source}: '{here}.higher_is_better' must be true or false")
        metric = c["metric"]
        if "margin" in c:
            margin = _number(c["margin"], f"{here}.margin", source, 0.0, math.inf, open_lo=True)
        elif metric in margins:
            margin = float(margins[metric])
        else:
            raise ValueError(
                f"{source}: '{here}': no equivalence margin for metric {metric!r}; "
                f"set '{here}.margin' or 'margins.{metric}'"
            )
        c_conf = confidence
        if "confidence" in c:
            c_conf = _number(c["confidence"], f"{here}.confidence", source, 0.0, 1.0, open_lo=True)
            if c_conf >= 1.0:
                raise ValueError(f"{source}: '{here}.confidence' must be below 1")
        c_min = c.get("min_seeds", min_seeds)
        if isinstance(c_min, bool) or not isinstance(c_min, int) or c_min < 2:
            raise ValueError(f"{source}: '{here}.min_seeds' must be an int >= 2, got {c_min!r}")
        c_prec = c.get("precedence", precedence)
        if c_prec not in PRECEDENCES:
            raise ValueError(f"{source}: '{here}.precedence' must be one of {PRECEDENCES}, got {c_prec!r}")
        where = c.get("where", {}) or {}
        if not isinstance(where, Mapping) or not all(isinstance(k, str) for k in where):
            raise ValueError(f"{source}: '{here}.where' must map result fields to values, got {where!r}")
        group_order = c.get("group_order")
        if group_order is not None:
            if "group_by" not in c:
                raise ValueError(f"{source}: '{here}.group_order' needs '{here}.group_by'")
            if not isinstance(group_order, list) or len(group_order) < 2:
                raise ValueError(f"{source}: '{here}.group_order' must list at least two group values")
            group_order = tuple(_freeze(v) for v in group_order)
        supports = _verdict_list(c["supports"], f"{here}.supports", source)
        contradicts = (
            _verdict_list(c["contradicts"], f"{here}.contradicts", source)
            if "contradicts" in c
            else tuple(v for v in DECISIVE if v not in supports)
        )

        pairs: list[Comparison] = []
        if "comparisons" in c:
            if "baseline" in c or "compared" in c:
                raise ValueError(f"{source}: '{here}': give either 'comparisons' or 'baseline' + 'compared'")
            items = c["comparisons"]
            if not isinstance(items, list) or not items:
                raise ValueError(f"{source}: '{here}.comparisons' must be a non-empty list")
            for j, item in enumerate(items):
                w = f"{here}.comparisons[{j}]"
                if not isinstance(item, Mapping):
                    raise ValueError(f"{source}: '{w}' must be a mapping with baseline and compared")
                _check_keys(item, _PAIR_KEYS, f"{w}.", source)
                for key in ("baseline", "compared"):
                    if not isinstance(item.get(key), str) or not item[key]:
                        raise ValueError(f"{source}: '{w}.{key}' must be a model name, got {item.get(key)!r}")
                pairs.append(
                    _pair(item["baseline"], item["compared"], item, supports, contradicts, w, source)
                )
        else:
            baseline = c.get("baseline")
            if not isinstance(baseline, str) or not baseline:
                raise ValueError(f"{source}: '{here}.baseline' must be a model name, got {baseline!r}")
            compared = c.get("compared")
            compared = [compared] if isinstance(compared, (str, Mapping)) else compared
            if not isinstance(compared, list) or not compared:
                raise ValueError(f"{source}: '{here}.compared' must list the compared models")
            for j, item in enumerate(compared):
                w = f"{here}.compared[{j}]"
                if isinstance(item, str) and item:
                    pairs.append(Comparison(baseline, item, supports, contradicts))
                elif isinstance(item, Mapping):
                    _check_keys(item, _COMPARED_KEYS, f"{w}.", source)
                    if not isinstance(item.get("model"), str) or not item["model"]:
                        raise ValueError(f"{source}: '{w}.model' must be a model name")
                    pairs.append(_pair(baseline, item["model"], item, supports, contradicts, w, source))
                else:
                    raise ValueError(f"{source}: '{w}' must be a model name or {{model: ..}}, got {item!r}")
        for j, p in enumerate(pairs):
            if p.baseline == p.compared:
                raise ValueError(f"{source}: '{here}': comparison {j} compares {p.baseline} with itself")
        claims.append(
            Claim(
                id=cid,
                title=str(c.get("title", cid)),
                hypothesis=str(c.get("hypothesis", "")),
                metric=metric,
                higher_is_better=c["higher_is_better"],
                margin=margin,
                comparisons=tuple(pairs),
                confidence=c_conf,
                min_seeds=c_min,
                precedence=c_prec,
                where=dict(where),
                group_by=c.get("group_by"),
                group_order=group_order,
            )
        )
    return ClaimsSpec(tuple(claims), source, sha256, tolerance)


def _pair(
    baseline: str,
    compared: str,
    item: Mapping[str, Any],
    supports: tuple[str, ...],
    contradicts: tuple[str, ...],
    where: str,
    source: str,
) -> Comparison:
    sup = _verdict_list(item["supports"], f"{where}.supports", source) if "supports" in item else supports
    if "contradicts" in item:
        con = _verdict_list(item["contradicts"], f"{where}.contradicts", source)
    elif "supports" in item:
        con = tuple(v for v in DECISIVE if v not in sup)
    else:
        con = contradicts
    return Comparison(baseline, compared, sup, con)


def load_claims(path: str | Path) -> ClaimsSpec:
    """Read a claims YAML (``_base_`` allowed, as in other configs); errors name the file and the key."""
    from visbench.config import ConfigError, load_yaml_with_bases

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"claims file {path} does not exist")
    try:
        raw = load_yaml_with_bases(path)
    except ConfigError as err:
        raise ValueError(str(err)) from None
    return parse_claims(raw, str(path), "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest())


# ============================================================================ evaluation


def field_value(result: Mapping[str, Any], path: str) -> Any:
    """A result's value at a dotted path (``tokens``, ``extra.canvas``, ``metrics.top1``); None if absent."""
    value: Any = result
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _matches(result: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    for key, wanted in where.items():
        value = field_value(result, key)
        if value == wanted:
            continue
        if isinstance(wanted, list) and value in wanted:
            continue
        return False
    return True


def wall_seconds(result: Mapping[str, Any]) -> float | None:
    """Training wall time: ``extra.train_wall_s`` when recorded, else end_time - start_time."""
    extra = result.get("extra") or {}
    recorded = extra.get(WALL_TIME_KEY) if isinstance(extra, Mapping) else None
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and math.isfinite(recorded):
        return float(recorded)
    try:
        start = _dt.datetime.fromisoformat(str(result["start_time"]).replace("Z", "+00:00"))
        end = _dt.datetime.fromisoformat(str(result["end_time"]).replace("Z", "+00:00"))
        return (end - start).total_seconds()
    except (KeyError, ValueError, TypeError):
        return None


def group_label(value: Any) -> str:
    """How a group value is written: ``[64, 64]`` -> ``64x64``; None -> ``all``."""
    if value is None:
        return "all"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)


def _group_sort_key(value: Any) -> tuple:
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return (0, math.prod(value), tuple(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, ())
    return (1, str(value), ())


def _model_summary(runs: list[dict[str, Any]], metric: str, confidence: float) -> dict[str, Any]:
    """Per-model entry: metric over its seeds with CI, params, MACs and wall time (means over runs)."""
    runs = sorted(runs, key=lambda r: r["seed"])
    values = [float(r["metrics"][metric]) for r in runs]
    iv = t_interval(values, confidence)
    params = sorted({r["params"] for r in runs})
    macs = sorted({r["macs"] for r in runs if r["macs"] is not None})
    walls = [w for w in (wall_seconds(r) for r in runs) if w is not None]
    return {
        "seeds": [r["seed"] for r in runs],
        "values": values,
        "files": [r["_path"] for r in runs],
        **iv.to_dict(),
        "params": params[0] if len(params) == 1 else (int(sum(params) / len(params)) if params else None),
        "macs": None if not macs else (macs[0] if len(macs) == 1 else int(sum(macs) / len(macs))),
        "params_vary": len(params) > 1,
        "macs_vary": len(macs) > 1,
        "wall_s": (math.fsum(walls) / len(walls)) if walls else None,
    }


def _fairness(base: dict[str, Any] | None, comp: dict[str, Any] | None, tolerance: float) -> dict[str, Any]:
    def cols(m: dict[str, Any] | None) -> dict[str, Any]:
        return {k: (m or {}).get(k) for k in ("params", "macs", "wall_s")}

    b, c = cols(base), cols(comp)
    ratio = c["macs"] / b["macs"] if b["macs"] and c["macs"] is not None else None
    flag = None if ratio is None else abs(ratio - 1.0) > tolerance
    return {
        "baseline": b,
        "compared": c,
        "macs_ratio": ratio,
        "macs_flag": flag,
        "macs_tolerance": tolerance,
        "params_ratio": c["params"] / b["params"] if b["params"] and c["params"] is not None else None,
    }


def _pair_runs(
    claim: Claim,
    comp: Comparison,
    by_model: Mapping[str, Mapping[int, dict[str, Any]]],
    group: Any,
    unseeded: Mapping[str, list[str]],
) -> tuple[list[int], list[str]]:
    glabel = "" if claim.group_by is None else f" at {claim.group_by} = {group_label(group)}"
    b_runs, c_runs = by_model.get(comp.baseline, {}), by_model.get(comp.compared, {})
    missing: list[str] = []
    for model, runs in ((comp.baseline, b_runs), (comp.compared, c_runs)):
        if not runs:
            missing.append(f"no result for {model}{glabel} with metric {claim.metric!r}")
        for path in unseeded.get(model, []):
            missing.append(f"{path}: {model} has no seed, cannot be paired")
    if b_runs and c_runs:
        for s in sorted(set(b_runs) - set(c_runs)):
            missing.append(f"seed {s}: {comp.baseline} ran but {comp.compared} did not{glabel}")
        for s in sorted(set(c_runs) - set(b_runs)):
            missing.append(f"seed {s}: {comp.compared} ran but {comp.baseline} did not{glabel}")
    return sorted(set(b_runs) & set(c_runs)), missing


def evaluate_claim(
    claim: Claim, results: Sequence[tuple[Path | str, Mapping[str, Any]]], macs_tolerance: float = 0.2
) -> dict[str, Any]:
    """One claim's entry of the report from (path, result) pairs (see :func:`evaluate`)."""
    wanted = set(claim.models)
    # group value -> model -> seed -> run (with its path under "_path")
    table: dict[Any, dict[str, dict[int, dict[str, Any]]]] = {}
    unseeded: dict[Any, dict[str, list[str]]] = {}
    for path, r in results:
        if r.get("model") not in wanted or not _matches(r, claim.where):
            continue
        value = (r.get("metrics") or {}).get(claim.metric)
        if value is None:
            continue
        group = _freeze(field_value(r, claim.group_by)) if claim.group_by else None
        if claim.group_by and group is None:
            continue
        if claim.group_order is not None and group not in claim.group_order:
            continue
        if r.get("seed") is None:
            unseeded.setdefault(group, {}).setdefault(r["model"], []).append(str(path))
            continue
        runs = table.setdefault(group, {}).setdefault(r["model"], {})
        seed = r["seed"]
        if seed in runs:
            raise ValueError(
                f"claim {claim.id!r}: two results for {r['model']} seed {seed}"
                + (f" at {claim.group_by} = {group_label(group)}" if claim.group_by else "")
                + f": {runs[seed]['_path']} and {path}; narrow the claim's 'where' or pass fewer run folders"
            )
        runs[seed] = {**r, "_path": str(path)}

    if claim.group_order is not None:
        groups = list(claim.group_order)
    else:
        groups = sorted(set(table) | set(unseeded), key=_group_sort_key)
    if not groups:
        groups = [None] if claim.group_by is None else []

    models: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    for group in groups:
        by_model = table.get(group, {})
        summaries: dict[str, dict[str, Any]] = {}
        for model in claim.models:
            if by_model.get(model):
                summaries[model] = _model_summary(
                    list(by_model[model].values()), claim.metric, claim.confidence
                )
                models.append({"model": model, "group": group, **summaries[model]})
        for comp in claim.comparisons:
            seeds, missing = _pair_runs(claim, comp, by_model, group, unseeded.get(group, {}))
            b_vals = [float(by_model[comp.baseline][s]["metrics"][claim.metric]) for s in seeds]
            c_vals = [float(by_model[comp.compared][s]["metrics"][claim.metric]) for s in seeds]
            diff = t_interval([c - b for b, c in zip(b_vals, c_vals)], claim.confidence)
            verdict, reason = decide(
                diff, claim.margin, claim.higher_is_better, claim.min_seeds, claim.precedence
            )
            b_paired = _model_summary(
                [by_model[comp.baseline][s] for s in seeds], claim.metric, claim.confidence
            )
            c_paired = _model_summary(
                [by_model[comp.compared][s] for s in seeds], claim.metric, claim.confidence
            )
            comparisons.append(
                {
                    "baseline": comp.baseline,
                    "compared": comp.compared,
                    "group": group,
                    "seeds": seeds,
                    "baseline_values": b_vals,
                    "compared_values": c_vals,
                    "baseline_stats": t_interval(b_vals, claim.confidence).to_dict(),
                    "compared_stats": t_interval(c_vals, claim.confidence).to_dict(),
                    "difference": diff.to_dict(),
                    "verdict": verdict,
                    "reason": reason,
                    "support": None
                    if claim.group_by
                    else support_of(verdict, comp.supports, comp.contradicts),
                    "supports_if": list(comp.supports),
                    "contradicts_if": list(comp.contradicts),
                    "missing": missing,
                    "fairness": _fairness(
                        b_paired if seeds else summaries.get(comp.baseline),
                        c_paired if seeds else summaries.get(comp.compared),
                        macs_tolerance,
                    ),
                }
            )

    contrasts: list[dict[str, Any]] = []
    if claim.group_by:
        for comp in claim.comparisons:
            rows = [
                c for c in comparisons if c["baseline"] == comp.baseline and c["compared"] == comp.compared
            ]
            entry: dict[str, Any] = {
                "baseline": comp.baseline,
                "compared": comp.compared,
                "first_group": rows[0]["group"] if rows else None,
                "last_group": rows[-1]["group"] if rows else None,
                "supports_if": list(comp.supports),
                "contradicts_if": list(comp.contradicts),
            }
            if len(rows) < 2:
                iv = Interval(0, None, None, None, None, None, claim.confidence)
                verdict, reason = INCONCLUSIVE, f"fewer than two values of {claim.group_by} with results"
            else:
                first = _interval_from(rows[0]["difference"])
                last = _interval_from(rows[-1]["difference"])
                iv = welch_interval(first, last, claim.confidence)
                verdict, reason = decide(
                    iv, claim.margin, claim.higher_is_better, claim.min_seeds, claim.precedence
                )
                if first.n < claim.min_seeds or last.n < claim.min_seeds:
                    verdict = INCONCLUSIVE
                    reason = (
                        f"fewer than {claim.min_seeds} seeds ({first.n} paired at "
                        f"{group_label(rows[0]['group'])}, {last.n} at {group_label(rows[-1]['group'])})"
                    )
            entry.update(
                difference=iv.to_dict(),
                verdict=verdict,
                reason=reason,
                support=support_of(verdict, comp.supports, comp.contradicts),
                method="welch",
            )
            contrasts.append(entry)

    judged = [c["support"] for c in (contrasts if claim.group_by else comparisons)]
    entry = {
        "id": claim.id,
        "title": claim.title,
        "hypothesis": claim.hypothesis,
        "metric": claim.metric,
        "higher_is_better": claim.higher_is_better,
        "margin": claim.margin,
        "confidence": claim.confidence,
        "min_seeds": claim.min_seeds,
        "precedence": claim.precedence,
        "where": dict(claim.where),
        "group_by": claim.group_by,
        "groups": groups,
        "models": models,
        "comparisons": comparisons,
        "contrasts": contrasts,
        "overall": overall_support(judged),
    }
    entry["sentences"] = claim_sentences(entry)
    return _jsonable(entry)


def _interval_from(d: Mapping[str, Any]) -> Interval:
    return Interval(d["n"], d["mean"], d["sd"], d["ci_low"], d["ci_high"], d["df"], d["confidence"])


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------------------- sentences from numbers


def fmt_num(x: float | None, digits: int = 2, sign: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def digits_for(margin: float) -> int:
    """Decimals that resolve a tenth of the margin (at least 2)."""
    return max(2, math.ceil(-math.log10(margin)) + 1) if margin > 0 else 2


def _ci(d: Mapping[str, Any], digits: int) -> str:
    if d.get("ci_low") is None:
        return "no CI"
    return f"{round(100 * d['confidence'], 4):g}% CI [{fmt_num(d['ci_low'], digits, True)}, " + (
        f"{fmt_num(d['ci_high'], digits, True)}]"
    )


def claim_sentences(entry: Mapping[str, Any]) -> list[str]:
    """A few sentences per claim, generated from its numbers only."""
    dg = digits_for(entry["margin"])
    metric = entry["metric"]
    sense = "higher is better" if entry["higher_is_better"] else "lower is better"
    out: list[str] = []
    if entry["hypothesis"]:
        out.append(f"MambaOut's hypothesis: {entry['hypothesis']}.".replace("..", "."))
    for c in entry["comparisons"]:
        d = c["difference"]
        where = "" if entry["group_by"] is None else f" at {entry['group_by']} = {group_label(c['group'])}"
        if d["n"] == 0:
            text = f"{c['compared']} vs {c['baseline']}{where}: no paired seeds."
        else:
            text = (
                f"{c['compared']} vs {c['baseline']}{where} on {metric} ({sense}): mean paired difference "
                f"{fmt_num(d['mean'], dg, True)} over {d['n']} seed{'s' if d['n'] != 1 else ''}, {_ci(d, dg)}"
                f" (baseline {fmt_num(c['baseline_stats']['mean'], dg)})."
            )
        text += f" Verdict: {c['verdict']} ({c['reason']})"
        if c["support"] is not None:
            text += f"; this {_support_phrase(c['support'])}"
        text += "."
        f = c["fairness"]
        if f["macs_ratio"] is not None:
            text += f" MACs {f['macs_ratio']:.2f}x the baseline's"
            text += f" (flagged: beyond ±{100 * f['macs_tolerance']:g}%)." if f["macs_flag"] else "."
        elif d["n"]:
            text += " MACs unknown for one of the two."
        if c["missing"]:
            text += f" Missing: {len(c['missing'])} unpaired or absent run(s)."
        out.append(text)
    for k in entry["contrasts"]:
        d = k["difference"]
        first, last = group_label(k["first_group"]), group_label(k["last_group"])
        if k["first_group"] is None or d["mean"] is None:
            text = (
                f"Contrast for {k['compared']} vs {k['baseline']} across {entry['group_by']}: not computable."
            )
        else:
            text = (
                f"Contrast for {k['compared']} vs {k['baseline']}: the paired difference at "
                f"{entry['group_by']} = {last} minus that at {first} is {fmt_num(d['mean'], dg, True)}, "
                f"{_ci(d, dg)} (Welch)."
            )
        text += f" Verdict: {k['verdict']} ({k['reason']}); this {_support_phrase(k['support'])}."
        out.append(text)
    n_judged = len(entry["contrasts"] if entry["group_by"] else entry["comparisons"])
    out.append(f"Overall ({n_judged} judged comparison{'s' if n_judged != 1 else ''}): {entry['overall']}.")
    return out


def _support_phrase(support: str) -> str:
    """``supports MambaOut's hypothesis``; for ``neither``: ``neither supports nor contradicts it``."""
    if support == NEITHER:
        return "neither supports nor contradicts MambaOut's hypothesis"
    return f"{support} MambaOut's hypothesis"


# ---------------------------------------------------------------------------- the report


def evaluate(
    results: Sequence[tuple[Path | str, Mapping[str, Any]]],
    spec: ClaimsSpec,
    *,
    smoke: bool = False,
    skipped: Sequence[tuple[Path | str, str]] = (),
) -> dict[str, Any]:
    """The whole report (the content of hypotheses.json) from (path, result) pairs and a claims spec."""
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "smoke": bool(smoke),
        "claims_source": spec.source,
        "claims_sha256": spec.sha256,
        "macs_tolerance": spec.macs_tolerance,
        "result_files": sorted(str(p) for p, _ in results),
        "skipped_files": [[str(p), str(why)] for p, why in skipped],
        "claims": [evaluate_claim(c, results, spec.macs_tolerance) for c in spec.claims],
    }
    return validate_hypotheses(_jsonable(report), "report")


def compute_verdicts(
    run_dirs: Iterable[Path | str],
    claims: str | Path | ClaimsSpec | Mapping[str, Any],
    out_dir: Path | str | None = None,
    *,
    smoke: bool = False,
    skip_invalid: bool = False,
    figures: bool = True,
) -> tuple[dict[str, Any], list[Path]]:
    """Read result files under ``run_dirs``, judge ``claims``; write the report to ``out_dir`` if given.

    Returns (report, files written). ``claims``: a YAML path, a parsed :class:`ClaimsSpec`, or a mapping.
    """
    from visbench.results import load_results

    if isinstance(claims, ClaimsSpec):
        spec = claims
    elif isinstance(claims, Mapping):
        spec = parse_claims(claims)
    else:
        spec = load_claims(claims)
    loaded, skipped = load_results(run_dirs, skip_invalid=skip_invalid)
    report = evaluate(loaded, spec, smoke=smoke, skipped=skipped)
    written = write_report(report, Path(out_dir), figures=figures) if out_dir is not None else []
    return report, written


def write_report(report: Mapping[str, Any], out_dir: Path, figures: bool = True) -> list[Path]:
    """hypotheses.json, hypotheses.md and (if ``figures``) a PNG + PDF per claim into ``out_dir``."""
    from visbench import hypotheses

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_hypotheses(out_dir / HYPOTHESES_JSON, report)]
    figs: dict[str, list[Path]] = {}
    if figures:
        for claim in report["claims"]:
            figs[claim["id"]] = hypotheses.plot_claim(claim, out_dir, smoke=report["smoke"])
    md = out_dir / HYPOTHESES_MD
    atomic_write_text(
        md, hypotheses.render_markdown(report, {k: [p.name for p in v] for k, v in figs.items()})
    )
    written.append(md)
    for paths in figs.values():
        written += paths
    return written


# ---------------------------------------------------------------------------- hypotheses.json


def write_hypotheses(path: Path, report: Mapping[str, Any]) -> Path:
    """Validate and write ``report`` as JSON atomically."""
    path = Path(path)
    validate_hypotheses(report, f"{path} (not written)")
    return atomic_write_text(path, json.dumps(report, indent=2, allow_nan=False) + "\n")


def load_hypotheses(path: Path | str) -> dict[str, Any]:
    """Read and validate a hypotheses.json; ``HypothesesError`` (a ValueError) names the file and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hypotheses file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise HypothesesError(f"{path}: empty hypotheses file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise HypothesesError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno})") from err
    return validate_hypotheses(data, str(path))


_TOP_FIELDS = {
    "schema_version": int,
    "created": str,
    "smoke": bool,
    "claims_source": str,
    "claims_sha256": (str, type(None)),
    "macs_tolerance": (int, float),
    "result_files": list,
    "skipped_files": list,
    "claims": list,
}
_CLAIM_FIELDS = {
    "id": str,
    "title": str,
    "hypothesis": str,
    "metric": str,
    "higher_is_better": bool,
    "margin": (int, float),
    "confidence": (int, float),
    "min_seeds": int,
    "precedence": str,
    "where": dict,
    "group_by": (str, type(None)),
    "groups": list,
    "models": list,
    "comparisons": list,
    "contrasts": list,
    "overall": str,
    "sentences": list,
}
_INTERVAL_FIELDS = ("n", "mean", "sd", "ci_low", "ci_high", "df", "confidence")
_COMPARISON_FIELDS = {
    "baseline": str,
    "compared": str,
    "seeds": list,
    "baseline_values": list,
    "compared_values": list,
    "baseline_stats": dict,
    "compared_stats": dict,
    "difference": dict,
    "verdict": str,
    "reason": str,
    "support": (str, type(None)),
    "supports_if": list,
    "contradicts_if": list,
    "missing": list,
    "fairness": dict,
}
_CONTRAST_FIELDS = {
    "baseline": str,
    "compared": str,
    "difference": dict,
    "verdict": str,
    "reason": str,
    "support": str,
    "supports_if": list,
    "contradicts_if": list,
    "method": str,
}
_MODEL_FIELDS = {"model": str, "seeds": list, "values": list, "n": int}


def _type_name(t: Any) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join("null" if x is type(None) else x.__name__ for x in ts)


def _check_fields(obj: Any, spec: Mapping[str, Any], where: str, fail: Any) -> None:
    if not isinstance(obj, dict):
        raise fail(where.rstrip("."), f"expected an object, got {type(obj).__name__}")
    for key, t in spec.items():
        if key not in obj:
            raise fail(f"{where}{key}", "missing")
        value = obj[key]
        ts = t if isinstance(t, tuple) else (t,)
        if isinstance(value, bool) and bool not in ts:
            raise fail(f"{where}{key}", f"expected {_type_name(t)}, got {value!r}")
        if not isinstance(value, ts):
            raise fail(f"{where}{key}", f"expected {_type_name(t)}, got {type(value).__name__}")


def _check_interval(obj: Any, where: str, fail: Any) -> None:
    if not isinstance(obj, dict):
        raise fail(where, f"expected an object, got {type(obj).__name__}")
    for key in _INTERVAL_FIELDS:
        if key not in obj:
            raise fail(f"{where}.{key}", "missing")
        v = obj[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise fail(f"{where}.{key}", f"expected a number or null, got {v!r}")
    if obj["ci_low"] is not None and obj["ci_high"] is not None and obj["ci_low"] > obj["ci_high"]:
        raise fail(f"{where}.ci_low", f"{obj['ci_low']} is above ci_high {obj['ci_high']}")


def validate_hypotheses(report: Any, source: str = "hypotheses") -> dict[str, Any]:
    """Check a report against schema version 1; ``HypothesesError`` names ``source`` and the field."""

    def fail(fld: str, msg: str) -> HypothesesError:
        return HypothesesError(f"{source}: field {fld!r}: {msg}")

    if not isinstance(report, dict):
        raise HypothesesError(f"{source}: expected a JSON object, got {type(report).__name__}")
    version = report.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise fail(
            "schema_version", f"{version} is newer than this visbench reads ({SCHEMA_VERSION}); upgrade"
        )
    _check_fields(report, _TOP_FIELDS, "", fail)
    if version != SCHEMA_VERSION:
        raise fail("schema_version", f"{version!r} is not a valid version")
    for key in report:
        if key not in _TOP_FIELDS:
            raise fail(key, "unknown field")
    for i, claim in enumerate(report["claims"]):
        w = f"claims[{i}]."
        _check_fields(claim, _CLAIM_FIELDS, w, fail)
        if claim["overall"] not in OVERALL_VALUES:
            raise fail(f"{w}overall", f"expected one of {OVERALL_VALUES}, got {claim['overall']!r}")
        for j, m in enumerate(claim["models"]):
            _check_fields(m, _MODEL_FIELDS, f"{w}models[{j}].", fail)
        for j, c in enumerate(claim["comparisons"]):
            wc = f"{w}comparisons[{j}]."
            _check_fields(c, _COMPARISON_FIELDS, wc, fail)
            if "group" not in c:
                raise fail(f"{wc}group", "missing")
            for key in ("baseline_stats", "compared_stats", "difference"):
                _check_interval(c[key], f"{wc}{key}", fail)
            if c["verdict"] not in VERDICTS:
                raise fail(f"{wc}verdict", f"expected one of {VERDICTS}, got {c['verdict']!r}")
            if c["support"] is not None and c["support"] not in SUPPORT_VALUES:
                raise fail(f"{wc}support", f"expected one of {SUPPORT_VALUES} or null, got {c['support']!r}")
            if len(c["baseline_values"]) != len(c["seeds"]) or len(c["compared_values"]) != len(c["seeds"]):
                raise fail(f"{wc}seeds", "baseline_values / compared_values do not match the seeds")
            for key in ("baseline", "compared", "macs_ratio", "macs_flag"):
                if key not in c["fairness"]:
                    raise fail(f"{wc}fairness.{key}", "missing")
        for j, k in enumerate(claim["contrasts"]):
            wk = f"{w}contrasts[{j}]."
            _check_fields(k, _CONTRAST_FIELDS, wk, fail)
            for key in ("first_group", "last_group"):
                if key not in k:
                    raise fail(f"{wk}{key}", "missing")
            _check_interval(k["difference"], f"{wk}difference", fail)
            if k["verdict"] not in VERDICTS:
                raise fail(f"{wk}verdict", f"expected one of {VERDICTS}, got {k['verdict']!r}")
            if k["support"] not in SUPPORT_VALUES:
                raise fail(f"{wk}support", f"expected one of {SUPPORT_VALUES}, got {k['support']!r}")
    return report


# ============================================================================ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, help="run folders (searched for result.json) or files"
    )
    parser.add_argument(
        "--claims", type=Path, required=True, help="claims YAML (or a study config with a 'verdicts:' key)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/verdicts"), help="output folder (default: %(default)s)"
    )
    parser.add_argument("--smoke", action="store_true", help="mark the report 'smoke run, not evidence'")
    parser.add_argument("--skip-invalid", action="store_true", help="list and skip malformed result files")
    parser.add_argument("--no-figures", action="store_true", help="write hypotheses.json / .md only")


def run(args: argparse.Namespace) -> int:
    # A missing file or a malformed spec / result raises; `visbench` (cli.main) makes it one line, exit 2.
    report, written = compute_verdicts(
        args.run_dirs,
        args.claims,
        args.out,
        smoke=args.smoke,
        skip_invalid=args.skip_invalid,
        figures=not args.no_figures,
    )
    for path, why in report["skipped_files"]:
        print(f"skipped invalid result: {path}: {why}", file=sys.stderr)
    for claim in report["claims"]:
        judged = claim["contrasts"] if claim["group_by"] else claim["comparisons"]
        for c in judged:
            print(f"{claim['id']}: {c['compared']} vs {c['baseline']}: {c['verdict']} ({c['support']})")
        print(f"{claim['id']}: overall {claim['overall']}")
    for path in written:
        print(path)
    return 0
