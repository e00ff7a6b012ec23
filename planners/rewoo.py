"""The ``rewoo`` strategy: one planner call writes a codified plan, tools run it without the model, one solver
call answers (none when the plan's answer already is a short tool value).

Bad plans are handled without losing anything: under a grammar-capable engine the planner's output is
constrained by the plan grammar specialised to the tools (so it always names real tools and arguments; a plan
cut off at the token limit is closed after its last complete statement); elsewhere a plan that does not parse or
validate is sent back once with the feedback. When steps fail or an ``assert`` does not hold, the planner is
asked (a bounded number of times) for a plan of only the missing part, which reads the results that succeeded.

Prompts are laid out static to dynamic (rules, tool signatures and exemplars first; the question last) so the
shared worker's prefix cache reuses them across questions and between the planner and the re-planner.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenomy.errors import PlanError
from tokenomy.kernels import Completion, Engine, Grammar, SamplingParams, Usage, UsageLedger, Worker

from . import ast as A
from .executor import ExecutionResult, PlanExecutor, StepError
from .grammar import for_tools
from .parser import close_plan, parse_plan
from .printer import print_plan
from .validate import check_plan

__all__ = ["RewooResult", "Rewoo", "tool_signature"]

PLANNER_RULES = """You write plans that answer a question with tools. A plan is one statement per line:
  name = tool(arg="value", other=earlier_name)   # call a tool, keep its result
  name = earlier_name.field or earlier_name[0]    # pick from a result
  if x > 3 { ... } / for item in list { ... }     # control flow in braces
  assert cond, "why"                              # a check
  answer(name)                                    # the last line
Use each result name once. Write only the plan."""

EXEMPLARS = [
    ("How many years after Orvel Corp was founded did its founder die?",
     'founded = lookup(entity="Orvel Corp", attribute="founded")\n'
     'founder = lookup(entity="Orvel Corp", attribute="founder")\n'
     'died = lookup(entity=founder, attribute="died")\n'
     'years = calc(expression=died + " - " + founded)\nanswer(years)'),
    ("Which river flows through the capital of Keshar?",
     'capital = lookup(entity="Keshar", attribute="capital")\n'
     'river = lookup(entity=capital, attribute="river")\nanswer(river)'),
]

SOLVER_RULES = ("Answer the question using the evidence the plan gathered. Reply with the answer only, "
                "as short as possible.")


def tool_signature(tool: Any) -> str:
    """``name(arg: type, opt: type = default)`` from the tool's own ``signature()`` or its argument model."""
    if hasattr(tool, "signature"):
        return str(tool.signature())
    parts = []
    for name, f in tool.args_model.model_fields.items():
        typ = getattr(f.annotation, "__name__", str(f.annotation))
        parts.append(f"{name}: {typ}" if f.is_required() else f"{name}: {typ} = {f.default!r}")
    return f"{tool.name}({', '.join(parts)})"


@dataclass
class RewooResult:
    question: str
    answer: Any
    plan: str
    plan_valid: bool
    plans: list[str] = field(default_factory=list)
    execution: ExecutionResult | None = None
    usage: dict[str, Usage] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> Usage:
        return sum(self.usage.values(), Usage())


