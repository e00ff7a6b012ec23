"""``tokenomy viz``: a trace as one self-contained HTML page (no CDN, no network), and the SVG pictures it is made
of, which graphs and plans also show in Jupyter.

The page has the run's question, answer and totals; the agent graph (agents sized by their tokens, edges
weighted by the tokens sent along them, pruned and dead parts dashed grey); each plan as a DAG of its steps,
coloured by status; a timeline of model and tool calls; and token tables per agent, per LangGraph node and per
edge. Clicking an agent, a plan step or a call shows its prompts, outputs, arguments and results. The pictures
are drawn here in Python as SVG; the page's small script only fills the details panel, with ``textContent``
(never as HTML), and its Content-Security-Policy forbids every network request.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenomy.benchmarks.plot import bars
from tokenomy.events import input_messages, output_text
from tokenomy.graphs.render import graph_svg
from tokenomy.planners.render import plan_svg
from tokenomy.svg import SVG_STYLE, escape, short
from tokenomy.trace import Trace, edge_name

__all__ = ["render_html", "write_html", "write_png", "trace_graph", "timeline_svg", "iframe"]

_KIND_FILL = {"model_call": "#6b8fd6", "tool_call": "#e0a03a", "error": "#d05050"}


# -- the agent graph ---------------------------------------------------------------------------------------


def trace_graph(trace: Trace) -> dict[str, Any]:
    """The agent graph of a trace: its ``graph`` event where it has one (a graph run), else the graph its
    messages, model calls and tool calls imply (a planner strategy: planner -> executor -> tools, executor ->
    solver); agents carry the tokens they spent in the trace and edges the tokens sent along them."""
    spent = trace.tokens_by("agent")
    g = trace.graph
    if g is not None:
        agents = [dict(a) for a in g.get("agents") or []]
        sent: dict[tuple[str, str, str], int] = defaultdict(int)
        for m in trace.messages:
            sent[(str(m.get("src")), str(m.get("dst")), str(m.get("kind")))] += int(m.get("tokens") or 0)
        edges = [dict(e) for e in g.get("edges") or []]
        for e in edges:
            tok = sent.get((e["src"], e["dst"], e.get("kind", "spatial")))
            if tok:
                e["tokens"] = tok
        extra: dict[str, Any] = {"decision": g.get("decision"), "solver": g.get("solver")}
        name = str(g.get("name", "graph"))
    else:
        agents, edges, names = [], [], set()
        for m in trace.messages:
            for n in (m.get("src"), m.get("dst")):
                if n and n not in names:
                    names.add(n)
                    agents.append({"name": n, "role": n if n in ("planner", "executor", "solver") else "agent",
                                   "state": "runs"})
        for who in spent:
            if who not in names:
                names.add(who)
                agents.append({"name": who, "role": "agent", "state": "runs"})
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        for m in trace.messages:
            key = (str(m.get("src")), str(m.get("dst")))
            e = seen.setdefault(key, {"src": key[0], "dst": key[1], "kind": m.get("kind") or "message",
                                      "state": "runs", "tokens": 0, "messages": 0})
            e["tokens"] += int(m.get("tokens") or 0)
            e["messages"] += 1
        tools: dict[str, int] = defaultdict(int)
        for call in trace.tool_calls:
            tools[str(call.get("gen_ai.tool.name"))] += 1
        caller = "executor" if "executor" in names else next(iter(spent), None)
        for tool, n in tools.items():
            agents.append({"name": f"tool:{tool}", "role": "tool", "state": "runs", "calls": n})
            if caller:
                seen[(caller, f"tool:{tool}")] = {"src": caller, "dst": f"tool:{tool}", "kind": "tool call",
                                                  "state": "runs", "calls": n}
        edges = list(seen.values())
        extra = {}
        name = str(next((e.get("strategy") for e in trace.events if e.get("strategy")), "run"))
    for a in agents:
        t = spent.get(a["name"])
        if t is not None:
            a["tokens"] = t["prompt"] + t["completion"]
            a["calls"] = t["calls"]
    return {"name": name, "agents": agents, "edges": edges, **extra}


# -- the timeline ------------------------------------------------------------------------------------------


def _span(e: Mapping[str, Any]) -> tuple[float, float] | None:
    end = e.get("time")
    if not isinstance(end, int | float):
        return None
    start = e.get("start_time")
    if not isinstance(start, int | float):
        start = end - float(e.get("latency_s") or e.get("duration_s") or 0.0)
    return float(start), float(end)


def timeline_svg(events: Sequence[Mapping[str, Any]]) -> str:
    """An SVG timeline: one lane per agent (model calls) and per tool (tool calls), a bar per call; bars carry
    ``data-event``, the index of their event in ``events``."""
    items = []
    for i, e in enumerate(events):
        if e.get("event") not in ("model_call", "tool_call"):
            continue
        span = _span(e)
        if span is None:
            continue
        lane = (str(e.get("agent") or e.get("gen_ai.agent.name") or "?") if e["event"] == "model_call"
                else f"tool:{e.get('gen_ai.tool.name')}")
        items.append((i, lane, span, e))
    if not items:
        return '<svg class="tk" xmlns="http://www.w3.org/2000/svg" width="240" height="30"><text x="6" y="20">' \
               "no calls in this trace</text></svg>"
    lanes = list(dict.fromkeys(lane for _, lane, _, _ in items))
    t0 = min(s for _, _, (s, _), _ in items)
    t1 = max(t for _, _, (_, t), _ in items)
    span_s = max(t1 - t0, 1e-3)
    left, width, lane_h = 150, 760, 26
    height = 34 + lane_h * len(lanes) + 10
    scale = width / span_s
    out = [f'<svg class="tk timeline" xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" '
           f'height="{height}" viewBox="0 0 {left + width + 20} {height}" role="img" aria-label="timeline">',
           SVG_STYLE]
    step = 10 ** math.floor(math.log10(span_s / 4)) if span_s > 0 else 1
    for mult in (1, 2, 5, 10):
        if span_s / (step * mult) <= 8:
            step *= mult
            break
    k = 0
    while k * step <= span_s + 1e-9:
        x = left + k * step * scale
        out.append(f'<line x1="{x:.1f}" y1="22" x2="{x:.1f}" y2="{height - 8}" stroke="#eee"/>'
                   f'<text class="sub" x="{x:.1f}" y="16" text-anchor="middle">{k * step:g} s</text>')
        k += 1
    for j, lane in enumerate(lanes):
        y = 28 + j * lane_h
        out.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(short(lane, 20))}</text>')
    for i, lane, (s, t), e in items:
        y = 28 + lanes.index(lane) * lane_h
        x = left + (s - t0) * scale
        w = max((t - s) * scale, 2.0)
        kind = "error" if e.get("error") else e["event"]
        what = (f"{e.get('agent')}: {e.get('gen_ai.usage.input_tokens', '?')} + "
                f"{e.get('gen_ai.usage.output_tokens', '?')} tokens" if e["event"] == "model_call"
                else f"{e.get('gen_ai.tool.name')}" + (f" (error: {e['error']})" if e.get("error") else ""))
        out.append(f'<g class="call" data-event="{i}" tabindex="0"><title>{escape(what)}, {t - s:.3f} s</title>'
                   f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{lane_h - 8}" rx="3" '
                   f'fill="{_KIND_FILL[kind]}"/></g>')
    out.append("</svg>")
    return "".join(out)


# -- tables ------------------------------------------------------------------------------------------------


def _token_table(title: str, rows: Mapping[str, Mapping[str, Any]], key: str) -> str:
    if not rows:
        return f"<h3>{escape(title)}</h3><p class='muted'>none in this trace</p>"
    total = sum(r["prompt"] + r["completion"] for r in rows.values()) or 1
    body = []
    for name, r in sorted(rows.items(), key=lambda kv: -(kv[1]["prompt"] + kv[1]["completion"])):
        t = r["prompt"] + r["completion"]
        share = 100 * t / total
        # A count some call did not report is a lower bound: marked "+", as Usage prints it.
        n = {k: f"{r[k]}+" if k in r.get("unknown", ()) else str(r[k]) for k in ("prompt", "cached", "completion")}
        body.append(f"<tr><td>{escape(name)}</td><td>{r['calls']}</td><td>{n['prompt']}</td><td>{n['cached']}</td>"
                    f"<td>{n['completion']}</td><td>{t}</td><td><span class='bar' style='width:{share:.1f}px'>"
                    f"</span> {share:.0f}%</td></tr>")
    return (f"<h3>{escape(title)}</h3><table class='tokens' data-by='{escape(key)}'><thead><tr><th>{escape(key)}</th>"
            "<th>calls</th><th>prompt</th><th>cached</th><th>completion</th><th>total</th><th>share</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _edge_table(trace: Trace) -> str:
    rows = trace.tokens_by_edge()
    if not rows:
        return "<h3>Tokens per edge</h3><p class='muted'>no messages in this trace</p>"
    total = sum(rows.values()) or 1
    counts: dict[str, int] = defaultdict(int)
    for m in trace.messages:
        counts[edge_name(m)] += 1
    body = "".join(f"<tr><td>{escape(k)}</td><td>{counts[k]}</td><td>{v}</td><td><span class='bar' "
                   f"style='width:{100 * v / total:.1f}px'></span> {100 * v / total:.0f}%</td></tr>"
                   for k, v in sorted(rows.items(), key=lambda kv: -kv[1]))
    return ("<h3>Tokens per edge</h3><table class='tokens' data-by='edge'><thead><tr><th>edge</th><th>messages</th>"
            f"<th>tokens</th><th>share</th></tr></thead><tbody>{body}</tbody></table>")


# -- the page ----------------------------------------------------------------------------------------------


def _json_for_script(data: Any) -> str:
    """JSON that is safe inside a ``<script>`` element whatever strings it holds (no ``</script>``, no ``<!--``)."""
    text = json.dumps(data, ensure_ascii=False, default=str)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _details_data(trace: Trace) -> dict[str, Any]:
    events = []
    for e in trace.events:
        d = {k: v for k, v in e.items() if k not in ("gen_ai.input.messages", "gen_ai.output.messages")}
        if e.get("event") == "model_call":
            d["messages"] = input_messages(e)
            d["output"] = output_text(e)
        events.append(d)
    return {"events": events}


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#223;background:#fafbfc}
header{padding:14px 22px;background:#233152;color:#fff}header h1{margin:0 0 4px;font-size:19px}
header .q{opacity:.9}main{display:grid;grid-template-columns:minmax(0,1fr) 420px;gap:18px;padding:16px 22px}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:12px 16px;margin-bottom:16px;overflow-x:auto}
h2{font-size:16px;margin:2px 0 10px}h3{font-size:14px;margin:12px 0 6px}.muted{color:#889}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px;border-bottom:1px solid #eef;text-align:right}
td:first-child,th:first-child{text-align:left}.bar{display:inline-block;height:9px;background:#6b8fd6;border-radius:2px}
#details{position:sticky;top:12px;align-self:start;max-height:calc(100vh - 30px);overflow:auto}
#details pre{white-space:pre-wrap;word-break:break-word;background:#f5f6f8;padding:6px 8px;border-radius:5px;
margin:4px 0 10px;font-size:12px}#details .role{font-weight:600;font-size:12px;color:#556}
.kv{font-size:13px}.kv b{display:inline-block;min-width:110px}.selected circle,.selected rect{stroke:#e05a00!important;
stroke-width:3!important}.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:4px;vertical-align:-1px}
.summary td{text-align:left}
"""

