"""PNG plots: the one plotting module shared by the benchmarks (each one's ``plot_records``) and
``tokenomy viz --png``.

Figures are drawn on a matplotlib ``Figure`` with the Agg canvas: no display and no pyplot state are touched, and
matplotlib is imported on first use, so importing this module is cheap. Every function writes one PNG (creating
its folder) and returns its path; one look throughout (one colour cycle, 9 x 5.5 inches at 100 dpi, light grid,
title and axis labels always set); empty input writes a figure that says "no data".
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["lines", "scatter", "bars", "COLOURS", "SIZE", "DPI"]

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
SIZE = (9.0, 5.5)
DPI = 100

Point = tuple[str, float, float]


def _figure(panels: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, max(panels, 1), squeeze=False)[0])
    for ax in axes:
        ax.set_prop_cycle(color=COLOURS)
        ax.grid(True, alpha=0.3)
        ax.set_axisbelow(True)
    return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=DPI)
    return out


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=16, color="#7f7f7f")
    ax.set_xticks([])
    ax.set_yticks([])


def _finite(values: Iterable[float | None]) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _compact(value: float, _pos: object = None) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _scale(ax: Axes, axis: str, log: bool, values: Sequence[float]) -> None:
    """A log scale where asked and every value is positive (ticks at 1, 2 and 5 times a power of ten, written
    1k, 20M, ...); integer ticks on a linear axis of integers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    which = ax.xaxis if axis == "x" else ax.yaxis
    if log and values and min(values) > 0:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        wide = max(values) / min(values) >= 3
        which.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if wide else tuple(range(1, 10))))
        which.set_major_formatter(FuncFormatter(_compact))
        which.set_minor_formatter(NullFormatter())
    elif values and all(float(v).is_integer() for v in values):
        which.set_major_locator(MaxNLocator(integer=True))