class Rewoo:
    """The codified-plan ReWOO strategy.

    Args:
        model: an ``Engine`` or a shared ``Worker`` in front of one.
        tools: tools with ``name``, ``args_model`` (pydantic) and ``async ainvoke``.
        max_replans: re-plans of the failed part, at most.
        plan_tokens, answer_tokens: token limits of the planner and solver calls.
    """

    def __init__(self, model: Engine | Worker, tools: Iterable[Any] | Mapping[str, Any], *, max_replans: int = 1,
                 plan_tokens: int = 160, answer_tokens: int = 48, executor: PlanExecutor | None = None) -> None:
        self.worker = model if isinstance(model, Worker) else Worker(model)
        items: Iterable[Any] = tools.values() if isinstance(tools, Mapping) else tools
        self.tools: dict[str, Any] = {t.name: t for t in items}
        self.max_replans = max_replans
        self.plan_tokens = plan_tokens
        self.answer_tokens = answer_tokens
        self.executor = executor or PlanExecutor(self.tools)
        self._ledger = UsageLedger()
        engine = self.worker.engine
        self.grammar: Grammar | None = None
        if engine.capabilities.grammar:
            spec = {name: {a: f.is_required() for a, f in t.args_model.model_fields.items()}
                    for name, t in self.tools.items()}
            self.grammar = Grammar.lark(for_tools(spec, max_statements=max(2, plan_tokens // 24)))
        signatures = "\n".join(sorted(tool_signature(t) for t in self.tools.values()))
        self.system = f"{PLANNER_RULES}\nTools:\n{signatures}"

    # -- the three phases -------------------------------------------------------------------------------

    def _planner_messages(self, question: str, extra: str = "") -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}]
        for q, plan in EXEMPLARS:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": plan}]
        msgs.append({"role": "user", "content": question + (f"\n{extra}" if extra else "")})
        return msgs

    def _ask(self, agent: str, messages: Sequence[Mapping[str, str]], max_tokens: int,
             grammar: Grammar | None = None) -> Completion:
        c = self.worker.generate(list(messages), SamplingParams(max_tokens=max_tokens), grammar=grammar,
                                 agent=agent, tags=("rewoo",))
        self._ledger.record(c.usage, agent)
        return c

    def plan(self, question: str, extra: str = "", known: Iterable[str] = ()) -> tuple[A.Plan, str, bool, list[str]]:
        """One planner call (plus at most one repair call). Returns the plan, its text, whether the model's
        own text was valid, and notes on repairs."""
        notes: list[str] = []
        messages = self._planner_messages(question, extra)
        c = self._ask("planner", messages, self.plan_tokens, self.grammar)
        text = c.text.strip()
        if self.grammar is not None and c.finish_reason == "length":
            text = close_plan(text)
            notes.append("plan cut off at the token limit; closed after its last complete statement")
        try:
            plan = self._checked(text, known)
            return plan, text, not notes, notes
        except PlanError as err:
            notes.append(f"plan rejected: {err}")
            repair = messages + [{"role": "assistant", "content": text}, {"role": "user", "content": err.feedback}]
            c = self._ask("planner", repair, self.plan_tokens, self.grammar)
            text = c.text.strip() if c.finish_reason == "stop" or self.grammar is None else close_plan(c.text)
            plan = self._checked(text, known)  # a second failure is the caller's error
            return plan, text, False, notes

    def _checked(self, text: str, known: Iterable[str]) -> A.Plan:
        plan = parse_plan(text)
        if known:
            # A re-plan may read earlier results: validate it as if they had been assigned first.
            prelude = [A.Assign(target=n, value=A.Literal_(value=None)) for n in known]
            check_plan(A.Plan(body=[*prelude, *plan.body]), self.tools)
        else:
            check_plan(plan, self.tools)
        return plan

    def solve(self, question: str, plan_text: str, result: ExecutionResult) -> str:
        evidence = "\n".join(f"{k} = {_show(v)}" for k, v in result.values.items())
        if result.failed_asserts:
            evidence += "\nfailed checks: " + "; ".join(result.failed_asserts)
        user = f"Question: {question}\nPlan:\n{plan_text}\nEvidence:\n{evidence}\nAnswer:"
        c = self._ask("solver", [{"role": "system", "content": SOLVER_RULES}, {"role": "user", "content": user}],
                      self.answer_tokens)
        return c.text.strip()

    def run(self, question: str) -> RewooResult:
        """Answer ``question`` (one question at a time per ``Rewoo`` object; the worker may be shared)."""
        self._ledger = UsageLedger()
        plan, text, valid, notes = self.plan(question)
        plans = [text]
        result = self.executor.run(plan)
        for _ in range(self.max_replans):
            failed = [e for e in result.errors if e.kind != "skipped"]
            if not failed and not result.failed_asserts:
                break
            ok = {k: v for k, v in result.values.items() if not isinstance(v, StepError)}
            known = "\n".join(f"{k} = {_show(v)}" for k, v in ok.items())
            problems = "\n".join([str(e) for e in failed] + result.failed_asserts)
            extra = (f"These results are known and can be used by name:\n{known}\nThese steps failed:\n{problems}\n"
                     "Write a plan for only what is still missing.")
            try:
                replan, replan_text, _, more = self.plan(question, extra, known=ok)
            except PlanError as err:
                notes.append(f"re-plan rejected: {err}")
                break
            notes += more
            plans.append(replan_text)
            result = self.executor.run(replan, known=ok)
        answer = result.answer
        if isinstance(answer, StepError) or not _short_scalar(answer):
            answer = self.solve(question, "\n\n".join(plans), result)
        return RewooResult(question=question, answer=answer, plan=print_plan(plan), plan_valid=valid, plans=plans,
                           execution=result, usage=dict(self._ledger.by_agent), notes=notes)


def _short_scalar(v: Any) -> bool:
    return isinstance(v, int | float | bool) or (isinstance(v, str) and 0 < len(v) <= 40 and "\n" not in v)


def _show(v: Any, limit: int = 600) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + " ..."
