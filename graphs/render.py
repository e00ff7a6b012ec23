"""Pictures of an ``AgentGraph``: Mermaid, Graphviz DOT and plain text, all offline (text out, nothing to install).

Every agent and edge is drawn with its state: ``runs`` (in the schedule), ``pruned`` (inactive in the mask) or
``dead`` (active, but nothing it says reaches the decision node, so it never runs). Given a run's ``GraphResult``,
agents are labelled with the tokens they spent and edges with the tokens they inserted, and edge widths follow
those tokens. Temporal edges (read in the next round) are drawn apart from spatial ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tokenomy.svg import SVG_STYLE, circle, escape, layers, positions, short

from .graph import DECISION, AgentGraph, Edge

__all__ = ["to_mermaid", "to_dot", "to_ascii", "to_json", "to_svg", "graph_svg"]


def _states(graph: AgentGraph) -> tuple[dict[str, str], dict[Edge, str]]:
    sched = graph.schedule()
    ran = sched.agents
    used = {e for e, _ in sched.edge_uses()}
    agents = {n: ("runs" if n in ran else "dead" if graph.is_active(n) else "pruned") for n in graph.order}
    edges = {e: ("runs" if e in used else "dead" if graph.is_active(e) else "pruned") for e in graph.edges()}
    return agents, edges


def _agent_tokens(result: Any) -> dict[str, int]:
    if result is None:
        return {}
    return {a: (u.prompt_tokens or 0) + (u.completion_tokens or 0) for a, u in result.usage.items()}


def _edge_tokens(result: Any) -> dict[str, int]:
    return dict(result.by_edge) if result is not None else {}


def _decision_label(graph: AgentGraph) -> str:
    if graph.decision == "solver" and graph.solver is not None:
        return f"decision: solver {graph.solver.name}"
    return f"decision: {graph.decision}"


def _agent_label(graph: AgentGraph, name: str, state: str, tokens: dict[str, int], sep: str) -> str:
    role = graph.agents[name].role
    if state != "runs":
        return f"{name}{sep}{role} · {state}"
    return f"{name}{sep}{role}" + (f" · {tokens[name]} tok" if name in tokens else "")


def _width(tokens: int | None, top: int, lo: float, hi: float) -> float:
    if not tokens or not top:
        return lo
    return round(lo + (hi - lo) * tokens / top, 1)


def to_mermaid(graph: AgentGraph, result: Any = None, *, show_pruned: bool = True) -> str:
    """A Mermaid ``flowchart``: spatial ``-->``, temporal ``==>`` (labelled "next round"), pruned and dead
    edges as grey dotted lines, pruned and dead agents greyed; edge width by the tokens it inserted."""
    agents, edges = _states(graph)
    a_tok, e_tok = _agent_tokens(result), _edge_tokens(result)
    ids = {n: f"a{i}" for i, n in enumerate(graph.order)}
    ids[DECISION] = "decision"
    lines = ["flowchart LR"]
    for n in graph.order:
        if agents[n] != "runs" and not show_pruned:
            continue
        cls = "" if agents[n] == "runs" else ":::off"
        lines.append(f'  {ids[n]}["{_agent_label(graph, n, agents[n], a_tok, "<br/>")}"]{cls}')
    dec = _decision_label(graph)
    if graph.solver is not None and graph.solver.name in a_tok:
        dec += f" · {a_tok[graph.solver.name]} tok"
    lines.append(f'  decision{{{{"{dec}"}}}}')
    top = max(e_tok.values(), default=0)
    styles = []
    k = 0
    for e in graph.edges():
        state = edges[e]
        if state != "runs" and not show_pruned:
            continue
        a, b = ids[e.src], ids[e.dst]
        if state != "runs":
            lines.append(f'  {a} -.-|"{state}"| {b}')
            styles.append(f"  linkStyle {k} stroke:#bbb,stroke-dasharray:3 3")
        else:
            tok = e_tok.get(str(e))
            label = ("next round" if e.kind == "temporal" else "") + (
                f"{' · ' if e.kind == 'temporal' else ''}{tok} tok" if tok is not None else "")
            arrow = "==>" if e.kind == "temporal" else "-->"
            lines.append(f'  {a} {arrow}|"{label}"| {b}' if label else f"  {a} {arrow} {b}")
            styles.append(f"  linkStyle {k} stroke-width:{_width(tok, top, 1, 6)}px")
        k += 1
    lines.append("  classDef off fill:#f4f4f4,stroke:#bbb,color:#999,stroke-dasharray:4 3")
    return "\n".join(lines + styles) + "\n"


def to_dot(graph: AgentGraph, result: Any = None, *, show_pruned: bool = True) -> str:
    """Graphviz DOT: pruned and dead agents and edges dashed grey; temporal edges blue and bold (not used for
    ranking); edge ``penwidth`` by the tokens it inserted."""
    agents, edges = _states(graph)
    a_tok, e_tok = _agent_tokens(result), _edge_tokens(result)
    out = [f'digraph "{graph.name}" {{', "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];',
           '  edge [fontname="Helvetica", fontsize=10];']
    for n in graph.order:
        if agents[n] != "runs" and not show_pruned:
            continue
        label = _agent_label(graph, n, agents[n], a_tok, "\\n")
        grey = ", style=dashed, color=gray60, fontcolor=gray60" if agents[n] != "runs" else ""
        out.append(f'  "{n}" [label="{label}"{grey}];')
    out.append(f'  "{DECISION}" [shape=diamond, label="{_decision_label(graph)}"];')
    top = max(e_tok.values(), default=0)
    for e in graph.edges():
        state = edges[e]
        if state != "runs" and not show_pruned:
            continue
        attrs: list[str] = []
        if state != "runs":
            attrs += [f'label="{state}"', "style=dashed", "color=gray70", "fontcolor=gray70", "arrowhead=none"]
        else:
            tok = e_tok.get(str(e))
            label = ("next round" if e.kind == "temporal" else "") + (
                f"{' · ' if e.kind == 'temporal' else ''}{tok} tok" if tok is not None else "")
            if label:
                attrs.append(f'label="{label}"')
            attrs.append(f"penwidth={_width(tok, top, 1, 5)}")
            if e.kind == "temporal":
                attrs += ["style=bold", "color=blue", "constraint=false"]
        out.append(f'  "{e.src}" -> "{e.dst}" [{", ".join(attrs)}];')
    out.append("}")
    return "\n".join(out) + "\n"


def to_ascii(graph: AgentGraph, result: Any = None, *, show_pruned: bool = True, bar: int = 20) -> str:
    """A plain-text picture: agents with their state and tokens, then edges with their state, the tokens each
    inserted and a bar as long as its share of the largest."""
    agents, edges = _states(graph)
    a_tok, e_tok = _agent_tokens(result), _edge_tokens(result)
    sched = graph.schedule()
    head = (f"{graph.name}: {len(sched.agents)} of {len(graph.agents)} agents run, {len(sched.calls)} calls, "
            f"{graph.active_rounds} of {graph.rounds} rounds, {_decision_label(graph)}")
    lines = [head, "agents"]
    width = max(len(n) for n in [*graph.order, DECISION])
    for n in graph.order:
        if agents[n] != "runs" and not show_pruned:
            continue
        state = {"runs": "runs", "pruned": "PRUNED", "dead": "dead (no path to the decision)"}[agents[n]]
        calls = sum(1 for c in sched.calls if c.agent == n)
        extra = f"  calls {calls}" + (f"  tokens {a_tok[n]}" if n in a_tok else "") if agents[n] == "runs" else ""
        lines.append(f"  {n:<{width}}  {graph.agents[n].role:<8} {state}{extra}")
    if graph.solver is not None:
        spent = f"  tokens {a_tok[graph.solver.name]}" if graph.solver.name in a_tok else ""
        lines.append(f"  {graph.solver.name:<{width}}  {graph.solver.role:<8} decides{spent}")
    lines.append("edges")
    shown = [e for e in graph.edges() if edges[e] == "runs" or show_pruned]
    ew = max((len(str(e)) for e in shown), default=0)
    top = max(e_tok.values(), default=0)
    for e in shown:
        state = edges[e]
        if state == "runs":
            tok = e_tok.get(str(e))
            size = round(bar * tok / top) if tok and top else 0
            info = f"{tok:>6} tok  {'#' * max(size, 1)}" if tok is not None else "runs"
        else:
            info = "pruned" if state == "pruned" else "dead"
        lines.append(f"  {str(e):<{ew}}  {e.kind:<8}  {info}")
    return "\n".join(lines) + "\n"


def to_json(graph: AgentGraph, result: Any = None) -> dict[str, Any]:
    """The graph as plain data (what a trace's ``graph`` event holds): agents and edges with their state and,
    given a run's ``GraphResult``, their tokens."""
    agents, edges = _states(graph)
    a_tok, e_tok = _agent_tokens(result), _edge_tokens(result)
    members = [graph.agents[n] for n in graph.order] + ([graph.solver] if graph.solver is not None else [])
    return {
        "name": graph.name, "decision": graph.decision, "rounds": graph.rounds, "active_rounds": graph.active_rounds,
        "solver": graph.solver.name if graph.solver is not None else None,
        "agents": [{"name": a.name, "role": a.role, "model": a.model,
                    "state": agents.get(a.name, "runs"), **({"tokens": a_tok[a.name]} if a.name in a_tok else {})}
                   for a in members],
        "edges": [{"src": e.src, "dst": e.dst, "kind": e.kind, "state": edges[e],
                   **({"tokens": e_tok[str(e)]} if str(e) in e_tok else {})} for e in graph.edges()],
    }


def to_svg(graph: AgentGraph, result: Any = None) -> str:
    """An SVG picture (the one ``tokenomy viz`` draws): agents sized by tokens, edges weighted by tokens, pruned
    and dead parts dashed grey."""
    return graph_svg(to_json(graph, result))


# -- the SVG picture (also the agent graph of ``tokenomy viz``'s page) ---------------------------------------


def _with_decision(g: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The agents and edges to draw: an agent graph's decision node joins its agents (as its solver, when a
    solver decides)."""
    agents = [dict(a) for a in g.get("agents", [])]
    edges = [dict(e) for e in g.get("edges", [])]
    if not any(e["dst"] == "decision" for e in edges) or any(a["name"] == "decision" for a in agents):
        return agents, edges
    solver = g.get("solver") if g.get("decision") == "solver" else None
    node: dict[str, Any] = {"name": "decision", "role": "decision", "state": "runs",
                            "label": f"solver {solver}" if solver else f"{g.get('decision') or 'vote'}"}
    for a in agents:
        if solver and a["name"] == solver:
            node |= {k: a[k] for k in ("tokens", "calls") if k in a}
    agents = [a for a in agents if a["name"] != solver] + [node]
    return agents, edges


def graph_svg(g: Mapping[str, Any]) -> str:
    """An SVG of an agent graph given as plain data (``graphs.render.to_json`` or ``trace_graph``)."""
    agents, edges = _with_decision(g)
    names = [a["name"] for a in agents]
    edges = [e for e in edges if e["src"] in names and e["dst"] in names]
    if not agents:
        return '<svg class="tk" xmlns="http://www.w3.org/2000/svg" width="240" height="40"><text x="8" y="24">' \
               "no agents in this trace</text></svg>"
    if "decision" in names:  # a team: agents on a circle, the decision node to its right
        pos, width, height = circle([n for n in names if n != "decision"])
    else:  # a pipeline (planner -> executor -> tools, solver): left to right
        flow = [(e["src"], e["dst"]) for e in edges if e.get("kind") != "temporal"]
        pos, width, height = positions(names, layers(names, flow), 190, 96, 70, 60)
    top_a = max((a.get("tokens") or 0 for a in agents), default=0) or 1
    top_e = max((e.get("tokens") or 0 for e in edges), default=0) or 1
    radius = {a["name"]: 16 + 22 * math.sqrt((a.get("tokens") or 0) / top_a) for a in agents}
    out = [f'<svg class="tk agent-graph" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
           f'height="{height + 30:.0f}" viewBox="0 0 {width:.0f} {height + 30:.0f}" role="img" '
           f'aria-label="agent graph {escape(g.get("name", ""))}">', SVG_STYLE]
    pairs = {(e["src"], e["dst"]) for e in edges}
    for e in edges:
        (x1, y1), (x2, y2) = pos[e["src"]], pos[e["dst"]]
        off = e.get("state", "runs") != "runs"
        dist = math.hypot(x2 - x1, y2 - y1) or 1.0
        ux, uy = (x2 - x1) / dist, (y2 - y1) / dist
        r1, r2 = radius[e["src"]], radius[e["dst"]] + 3
        sx, sy, tx, ty = x1 + ux * r1, y1 + uy * r1, x2 - ux * r2, y2 - uy * r2
        bend = 0.0
        if e.get("kind") == "temporal" or (e["dst"], e["src"]) in pairs or e["src"] == e["dst"]:
            bend = 36.0 if e.get("kind") == "temporal" else 18.0
        mx, my = (sx + tx) / 2 - uy * bend, (sy + ty) / 2 + ux * bend
        if e["src"] == e["dst"]:
            sx, sy, tx, ty, mx, my = x1 - 10, y1 - r1, x1 + 10, y1 - r1, x1, y1 - r1 - 50
        tok = e.get("tokens")
        w = 1.2 + 7 * (tok or 0) / top_e if not off else 1.2
        colour = "#bbb" if off else ("#3a6fd0" if e.get("kind") == "temporal" else "#556")
        dash = ' stroke-dasharray="5 4"' if off or e.get("kind") == "temporal" else ""
        calls = e.get("calls")
        label = "" if off else (f"{tok} tok" if tok else (f"{calls} call{'s' if calls != 1 else ''}" if calls
                                                          else ""))
        cls = "edge off" if off else "edge"
        title = f"{e['src']} → {e['dst']} ({e.get('kind', '')}, {e.get('state', 'runs')})" + (
            f": {tok} tokens" if tok else "")
        # The arrowhead is drawn, not a marker, so it grows with the line and the line stops at its base.
        hx, hy = tx - mx, ty - my
        hd = math.hypot(hx, hy) or 1.0
        hx, hy = hx / hd, hy / hd
        size = 7 + 1.6 * w
        bx, by = tx - hx * size, ty - hy * size
        head = (f"{tx:.1f},{ty:.1f} {bx - hy * size * 0.5:.1f},{by + hx * size * 0.5:.1f} "
                f"{bx + hy * size * 0.5:.1f},{by - hx * size * 0.5:.1f}")
        arrow = {"temporal": "~>", "decision": "=>"}.get(str(e.get("kind")), "->")
        out.append(f'<g class="{cls}" data-edge="{escape(e["src"])} {arrow} {escape(e["dst"])}" '
                   f'data-state="{escape(e.get("state"))}">'
                   f"<title>{escape(title)}</title>"
                   f'<path d="M{sx:.1f},{sy:.1f} Q{mx:.1f},{my:.1f} {bx:.1f},{by:.1f}" fill="none" '
                   f'stroke="{colour}" stroke-width="{w:.1f}"{dash}/><polygon points="{head}" fill="{colour}"/>')
        if label:
            lx, ly = (sx + 2 * mx + tx) / 4, (sy + 2 * my + ty) / 4 - 4 - w / 2
            out.append(f'<text class="sub" x="{lx:.1f}" y="{ly:.1f}" text-anchor="middle">{escape(label)}</text>')
        out.append("</g>")
    for a in agents:
        x, y = pos[a["name"]]
        r = radius[a["name"]]
        off = a.get("state", "runs") != "runs"
        role = a.get("role", "")
        fill = "#f2f2f2" if off else ("#fbe3b8" if role == "tool" else "#dce6fa" if role != "decision"
                                      else "#e8dcfa")
        dash = ' stroke-dasharray="4 3"' if off else ""
        calls = a.get("calls")
        sub = a.get("state") if off else (f"{a['tokens']} tok" if a.get("tokens") else (
            f"{calls} call{'s' if calls != 1 else ''}" if calls else a.get("label") or role))
        out.append(f'<g class="node{" off" if off else ""}" data-agent="{escape(a["name"])}" tabindex="0">'
                   f"<title>{escape(a['name'])} ({escape(role)}, {escape(a.get('state', 'runs'))})</title>"
                   f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{fill}" stroke="{"#aaa" if off else "#556"}"'
                   f' stroke-width="1.5"{dash}/>'
                   f'<text x="{x:.1f}" y="{y + r + 14:.1f}" text-anchor="middle">{escape(short(a["name"], 22))}</text>'
                   f'<text class="sub" x="{x:.1f}" y="{y + r + 26:.1f}" text-anchor="middle">{escape(sub)}</text></g>')
    out.append("</svg>")
    return "".join(out)