def _place_labels(fig: Figure, ax: Axes, at: Mapping[tuple[float, float], Sequence[str]],
                  highlight: Collection[str]) -> None:
    """Each point's label beside it, on the first side where it overlaps no other label or point and stays
    inside the axes (else on the first side)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    assert isinstance(fig.canvas, FigureCanvasAgg)
    fig.tight_layout()
    ax.autoscale_view()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = [Bbox.from_bounds(px - 5, py - 5, 10, 10) for px, py in ax.transData.transform(list(at))]
    sides = ((5, 4, "left", "bottom"), (5, -4, "left", "top"), (-5, 4, "right", "bottom"), (-5, -4, "right", "top"),
             (0, 8, "center", "bottom"), (0, -8, "center", "top"))
    order = sorted(at.items(), key=lambda kv: (not any(n in highlight for n in kv[1]), kv[0]))
    for (x, y), names in order:
        kw: dict[str, Any] = {"textcoords": "offset points", "fontsize": 8,
                              "fontweight": "bold" if any(n in highlight for n in names) else "normal"}
        for dx, dy, ha, va in sides:
            label = ax.annotate(", ".join(names), (x, y), xytext=(dx, dy), ha=ha, va=va, **kw)
            box = label.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(t) for t in taken):
                break
            label.remove()
        else:
            dx, dy, ha, va = sides[0]
            box = ax.annotate(", ".join(names), (x, y), xytext=(dx, dy), ha=ha, va=va, **kw).get_window_extent(renderer)
        taken.append(box)


def _legend(ax: Axes) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=9, frameon=False)


def lines(series: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, *, title: str, xlabel: str,
          ylabel: str, logx: bool = False, logy: bool = False) -> Path:
    """One line with markers per series (points sorted by x; points that are not finite are left out). A series
    identical to an earlier one is drawn dashed over it and labelled ``name (= other)``."""
    fig, (ax,) = _figure()
    drawn: dict[str, list[tuple[float, float]]] = {}
    for name, points in series.items():
        pts = sorted((float(x), float(y)) for x, y in points if _finite((x, y)))
        if not pts:
            continue
        same = next((other for other, p in drawn.items() if p == pts), None)
        i = len(drawn)
        colour = COLOURS[i % len(COLOURS)]
        ax.plot([x for x, _ in pts], [y for _, y in pts], color=colour, marker=MARKERS[i % len(MARKERS)],
                markersize=6, linewidth=2, linestyle="--" if same else "-", markerfacecolor="none" if same else colour,
                label=f"{name} (= {same})" if same else name)
        drawn[name] = pts
    xs = [x for pts in drawn.values() for x, _ in pts]
    ys = [y for pts in drawn.values() for _, y in pts]
    if drawn:
        _scale(ax, "x", logx, xs)
        _scale(ax, "y", logy, ys)
        _legend(ax)
    else:
        _no_data(ax)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _save(fig, path)


def scatter(points: Sequence[Point] | Mapping[str, Sequence[Point]], path: str | Path, *, title: str,
            xlabel: str | Sequence[str], ylabel: str, logx: bool = False, highlight: Collection[str] = (),
            highlight_label: str = "highlighted") -> Path:
    """Points ``(name, x, y)``, each labelled with its name (names at the same point share one label); names in
    ``highlight`` are drawn as larger red stars, with a legend entry ``highlight_label``. A mapping of panel
    title to points draws one panel per entry, side by side under ``title``; ``xlabel``: one label, or one per
    panel."""
    panels = dict(points) if isinstance(points, Mapping) else {"": list(points)}
    fig, axes = _figure(len(panels))
    xlabels = [xlabel] * len(axes) if isinstance(xlabel, str) else list(xlabel)
    labels: list[dict[tuple[float, float], list[str]]] = []
    for ax, xl, (panel, pts) in zip(axes, xlabels, panels.items() or [("", [])], strict=True):
        at: dict[tuple[float, float], list[str]] = {}
        for name, x, y in pts:
            if _finite((x, y)):
                at.setdefault((float(x), float(y)), []).append(name)
        if not at:
            _no_data(ax)
        for flag in (False, True):
            xy = [p for p, names in at.items() if any(n in highlight for n in names) == flag]
            if xy:
                ax.scatter([x for x, _ in xy], [y for _, y in xy], s=110 if flag else 40, zorder=3,
                           marker="*" if flag else "o", color=COLOURS[3] if flag else COLOURS[0],
                           label=highlight_label if flag else None)
        if at:
            ax.margins(0.1)
            _scale(ax, "x", logx, [x for x, _ in at])
        if any(n in highlight for names in at.values() for n in names):
            ax.legend(loc="best", fontsize=9)
        ax.set(xlabel=xl, ylabel=ylabel if ax is axes[0] else "")
        ax.set_title(panel if len(axes) > 1 else title)
        labels.append(at)
    if len(axes) > 1:
        fig.suptitle(title)
    for ax, at in zip(axes, labels, strict=True):
        _place_labels(fig, ax, at, highlight)
    return _save(fig, path)


def bars(rows: Sequence[tuple[str, Mapping[str, float]]], path: str | Path, *, title: str, ylabel: str,
         stacked: bool = True) -> Path:
    """One bar per row label, one segment (``stacked``) or one bar side by side per key, a colour per key and a
    legend. Bars lie horizontal, top to bottom in row order, when a label's line is long or the rows are many;
    ``ylabel`` names the value axis either way. A key a row lacks counts 0."""
    fig, (ax,) = _figure()
    keys = list(dict.fromkeys(k for _, values in rows for k in values))
    if not rows or not keys:
        _no_data(ax)
        ax.set(title=title, ylabel=ylabel)
        return _save(fig, path)
    labels = [label for label, _ in rows]
    horizontal = len(rows) > 8 or max(len(line) for label in labels for line in label.splitlines() or [""]) > 12
    width = 0.8 if stacked else 0.8 / len(keys)
    base = [0.0] * len(rows)
    for j, key in enumerate(keys):
        values = [float(v.get(key, 0.0)) for _, v in rows]
        pos = [i if stacked else i - 0.4 + width * (j + 0.5) for i in range(len(rows))]
        kw: dict[str, Any] = {"color": COLOURS[j % len(COLOURS)], "label": key}
        if horizontal:
            ax.barh(pos, values, height=width, left=base if stacked else None, **kw)
        else:
            ax.bar(pos, values, width=width, bottom=base if stacked else None, **kw)
        if stacked:
            base = [b + v for b, v in zip(base, values, strict=True)]
    ax.grid(False)
    if horizontal:
        ax.set_yticks(range(len(rows)), labels, fontsize=9)
        ax.invert_yaxis()
        ax.grid(True, axis="x", alpha=0.3)
        ax.set(title=title, xlabel=ylabel)
    else:
        ax.set_xticks(range(len(rows)), labels)
        ax.grid(True, axis="y", alpha=0.3)
        ax.set(title=title, ylabel=ylabel)
    _legend(ax)
    return _save(fig, path)
