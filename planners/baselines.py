"""The baselines that ``rewoo`` is measured against, each a real implementation of its published design:

* ``rewoo-nl``: ReWOO in the paper's natural-language format: ``Plan: ...`` lines each followed by
  ``#E<n> = Tool[input]``; a worker runs the steps in order, replacing ``#E<n>`` references by earlier evidence,
  and one solver call answers from the plan and its evidence. References are resolved by one regular
  expression pass that matches whole numbers, so ``#E1`` never replaces the start of ``#E10`` (a bug of
  LangGraph's ReWOO tutorial), and a reference to a missing step is an error value, not a crash.
* ``react``: ReAct's thought/action/observation loop. Every model call re-sends the whole history (that is
  where its tokens go); a reply without a valid action gets a format hint as its observation; the loop is
  bounded, after which one last call is asked for the final answer.
* ``plan-execute``: LangGraph's plan-and-execute tutorial: a planner writes numbered steps, an executor call
  per step chooses the tool call for that step, and a re-planner call after every step either answers or
  rewrites the remaining steps.

Each is a ``Strategy``: a LangGraph graph in which every model call and every tool call is its own node, so a
killed run resumes without repeating them. The same exemplar task as ``rewoo``'s appears in each prompt,
written in each strategy's own format. Tools with several arguments take their text input split at commas.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import Field

from tokenomy.errors import UserError
from tokenomy.kernels import Engine, Worker

from .executor import StepError, clip_value
from .exemplars import ORVEL, Exemplar
from .run import EventSink, Strategy, new_graph
from .state import RunState, from_state, to_state

__all__ = ["RewooNL", "React", "PlanExecute", "show_value", "text_call"]


def show_value(v: Any, limit: int = 4000) -> str:
    """A result as the model reads it, cut at ``limit`` characters."""
    import json

    if isinstance(v, StepError):
        text = str(v)
    else:
        text = v if isinstance(v, str) else json.dumps(to_state(v), ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit} more characters cut]"


def _tool_lines(tools: Mapping[str, Any]) -> str:
    out = []
    for t in sorted(tools.values(), key=lambda t: t.name):
        names = list(t.args_model.model_fields)
        inp = names[0] if len(names) == 1 else ", ".join(names)
        desc = (getattr(t, "description", "") or "").strip().split("\n")[0]
        out.append(f"{t.name}[{inp}]: {desc}" if desc else f"{t.name}[{inp}]")
    return "\n".join(out)


_ACTION = re.compile(r"^\s*Action\s*:\s*([A-Za-z_][\w.-]*)\s*\[(.*)\]\s*$", re.M)
_FINAL = re.compile(r"Final Answer\s*:\s*(.*)", re.S)


class _TextToolStrategy(Strategy):
    """Shared by the baselines: tools called from text, with a timeout and errors as values."""

    def __init__(self, model: Engine | Worker, tools: Iterable[Any] | Mapping[str, Any], *,
                 tool_timeout_s: float = 30.0, max_output_chars: int = 4000,
                 exemplars: Sequence[Exemplar] = (ORVEL,), on_event: EventSink | None = None) -> None:
        super().__init__(model, tools, on_event=on_event)
        self.exemplars = tuple(exemplars)
        self.tool_timeout_s = tool_timeout_s
        self.max_output_chars = max_output_chars

    def call_text(self, scope: str, tool_name: str, text: str, fill: Callable[[str], str] | None = None) -> Any:
        """Run ``tool_name`` on a text input (through the journal); a failure is returned as a ``StepError``.
        ``fill`` rewrites each argument after the text is split into arguments (rewoo-nl puts evidence into
        them there, so a comma in a tool's output cannot shift the arguments of the next call)."""
        import asyncio

        from tokenomy.errors import UserError

        tool = self.tools.get(tool_name)
        if tool is None:
            return StepError(scope, f"unknown tool {tool_name!r}; the tools are {', '.join(sorted(self.tools))}")
        try:
            args = text_call(tool, text)
        except UserError as exc:
            return StepError(scope, str(exc))
        if fill is not None:
            args = {k: fill(v) for k, v in args.items()}
        proxy = self.journaled(scope)[tool_name]
        try:
            value = asyncio.run(asyncio.wait_for(proxy.ainvoke(**args), self.tool_timeout_s))
        except TimeoutError:
            return StepError(scope, f"{tool_name} timed out after {self.tool_timeout_s} s", "timeout")
        except Exception as exc:
            return StepError(scope, f"{tool_name} failed: {type(exc).__name__}: {exc}")
        return clip_value(value, self.max_output_chars)


# -- rewoo-nl ---------------------------------------------------------------------------------------------

NL_PLANNER_RULES = """Make a plan that solves the task step by step with the tools below. Write each step as a line
"Plan: <what to do>" followed by a line "#E<n> = <tool>[<input>]" that gets its evidence. A later input may use
#E<n> to mean the evidence of step n. Use the names from the question, spelled as in the question. Write only the
plan."""

NL_SOLVER_RULES = ("Solve the task with the plan and the evidence each step gathered. Reply with the answer only, "
                   "as short as possible.")

_NL_STEP = re.compile(r"^\s*#E(\d+)\s*=\s*([A-Za-z_][\w.-]*)\s*\[(.*)\]\s*$")
_NL_PLAN = re.compile(r"^\s*Plan\s*:\s*(.*)$")
_NL_REF = re.compile(r"#E(\d+)(?!\d)")


def parse_nl_plan(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """ReWOO's plan text as steps ``{"n", "plan", "tool", "input"}`` and a list of problems."""
    steps: list[dict[str, Any]] = []
    problems: list[str] = []
    description = ""
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if m := _NL_PLAN.match(line):
            description = m.group(1).strip()
        elif m := _NL_STEP.match(line):
            steps.append({"n": int(m.group(1)), "plan": description, "tool": m.group(2), "input": m.group(3)})
            description = ""
        else:
            problems.append(f"line {i} is neither 'Plan: ...' nor '#E<n> = Tool[input]': {line.strip()[:80]!r}")
    if not steps:
        problems.append("the plan has no '#E<n> = Tool[input]' step")
    return steps, problems


class RewooNLState(RunState):
    steps: list[dict[str, Any]] = Field(default_factory=list)
    next_step: int = 0


class RewooNL(_TextToolStrategy):
    """ReWOO in the paper's natural-language format (planner, worker, solver)::

        plan -> (work)* -> solve
    """

    name = "rewoo-nl"
    state_model = RewooNLState

    def __init__(self, model: Engine | Worker, tools: Iterable[Any] | Mapping[str, Any], *,
                 plan_tokens: int = 256, answer_tokens: int = 48, **kwargs: Any) -> None:
        super().__init__(model, tools, **kwargs)
        self.plan_tokens = plan_tokens
        self.answer_tokens = answer_tokens
        self.system = f"{NL_PLANNER_RULES}\nTools:\n{_tool_lines(self.tools)}"

    def planner_messages(self, question: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}]
        for ex in self.exemplars:
            msgs += [{"role": "user", "content": ex.question}, {"role": "assistant", "content": ex.nl_plan}]
        return msgs + [{"role": "user", "content": question}]

    def node_plan(self, s: RewooNLState) -> dict[str, Any]:
        c, usage = self.ask("planner", self.planner_messages(s.question), self.plan_tokens)
        text = c.text.strip()
        steps, problems = parse_nl_plan(text)
        seen: set[int] = set()
        for st in steps:
            if st["tool"] not in self.tools:
                problems.append(f"#E{st['n']}: unknown tool {st['tool']!r}")
            missing = [int(n) for n in _NL_REF.findall(st["input"]) if int(n) not in seen]
            if missing:
                problems.append(f"#E{st['n']} reads #E{missing[0]}, which no earlier step gives")
            seen.add(st["n"])
        self.emit({"event": "plan", "text": text, "valid": not problems})
        return {"usage": usage, "plan": text, "plans": [text], "plan_valid": not problems, "steps": steps,
                "notes": [f"plan problem: {p}" for p in problems]}

    def node_work(self, s: RewooNLState) -> dict[str, Any]:
        st = s.steps[s.next_step]
        key = f"#E{st['n']}"

        def evidence(m: re.Match[str]) -> str:
            v = s.values.get(f"#E{m.group(1)}")
            return m.group(0) if v is None else show_value(from_state(v), self.max_output_chars)

        refs = [f"#E{n}" for n in _NL_REF.findall(st["input"])]
        missing = [r for r in refs if r not in s.values]
        bad = [r for r in refs if isinstance(from_state(s.values.get(r)), StepError)]
        if missing:
            value: Any = StepError(key, f"the input reads {missing[0]}, which no earlier step gave")
        elif bad:
            value = StepError(key, f"skipped: it needs {bad[0]}, which failed", "skipped")
        else:
            value = self.call_text(f"work:{s.next_step}", st["tool"], st["input"],
                                   fill=lambda arg: _NL_REF.sub(evidence, arg))
        return {"values": {**s.values, key: to_state(value)}, "next_step": s.next_step + 1}

    def node_solve(self, s: RewooNLState) -> dict[str, Any]:
        lines = []
        for st in s.steps:
            key = f"#E{st['n']}"
            lines.append(f"Plan: {st['plan']}\n{key} = {st['tool']}[{st['input']}]\nEvidence: "
                         f"{show_value(from_state(s.values.get(key, 'not run')), self.max_output_chars)}")
        user = f"Task: {s.question}\n" + ("\n".join(lines) or s.plan) + "\nAnswer:"
        c, usage = self.ask("solver", [{"role": "system", "content": NL_SOLVER_RULES},
                                       {"role": "user", "content": user}], self.answer_tokens)
        return {"answer": c.text.strip(), "usage": usage, "done": True}

    def route(self, s: RewooNLState) -> str:
        return "work" if s.next_step < len(s.steps) else "solve"

    def build(self) -> Any:
        from langgraph.graph import END, START

        g = new_graph(RewooNLState, {"plan": self.node_plan, "work": self.node_work, "solve": self.node_solve})
        g.add_edge(START, "plan")
        g.add_conditional_edges("plan", self.route, ["work", "solve"])
        g.add_conditional_edges("work", self.route, ["work", "solve"])
        g.add_edge("solve", END)
        return g


# -- react --------------------------------------------------------------------------------------------------

REACT_RULES = """Answer the question with the tools below. Work in steps:
Thought: what to do next
Action: <tool>[<input>]
Observation: the tool's result (it is given to you)
... (repeat Thought/Action/Observation as needed)
Thought: I know the answer
Final Answer: the answer, as short as possible
Use the names from the question, spelled as in the question."""

class ReactState(RunState):
    scratchpad: str = ""
    action: dict[str, str] = Field(default_factory=dict)
    turns: int = 0


class React(_TextToolStrategy):
    """ReAct: ``think -> (act -> think)* -> END``, every ``think`` re-sending the whole history.

    Args:
        max_turns: model calls that may choose an action; then one more call is asked for the final answer.
        turn_tokens: the token limit of one call.
    """

    name = "react"
    state_model = ReactState

    def __init__(self, model: Engine | Worker, tools: Iterable[Any] | Mapping[str, Any], *, max_turns: int = 6,
                 turn_tokens: int = 96, **kwargs: Any) -> None:
        super().__init__(model, tools, **kwargs)
        self.max_turns = max_turns
        self.turn_tokens = turn_tokens
        examples = "\n\n".join(ex.react for ex in self.exemplars)
        self.system = f"{REACT_RULES}\nTools:\n{_tool_lines(self.tools)}\n\nExamples:\n{examples}"

    def node_think(self, s: ReactState) -> dict[str, Any]:
        last = s.turns >= self.max_turns
        pad = s.scratchpad + ("Thought: I must give the final answer now.\nFinal Answer:" if last else "")
        user = f"Question: {s.question}\n{pad}"
        c, usage = self.ask("react", [{"role": "system", "content": self.system},
                                      {"role": "user", "content": user}], self.turn_tokens,
                            stop=("Observation:",))
        text = c.text.strip()
        update: dict[str, Any] = {"usage": usage, "turns": s.turns + 1, "action": {}}
        if last:
            return update | {"answer": text.split("\n")[0].strip() or None, "done": True, "plan": s.scratchpad.strip(),
                             "notes": [f"no final answer after {self.max_turns} turns; one more call was asked"]}
        if m := _FINAL.search(text):
            pad = s.scratchpad + text + "\n"
            return update | {"answer": m.group(1).strip().split("\n")[0].strip(), "done": True, "scratchpad": pad,
                             "plan": pad.strip()}
        if m := _ACTION.search(text):
            body = text[:m.end()].strip()
            return update | {"scratchpad": s.scratchpad + body + "\n",
                             "action": {"tool": m.group(1), "input": m.group(2)}}
        hint = ("Observation: Invalid format. Write 'Action: <tool>[<input>]' with one of "
                f"{', '.join(sorted(self.tools))}, or 'Final Answer: ...'.\n")
        return update | {"scratchpad": s.scratchpad + (text + "\n" if text else "") + hint}

    def node_act(self, s: ReactState) -> dict[str, Any]:
        key = f"step{s.turns}"
        value = self.call_text(f"act:{s.turns}", s.action["tool"], s.action["input"])
        obs = show_value(value, self.max_output_chars).replace("\n", " ")
        return {"values": {**s.values, key: to_state(value)}, "scratchpad": s.scratchpad + f"Observation: {obs}\n",
                "action": {}}

    def route(self, s: ReactState) -> str:
        if s.done:
            return "end"
        return "act" if s.action else "think"

    def build(self) -> Any:
        from langgraph.graph import END, START

        g = new_graph(ReactState, {"think": self.node_think, "act": self.node_act})
        g.add_edge(START, "think")
        g.add_conditional_edges("think", self.route, {"end": END, "act": "act", "think": "think"})
        g.add_edge("act", "think")
        return g


# -- plan-execute ---------------------------------------------------------------------------------------------

PE_PLANNER_RULES = """For the given question, write a simple step-by-step plan of individual tasks that, done in
order, give the answer. Number the steps "1.", "2.", ... Do not add steps that are not needed. Use the names from
the question, spelled as in the question. Tools that the steps can use:
{tools}"""

PE_EXECUTOR_RULES = """You carry out one task with one tool call. Reply with one line:
Action: <tool>[<input>]
Tools:
{tools}
Example: for the task "{task}" reply "Action: {action}"."""

PE_REPLANNER_RULES = """You update a plan. Given the question, the plan and the steps done so far with their
results: if the results answer the question, reply "Final Answer: <the answer, as short as possible>";
otherwise reply with the remaining steps only, numbered "1.", "2.", ..."""

_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*])\s+(.*\S)\s*$", re.M)


