"""What every planning strategy shares: a LangGraph ``StateGraph`` over a pydantic state, a SQLite checkpointer,
a journal of finished tool calls, usage per agent, and trace events.

A strategy (``rewoo``, ``rewoo-nl``, ``react``, ``plan-execute``) is a ``Strategy`` subclass that builds its
graph in ``build()``. Every model call is one graph node, so LangGraph's checkpoint after each node means a
finished model call is never made again when a killed run is resumed (``Strategy.resume``). Tool calls are
journaled in the same SQLite file by content (thread, node scope, tool, arguments, occurrence), so a node that
was killed half-way (the ``rewoo`` executor runs many tools in one node) replays the calls that had finished
instead of repeating them. Only successful calls are journaled: a failure is tried again on resume.

Usage (``Usage`` per agent) lives in the graph state, so it survives a resume too; ``on_event`` receives one
dict per model call, tool call and plan (the root ``tokenomy.trace`` module writes them as JSON lines).
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import logging
import math
import operator
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from tokenomy.errors import MissingExtra, UserError, storage_error
from tokenomy.kernels import Completion, Engine, Grammar, SamplingParams, Usage, Worker
from tokenomy.tools.base import collect_usage
from tokenomy.tools.registry import SideEffectsNotAllowed
from tokenomy.trace import clip, in_node, otel_input, otel_output, trace_context, utf8_safe

from .executor import MAX_TEXT, StepError, clip_value, text_len

__all__ = ["RunState", "RunResult", "Strategy", "Checkpoints", "ToolJournal", "text_call", "to_state",
           "from_state", "EventSink"]

EventSink = Callable[[dict[str, Any]], None]


# -- state values ----------------------------------------------------------------------------------------


def _usage_to_dict(u: Usage) -> dict[str, Any]:
    return {**u.to_dict(), "unknown": sorted(u.unknown_fields)}


def _usage_from_dict(d: Mapping[str, Any]) -> Usage:
    return Usage(prompt_tokens=d.get("prompt_tokens"), cached_prompt_tokens=d.get("cached_prompt_tokens"),
                 completion_tokens=d.get("completion_tokens"), calls=d.get("calls", 0),
                 unknown_fields=frozenset(d.get("unknown", ())))


def merge_usage(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The state reducer of ``usage``: sums per agent."""
    out = dict(a)
    for agent, d in b.items():
        out[agent] = _usage_to_dict(_usage_from_dict(out[agent]) + _usage_from_dict(d)) if agent in out else d
    return out