_JS = r"""
(function(){
  var data = JSON.parse(document.getElementById('trace-data').textContent);
  var events = data.events, panel = document.getElementById('details-body');
  function el(tag, text, cls){ var n = document.createElement(tag); if (text !== undefined && text !== null)
    n.textContent = String(text); if (cls) n.className = cls; return n; }
  function kv(k, v){ if (v === undefined || v === null || v === '') return; var p = el('div', null, 'kv');
    p.appendChild(el('b', k)); p.appendChild(document.createTextNode(typeof v === 'object' ? JSON.stringify(v)
    : String(v))); panel.appendChild(p); }
  function pre(label, text, cls){ if (label) panel.appendChild(el('div', label, 'role'));
    panel.appendChild(el('pre', text, cls)); }
  function showCall(e, i){
    var head = e.event === 'model_call' ? 'Model call: ' + (e.agent || e['gen_ai.agent.name'])
      : 'Tool call: ' + e['gen_ai.tool.name'];
    panel.appendChild(el('h3', head));
    kv('event #', i); kv('node', e.node); kv('step', e.step); kv('round', e.round);
    kv('model', e['gen_ai.request.model']); kv('input tokens', e['gen_ai.usage.input_tokens']);
    kv('cached tokens', e['gen_ai.usage.cache_read.input_tokens']);
    kv('output tokens', e['gen_ai.usage.output_tokens']);
    kv('latency s', e.latency_s !== undefined ? Number(e.latency_s).toFixed(3) : undefined);
    kv('duration s', e.duration_s !== undefined ? Number(e.duration_s).toFixed(3) : undefined);
    kv('replayed', e.replayed);
    if (e.event === 'model_call') {
      (e.messages || []).forEach(function(m){ pre(m.role, m.content, 'prompt'); });
      pre('output', e.output, 'output');
    } else {
      pre('arguments', JSON.stringify(e['gen_ai.tool.call.arguments'], null, 1), 'arguments');
      if (e.error) pre('error', e.error, 'error');
      else pre('result', e['gen_ai.tool.call.result'], 'result');
    }
  }
  function clear(title){ panel.textContent = ''; panel.appendChild(el('h2', title)); }
  function select(node){ document.querySelectorAll('.selected').forEach(function(n){ n.classList.remove('selected'); });
    node.classList.add('selected'); }
  function agentEvents(name){
    var out = [];
    events.forEach(function(e, i){
      if (e.event === 'model_call' && (e.agent === name || e['gen_ai.agent.name'] === name)) out.push(i);
      if (e.event === 'tool_call' && 'tool:' + e['gen_ai.tool.name'] === name) out.push(i);
    });
    return out;
  }
  document.querySelectorAll('.node').forEach(function(n){
    n.addEventListener('click', function(){
      var name = n.getAttribute('data-agent'); select(n); clear('Agent ' + name);
      var idx = agentEvents(name);
      if (!idx.length) panel.appendChild(el('p', 'No calls of this agent are in the trace.', 'muted'));
      idx.forEach(function(i){ showCall(events[i], i); });
    });
  });
  document.querySelectorAll('.call').forEach(function(n){
    n.addEventListener('click', function(){ var i = +n.getAttribute('data-event'); select(n);
      clear('Call'); showCall(events[i], i); });
  });
  document.querySelectorAll('.step').forEach(function(n){
    n.addEventListener('click', function(){
      var id = n.getAttribute('data-step'), k = +n.getAttribute('data-plan'); select(n);
      var plan = data.plans[k] || {}, step = (plan.steps || []).filter(function(s){ return s.id === id; })[0] || {};
      var res = (plan.results || {})[id] || {};
      clear('Plan step ' + id); pre('statement', step.text); kv('kind', step.kind); kv('tool', step.tool);
      kv('reads', (step.reads || []).join(', ')); kv('status', res.status); kv('attempts', res.attempts);
      kv('seconds', res.seconds); if (res.value !== undefined) pre('value', res.value, 'result');
      events.forEach(function(e, i){ if (e.event === 'tool_call' && e.step === id && e.run === plan.run)
        showCall(e, i); });
    });
  });
  document.querySelectorAll('[tabindex]').forEach(function(n){
    n.addEventListener('keydown', function(ev){ if (ev.key === 'Enter') n.dispatchEvent(new MouseEvent('click')); });
  });
  document.body.setAttribute('data-ready', '1');
})();
"""


