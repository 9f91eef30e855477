"""The project's figure style: one look for every plot that ``visbench tables`` and the verdicts draw.

Why one module: a reader compares figures side by side, so a family (gated CNN, SSM, attention) has
the same colour, marker and line style in every one of them; colours are Okabe-Ito's colour-blind-safe
palette and the markers and line styles differ too, so a grayscale print still tells the families apart.
Figures are sized for a paper: :data:`COLUMN_WIDTH` (one column, 3.3 in) or :data:`FULL_WIDTH`, with
fonts of 6.5-8 pt at that size. :func:`save_figure` writes a PNG (300 dpi) and a vector PDF.

:func:`overlapping_texts` renders a figure and lists the pairs of texts (and legends over data lines)
that overlap: the tests assert it is empty for every figure at both widths; anyone can call it on a
new figure. :func:`place_labels` labels a few points without collisions, by construction.
"""

from __future__ import annotations

import contextlib
import math
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMN_WIDTH",
    "FAMILY_STYLES",
    "FULL_WIDTH",
    "NEUTRAL_STYLES",
    "RC",
    "FamilyStyle",
    "clipped_texts",
    "describe_overlaps",
    "family_of",
    "family_style",
    "figure_style",
    "figure_width",
    "model_style",
    "new_figure",
    "overlapping_texts",
    "place_labels",
    "save_figure",
    "set_title",
    "fit_titles",
    "wrap",
]

COLUMN_WIDTH = 3.3  # inches: one column of a two-column paper
FULL_WIDTH = 6.9  # inches: the text width of a two-column paper
PNG_DPI = 300

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision deficiency.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}


