"""Running an ``AgentGraph``: it compiles to a LangGraph ``StateGraph`` and runs like every tokenomy strategy.

One graph node per call of the schedule (``agent@round``) and one ``decision`` node. A node waits for exactly
the calls it reads: its spatial inputs in this round and its temporal inputs of the round before, which LangGraph
keeps in the state's ``outputs`` channel, keyed by round (the per-round memory). Calls of one step run
concurrently and go through the shared worker of their model, which batches them. The SQLite checkpointer makes a
run resumable (``GraphTeam.resume``): finished calls are not made again.

What each call costs is the engine's own usage, recorded per call with its agent and round; what each edge costs
is the exact text it inserted into the receiver's prompt, counted with the receiver's tokenizer. A pruned agent
is not in the schedule, so it makes no call; a pruned edge inserts no text. ``GraphResult`` sums it all per
agent, per round and per edge.

Prompts are additive, so the simulator's token formula holds: the system message is the agent's role prompt; the
user message is ``Question: ...`` followed by one block per incoming message and nothing else.
"""

from __future__ import annotations

import json
import operator
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from tokenomy.agents import Agent
from tokenomy.agents.answers import canonical
from tokenomy.errors import BudgetExceeded, TokenomyError
from tokenomy.kernels import Completion, Engine, Grammar, SamplingParams, Usage, Worker
from tokenomy.kernels.limits import UsageLimits
from tokenomy.kernels.registry import default_spec, shared_engine
from tokenomy.kernels.tokens import text_tokens
from tokenomy.planners.journal import Checkpoints
from tokenomy.planners.run import EventSink, Strategy, new_graph
from tokenomy.planners.state import RunResult, RunState, to_state

from .graph import DECISION, AgentGraph, Call, Edge, GraphError, Mask, Schedule

__all__ = ["GraphTeam", "GraphResult", "GraphState", "extract_answer", "prompt_messages", "block_text",
           "CODIFIED_FORMAT"]

CODIFIED_FORMAT = 'Reply with one line: answer = "<the answer>"'
_CODIFIED = Grammar.regex(r'answer = "[^"\n\\]{1,80}"')
_ANSWER_LINE = re.compile(r'^\s*(?:final\s+)?answer\s*[:=]\s*(.+?)\s*$', re.IGNORECASE)
_ANSWER_IS = re.compile(r'^(?:the\s+)?(?:final\s+)?answer\s+is\s*:?\s*', re.IGNORECASE)


# -- messages ------------------------------------------------------------------------------------------------


def extract_answer(text: str) -> str | None:
    """The answer in an agent's reply: the value of its last ``answer = "..."`` / ``answer: ...`` line, else its
    first non-empty line without a leading "The answer is"; ``None`` for an empty reply."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    for ln in reversed(lines):
        m = _ANSWER_LINE.match(ln)
        if m:
            value = m.group(1)
            if value.startswith('"'):
                try:
                    return str(json.JSONDecoder().raw_decode(value)[0])
                except json.JSONDecodeError:  # no closing quote: the text after the opening one
                    return value[1:].split('"')[0].strip()
            return value.split(" #")[0].strip()
    return _ANSWER_IS.sub("", lines[0].strip()) or lines[0].strip()


def codified(answer: str | None) -> str:
    """An answer as a codified message: ``answer = "..."``."""
    return f"answer = {json.dumps(answer if answer is not None else '', ensure_ascii=False)}"


_BUDGET_LINE = re.compile(r"^\s*budget\s*=\s*(\d+)\s*$", re.MULTILINE)


def granted_budget(blocks: Sequence[str]) -> int | None:
    """The smallest ``budget = N`` granted in the incoming blocks (``None`` if none grants one)."""
    found = [int(m.group(1)) for b in blocks for m in _BUDGET_LINE.finditer(b)]
    return min(found) if found else None


def block_text(edge: Edge, message: str) -> str:
    """The exact text an edge inserts into its receiver's prompt."""
    if edge.kind == "temporal":
        who = "Your" if edge.src == edge.dst else f"{edge.src}'s"
        return f"\n{who} message last round: {message}"
    return f"\n{edge.src} says: {message}"


