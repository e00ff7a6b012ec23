"""``tokenomy bench planning --corpus DIR --questions FILE``: the planning strategies on questions about prose a
user wrote, with the real ``search``, ``lookup`` and ``calc`` tools.

The questions file has one JSON object a line (``tests/prose/questions.jsonl`` is the example)::

    {"id": "q01", "question": "...", "answer": "16300", "hops": 3,
     "support": [{"file": "x.md", "text": "a substring of x.md that states a fact"}],
     "program": [{"tool": "lookup", "args": {"entity": "...", "attribute": "..."}, "value": "12900"},
                 {"tool": "calc", "args": {"expression": "12,900 + 3,400"}, "value": "16300"}]}

Two measurements:

* **lookup hit rate** (no model): every ``lookup`` step of every gold program runs on the tool; a hit is an
  output whose value (its ``[file#n]`` source left out) contains the gold value as a whole word, thousands
  separators and case ignored. It tells the tool's share of a miss apart from the planner's.
* **live**: each strategy answers the questions on a real model (the embedded one by default); exact match
  after ``answer_matches`` ("16,300" == "16300" == "16300.0"), with a 95% bootstrap interval, tokens, calls and
  wall time. The first ``k`` questions whose program adds two lookups up (else the first ones) are the worked
  exemplars in every prompt and are not scored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenomy.errors import UserError
from tokenomy.tools.builtin.calculator import UNITS
from tokenomy.tools.builtin.chunking import SOURCE

from .planning import STRATEGIES, PlanningRecord, embedded_tokenizer, run_group
from .world import GoldStep, Task

__all__ = ["ProseQuestion", "HitRate", "ProseReport", "ProseSetting", "prose_setting", "load_questions",
           "lookup_hit_rate", "contains_value", "to_task", "run_prose_bench", "format_prose_report"]

_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


@dataclass(frozen=True)
class ProseQuestion:
    id: str
    question: str
    answer: str
    hops: int
    program: tuple[dict[str, Any], ...]
    support: tuple[dict[str, str], ...] = ()


def load_questions(path: str | Path) -> list[ProseQuestion]:
    """The questions of a JSON-lines file; a line that is not a question is a ``UserError`` naming it."""
    out = []
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            steps = tuple(d["program"])
            if not steps or any(s["tool"] not in ("lookup", "calc") or "value" not in s for s in steps):
                raise ValueError("program needs lookup/calc steps, each with its value")
            out.append(ProseQuestion(str(d["id"]), str(d["question"]), str(d["answer"]), int(d["hops"]), steps,
                                     tuple(d.get("support", ()))))
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{no}: not a question ({type(exc).__name__}: {exc})") from None
    if not out:
        raise UserError(f"{path} has no questions")
    return out


def contains_value(output: Any, value: str) -> bool:
    """Whether a tool ``output`` (its ``[file#n]`` sources left out) contains ``value`` as a whole word or number,
    thousands separators and case ignored."""
    text = re.sub(r"(\d)\.0\b", r"\1", SOURCE.sub("", str(output)).replace(",", "").lower())
    want = re.escape(value.replace(",", "").lower())
    return re.search(rf"(?<![\w.]){want}(?![\w]|\.\d)", text) is not None


@dataclass
class HitRate:
    hits: int = 0
    total: int = 0
    misses: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else 0.0


def lookup_hit_rate(lookup: Callable[[str, str], Any], questions: Sequence[ProseQuestion]) -> HitRate:
    """Run every gold ``lookup`` step on ``lookup(entity, attribute)``; see the module docstring."""
    rate = HitRate()
    for q in questions:
        for step in q.program:
            if step["tool"] != "lookup":
                continue
            out = lookup(step["args"]["entity"], step["args"]["attribute"])
            rate.total += 1
            if contains_value(out, step["value"]):
                rate.hits += 1
            else:
                rate.misses.append(f"{q.id}: lookup({step['args']['entity']!r}, {step['args']['attribute']!r}) -> "
                                   f"{str(out)[:80]!r}, want {step['value']!r}")
    return rate


def _calc_expression(expression: str, earlier: list[tuple[str, str]]) -> tuple[str, tuple[str, ...]]:
    """A gold calc expression as a plan expression that reads the earlier results whose values it has
    (``"2024 - 1612"`` -> ``"2024 - " + e1``); a unit after such a value is dropped, lookup's result has it."""
    parts: list[str] = []
    reads: list[str] = []
    pos = 0
    for m in _NUMBER.finditer(expression):
        name = next((n for n, v in earlier if v.replace(",", "") == m.group().replace(",", "") and n not in reads),
                    None)
        if name is None:
            continue
        parts += [json.dumps(expression[pos:m.start()]), name] if m.start() > pos else [name]
        reads.append(name)
        unit = re.match(r"\s*([^\W\d_]+(?: [^\W\d_]+)?)", expression[m.end():])
        while unit and unit.group(1).lower() not in UNITS and " " in unit.group(1):  # "square kilometres" or "km"
            unit = re.match(r"\s*([^\W\d_]+)", expression[m.end():])
        pos = m.end() + (len(unit.group()) if unit and unit.group(1).lower() in UNITS else 0)
    rest = expression[pos:]
    if rest or not parts:
        parts.append(json.dumps(rest))
    return " + ".join(parts), tuple(reads)


def to_task(q: ProseQuestion) -> Task:
    """The question as a ``Task`` of the planning benchmark (results ``e1``, ``e2`` ...; a lookup whose entity is
    an earlier value reads that result)."""
    steps: list[GoldStep] = []
    earlier: list[tuple[str, str]] = []
    for i, s in enumerate(q.program, 1):
        name, args, value = f"e{i}", s["args"], str(s["value"])
        if s["tool"] == "lookup":
            entity, attribute = str(args["entity"]), str(args["attribute"])
            src = next((n for n, v in earlier if v.lower() == entity.lower()), None)
            steps.append(GoldStep(name=name, tool="lookup", value=value, reads=(src,) if src else (),
                                  args=(("entity", src or json.dumps(entity)), ("attribute", json.dumps(attribute))),
                                  subject=entity, phrase=f"the {attribute} of {entity}", attribute=attribute))
        else:
            expr, reads = _calc_expression(str(args["expression"]), earlier)
            steps.append(GoldStep(name=name, tool="calc", args=(("expression", expr),), value=value, reads=reads,
                                  subject=str(args["expression"]), phrase="the result"))
        earlier.append((name, value))
    return Task(id=q.id, question=q.question, steps=tuple(steps), answer=q.answer, hops=q.hops, branches=1,
                answer_name=steps[-1].name)


def _exemplar_first(q: ProseQuestion) -> bool:
    """A question whose program adds two lookups up shows chaining, lookup and calc in one exemplar."""
    tools = [s["tool"] for s in q.program]
    return tools == ["lookup", "lookup", "calc"] and "+" in q.program[-1]["args"]["expression"]


@dataclass(frozen=True)
class ProseSetting:
    """A corpus with its questions, ready for the strategies: the real tools over the corpus's index, the worked
    exemplars (questions whose program adds two lookups up come first) and the other questions as tasks."""

    index: Any
    tools: list[Any]
    exemplars: list[Any]
    exemplar_ids: tuple[str, ...]
    tasks: list[Task]


def prose_setting(corpus: str | Path | Any, questions: str | Path | Sequence[ProseQuestion],
                  k_exemplars: int = 1) -> ProseSetting:
    """The setting of ``corpus`` (a directory or a ``CorpusIndex``) and ``questions`` (a file or loaded ones)."""
    from tokenomy.tools import calc, lookup_tool, search_tool
    from tokenomy.tools.builtin import CorpusIndex

    qs = load_questions(questions) if isinstance(questions, (str, Path)) else list(questions)
    index = corpus if isinstance(corpus, CorpusIndex) else CorpusIndex(corpus)
    tools = [search_tool(index), lookup_tool(index), calc]
    chosen = sorted(qs, key=lambda q: not _exemplar_first(q))[:k_exemplars]
    exemplars = [to_task(q).exemplar(_observations(to_task(q), tools)) for q in chosen]
    ids = tuple(q.id for q in chosen)
    return ProseSetting(index, tools, exemplars, ids, [to_task(q) for q in qs if q.id not in ids])


@dataclass
class ProseReport:
    hit_rate: HitRate
    questions: int
    exemplars: list[str]
    model: str = ""
    records: list[PlanningRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        h = self.hit_rate
        return {"lookup_hit_rate": round(h.rate, 4), "lookup_hits": h.hits, "lookup_steps": h.total,
                "lookup_misses": h.misses, "questions": self.questions, "exemplars": self.exemplars,
                "model": self.model, "records": [r.to_json() for r in self.records]}


def run_prose_bench(corpus: str | Path, questions: str | Path, *, live: bool = True, spec: str | None = None,
                    strategies: Sequence[str] = STRATEGIES, limit: int = 0, k_exemplars: int = 1,
                    engine_for: Callable[[str, Sequence[Task]], Any] | None = None, tokenizer: Any = None,
                    tokens_per_step: int = 40, progress: Callable[[str], None] | None = None,
                    transcript: Callable[[dict[str, Any]], None] | None = None) -> ProseReport:
    """The lookup hit rate over all questions and, if ``live``, each strategy on the first ``limit`` questions
    (all when 0) that are not exemplars. ``engine_for(strategy, tasks)`` gives the engine (default: ``spec``'s
    engine, loaded once, for every strategy); ``tokens_per_step`` sizes the token limits (see ``strategy_for``)."""
    from tokenomy.tools.builtin import CorpusIndex

    say = progress or (lambda _m: None)
    qs = load_questions(questions)
    index = CorpusIndex(corpus)
    report = ProseReport(lookup_hit_rate(index.lookup, qs), len(qs), [])
    say(f"lookup hit rate {report.hit_rate.hits}/{report.hit_rate.total}")
    if not live:
        return report
    setting = prose_setting(index, qs, k_exemplars)
    report.exemplars = list(setting.exemplar_ids)
    tools, exemplars = setting.tools, setting.exemplars
    tasks = setting.tasks[:limit] if limit else setting.tasks
    if engine_for is None:
        from tokenomy.kernels.registry import load_engine

        engine = load_engine(spec)
        report.model = str(getattr(engine, "spec", spec or "embedded"))
        engine_for = lambda _s, _t: engine  # noqa: E731
    tokenizer = tokenizer or embedded_tokenizer()
    for name in strategies:
        if name == "rewoo-parallel":
            continue  # the same model calls as rewoo; only the tool schedule differs
        rec = run_group(name, "live", tasks, None, engine=engine_for(name, tasks), tokenizer=tokenizer,
                        exemplars=exemplars, obs_tokens=0, failure_rate=0.0, latency_s=0.0,
                        tokens_per_step=tokens_per_step, make_tools=lambda: tools, transcript=transcript)
        rec.hops = 0  # all the questions, of 1-3 hops
        report.records.append(rec)
        say(f"live: {name}")
    return report


def _observations(task: Task, tools: Sequence[Any]) -> dict[str, str]:
    """Each gold step's output from the real tools (for a worked exemplar)."""
    by_name = {t.name: t for t in tools}
    out: dict[str, str] = {}
    for s in task.steps:
        if s.tool == "lookup":
            out[s.name] = str(by_name["lookup"].invoke(entity=s.subject, attribute=s.attribute))
        else:
            value = by_name["calc"].invoke(expression=s.subject)
            out[s.name] = str(int(value) if float(value).is_integer() else value)
    return out


def format_prose_report(report: ProseReport) -> str:
    h = report.hit_rate
    lines = [f"lookup hit rate (the gold programs' lookups run on the tool, no model): {h.hits}/{h.total} = "
             f"{h.rate:.1%}"]
    lines += [f"  miss {m}" for m in h.misses[:10]]
    if report.records:
        n = report.records[0].tasks
        lines += ["", f"live on {report.model or 'the given engine'}: {n} questions (exemplars, not scored: "
                      f"{', '.join(report.exemplars) or '-'})",
                  f"{'strategy':<15} {'acc':>5} {'95% CI':>11} {'prompt':>7} {'cached':>7} {'compl':>6} {'calls':>5} "
                  f"{'wall s':>7}   (per question)"]
        for r in report.records:
            k = max(r.tasks, 1)
            acc = "-" if r.accuracy is None else f"{r.accuracy:.0%}"
            ci = "-" if r.accuracy_low is None else f"{r.accuracy_low:.0%}-{r.accuracy_high:.0%}"
            line = (f"{r.strategy:<15} {acc:>5} {ci:>11} {r.prompt_tokens / k:>7.0f} "
                    f"{r.cached_prompt_tokens / k:>7.0f} {r.completion_tokens / k:>6.0f} {r.calls / k:>5.1f} "
                    f"{r.wall_s / k:>7.2f}")
            lines.append(line + (f"  ({len(r.errors)} crashed)" if r.errors else ""))
    return "\n".join(lines)