@dataclass(frozen=True)
class FamilyStyle:
    """How one family is drawn everywhere: colour, marker and line style (the last two for grayscale)."""

    family: str
    label: str
    color: str
    marker: str
    linestyle: str | tuple[float, tuple[float, ...]]

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Axes.plot`` / ``errorbar``."""
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle}


# Dark blue, mid vermillion and light orange: three grey levels in print, on top of three marker shapes.
FAMILY_STYLES: dict[str, FamilyStyle] = {
    "gated_cnn": FamilyStyle("gated_cnn", "gated CNN", OKABE_ITO["blue"], "o", "-"),
    "ssm": FamilyStyle("ssm", "SSM", OKABE_ITO["vermillion"], "s", "--"),
    "attention": FamilyStyle("attention", "attention", OKABE_ITO["orange"], "^", "-."),
    "cnn": FamilyStyle("cnn", "CNN", OKABE_ITO["reddish_purple"], "D", ":"),
    "unknown": FamilyStyle("unknown", "other", "#7F7F7F", "X", (0, (1, 1))),
}
# For series that are no family (a curve shared by several families, a reference line): greys that
# stay apart from the family colours, with their own markers and dashes.
NEUTRAL_STYLES: list[dict[str, Any]] = [
    {"color": "#000000", "marker": "P", "linestyle": "-"},
    {"color": "#555555", "marker": "v", "linestyle": "--"},
    {"color": "#8C8C8C", "marker": "*", "linestyle": "-."},
    {"color": "#333333", "marker": "h", "linestyle": ":"},
]
ORDER_FILLS = {"full": "full", "causal": "none", "bidir": "left", "cross2d": "top"}
BODY_LINESTYLES = {"hierarchical": "-", "isotropic": "--", "sequence": ":"}

# Font sizes in points at the printed size (the figure is made at the size it is printed at).
RC: dict[str, Any] = {
    "font.size": 7.0,
    "axes.titlesize": 7.5,
    "axes.labelsize": 7.0,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5,
    "legend.title_fontsize": 6.5,
    "figure.titlesize": 8.0,
    "lines.linewidth": 1.2,
    "lines.markersize": 4.0,
    "errorbar.capsize": 2.0,
    "axes.linewidth": 0.6,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.35,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "legend.frameon": False,
    "legend.handlelength": 2.2,
    "pdf.fonttype": 42,  # TrueType in the PDF: text stays text (searchable, editable)
    "svg.fonttype": "none",
    "savefig.dpi": PNG_DPI,
}


def family_of(model_or_family: str) -> str:
    """The family key of a model name (ours or timm's, via ``backbones.naming``) or of a family name."""
    if model_or_family in FAMILY_STYLES:
        return model_or_family
    from visbench.backbones.naming import describe_any

    family = describe_any(model_or_family).family
    return family if family in FAMILY_STYLES else "unknown"


def family_style(model_or_family: str) -> FamilyStyle:
    """The fixed style of a family, given the family (``"ssm"``) or any model name (``"ssm_bidir_tiny"``)."""
    return FAMILY_STYLES[family_of(model_or_family)]


def model_style(name: str, family: str | None = None, order: str | None = None) -> dict[str, Any]:
    """Plot keywords for one model: its family's colour and marker; the marker's fill says the order
    (full: filled, causal: open, bidir: left half, cross2d: top half); the line style says the body
    (hierarchical solid, isotropic dashed, sequence dotted). Models of one size thus differ in a figure."""
    from visbench.backbones.naming import describe_any

    d = describe_any(name)
    style = family_style(family or d.family)
    fill = ORDER_FILLS.get(order or d.order, "full")
    return {
        "color": style.color,
        "marker": style.marker,
        "linestyle": BODY_LINESTYLES.get(d.body, style.linestyle),
        "fillstyle": "full" if fill == "none" else fill,  # open = white face: hides the line behind it
        "markerfacecolor": "white" if fill == "none" else style.color,
        "markerfacecoloralt": "white",
        "markeredgecolor": style.color,
    }


def figure_width(width: str | float) -> float:
    """``"column"`` -> 3.3 in, ``"full"`` -> 6.9 in, a number -> itself (inches)."""
    if isinstance(width, str):
        try:
            return {"column": COLUMN_WIDTH, "full": FULL_WIDTH}[width]
        except KeyError:
            raise ValueError(f"width {width!r}: expected 'column', 'full' or inches") from None
    return float(width)


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """The project's rcParams (fonts at print size, Agg backend) for the figures made inside."""
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context(RC):
        yield


def new_figure(
    width: str | float = "column", height: float | None = None, nrows: int = 1, ncols: int = 1, **kw: Any
) -> tuple[Any, Any]:
    """``plt.subplots`` at print size with constrained layout; call inside :func:`figure_style`."""
    import matplotlib.pyplot as plt

    w = figure_width(width)
    h = height if height is not None else w * 0.75
    return plt.subplots(nrows, ncols, figsize=(w, h), layout="constrained", squeeze=False, **kw)


def wrap(text: str, width_in: float, fontsize: float = 7.0) -> str:
    """``text`` wrapped to lines that fit ``width_in`` inches at ``fontsize`` points (a safe estimate)."""
    chars = max(12, int(width_in * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(part, chars) for part in text.split("\n"))


def set_title(ax: Any, text: str, loc: str = "left") -> None:
    """An axes title that :func:`fit_titles` re-wraps to the axes' final width (no title runs off)."""
    ax._visbench_title = (text, loc)
    ax.set_title(wrap(text, ax.figure.get_figwidth() - 0.4, float(ax.title.get_fontsize())), loc=loc)


def fit_titles(fig: Any) -> None:
    """Re-wrap the titles set by :func:`set_title` to their axes' width once the layout is known."""
    for _ in range(2):  # a new line count moves the layout a little: settle it
        fig.canvas.draw()
        for ax in fig.get_axes():
            if hasattr(ax, "_visbench_title"):
                text, loc = ax._visbench_title
                width_in = ax.get_window_extent().width / fig.dpi
                ax.set_title(wrap(text, width_in, float(ax.title.get_fontsize())), loc=loc)


def save_figure(fig: Any, out_dir: Path | str, stem: str, close: bool = True) -> list[Path]:
    """Write ``stem.png`` (300 dpi) and ``stem.pdf`` (vector) into ``out_dir``; returns both paths."""
    import matplotlib
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    with matplotlib.rc_context({k: RC[k] for k in ("pdf.fonttype", "savefig.dpi")}):
        for p in paths:
            fig.savefig(p, dpi=PNG_DPI, metadata={"Software": None} if p.suffix == ".png" else None)
    if close:
        plt.close(fig)
    return paths


# --------------------------------------------------------------------------------------------- checks


def _drawn_tick_labels(fig: Any) -> tuple[set[int], list[Any]]:
    """(ids of every tick label, the tick labels actually drawn: tick inside the view interval)."""
    all_ids: set[int] = set()
    drawn: list[Any] = []
    axes = [a for ax in fig.get_axes() for a in (ax, *getattr(ax, "child_axes", []))]
    for ax in axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            span = (hi - lo) or 1.0
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                labels = (tick.label1, tick.label2)
                all_ids.update(id(t) for t in labels)
                loc = tick.get_loc()
                if loc is None or not (lo - 1e-9 * span <= loc <= hi + 1e-9 * span):
                    continue
                drawn += [t for t in labels if t.get_visible() and tick.get_visible()]
    return all_ids, drawn


def _visible_texts(fig: Any) -> list[Any]:
    """Every text the renderer draws with ink: non-empty, visible, inside visible parents."""
    from matplotlib.text import Text

    tick_ids, ticks = _drawn_tick_labels(fig)
    hidden: set[int] = set()
    for artist in fig.findobj(lambda a: not a.get_visible()):
        hidden.update(id(c) for c in artist.findobj())
    texts = [t for t in fig.findobj(Text) if id(t) not in tick_ids] + ticks
    return [t for t in texts if id(t) not in hidden and t.get_visible() and t.get_text().strip()]


def _shrunk(bbox: Any, px: float) -> Any:
    from matplotlib.transforms import Bbox

    return Bbox.from_extents(bbox.x0 + px, bbox.y0 + px, bbox.x1 - px, bbox.y1 - px)


def _legends(fig: Any) -> list[Any]:
    legends = [ax.get_legend() for ax in fig.get_axes()] + list(fig.legends)
    return [lg for lg in legends if lg is not None and lg.get_visible()]


def _data_artists(ax: Any) -> list[Any]:
    """Lines and marker / bar collections of an axes: what a legend must not cover."""
    from matplotlib.collections import LineCollection, PathCollection

    out: list[Any] = [ln for ln in ax.lines if ln.get_visible() and len(ln.get_xydata())]
    out += [c for c in ax.collections if c.get_visible() and isinstance(c, (LineCollection, PathCollection))]
    return out


def _covers(artist: Any, bbox: Any) -> bool:
    """Does a data line / collection pass through ``bbox`` (display pixels)?"""
    import numpy as np
    from matplotlib.collections import LineCollection, PathCollection
    from matplotlib.path import Path as MplPath

    if isinstance(artist, PathCollection):
        pts = artist.get_offset_transform().transform(np.asarray(artist.get_offsets(), dtype=float))
        return bool(len(pts)) and bbox.count_contains(pts) > 0
    if isinstance(artist, LineCollection):
        tr = artist.get_transform()
        return any(
            MplPath(tr.transform(np.asarray(seg))).intersects_bbox(bbox, filled=False)
            for seg in artist.get_segments()
            if len(seg)
        )
    path = artist.get_transform().transform_path(artist.get_path())
    if artist.get_linestyle() in ("None", "none", "", " "):
        pts = path.vertices[np.isfinite(path.vertices).all(axis=1)]
        return bool(len(pts)) and bbox.count_contains(pts) > 0
    return bool(path.intersects_bbox(bbox, filled=False))


def overlapping_texts(fig: Any, tolerance_px: float = 0.5) -> list[tuple[Any, Any]]:
    """Render ``fig`` and return the pairs of artists that overlap on the canvas.

    Checked: every drawn text against every other (tick labels, titles, axis labels, annotations,
    legend texts, figure texts), each legend's box against the texts outside it and against the
    other legends, and a legend inside an axes against that axes' data lines and markers. Bounding
    boxes are shrunk by ``tolerance_px`` so that texts that merely touch do not count. Empty: legible.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = _visible_texts(fig)
    boxes = [(t, _shrunk(t.get_window_extent(renderer), tolerance_px)) for t in texts]
    boxes = [(t, b) for t, b in boxes if b.width > 0 and b.height > 0]
    pairs: list[tuple[Any, Any]] = []
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1 :]:
            if ba.overlaps(bb):
                pairs.append((a, b))
    legends = _legends(fig)
    for i, lg in enumerate(legends):
        lbox = _shrunk(lg.get_window_extent(renderer), tolerance_px)
        own = {id(a) for a in lg.findobj()}
        pairs += [(lg, t) for t, bt in boxes if id(t) not in own and lbox.overlaps(bt)]
        for other in legends[i + 1 :]:
            if lbox.overlaps(_shrunk(other.get_window_extent(renderer), tolerance_px)):
                pairs.append((lg, other))
        ax = lg.axes if lg in [a.get_legend() for a in fig.get_axes()] else None
        if ax is not None:
            pairs += [(lg, d) for d in _data_artists(ax) if _covers(d, lbox)]
    return pairs


def clipped_texts(fig: Any, tolerance_px: float = 1.0) -> list[Any]:
    """Texts that stick out of the figure canvas (cut off in the saved file)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    w, h = fig.canvas.get_width_height()
    out = []
    for t in _visible_texts(fig):
        b = t.get_window_extent(renderer)
        if b.x0 < -tolerance_px or b.y0 < -tolerance_px or b.x1 > w + tolerance_px or b.y1 > h + tolerance_px:
            out.append(t)
    return out


def describe_overlaps(pairs: Sequence[tuple[Any, Any]]) -> list[str]:
    """Readable names of overlapping pairs, for assertion messages."""

    def name(a: Any) -> str:
        get_text = getattr(a, "get_text", None)
        if get_text is not None:
            return f"text {get_text()!r}"
        label = a.get_label() if hasattr(a, "get_label") else ""
        return f"{type(a).__name__} {label!r}"

    return [f"{name(a)} overlaps {name(b)}" for a, b in pairs]


# --------------------------------------------------------------------------------------------- labels

_OFFSETS = (  # (dx, dy) in points, ha, va: around the point, nearest first
    (4, 3, "left", "bottom"),
    (-4, 3, "right", "bottom"),
    (4, -3, "left", "top"),
    (-4, -3, "right", "top"),
    (6, 0, "left", "center"),
    (-6, 0, "right", "center"),
    (0, 6, "center", "bottom"),
    (0, -6, "center", "top"),
)


def place_labels(
    ax: Any,
    points: Sequence[tuple[float, float, str]],
    extents: Sequence[tuple[float, float]] | None = None,
    fontsize: float = 6.0,
    marker_px: float = 6.0,
) -> list[Any]:
    """Label points in the given order where a label fits; return the annotations placed.

    A label is placed at the first of eight spots around its point that lies inside the axes and
    clears every other label, every point's marker (and error bar: ``extents`` gives each point's
    (y_low, y_high) in data units) and the axes' existing texts and legend; a label that fits nowhere
    is left out, so labels never pile up. Call after the layout is final (e.g. after
    ``fig.canvas.draw()``); the labels are kept out of the layout so they do not move it.
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    half = marker_px / 2
    obstacles = []
    for i, (x, y, _) in enumerate(points):
        px, py = ax.transData.transform((x, y))
        lo, hi = py, py
        if extents is not None and extents[i] is not None:
            lo = ax.transData.transform((x, extents[i][0]))[1]
            hi = ax.transData.transform((x, extents[i][1]))[1]
        obstacles.append(Bbox.from_extents(px - half, min(lo, py) - half, px + half, max(hi, py) + half))
    obstacles += [t.get_window_extent(renderer) for t in ax.texts if t.get_text().strip()]
    if ax.get_legend() is not None:
        obstacles.append(ax.get_legend().get_window_extent(renderer))
    placed = []
    for x, y, label in points:
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        for dx, dy, ha, va in _OFFSETS:
            ann = ax.annotate(
                label, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=fontsize
            )
            ann.set_in_layout(False)
            box = ann.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(o) for o in obstacles):
                obstacles.append(box)
                placed.append(ann)
                break
            ann.remove()
    return placed
