"""Pictures of plans: a plan's data-flow DAG as SVG (Jupyter shows a ``Plan`` with it; ``tokenomy viz`` draws each
plan of a trace with it, coloured by the execution's statuses)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenomy.svg import STATUS_FILL, SVG_STYLE, escape, layers, positions, short

__all__ = ["plan_svg"]


def plan_svg(steps: Sequence[Mapping[str, Any]], results: Mapping[str, Mapping[str, Any]] | None = None, *,
             plan_index: int = 0) -> str:
    """An SVG of a plan's data-flow DAG (``planners.plan_steps``); with ``results`` (an ``execution`` event's),
    each step is coloured by its status and shows its value."""
    ids = [s["id"] for s in steps]
    if not ids:
        return '<svg class="tk" xmlns="http://www.w3.org/2000/svg" width="200" height="30"><text x="6" y="20">' \
               "empty plan</text></svg>"
    edges = [(r, s["id"]) for s in steps for r in s.get("reads", []) if r in ids]
    pos, width, height = positions(ids, layers(ids, edges), 250, 64, 120, 40)
    bw, bh = 220, 44
    out = [f'<svg class="tk plan-dag" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="plan">', SVG_STYLE]
    for u, v in edges:  # a curve from u's right side into v's left side, ending in a drawn arrowhead
        (x1, y1), (x2, y2) = pos[u], pos[v]
        tip = x2 - bw / 2
        out.append(f'<path d="M{x1 + bw / 2:.1f},{y1:.1f} C{x1 + bw / 2 + 18:.1f},{y1:.1f} {tip - 26:.1f},'
                   f'{y2:.1f} {tip - 8:.1f},{y2:.1f}" fill="none" stroke="#778" stroke-width="1.3"/>'
                   f'<polygon points="{tip:.1f},{y2:.1f} {tip - 8:.1f},{y2 - 4:.1f} {tip - 8:.1f},{y2 + 4:.1f}" '
                   'fill="#778"/>')
    for s in steps:
        x, y = pos[s["id"]]
        res = (results or {}).get(s["id"])
        status = res.get("status") if res else None
        value = res.get("value") if res else None
        line2 = f"{status}: {value}" if status and value is not None else (status or s.get("kind", ""))
        out.append(f'<g class="step" data-step="{escape(s["id"])}" data-plan="{plan_index}" '
                   f'data-status="{escape(status or "")}" tabindex="0"><title>{escape(s.get("text", ""))}</title>'
                   f'<rect x="{x - bw / 2:.1f}" y="{y - bh / 2:.1f}" width="{bw}" height="{bh}" rx="6" '
                   f'fill="{STATUS_FILL.get(status, "#fff")}" stroke="#556" stroke-width="1.2"/>'
                   f'<text x="{x - bw / 2 + 8:.1f}" y="{y - 4:.1f}">{escape(short(s.get("text", s["id"]), 32))}</text>'
                   f'<text class="sub" x="{x - bw / 2 + 8:.1f}" y="{y + 13:.1f}">{escape(short(line2, 38))}</text></g>')
    out.append("</svg>")
    return "".join(out)
