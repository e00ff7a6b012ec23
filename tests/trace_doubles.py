"""Real traces for the trace and viewer tests: a ReWOO run (a failing tool, hostile tool output, a re-plan and a
solver call) and a pruned agent-graph run, both on the scripted test double, written by ``TraceWriter``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import create_model

from tokenomy.graphs import AgentGraph, Edge, GraphTeam, Mask
from tokenomy.kernels import ScriptedEngine
from tokenomy.planners import Rewoo
from tokenomy.trace import TraceWriter

HOSTILE = '</script><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
PLAN = ('e1 = lookup(entity="Velmora", attribute="population")\n'
        'e2 = boom(value=e1)\n'
        'e3 = search(query="Velmora harbour")\n'
        'answer([e1, e3])')
REPLAN = 'e4 = lookup(entity="Velmora", attribute="mayor")\nanswer([e1, e4])'


class Tool:
    def __init__(self, name, fn, **fields):
        self.name, self.fn = name, fn
        self.args_model = create_model(name + "Args", **fields)

    async def ainvoke(self, **kwargs):
        value = self.fn(**kwargs)
        return await value if asyncio.iscoroutine(value) else value


def _boom(value):
    raise RuntimeError(f"the boom tool failed on {value!r}")


def tools() -> list[Tool]:
    return [Tool("lookup", lambda entity, attribute: {"population": "412,000", "mayor": "Ana Roth"}[attribute],
                 entity=(str, ...), attribute=(str, ...)),
            Tool("boom", _boom, value=(str, ...)),
            Tool("search", lambda query: f"Velmora harbour opened in 1881. {HOSTILE}", query=(str, ...))]


def rewoo_trace(path: Path, run: str = "run-rewoo") -> Path:
    replies = {"planner": iter([PLAN, REPLAN]), "solver": iter(["The population of Velmora is 412,000."])}
    engine = ScriptedEngine(lambda r: next(replies[r.agent]))
    with TraceWriter(path, run=run) as trace:
        Rewoo(engine, tools(), on_event=trace).run("What is the population of Velmora?")
    return path


def graph_trace(path: Path, run: str = "run-graph") -> Path:
    g = AgentGraph.mesh(["a", "b", "c"], rounds=2)
    m = g.mask()
    pruned = g.apply(Mask(frozenset({"a", "b"}), frozenset(e for e in m.edges if "c" not in (e.src, e.dst)
                                                           and e != Edge("a", "b", "temporal")), 2))
    engine = ScriptedEngine(lambda r: f'answer = "{r.agent} says 7"', prefix_cache=False)
    with TraceWriter(path, run=run) as trace:
        GraphTeam(pruned, engine, on_event=trace).run("What is 3 + 4?")
    return path