def prompt_messages(agent: Agent, question: str, blocks: Sequence[str]) -> list[dict[str, str]]:
    """An agent's chat prompt: its role prompt, then the question and the incoming blocks."""
    system = agent.system_prompt + ("\n" + CODIFIED_FORMAT if agent.is_codified and not agent.plans else "")
    user = f"Question: {question}" + "".join(blocks)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {**a, **b}


class GraphState(RunState):
    mask: dict[str, Any] = Field(default_factory=dict)
    """The realized mask the run uses (so a resume runs the same graph)."""
    outputs: Annotated[dict[str, dict[str, Any]], _merge] = Field(default_factory=dict)
    """``agent@round`` -> ``{"text", "message", "answer"}``: the per-round memory temporal edges read."""
    calls: Annotated[list[dict[str, Any]], operator.add] = Field(default_factory=list)
    """One record per model call: agent, round, usage and the tokens each incoming edge inserted."""


@dataclass
class GraphResult(RunResult):
    """A graph run: the answer, and what it cost per call, agent, round and edge."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    mask: Mask | None = None

    @property
    def by_round(self) -> dict[int, Usage]:
        out: dict[int, Usage] = {}
        for c in self.calls:
            out[c["round"]] = out.get(c["round"], Usage()) + Usage.from_dict(c["usage"])
        return dict(sorted(out.items()))

    @property
    def by_agent(self) -> dict[str, Usage]:
        return dict(self.usage)

    @property
    def by_edge(self) -> dict[str, int]:
        """Prompt tokens each edge inserted, summed over rounds (with the receiver's tokenizer)."""
        out: dict[str, int] = {}
        for c in self.calls:
            for e, n in c["edges"].items():
                out[e] = out.get(e, 0) + n
        return out

    @property
    def tokens(self) -> int:
        t = self.total
        return (t.prompt_tokens or 0) + (t.completion_tokens or 0)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "calls": self.calls,
                "by_round": {r: u.to_dict() for r, u in self.by_round.items()}, "by_edge": self.by_edge,
                "mask": self.mask.to_json() if self.mask else None}


# -- the runner ----------------------------------------------------------------------------------------------


