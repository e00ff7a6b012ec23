"""``tokenomy viz`` without a browser: the page is self-contained and escapes what it shows, its pictures hold the
graph, the plan and the calls, the PNG and the notebook displays work, and bad input gets a clear error."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.trace_doubles import HOSTILE, graph_trace, rewoo_trace
from tokenomy.cli import main
from tokenomy.graphs import AgentGraph, Mask
from tokenomy.graphs.render import graph_svg
from tokenomy.planners import parse_plan
from tokenomy.planners.render import plan_svg
from tokenomy.trace import Trace
from tokenomy.viz import render_html, timeline_svg, trace_graph


class _Scan(HTMLParser):
    """Every tag with its attributes, and the text of each script."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def scan(page: str) -> _Scan:
    s = _Scan()
    s.feed(page)
    return s


@pytest.fixture
def rewoo_page(tmp_path):
    return render_html(Trace.load(rewoo_trace(tmp_path / "r.jsonl")))


def test_the_page_is_self_contained_and_forbids_the_network(rewoo_page):
    s = scan(rewoo_page)
    for tag, attrs in s.tags:
        for name in ("src", "href"):
            assert not attrs.get(name), f"<{tag} {name}=...> would load something"
    assert "http://" not in rewoo_page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in rewoo_page
    csp = next(a["content"] for t, a in s.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp
    assert [t for t, _ in s.tags].count("script") == 2  # the data and the viewer's own script


def test_hostile_tool_output_is_data_never_markup(rewoo_page):
    s = scan(rewoo_page)
    assert HOSTILE not in rewoo_page and "<img" not in rewoo_page
    assert not any("__pwned" in script for script in s.scripts[1:])  # the viewer's script is ours alone
    data = json.loads(s.scripts[0])  # ... and the data script still parses to the exact output
    results = [e.get("gen_ai.tool.call.result", "") for e in data["events"] if e["event"] == "tool_call"]
    assert any(HOSTILE in r for r in results)


def test_the_page_shows_graph_plan_timeline_and_token_tables(rewoo_page):
    s = scan(rewoo_page)
    ids = {a.get("id") for _, a in s.tags}
    assert {"summary", "graph", "plans", "timeline", "tokens", "details"} <= ids
    agents = {a["data-agent"] for t, a in s.tags if t == "g" and "data-agent" in a}
    assert agents == {"planner", "executor", "solver", "tool:lookup", "tool:boom", "tool:search"}
    steps = {(a["data-step"], a["data-status"]) for t, a in s.tags if t == "g" and "data-step" in a}
    assert {("e1", "ok"), ("e2", "error"), ("e3", "ok"), ("e4", "ok"), ("answer", "ok")} <= steps
    calls = [a for t, a in s.tags if t == "g" and a.get("class") == "call"]
    assert len(calls) == 3 + 5  # three model calls; lookup twice (e1, e4), boom twice (a retry), search once
    tables = {a["data-by"] for t, a in s.tags if t == "table" and "data-by" in a}
    assert tables == {"agent", "node", "edge"}
    assert "The population of Velmora is 412,000." in rewoo_page


def test_a_graph_run_draws_pruned_agents_and_edges_dashed_and_edges_by_tokens(tmp_path):
    t = Trace.load(graph_trace(tmp_path / "g.jsonl"))
    g = trace_graph(t)
    svg = graph_svg(g)
    s = scan(svg)
    nodes = {a["data-agent"]: a["class"] for tag, a in s.tags if "data-agent" in a}
    assert nodes == {"a": "node", "b": "node", "c": "node off", "decision": "node"}
    edges = {a["data-edge"]: a["data-state"] for tag, a in s.tags if "data-edge" in a}
    assert edges["a -> c"] == "pruned" and edges["a ~> b"] == "pruned"
    assert edges["a -> b"] == edges["b ~> a"] == edges["a => decision"] == "runs"
    widths = [float(m) for m in re.findall(r'stroke-width="([\d.]+)"', svg)]
    assert max(widths) > 5 and min(widths) == pytest.approx(1.2)  # the busiest edge is drawn widest
    by_edge = {e["src"] + e["kind"] + e["dst"]: e.get("tokens") for e in g["edges"]}
    assert by_edge["aspatialb"] == t.tokens_by_edge()["a -> b"]


def test_graphs_and_plans_display_themselves_in_notebooks(tmp_path):
    g = AgentGraph.mesh(["a", "b", "c"], rounds=1)
    g = g.apply(Mask(frozenset({"a", "b"}), frozenset(e for e in g.mask().edges if "c" not in (e.src, e.dst)), 1))
    html = g._repr_html_()
    assert html.startswith("<svg") and 'data-agent="c"' in html and "node off" in html
    plan = parse_plan('e1 = search(query="x")\ne2 = lookup(entity=e1, attribute="y")\nanswer(e2)')
    svg = plan._repr_html_()
    assert svg.startswith("<svg") and svg.count('class="step"') == 3 and "e2 = lookup(entity=e1" in svg
    t = Trace.load(rewoo_trace(tmp_path / "r.jsonl"))
    bundle = t._repr_mimebundle_()
    assert bundle["text/plain"].startswith("Trace(") and "3 model calls" in bundle["text/plain"]
    assert bundle["text/html"].startswith("<iframe sandbox=") and "srcdoc=" in bundle["text/html"]
    assert "<script" not in bundle["text/html"]  # the page is escaped inside srcdoc


def test_pictures_of_nothing_say_so():
    assert "no agents" in graph_svg({"agents": [], "edges": []})
    assert "empty plan" in plan_svg([])
    assert "no calls" in timeline_svg([])


def test_viz_cli_writes_the_page_and_the_png(tmp_path, capsys):
    trace = rewoo_trace(tmp_path / "r.trace.jsonl")
    assert main(["viz", str(trace), "--png", str(tmp_path / "t.png")]) == 0
    page = tmp_path / "r.html"
    assert page.is_file() and page.read_text().startswith("<!DOCTYPE html>")
    from PIL import Image

    with Image.open(tmp_path / "t.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert main(["viz", str(trace), "-o", str(tmp_path / "x.html"), "--run", "nope"]) == 1
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["viz", str(tmp_path / "missing.jsonl")]) == 1
    assert main(["viz", str(trace), "-o", str(trace)]) == 1  # would overwrite the trace
    assert "overwrite" in capsys.readouterr().err


def test_tokenomy_viz_runs_as_a_command(tmp_path):
    trace = graph_trace(tmp_path / "g.jsonl")
    out = subprocess.run([sys.executable, "-m", "tokenomy.cli", "viz", str(trace), "-o", str(tmp_path / "g.html")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(tmp_path / "g.html").stat().st_size > 5000


def test_a_failed_run_is_traced_and_its_page_says_why(tmp_path):
    from tests.trace_doubles import tools
    from tokenomy.errors import EngineError
    from tokenomy.kernels import ScriptedEngine
    from tokenomy.planners import Rewoo
    from tokenomy.trace import TraceWriter

    def broken(request):
        raise EngineError("the engine went away")

    path = tmp_path / "failed.jsonl"
    with TraceWriter(path, run="f1") as trace, pytest.raises(EngineError):
        Rewoo(ScriptedEngine(broken), tools(), on_event=trace).run("What is the population of Velmora?")
    t = Trace.load(path)
    last = t.of("run")[-1]
    assert last["status"] == "failed" and last["error.type"] == "EngineError" and "went away" in last["error"]
    page = render_html(t)
    assert "<td>failed</td>" in page and "the engine went away" in page
