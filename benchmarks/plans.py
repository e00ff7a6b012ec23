"""The valid-plan rate of the ``rewoo`` planner: how often a model's plan parses and validates against the tools,
with and without the plan grammar constraining its decoding, before and after the one repair call that sends the
parse or validation error back as feedback.

``tokenomy bench plans [--model SPEC] [--json PATH]`` runs the planner (only the planner: no tools, no solver)
on the questions below over the bundled corpus's tools. Modes: ``grammar`` (the engine's constrained decoding,
where it has one) and ``free`` (no constraint: what an engine without grammars gets).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenomy.benchmarks import plot
from tokenomy.errors import PlanError
from tokenomy.kernels import Engine, Usage

QUESTIONS = [
    "Who founded Halvane Instruments?",
    "What is the population of the capital of Tessary?",
    "How long is the River Orrin?",
    "In which year was the town where Corvin Halvane was born founded?",
    "How many years after Velmora was founded was Pellhaven founded?",
    "Who is the mayor of the city where Halvane Instruments has its headquarters?",
    "How old was Corvin Halvane when he invented the tide gauge?",
    "Which island does the ferry from Pellhaven go to?",
    "How many people live in Velmora and Pellhaven together?",
    "What is the tallest building in Pellhaven and how tall is it?",
]


@dataclass
class PlanRecord:
    mode: str
    question: str
    valid_first: bool
    valid_after_repair: bool
    calls: int
    prompt_tokens: int | None
    completion_tokens: int | None
    seconds: float
    error: str = ""


def run_plans_bench(spec: str | None = None, questions: list[str] | None = None,
                    modes: tuple[str, ...] = ("grammar", "free"), engine: Engine | None = None) -> list[PlanRecord]:
    """One record per (mode, question); ``engine``: one already loaded (else ``spec`` is loaded). The
    ``grammar`` mode is skipped on an engine without constrained decoding."""
    from tokenomy.kernels.registry import load_engine
    from tokenomy.planners import Rewoo
    from tokenomy.tools import calc, example_corpus_dir, lookup_tool, search_tool

    engine = engine or load_engine(spec)
    corpus = example_corpus_dir()
    tools = [search_tool(corpus), lookup_tool(corpus), calc]
    records = []
    for mode in modes:
        strategy = Rewoo(engine, tools)
        if mode == "free":
            strategy.grammar = None
        elif strategy.grammar is None:
            continue  # this engine has no constrained decoding
        for q in questions or QUESTIONS:
            start = time.perf_counter()
            messages = strategy.planner_messages(q)
            c, _ = strategy.ask("planner", messages, strategy.plan_tokens, grammar=strategy.grammar)
            usage = c.usage
            text, _plan, err, _notes = strategy._accept(c, ())
            first = err is None and not (strategy.grammar is not None and c.finish_reason == "length")
            after = err is None
            error = str(err) if err else ""
            if err is not None:
                repair = messages + [{"role": "assistant", "content": text}, {"role": "user", "content": err.feedback}]
                c2, _ = strategy.ask("planner", repair, strategy.plan_tokens, grammar=strategy.grammar)
                usage = usage + c2.usage
                _, _, err2, _ = strategy._accept(c2, ())
                after = err2 is None
                error += f" | after repair: {err2}" if isinstance(err2, PlanError) else ""
            records.append(PlanRecord(mode, q, first, after, usage.calls, usage.prompt_tokens,
                                      usage.completion_tokens, time.perf_counter() - start, error[:300]))
    return records


def summary(records: list[PlanRecord]) -> list[dict[str, Any]]:
    out = []
    for mode in dict.fromkeys(r.mode for r in records):
        rs = [r for r in records if r.mode == mode]
        usage = sum((Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens, calls=r.calls)
                     for r in rs), Usage())
        out.append({"mode": mode, "plans": len(rs), "valid_first": sum(r.valid_first for r in rs) / len(rs),
                    "valid_after_repair": sum(r.valid_after_repair for r in rs) / len(rs),
                    "calls": usage.calls, "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens})
    return out


def format_table(records: list[PlanRecord]) -> str:
    lines = [f"{'mode':8s} {'plans':>5s} {'valid 1st':>9s} {'after repair':>12s} {'calls':>5s} {'prompt':>7s} "
             f"{'completion':>10s}"]
    for s in summary(records):
        lines.append(f"{s['mode']:8s} {s['plans']:5d} {s['valid_first']:9.0%} {s['valid_after_repair']:12.0%} "
                     f"{s['calls']:5d} {s['prompt_tokens']!s:>7s} {s['completion_tokens']!s:>10s}")
    return "\n".join(lines)


def to_json(records: list[PlanRecord]) -> dict[str, Any]:
    return {"summary": summary(records), "records": [asdict(r) for r in records]}


def plot_records(records: list[PlanRecord], path: str | Path) -> Path:
    """A PNG of the valid-plan rate per mode (grammar, free), on the first try beside after the repair call."""
    rows = [(f"{s['mode']}\n{s['plans']} plans", {"valid on the first try": s["valid_first"],
                                                  "valid after repair": s["valid_after_repair"]})
            for s in summary(records)]
    return plot.bars(rows, path, title="plans: the rewoo planner's valid-plan rate", ylabel="share of plans valid",
                     stacked=False)