def to_state(value: Any) -> Any:
    """A JSON value for the graph state and the journal: errors become ``{"$error": ...}``, pydantic models and
    dataclasses their fields; anything else that JSON cannot hold becomes its ``str``."""
    if isinstance(value, StepError):
        return {"$error": value.message, "step": value.step, "kind": value.kind}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_state(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_state(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_state(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": JSON has no such numbers
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return {"$int": hex(value)}  # the checkpointer's msgpack holds 64 bits (hex: no 4,300-digit limit)
    if isinstance(value, str):
        return utf8_safe(value)
    if value is None or isinstance(value, int | float | bool):
        return value
    return utf8_safe(str(value))


def from_state(value: Any) -> Any:
    """The value ``to_state`` wrote: an error as a ``StepError``, integers of more than 64 bits as ``int``."""
    if isinstance(value, dict) and "$error" in value:
        return StepError(value.get("step", "?"), value["$error"], value.get("kind", "error"))
    return _big_ints(value)


def _big_ints(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$int"), str):
            try:
                return int(value["$int"], 16)
            except ValueError:
                return value
        return {k: _big_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_big_ints(v) for v in value]
    return value


class RunState(BaseModel):
    """The state every strategy's graph carries (strategies add their own fields)."""

    model_config = ConfigDict(arbitrary_types_allowed=False)

    question: str
    strategy: str = ""
    plan: str = ""
    """The first plan in the strategy's own format, as the model wrote it."""
    plan_valid: bool | None = None
    """Whether the model's first plan parsed and validated without repair (``None``: the strategy has no plan)."""
    plans: Annotated[list[str], operator.add] = Field(default_factory=list)
    values: dict[str, Any] = Field(default_factory=dict)
    """Results by name (errors as ``{"$error": ...}``)."""
    answer: Any = None
    done: bool = False
    usage: Annotated[dict[str, dict[str, Any]], merge_usage] = Field(default_factory=dict)
    notes: Annotated[list[str], operator.add] = Field(default_factory=list)


@dataclass
class RunResult:
    """The outcome of one run of a strategy."""

    question: str
    strategy: str
    answer: Any
    plan: str
    plan_valid: bool | None
    usage: dict[str, Usage]
    thread_id: str
    values: dict[str, Any] = field(default_factory=dict)
    plans: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> Usage:
        return _sum_usage(list(self.usage.values()))

    def to_json(self) -> dict[str, Any]:
        t = self.total
        return {
            "question": self.question,
            "answer": to_state(self.answer),
            "strategy": self.strategy,
            "plan": self.plan,
            "plan_valid": self.plan_valid,
            "usage": {"prompt_tokens": t.prompt_tokens, "cached_prompt_tokens": t.cached_prompt_tokens,
                      "completion_tokens": t.completion_tokens, "calls": t.calls},
            "usage_by_agent": {a: u.to_dict() for a, u in sorted(self.usage.items())},
            "thread_id": self.thread_id,
            "notes": self.notes,
        }


# -- checkpoints and the tool journal ---------------------------------------------------------------------


class Checkpoints:
    """One SQLite file holding LangGraph's checkpoints and tokenomy's tool journal.

    ``Checkpoints(path)`` opens (or creates) the file; ``Checkpoints()`` keeps them in memory for this process.
    ``timeout_s`` is how long a write waits for another process's lock before the run stops with a
    ``StorageError`` (as it does on a failing disk or a damaged file; what was written before stays).
    """

    def __init__(self, path: str | Path | None = None, *, timeout_s: float = 30.0) -> None:
        try:
            from langgraph.checkpoint.sqlite import SqliteSaver
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise MissingExtra("langgraph-checkpoint-sqlite", None, "checkpoints",
                               install="pip install langgraph-checkpoint-sqlite") from exc
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        target = str(self.path) if self.path is not None else ":memory:"
        try:
            self.conn = sqlite3.connect(target, check_same_thread=False, timeout=timeout_s)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS tokenomy_tool_journal (thread_id TEXT, key TEXT, value TEXT, "
                "PRIMARY KEY (thread_id, key))")
            self.conn.commit()
            self.saver = SqliteSaver(self.conn)
            self.saver.setup()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # locked, a failing disk: the file may be fine
                raise storage_error(target, exc) from exc
            raise UserError(f"checkpoint file {target} is not a usable SQLite database ({exc}); "
                            "move it away or pass another path") from exc
        # The journal shares the saver's connection, so it takes the saver's lock (sqlite3 connections are not
        # safe to use from two threads at once).
        self._lock = self.saver.lock

    def journal(self, thread_id: str) -> ToolJournal:
        return ToolJournal(self, thread_id)

    def close(self) -> None:
        self.conn.close()


class ToolJournal:
    """Finished tool calls of one thread, by content."""

    def __init__(self, store: Checkpoints, thread_id: str) -> None:
        self.store = store
        self.thread_id = thread_id

    def get(self, key: str) -> tuple[bool, Any]:
        """The journaled value of ``key``; ``(False, None)`` when there is none, or none that can be read (a
        damaged row: the call is made again)."""
        try:
            with self.store._lock:
                row = self.store.conn.execute("SELECT value FROM tokenomy_tool_journal WHERE thread_id=? AND key=?",
                                              (self.thread_id, key)).fetchone()
            return (True, _big_ints(json.loads(row[0]))) if row else (False, None)
        except (sqlite3.Error, ValueError, TypeError, RecursionError):
            return False, None

    def put(self, key: str, value: Any) -> None:
        try:
            text = json.dumps(value, allow_nan=False)  # ASCII: a lone surrogate in a result survives, escaped
        except (TypeError, ValueError):
            return  # not JSON: such a call is made again on resume
        try:
            with self.store._lock:
                self.store.conn.execute("INSERT OR REPLACE INTO tokenomy_tool_journal VALUES (?, ?, ?)",
                                        (self.thread_id, key, text))
                self.store.conn.commit()
        except sqlite3.Error as exc:
            # The call itself succeeded: it is not failed (and run again) for a write that did not take. The
            # checkpoint after this node writes to the same file and stops the run with a StorageError if the
            # file stays unwritable.
            logging.getLogger("tokenomy").warning("the tool journal in %s could not record a call: %s",
                                                  self.store.path, storage_error(self.store.path, exc))


class _JournaledTool:
    """A tool seen through the journal: a call already journaled in this scope returns its recorded value."""

    def __init__(self, tool: Any, strategy: Strategy, journal: ToolJournal | None, scope: str,
                 counters: dict[str, int]) -> None:
        self.tool = tool
        self.name = tool.name
        self.args_model = tool.args_model
        self.side_effects = bool(getattr(tool, "side_effects", False))
        self.strategy = strategy
        self.journal = journal
        self.scope = scope
        self.counters = counters

    async def ainvoke(self, **kwargs: Any) -> Any:
        args = json.dumps(to_state(kwargs), sort_keys=True, ensure_ascii=False)
        base = hashlib.sha256(f"{self.scope}\x00{self.name}\x00{args}".encode()).hexdigest()[:32]
        n = self.counters.get(base, 0)
        self.counters[base] = n + 1
        key = f"{base}:{n}"
        base_event = {"event": "tool_call", "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": self.name,
                      "gen_ai.tool.call.arguments": kwargs}
        if self.journal is not None:
            found, value = self.journal.get(key)
            if found:
                self.strategy.emit({**base_event, "replayed": True, "start_time": time.time(), "duration_s": 0.0,
                                    "gen_ai.tool.call.result": clip(value)})
                # Its model calls count once: the node that made them did not finish, so its state update (and
                # the usage in it) was never checkpointed; the journal kept what they spent.
                found, spent = self.journal.get(f"{key}:usage")
                if found:
                    _count_tool_usage(self.name, [_usage_from_dict(spent)])
                return value
        start, wall = time.perf_counter(), time.time()
        try:
            with collect_usage() as spent:
                raw = await self.tool.ainvoke(**kwargs)
        except BaseException as exc:
            self.strategy.emit({**base_event, "error.type": type(exc).__name__, "error": f"{type(exc).__name__}: {exc}",
                                "start_time": wall, "duration_s": time.perf_counter() - start})
            raise
        size = text_len(raw, 10**12)
        value = clip_value(raw, MAX_TEXT)  # what the journal, the checkpoints and the trace can hold
        del raw
        self.strategy.emit({**base_event, "start_time": wall, "duration_s": time.perf_counter() - start,
                            "gen_ai.tool.call.result": clip(value), "result_chars": size})
        if self.journal is not None:
            if spent:  # first: a journaled result always has its usage beside it
                self.journal.put(f"{key}:usage", _usage_to_dict(_sum_usage(spent)))
            self.journal.put(key, to_state(value))
        _count_tool_usage(self.name, spent)
        return value


_NODE_TOOL_USAGE: contextvars.ContextVar[dict[str, Usage] | None] = contextvars.ContextVar(
    "tokenomy_node_tool_usage", default=None)


def _sum_usage(usages: Sequence[Usage]) -> Usage:
    """The sum, started from the first usage rather than from ``Usage()``, whose zeros would turn a count nobody
    reported (cached tokens from a server that does not report them) into a known 0."""
    return sum(usages[1:], usages[0]) if usages else Usage()


def _count_tool_usage(tool: str, spent: Sequence[Usage]) -> None:
    """Add a tool call's model usage to the running node's, under the agent ``tool:<name>``."""
    sink = _NODE_TOOL_USAGE.get()
    if sink is None or not spent:
        return
    agent = f"tool:{tool}"
    sink[agent] = _sum_usage([sink[agent], *spent] if agent in sink else list(spent))


def new_graph(state: type[RunState], nodes: Mapping[str, Callable[[Any], dict[str, Any]]]) -> Any:
    """A ``StateGraph`` over ``state`` with ``nodes`` (name -> function of the state) added in order."""
    from langgraph.graph import StateGraph

    g: Any = StateGraph(state)
    for name, fn in nodes.items():
        g.add_node(name, _traced(name, fn))
    return g


def _traced(name: str, fn: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    """``fn`` with its trace events marked as emitted in node ``name``."""

    def node(s: Any) -> dict[str, Any]:
        # The model calls of the node's tools (the llm tool's) join the node's usage update.
        spent: dict[str, Usage] = {}
        token = _NODE_TOOL_USAGE.set(spent)
        try:
            with in_node(name):
                update = fn(s)
        finally:
            _NODE_TOOL_USAGE.reset(token)
        if spent:
            update = {**update, "usage": merge_usage(update.get("usage") or {},
                                                     {a: _usage_to_dict(u) for a, u in spent.items()})}
        return update

    return node


# -- calling a tool from text (the natural-language baselines) ------------------------------------------


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


# -- the base class ----------------------------------------------------------------------------------------


class Strategy:
    """A planning strategy compiled to a LangGraph ``StateGraph``.

    Args:
        model: an ``Engine``, or a shared ``Worker`` in front of one.
        tools: tools with ``name``, ``args_model`` (pydantic) and ``async ainvoke``. A tool with side effects
            (files, processes, the network) is refused unless the tools come in a
            ``ToolRegistry(..., allow_side_effects=True)``: a plan a model wrote should not write because a tool
            happened to be in the list.
        on_event: receives one dict per model call, tool call and plan (for traces).
    """

    name: ClassVar[str] = ""
    state_model: ClassVar[type[RunState]] = RunState
    tags: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: Engine | Worker, tools: Iterable[Any] | Mapping[str, Any], *,
                 on_event: EventSink | None = None) -> None:
        self.worker = model if isinstance(model, Worker) else Worker(model)
        items: Iterable[Any] = tools.values() if isinstance(tools, Mapping) else tools
        self.tools: dict[str, Any] = {}
        allowed = bool(getattr(tools, "allow_side_effects", False))
        for t in items:
            if t.name in self.tools:
                raise UserError(f"two tools are named {t.name!r}")
            if getattr(t, "side_effects", False) and not allowed:
                raise SideEffectsNotAllowed(t.name)
            self.tools[t.name] = t
        self.on_event = on_event
        self._journal: ToolJournal | None = None
        self._lock = threading.Lock()

    # -- to implement --------------------------------------------------------------------------------------

    def build(self) -> Any:
        """The strategy's ``StateGraph`` (not compiled)."""
        raise NotImplementedError

    # -- helpers for nodes ---------------------------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        """Hand ``event`` to ``on_event`` with the strategy, the time and the node and step it happened in."""
        if self.on_event is not None:
            self.on_event({"strategy": self.name, "time": time.time(), **trace_context(), **event})

    def emit_call(self, agent: str, engine: Engine, messages: Sequence[Mapping[str, str]], c: Completion,
                  start: float, **extra: Any) -> None:
        """The trace event of one model call (``start``: ``time.time()`` before it)."""
        if self.on_event is None:
            return
        self.emit({"event": "model_call", "gen_ai.operation.name": "chat", "agent": agent, "gen_ai.agent.name": agent,
                   "gen_ai.request.model": engine.spec, **c.usage.to_otel(), "start_time": start,
                   "latency_s": c.latency_s, "gen_ai.response.finish_reasons": [c.finish_reason],
                   "gen_ai.input.messages": otel_input(messages),
                   "gen_ai.output.messages": otel_output(c.text, c.finish_reason), **extra})

    def ask(self, agent: str, messages: Sequence[Mapping[str, str]], max_tokens: int, *,
            grammar: Grammar | None = None, stop: Sequence[str] = ()) -> tuple[Completion, dict[str, Any]]:
        """One model call; returns the completion and the state update of its usage."""
        start = time.time()
        c = self.worker.generate(list(messages), SamplingParams(max_tokens=max_tokens, stop=tuple(stop)),
                                 grammar=grammar, agent=agent, tags=(self.name, *self.tags))
        self.emit_call(agent, self.worker.engine, messages, c, start)
        return c, {agent: _usage_to_dict(c.usage)}

    def journaled(self, scope: str) -> dict[str, _JournaledTool]:
        """The tools as seen through this run's journal, for one node invocation (``scope`` names it and must
        be the same when the node runs again on resume)."""
        counters: dict[str, int] = {}
        return {n: _JournaledTool(t, self, self._journal, scope, counters) for n, t in self.tools.items()}

    # -- running -------------------------------------------------------------------------------------------

    def compile(self, checkpoints: Checkpoints | None = None) -> Any:
        return self.build().compile(checkpointer=(checkpoints or Checkpoints()).saver)

    def run(self, question: str, *, thread_id: str | None = None,
            checkpoints: Checkpoints | str | Path | None = None, recursion_limit: int = 100) -> RunResult:
        """Answer ``question``. With ``checkpoints`` (a ``Checkpoints`` or a file path) the run can be resumed
        with ``resume(thread_id, checkpoints)`` after a crash."""
        if not question or not question.strip():
            raise UserError("the question is empty")
        thread_id = thread_id or uuid.uuid4().hex[:12]
        return self._invoke({"question": question, "strategy": self.name}, thread_id, checkpoints, recursion_limit)

    def resume(self, thread_id: str, checkpoints: Checkpoints | str | Path, *, recursion_limit: int = 100
               ) -> RunResult:
        """Go on with a run from its last checkpoint: finished nodes (model calls) and journaled tool calls
        are not made again."""
        return self._invoke(None, thread_id, checkpoints, recursion_limit)

    def _invoke(self, inp: dict[str, Any] | None, thread_id: str, checkpoints: Checkpoints | str | Path | None,
                recursion_limit: int) -> RunResult:
        store = checkpoints if isinstance(checkpoints, Checkpoints) else Checkpoints(checkpoints)
        with self._lock:  # one run at a time per strategy object (the worker may be shared)
            self._journal = store.journal(thread_id)
            try:
                app = self.build().compile(checkpointer=store.saver)
                config = {"configurable": {"thread_id": thread_id}, "recursion_limit": recursion_limit}
                if inp is None:
                    snapshot = app.get_state(config)
                    if not snapshot.values:
                        raise UserError(f"no checkpoint of run {thread_id!r} in {store.path or 'memory'}")
                    made_by = snapshot.values.get("strategy")
                    if made_by != self.name:
                        raise UserError(f"run {thread_id!r} was made by the {made_by!r} strategy; resume it with "
                                        "that one")
                    # Finished is the run's own flag, not ``snapshot.next``: a process killed between a node's
                    # writes and the next checkpoint leaves pending writes for which LangGraph reports no next
                    # node, though invoking goes on from them.
                    if snapshot.values.get("done") and not snapshot.next:
                        return self.result(snapshot.values, thread_id)
                values = self._stream(app, inp, config, thread_id)
            except sqlite3.Error as exc:  # the checkpoint file, while LangGraph read or wrote it
                raise storage_error(store.path or ":memory:", exc) from exc
            finally:
                self._journal = None
                if not isinstance(checkpoints, Checkpoints):
                    store.close()
        result = self.result(values, thread_id)
        self.emit({"event": "run", "status": "finished", "gen_ai.conversation.id": thread_id,
                   "answer": to_state(result.answer), "notes": result.notes,
                   "usage": {a: u.to_dict() for a, u in result.usage.items()}})
        return result

    def _stream(self, app: Any, inp: dict[str, Any] | None, config: dict[str, Any], thread_id: str
                ) -> dict[str, Any]:
        """Run the compiled graph to its end; trace the run's start, each checkpoint and a failure."""
        self.emit({"event": "run", "status": "started" if inp is not None else "resumed",
                   "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": self.name,
                   "gen_ai.conversation.id": thread_id, **({"question": inp["question"]} if inp else {})})
        values: dict[str, Any] = {}
        try:
            # "sync": each step's checkpoint is on disk before the next step starts, so a process killed
            # mid-step resumes from the step before it (LangGraph's default "async" may not have written it).
            modes = ["values", "checkpoints"] if self.on_event is not None else ["values"]
            for mode, chunk in app.stream(inp, config, stream_mode=modes, durability="sync"):
                if mode == "values":
                    values = chunk
                elif mode == "checkpoints":
                    meta = chunk.get("metadata") or {}
                    cfg = (chunk.get("config") or {}).get("configurable") or {}
                    self.emit({"event": "checkpoint", "checkpoint_id": cfg.get("checkpoint_id"),
                               "step": meta.get("step"), "source": meta.get("source"),
                               "next": list(chunk.get("next") or ())})
        except BaseException as exc:
            self.emit({"event": "run", "status": "failed", "gen_ai.conversation.id": thread_id,
                       "error.type": type(exc).__name__, "error": str(exc)})
            raise
        return values

    def result(self, values: Mapping[str, Any], thread_id: str) -> RunResult:
        state = self.state_model.model_validate(dict(values))
        return RunResult(question=state.question, strategy=self.name, answer=from_state(state.answer),
                         plan=state.plan, plan_valid=state.plan_valid,
                         usage={a: _usage_from_dict(d) for a, d in state.usage.items()}, thread_id=thread_id,
                         values={k: from_state(v) for k, v in state.values.items()}, plans=list(state.plans),
                         notes=list(state.notes), state=state.model_dump())