def _plans(trace: Trace) -> list[dict[str, Any]]:
    """The plans to draw: each executed plan with its results, and written plans that never ran."""
    out: list[dict[str, Any]] = []
    for e in trace.events:
        if e.get("event") == "execution":
            n = sum(1 for p in out if p["ran"]) + 1
            out.append({"title": f"plan {n}, as it ran", "ran": True, "steps": e.get("steps") or [],
                        "results": e.get("results") or {}, "text": e.get("plan", ""), "run": e.get("run")})
        elif e.get("event") == "plan" and not e.get("valid"):
            out.append({"title": "plan rejected" + (f": {e['error']}" if e.get("error") else ""), "ran": False,
                        "steps": e.get("steps") or [], "results": {}, "text": e.get("text", ""), "run": e.get("run")})
    return out


def render_html(trace: Trace, *, title: str | None = None) -> str:
    """The self-contained page of a trace (inline CSS, SVG and script; nothing is fetched)."""
    runs = trace.runs
    question = next((r.get("question") for r in runs if r.get("question")), None)
    answer = next((r.get("answer") for r in reversed(runs) if "answer" in r), None)
    status = next((r.get("status") for r in reversed(runs) if r.get("status")), None)
    error = next((r.get("error") for r in reversed(runs) if r.get("error")), None) if status == "failed" else None
    strategy = next((r.get("strategy") for r in runs if r.get("strategy")), None)
    models = sorted({str(e.get("gen_ai.request.model")) for e in trace.model_calls if e.get("gen_ai.request.model")})
    tot = trace.total()
    times = [t for e in trace.events for t in (_span(e) or ()) if t]
    wall = (max(times) - min(times)) if times else 0.0
    title = title or f"tokenomy run {runs[0]['run'] if runs and runs[0]['run'] else ''}".strip()
    plans = _plans(trace)
    g = trace_graph(trace)
    summary = [("question", question), ("answer", answer if answer is not None else "(none)"), ("status", status),
               ("error", error),
               ("strategy", strategy), ("model", ", ".join(models)),
               ("tokens", f"{tot['prompt']} prompt ({tot['cached']} cached) + {tot['completion']} completion in "
                          f"{tot['calls']} model calls"),
               ("tool calls", len(trace.tool_calls)), ("wall time", f"{wall:.2f} s"),
               ("checkpoints", len(trace.of("checkpoint")))]
    notes = [n for r in runs for n in (r.get("notes") or [])]
    if trace.skipped:
        notes.append(f"{trace.skipped} lines of the trace file were not well-formed events and were skipped")
    plan_html = "".join(
        f"<h3>{escape(p['title'])}</h3>" + plan_svg(p["steps"], p["results"], plan_index=i)
        + (f"<pre class='muted'>{escape(p['text'])}</pre>" if not p["steps"] else "") for i, p in enumerate(plans)
    ) or "<p class='muted'>No plan in this trace.</p>"
    legend_plan = ("<div class='legend'><span><i style='background:#d8f0d8'></i>ok</span><span><i style='background:"
                   "#f6cccc'></i>error / timeout</span><span><i style='background:#ececec'></i>skipped</span></div>")
    legend_time = ("<div class='legend'><span><i style='background:#6b8fd6'></i>model call</span><span><i style="
                   "'background:#e0a03a'></i>tool call</span><span><i style='background:#d05050'></i>failed</span>"
                   "</div>")
    data = _details_data(trace) | {"plans": plans}
    body = f"""<header><h1>{escape(title)}</h1><div class="q">{escape(question or '')}</div></header>
<main><div>
<section id="summary"><h2>Run</h2><table class="summary">{''.join(
        f'<tr><td><b>{escape(k)}</b></td><td>{escape(v)}</td></tr>' for k, v in summary if v not in (None, ''))}</table>
{''.join(f'<p class="muted">note: {escape(n)}</p>' for n in notes)}</section>
<section id="graph"><h2>Agent graph: {escape(g['name'])}</h2>
<p class="muted">Agents are sized by the tokens they spent, edges are as wide as the tokens sent along them; pruned and
dead parts are dashed grey. Click an agent for its prompts and outputs.</p>{graph_svg(g)}</section>
<section id="plans"><h2>Plans</h2>{legend_plan}{plan_html}</section>
<section id="timeline"><h2>Timeline</h2>{legend_time}{timeline_svg(trace.events)}</section>
<section id="tokens"><h2>Tokens</h2>{_token_table("Tokens per agent", trace.tokens_by("agent"), "agent")}
{_token_table("Tokens per step (LangGraph node)", trace.tokens_by("node"), "node")}
{_edge_table(trace)}</section>
</div><aside id="details"><section><div id="details-body"><h2>Details</h2><p class="muted">Click an agent, a plan
step or a call.</p></div></section></aside></main>"""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>{body}"
            f'<script id="trace-data" type="application/json">{_json_for_script(data)}</script>'
            f"<script>{_JS}</script></body></html>\n")