class GraphTeam(Strategy):
    """Runs an ``AgentGraph`` (optionally realized per question by a pruning policy) as a LangGraph graph.

    Args:
        graph: the team.
        model: the engine (or worker) of agents whose ``model`` is ``None``; default: the shared engine of
            ``$TOKENOMY_MODEL`` or ``embedded``.
        tools: the tools agents may name (a ``planner`` with tools writes and runs a codified plan).
        engines: engines or workers by model spec, for agents that name a spec; a spec not given here is loaded
            once per process (``shared_engine``). A spec that cannot be loaded is an error naming the agent.
        policy: a pruning policy (``tokenomy.graphs.policy``): each question runs on ``policy.mask_for(graph,
            question)`` (its deterministic mask) instead of the graph's own mask.
        grammar: constrain codified replies to ``answer = "..."`` where the engine has grammars.
        on_event: receives one dict per model call (with its agent, round and edges) and per run.

    A token budget (``graph.budget.max_tokens``) is checked before each call against the tokens of the calls
    finished before it (calls that run side by side in one step do not see each other's) plus the call's own
    prompt; a call that would go over is not made and the run stops with ``BudgetExceeded``, its finished calls
    kept in the checkpoint.
    """

    name = "graph"
    state_model = GraphState

    def __init__(self, graph: AgentGraph, model: Engine | Worker | None = None, tools: Iterable[Any] = (), *,
                 engines: Mapping[str, Engine | Worker] | None = None, policy: Any = None, grammar: bool = True,
                 on_event: EventSink | None = None) -> None:
        if model is None:
            model = self._load(default_spec(), "the default model")
        super().__init__(model, tools, on_event=on_event)
        self.graph = graph
        self.policy = policy
        self.grammar = grammar
        self._workers: dict[str, Worker] = {}
        for spec, eng in (engines or {}).items():
            self._workers[spec] = eng if isinstance(eng, Worker) else Worker(eng)
        members = list(graph.agents.values()) + ([graph.solver] if graph.solver else [])
        for a in members:
            self.worker_of(a)  # resolve every model now: a missing one is an error before any call
            missing = [t for t in a.tools if t not in self.tools]
            if missing:
                raise GraphError(f"agent {a.name!r} names tools that were not given: {', '.join(missing)} "
                                 f"(given: {', '.join(self.tools) or 'none'})")
        self._active = graph
        self._run_lock = threading.Lock()

    @staticmethod
    def _load(spec: str, who: str) -> Engine:
        try:
            return shared_engine(spec)
        except TokenomyError as exc:
            raise GraphError(f"{who} cannot use model {spec!r}: {exc}") from exc
        except Exception as exc:  # a backend that fails to load (missing weights, no GPU ...)
            raise GraphError(f"{who} cannot use model {spec!r}: {type(exc).__name__}: {exc}") from exc

    def worker_of(self, agent: Agent) -> Worker:
        if agent.model is None or agent.model == self.worker.engine.spec:
            return self.worker
        w = self._workers.get(agent.model)
        if w is None:
            w = self._workers[agent.model] = Worker(self._load(agent.model, f"agent {agent.name!r}"))
        return w

    # -- realizing ---------------------------------------------------------------------------------------------

    def realize(self, question: str) -> AgentGraph:
        """The graph this question runs on: the policy's deterministic mask, or the graph as it is."""
        if self.policy is None:
            return self.graph
        return self.graph.apply(self.policy.mask_for(self.graph, question))

    def state_graph(self, mask: Mask | None = None) -> Any:
        """The LangGraph ``StateGraph`` (not compiled) of the graph as it is, or of ``mask``: one node per call
        (``agent@round``) and a ``decision`` node; compile it with any checkpointer and invoke or stream it with
        ``{"question": ..., "strategy": "graph"}``."""
        with self._run_lock:
            self._active = self.graph.apply(mask) if mask is not None else self.graph
            self._active.check_budget()
            return self.build()

    def run(self, question: str, *, thread_id: str | None = None, checkpoints: Checkpoints | str | Path | None = None,
            recursion_limit: int = 200, mask: Mask | None = None, limits: UsageLimits | None = None,
            answer_type: Any = None) -> GraphResult:  # type: ignore[override]
        """Answer ``question``; ``mask`` overrides the graph's own (and the policy's); ``limits``: a budget
        checked before every model call, as in every strategy."""
        with self._run_lock:
            self._active = self.graph.apply(mask) if mask is not None else self.realize(question)
            self._active.check_budget()
            self._check_min_budget(question)
            return super().run(question, thread_id=thread_id, checkpoints=checkpoints,  # type: ignore[return-value]
                               recursion_limit=recursion_limit, limits=limits, answer_type=answer_type)

    def resume(self, thread_id: str, checkpoints: Checkpoints | str | Path, *,  # type: ignore[override]
               recursion_limit: int = 200, limits: UsageLimits | None = None) -> GraphResult:
        store = checkpoints if isinstance(checkpoints, Checkpoints) else Checkpoints(checkpoints)
        try:
            with self._run_lock:
                tup = store.saver.get_tuple({"configurable": {"thread_id": thread_id}})
                saved = tup.checkpoint.get("channel_values", {}).get("mask") if tup else None
                self._active = self.graph.apply(Mask.from_json(saved)) if saved else self.graph
                return super().resume(thread_id, store, recursion_limit=recursion_limit,  # type: ignore[return-value]
                                      limits=limits)
        finally:
            if not isinstance(checkpoints, Checkpoints):
                store.close()

    def _invoke(self, inp: dict[str, Any] | None, thread_id: str, checkpoints: Any, recursion_limit: int,
                *rest: Any) -> RunResult:
        if inp is not None:
            inp = {**inp, "mask": self._active.mask().to_json()}
        if self.on_event is not None:
            from .render import to_json

            self.emit({"event": "graph", "gen_ai.conversation.id": thread_id, **to_json(self._active)})
        return super()._invoke(inp, thread_id, checkpoints, recursion_limit, *rest)

    def _check_min_budget(self, question: str) -> None:
        limit = self._active.budget.max_tokens
        if limit is None:
            return
        sched = self._active.schedule()
        members = [self._active.agents[c.agent] for c in sched.calls] + ([self._active.solver]
                                                                          if self._active.solver else [])
        cheapest = min((self._prompt_tokens(a, prompt_messages(a, question, [])) for a in members), default=0)
        if cheapest >= limit:
            raise GraphError(f"no topology meets the token budget of {limit}: the cheapest single call already has "
                             f"{cheapest} prompt tokens")

    def _prompt_tokens(self, agent: Agent, messages: list[dict[str, str]]) -> int:
        engine = self.worker_of(agent).engine
        ids = engine.prompt_token_ids(messages)
        if ids is not None:
            return len(ids)
        from tokenomy.kernels.tokens import count_messages

        return count_messages(messages)

    # -- the LangGraph graph ------------------------------------------------------------------------------------

    def build(self) -> Any:
        from langgraph.graph import END, START

        sched = self._active.schedule()
        nodes: dict[str, Callable[[Any], dict[str, Any]]] = {c.key: self._call_node(c) for c in sched.calls}
        nodes[DECISION] = self._decision_node(sched)
        g = new_graph(GraphState, nodes)
        for c in sched.calls:
            deps = [f"{a}@{c.round}" for a in c.spatial] + [f"{a}@{c.round - 1}" for a in c.temporal]
            self._wire(g, deps, c.key, START)
        self._wire(g, [f"{a}@{sched.rounds - 1}" for a in sched.decision_inputs], DECISION, START)
        g.add_edge(DECISION, END)
        return g

    @staticmethod
    def _wire(g: Any, deps: list[str], node: str, start: str) -> None:
        if not deps:
            g.add_edge(start, node)
        elif len(deps) == 1:
            g.add_edge(deps[0], node)
        else:
            g.add_edge(deps, node)  # a join: the node runs once all of them have

    def _blocks(self, s: GraphState, edges: list[tuple[Edge, str]]) -> list[tuple[Edge, str]]:
        return [(e, block_text(e, s.outputs[key]["message"])) for e, key in edges]

    def _call_node(self, call: Call) -> Callable[[GraphState], dict[str, Any]]:
        agent = self._active.agents[call.agent]

        def node(s: GraphState) -> dict[str, Any]:
            edges = ([(Edge(a, agent.name, "spatial"), f"{a}@{call.round}") for a in call.spatial]
                     + [(Edge(a, agent.name, "temporal"), f"{a}@{call.round - 1}") for a in call.temporal])
            return self._speak(s, agent, call.round, call.key, self._blocks(s, edges))

        return node

    def _decision_node(self, sched: Schedule) -> Callable[[GraphState], dict[str, Any]]:
        last = sched.rounds - 1

        def node(s: GraphState) -> dict[str, Any]:
            keys = [f"{a}@{last}" for a in sched.decision_inputs]
            if not keys:
                return {"answer": None, "done": True, "notes": ["no agent reaches the decision node"]}
            if self._active.decision == "solver":
                assert self._active.solver is not None
                edges = [(Edge(a, DECISION, "decision"), f"{a}@{last}") for a in sched.decision_inputs]
                update = self._speak(s, self._active.solver, last, DECISION, self._blocks(s, edges))
                return {**update, "answer": update["outputs"][DECISION]["answer"], "done": True}
            answers = [s.outputs[k]["answer"] for k in keys if s.outputs[k]["answer"] not in (None, "")]
            if not answers:
                return {"answer": None, "done": True, "notes": ["no decision input gave an answer"]}
            if self._active.decision == "final":
                return {"answer": answers[-1], "done": True}
            top = Counter(canonical(a) for a in answers).most_common(1)[0][0]
            return {"answer": next(a for a in answers if canonical(a) == top), "done": True}

        return node

    def _speak(self, s: GraphState, agent: Agent, rnd: int, key: str, blocks: list[tuple[Edge, str]]
               ) -> dict[str, Any]:
        worker = self.worker_of(agent)
        messages = prompt_messages(agent, s.question, [b for _, b in blocks])
        max_tokens = agent.max_tokens
        granted = granted_budget([b for _, b in blocks])
        if granted is not None:
            max_tokens = min(max_tokens, granted)
        limit = self._active.budget.max_tokens
        if limit is not None:  # a call whose prompt alone would take the run over its budget is not made
            spent = sum((d.get("prompt_tokens") or 0) + (d.get("completion_tokens") or 0) for d in s.usage.values())
            needed = spent + self._prompt_tokens(agent, messages)
            if needed >= limit:
                raise BudgetExceeded("tokens (spent by finished calls plus this call's prompt)", needed + 1, limit)
            max_tokens = min(max_tokens, limit - needed)  # and its reply cannot either
        tags = ("graph", f"round:{rnd}", f"agent:{agent.name}")
        if agent.plans:
            text, usage = self._plan(agent, worker, messages[1]["content"])
            answer = extract_answer(text)
            message = text
        else:
            grammar = _CODIFIED if (agent.is_codified and self.grammar and worker.engine.capabilities.grammar) else None
            start = time.time()
            c: Completion = worker.generate(messages, SamplingParams(max_tokens=max_tokens), grammar=grammar,
                                            agent=agent.name, tags=tags)
            usage = c.usage
            text = c.text
            answer = extract_answer(text)
            message = codified(answer) if agent.is_codified else text.strip()
            self.emit_call(agent.name, worker.engine, messages, c, start, round=rnd,
                           edges=[str(e) for e, _ in blocks])
        if agent.budget is not None and agent.is_codified:  # its grant flows along its out-edges
            message += f"\nbudget = {agent.budget}"
        edge_tokens = {str(e): text_tokens(worker.engine, b) for e, b in blocks}
        for e, _ in blocks:
            self.emit({"event": "message", "src": e.src, "dst": e.dst, "edge": str(e), "kind": e.kind, "round": rnd,
                       "tokens": edge_tokens[str(e)]})
        return {"outputs": {key: {"text": text, "message": message, "answer": answer}},
                "calls": [{"agent": agent.name, "round": rnd, "usage": usage.to_dict(), "edges": edge_tokens}],
                "usage": {agent.name: usage.to_dict()}}

    def _plan(self, agent: Agent, worker: Worker, question: str) -> tuple[str, Usage]:
        """A planner agent's turn: a ReWOO run over its tools; its message is the plan it ran and the answer."""
        from tokenomy.planners import Rewoo

        tools = [self.tools[t] for t in agent.tools]
        result = Rewoo(worker, tools, on_event=self.on_event).run(question)
        ran = result.state.get("ran") or [result.plan]
        text = "\n".join(p.strip() for p in ran if p) + "\n" + codified(None if result.answer is None
                                                                         else str(to_state(result.answer)))
        return text.strip(), result.total

    def result(self, values: Mapping[str, Any], thread_id: str) -> GraphResult:
        base = super().result(values, thread_id)
        mask = values.get("mask")
        return GraphResult(**{f: getattr(base, f) for f in base.__dataclass_fields__},
                           calls=list(values.get("calls") or []), mask=Mask.from_json(mask) if mask else None)
