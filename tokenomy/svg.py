"""The small SVG toolkit the pictures share (agent graphs in ``graphs/render.py``, plans in ``planners/render.py``,
the trace page in ``tokenomy.viz``): escaping, layered and circular layouts, and one style sheet.

A leaf: it imports nothing of tokenomy, so every floor that draws may use it.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["escape", "short", "layers", "positions", "circle", "SVG_STYLE", "STATUS_FILL"]

# A plan step's fill by its execution status.
STATUS_FILL = {"ok": "#d8f0d8", "error": "#f6cccc", "timeout": "#f6cccc", "eval": "#f6cccc", "failed": "#f6cccc",
               "skipped": "#ececec", None: "#ffffff"}


def escape(s: Any) -> str:
    """``s`` as text safe inside SVG/HTML text and attribute values."""
    return html.escape(str(s), quote=True)


def short(s: str, n: int) -> str:
    """``s`` on one line, cut to ``n`` characters with an ellipsis."""
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def layers(nodes: Sequence[str], edges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Longest-path layers of the graph's DAG part (edges that close a cycle are ignored, in order)."""
    import networkx as nx

    g: Any = nx.DiGraph()
    g.add_nodes_from(nodes)
    for u, v in edges:
        if u == v or u not in g or v not in g:
            continue
        g.add_edge(u, v)
        if not nx.is_directed_acyclic_graph(g):
            g.remove_edge(u, v)
    layer: dict[str, int] = {}
    for n in nx.topological_sort(g):
        layer[n] = max((layer[p] + 1 for p in g.predecessors(n)), default=0)
    return layer


def positions(nodes: Sequence[str], layer: Mapping[str, int], dx: float, dy: float, x0: float, y0: float
               ) -> tuple[dict[str, tuple[float, float]], float, float]:
    cols: dict[int, list[str]] = defaultdict(list)
    for n in nodes:
        cols[layer.get(n, 0)].append(n)
    tallest = max((len(c) for c in cols.values()), default=1)
    pos = {}
    for k, col in cols.items():
        off = (tallest - len(col)) * dy / 2
        for i, n in enumerate(col):
            pos[n] = (x0 + k * dx, y0 + off + i * dy)
    width = x0 * 2 + (max(cols, default=0)) * dx
    height = y0 * 2 + (tallest - 1) * dy
    return pos, width, height


def circle(names: Sequence[str]) -> tuple[dict[str, tuple[float, float]], float, float]:
    n = len(names)
    r = 0.0 if n == 1 else max(90.0, 34.0 * n / math.pi)
    cx, cy = 80 + r, 110 + r
    pos = {name: (cx + r * math.cos(math.pi + 2 * math.pi * i / n), cy + r * math.sin(math.pi + 2 * math.pi * i / n))
           for i, name in enumerate(names)}
    pos["decision"] = (cx + r + 170, cy)
    return pos, cx + r + 250, cy + r + 90


SVG_STYLE = ("<style>svg.tk{max-width:100%;height:auto}.tk text{font:12px sans-serif;fill:#223}"
              ".tk .sub{font-size:10px;fill:#667}"
              ".tk .node,.tk .step,.tk .call{cursor:pointer}.tk .off text{fill:#999}"
              ".tk .node:hover circle,.tk .step:hover rect{stroke-width:3}.tk g:focus{outline:none}</style>")