def write_html(trace: Trace | str | Path, path: str | Path, *, title: str | None = None) -> Path:
    """Write the page of ``trace`` (a ``Trace`` or a trace file) to ``path``."""
    t = trace if isinstance(trace, Trace) else Trace.load(trace)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(t, title=title), encoding="utf-8")
    return out


def write_png(trace: Trace | str | Path, path: str | Path) -> Path:
    """A PNG of the trace's token breakdown per agent (prompt not cached, cached prompt, completion)."""

    t = trace if isinstance(trace, Trace) else Trace.load(trace)
    rows = [(agent, {"prompt (not cached)": d["prompt"] - d["cached"], "prompt (cached)": d["cached"],
                     "completion": d["completion"]})
            for agent, d in sorted(t.tokens_by("agent").items(), key=lambda kv: -(kv[1]["prompt"]
                                                                                   + kv[1]["completion"]))]
    name = t.path.name if t.path is not None else "trace"
    return bars(rows, path, title=f"tokens per agent: {name}", ylabel="tokens")


def iframe(page: str, height: int = 720) -> str:
    """``page`` in a sandboxed ``<iframe srcdoc>`` (how a notebook shows a whole page without leaking its style)."""
    return (f'<iframe sandbox="allow-scripts" style="width:100%;height:{height}px;border:1px solid #ddd" '
            f'srcdoc="{html.escape(page, quote=True)}"></iframe>')


# The page's Content-Security-Policy: no network at all (default-src 'none'), and the one script that may run is
# the viewer's own, by its hash, never 'unsafe-inline' (a payload that slipped past escaping still could not run);
# no form can post anywhere and no <base> can redirect links. Styles stay inline (they cannot run code, and with
# no network they cannot send anything).
CSP = ("default-src 'none'; "
       f"script-src 'sha256-{base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()}'; "
       "style-src 'unsafe-inline'; img-src data:; form-action 'none'; base-uri 'none'")