class PlanExecuteState(RunState):
    todo: list[str] = Field(default_factory=list)
    past: list[dict[str, Any]] = Field(default_factory=list)
    action: dict[str, str] = Field(default_factory=dict)


class PlanExecute(_TextToolStrategy):
    """LangGraph's plan-and-execute: ``plan -> (execute -> act -> replan)* -> END``.

    Args:
        max_steps: executed steps at most; after that the re-planner is told to answer.
    """

    name = "plan-execute"
    state_model = PlanExecuteState

    def __init__(self, model: Engine | Worker, tools: Iterable[Any] | Mapping[str, Any], *, max_steps: int = 6,
                 plan_tokens: int = 128, step_tokens: int = 48, answer_tokens: int = 96, **kwargs: Any) -> None:
        super().__init__(model, tools, **kwargs)
        self.max_steps = max_steps
        self.plan_tokens = plan_tokens
        self.step_tokens = step_tokens
        self.answer_tokens = answer_tokens
        lines = _tool_lines(self.tools)
        self.planner_system = PE_PLANNER_RULES.format(tools=lines)
        first = self.exemplars[0] if self.exemplars else ORVEL
        self.executor_system = PE_EXECUTOR_RULES.format(tools=lines, task=first.steps[0], action=first.action)

    def _past(self, s: PlanExecuteState) -> str:
        return "\n".join(f"{i}. {p['task']}\n   result: {show_value(from_state(p['result']), self.max_output_chars)}"
                         for i, p in enumerate(s.past, 1)) or "(none)"

    def node_plan(self, s: PlanExecuteState) -> dict[str, Any]:
        msgs = [{"role": "system", "content": self.planner_system}]
        for ex in self.exemplars:
            msgs += [{"role": "user", "content": ex.question}, {"role": "assistant", "content": ex.numbered()}]
        msgs.append({"role": "user", "content": s.question})
        c, usage = self.ask("planner", msgs, self.plan_tokens)
        text = c.text.strip()
        todo = _NUMBERED.findall(text)
        self.emit({"event": "plan", "text": text, "valid": bool(todo)})
        notes = [] if todo else ["the plan has no numbered steps; the question itself is the only step"]
        return {"usage": usage, "plan": text, "plans": [text], "plan_valid": bool(todo),
                "todo": todo or [s.question], "notes": notes}

    def node_execute(self, s: PlanExecuteState) -> dict[str, Any]:
        task = s.todo[0]
        user = f"Question: {s.question}\nDone so far:\n{self._past(s)}\nTask: {task}"
        c, usage = self.ask("executor", [{"role": "system", "content": self.executor_system},
                                         {"role": "user", "content": user}], self.step_tokens)
        m = _ACTION.search(c.text) or re.search(r"([A-Za-z_][\w.-]*)\s*\[(.*)\]", c.text)
        action = {"tool": m.group(1), "input": m.group(2)} if m else {"tool": "", "input": c.text.strip()}
        return {"usage": usage, "action": action}

    def node_act(self, s: PlanExecuteState) -> dict[str, Any]:
        n = len(s.past)
        if s.action.get("tool"):
            value = self.call_text(f"act:{n}", s.action["tool"], s.action["input"])
        else:
            value = StepError(f"step{n + 1}", "the executor named no tool call: 'Action: <tool>[<input>]'")
        key = f"step{n + 1}"
        return {"values": {**s.values, key: to_state(value)},
                "past": [*s.past, {"task": s.todo[0], "action": s.action, "result": to_state(value)}],
                "todo": s.todo[1:], "action": {}}

    def node_replan(self, s: PlanExecuteState) -> dict[str, Any]:
        force = len(s.past) >= self.max_steps
        remaining = "\n".join(f"{i}. {t}" for i, t in enumerate(s.todo, 1)) or "(none)"
        user = (f"Question: {s.question}\nPlan:\n{s.plan}\nDone so far:\n{self._past(s)}\n"
                f"Remaining steps:\n{remaining}")
        if force:
            user += "\nNo more steps may run: reply with the final answer."
        c, usage = self.ask("replanner", [{"role": "system", "content": PE_REPLANNER_RULES},
                                          {"role": "user", "content": user}], self.answer_tokens)
        text = c.text.strip()
        if m := _FINAL.search(text):
            return {"usage": usage, "answer": m.group(1).strip().split("\n")[0].strip(), "done": True, "todo": []}
        todo = _NUMBERED.findall(text)
        if force or not todo:
            note = "step limit reached" if force else "the re-planner gave neither an answer nor steps"
            return {"usage": usage, "answer": text.split("\n")[0].strip() or None, "done": True, "todo": [],
                    "notes": [f"{note}; its reply is taken as the answer"]}
        return {"usage": usage, "todo": todo, "plans": [text]}

    def route(self, s: PlanExecuteState) -> str:
        return "end" if s.done or not s.todo else "execute"

    def build(self) -> Any:
        from langgraph.graph import END, START

        g = new_graph(PlanExecuteState, {"plan": self.node_plan, "execute": self.node_execute, "act": self.node_act,
                                          "replan": self.node_replan})
        g.add_edge(START, "plan")
        g.add_conditional_edges("plan", self.route, {"end": END, "execute": "execute"})
        g.add_edge("execute", "act")
        g.add_edge("act", "replan")
        g.add_conditional_edges("replan", self.route, {"end": END, "execute": "execute"})
        return g


# -- calling a tool from text (ReWOO's ``Tool[input]``, ReAct's ``Action Input``) -------------------------


def text_call(tool: Any, text: str) -> dict[str, Any]:
    """The arguments of ``tool`` from one text input, as ReWOO's ``Tool[input]`` and ReAct's
    ``Action Input`` give them: a tool with one argument (or one required argument) gets the whole text; a tool
    with more gets the text split at commas, in the order of its arguments (the last one takes the rest).
    Surrounding quotes are removed. Raises ``UserError`` when there are too few parts."""
    fields = list(tool.args_model.model_fields.items())
    required = [n for n, f in fields if f.is_required()]
    text = text.strip()
    if len(fields) == 1 or len(required) <= 1 and "," not in text:
        name = required[0] if required else fields[0][0]
        return {name: _unquote(text)}
    names = [n for n, _ in fields]
    parts = [p for p in text.split(",", len(names) - 1)]
    if len(parts) < len(required):
        raise UserError(f"{tool.name} needs {len(required)} inputs separated by commas "
                        f"({', '.join(required)}), got {text!r}")
    return {n: _unquote(p) for n, p in zip(names, parts, strict=False)}


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    return s
