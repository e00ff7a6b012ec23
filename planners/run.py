"""What every planning strategy shares: a LangGraph ``StateGraph`` over a pydantic state (``state.py``), a SQLite
checkpointer and a journal of finished tool calls (``journal.py``), usage per agent, and trace events.

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

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.runnables import RunnableConfig

from tokenomy._threads import in_daemon_thread
from tokenomy.errors import UserError, storage_error
from tokenomy.events import in_node, otel_input, otel_output, trace_context
from tokenomy.kernels import Completion, Engine, Grammar, SamplingParams, Usage, Worker
from tokenomy.kernels.limits import UsageLimits, limits_scope
from tokenomy.tools.registry import SideEffectsNotAllowed, as_tool

from .journal import Checkpoints, JournaledTool, ToolJournal, end_node_tool_usage, node_tool_usage, store_journal
from .state import RunResult, RunState, from_state, merge_usage, to_state

__all__ = ["Strategy", "EventSink", "new_graph"]

EventSink = Callable[[dict[str, Any]], None]
_UNSET: Any = object()  # ``resume`` without an answer to a pending question


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
        spent, token = node_tool_usage()
        try:
            with in_node(name):
                update = fn(s)
        finally:
            end_node_tool_usage(token)
        if spent:
            update = {**update, "usage": merge_usage(update.get("usage") or {},
                                                     {a: u.to_dict() for a, u in spent.items()})}
        return update

    return node


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
        for t in map(as_tool, items):  # a plain function or a LangChain tool becomes a Tool
            if t.name in self.tools:
                raise UserError(f"two tools are named {t.name!r}")
            if getattr(t, "side_effects", False) and not allowed:
                raise SideEffectsNotAllowed(t.name)
            self.tools[t.name] = t
        self.on_event = on_event
        self._journal: ToolJournal | None = None
        self._in_user_graph = False
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
        params = SamplingParams(max_tokens=max_tokens, stop=tuple(stop))
        c = self._ask_in_user_graph(agent, messages, params, grammar) if self._in_user_graph else None
        if c is None:
            c = self.worker.generate(list(messages), params, grammar=grammar, agent=agent,
                                     tags=(self.name, *self.tags))
        self.emit_call(agent, self.worker.engine, messages, c, start)
        return c, {agent: c.usage.to_dict()}

    def _ask_in_user_graph(self, agent: str, messages: Sequence[Mapping[str, str]], params: SamplingParams,
                           grammar: Grammar | None) -> Completion | None:
        """Inside a user's LangGraph run (``as_subgraph``): the call goes through the engine's LangChain face with
        the run's config, so LangGraph's ``messages`` stream mode gets its tokens as they decode (tagged with
        ``tokenomy_agent``); ``None`` outside a LangGraph run."""
        try:
            from langgraph.config import get_config

            config = get_config()
        except Exception:  # not inside a LangGraph run
            return None
        from tokenomy.kernels.langchain_engine import completion_of

        tags = (self.name, *self.tags)
        llm = self.worker.engine.as_langchain()
        metadata = {**(config.get("metadata") or {}), "tokenomy_agent": agent}
        start = time.perf_counter()
        msg = llm.invoke([dict(m) for m in messages], {**config, "metadata": metadata}, stop=list(params.stop),
                         max_tokens=params.max_tokens, temperature=params.temperature, grammar=grammar,
                         tokenomy_agent=agent, tokenomy_tags=tags)
        c = completion_of(msg, engine=self.worker.engine.spec, latency=time.perf_counter() - start)
        self.worker.ledger.record(c.usage, agent, tags)
        return c

    def journaled(self, scope: str) -> dict[str, JournaledTool]:
        """The tools as seen through this run's journal, for one node invocation (``scope`` names it and must
        be the same when the node runs again on resume)."""
        counters: dict[str, int] = {}
        journal = self._journal if self._journal is not None or not self._in_user_graph else store_journal()
        return {n: JournaledTool(t, self, journal, scope, counters) for n, t in self.tools.items()}

    # -- running -------------------------------------------------------------------------------------------

    def compile(self, checkpoints: Checkpoints | None = None) -> Any:
        return self.build().compile(checkpointer=(checkpoints or Checkpoints()).saver)

    def run(self, question: str, *, thread_id: str | None = None,
            checkpoints: Checkpoints | str | Path | None = None, recursion_limit: int = 100,
            limits: UsageLimits | None = None, answer_type: Any = None) -> RunResult:
        """Answer ``question``. With ``checkpoints`` (a ``Checkpoints`` or a file path) the run can be resumed
        with ``resume(thread_id, checkpoints)`` after a crash, or after ``limits`` (a ``UsageLimits``, checked
        before every model call) stopped it with ``BudgetExceeded``. ``answer_type`` (a pydantic model, or any
        type pydantic validates): the answer comes back parsed as it (``planners.typed``)."""
        if not question or not question.strip():
            raise UserError("the question is empty")
        thread_id = thread_id or uuid.uuid4().hex[:12]
        with limits_scope(limits):
            result = self._invoke({"question": question, "strategy": self.name}, thread_id, checkpoints,
                                  recursion_limit)
            return self._typed(result, answer_type)

    def resume(self, thread_id: str, checkpoints: Checkpoints | str | Path, *, recursion_limit: int = 100,
               limits: UsageLimits | None = None, answer_type: Any = None, approve: Any = _UNSET) -> RunResult:
        """Go on with a run from its last checkpoint: finished nodes (model calls) and journaled tool calls
        are not made again. ``approve``: the answer to the run's pending question (``RunResult.pending``: a plan
        to approve), ``True``, ``False`` or an edited plan."""
        with limits_scope(limits):
            return self._typed(self._invoke(None, thread_id, checkpoints, recursion_limit, approve), answer_type)

    async def arun(self, question: str, **options: Any) -> RunResult:
        """``run`` for asyncio callers: the run goes on in a thread of its own, the event loop stays free."""
        return await in_daemon_thread(self.run, (question,), options, name=f"tokenomy-{self.name}")

    async def astream(self, question: str, **options: Any) -> AsyncIterator[dict[str, Any]]:
        """The run's events as they happen (the trace's: the run, each node, model call, tool call and
        checkpoint), then ``{"event": "result", "result": RunResult}``. Options as ``run``'s."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        before = self.on_event

        def sink(event: dict[str, Any]) -> None:
            if before is not None:
                before(event)
            loop.call_soon_threadsafe(events.put_nowait, event)

        def go() -> RunResult:
            with self._lock:  # one run at a time per strategy object: the sink is this run's alone
                self.on_event = sink
            try:
                return self.run(question, **options)
            finally:
                self.on_event = before

        task: asyncio.Future[Any] = asyncio.ensure_future(in_daemon_thread(go, name=f"tokenomy-{self.name}"))
        while not (task.done() and events.empty()):
            getter: asyncio.Future[Any] = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
        yield {"event": "result", "result": task.result()}

    def as_subgraph(self) -> Any:
        """This strategy as a compiled LangGraph graph with no checkpointer of its own, to add to your graph
        (``builder.add_node("research", strategy.as_subgraph())``): your graph's checkpointer keeps its steps. It
        reads ``question`` from your state and writes the keys your state shares with it (``answer``, ``usage``
        per agent, ``plan``, ``values``, ``notes`` ...); its events go to your graph's ``custom`` stream as
        ``{"tokenomy": event}``. Tools are not journaled here (your checkpointer resumes a step, not a tool)."""
        self.on_event = _to_stream_writer(self.on_event)
        self._in_user_graph = True
        return self.build().compile()

    def as_node(self, *, question: str = "question", answer: str = "answer",
                usage: str | None = "usage") -> Callable[..., dict[str, Any]]:
        """A node for your graph that asks this strategy ``state[question]`` and writes ``state[answer]`` and
        ``state[usage]`` (tokens per agent, as ``Usage.to_dict``), for states whose keys differ from the
        strategy's. Runs as a subgraph under your checkpointer (see ``as_subgraph``)."""
        graph = self.as_subgraph()
        name = self.name

        def node(state: Any, config: RunnableConfig) -> dict[str, Any]:
            q = state[question] if isinstance(state, Mapping) else getattr(state, question)
            out = graph.invoke({"question": q, "strategy": name}, config)
            update = {answer: from_state(out.get("answer"))}
            if usage:
                update[usage] = dict(out.get("usage") or {})
            return update

        return node

    def _typed(self, result: RunResult, answer_type: Any) -> RunResult:
        if answer_type is None:
            return result
        from .typed import typed_answer

        return typed_answer(self.worker, result, answer_type)

    def _invoke(self, inp: dict[str, Any] | None, thread_id: str, checkpoints: Checkpoints | str | Path | None,
                recursion_limit: int, approve: Any = _UNSET) -> RunResult:
        store = checkpoints if isinstance(checkpoints, Checkpoints) else Checkpoints(checkpoints)
        with self._lock:  # one run at a time per strategy object (the worker may be shared)
            self._journal = store.journal(thread_id)
            try:
                app = self.build().compile(checkpointer=store.saver)
                config = {"configurable": {"thread_id": thread_id}, "recursion_limit": recursion_limit}
                if inp is None:
                    snapshot = app.get_state(config)
                    if not snapshot.values:
                        raise UserError(f"no checkpoint of run {thread_id!r} in {store.where}")
                    made_by = snapshot.values.get("strategy")
                    if made_by != self.name:
                        raise UserError(f"run {thread_id!r} was made by the {made_by!r} strategy; resume it with "
                                        "that one")
                    # Finished is the run's own flag, not ``snapshot.next``: a process killed between a node's
                    # writes and the next checkpoint leaves pending writes for which LangGraph reports no next
                    # node, though invoking goes on from them.
                    if snapshot.values.get("done") and not snapshot.next:
                        return self.result(snapshot.values, thread_id)
                    if approve is not _UNSET:
                        if not getattr(snapshot, "interrupts", ()):
                            raise UserError(f"run {thread_id!r} waits for no approval")
                        from langgraph.types import Command

                        inp = Command(resume=approve)  # type: ignore[assignment]
                values = self._stream(app, inp, config, thread_id)
                pending = [i.value for i in getattr(app.get_state(config), "interrupts", ())]
            except store.errors as exc:  # the checkpoint file or database, while LangGraph read or wrote it
                raise storage_error(store.where, exc) from exc
            finally:
                self._journal = None
                if not isinstance(checkpoints, Checkpoints):
                    store.close()
        result = self.result(values, thread_id)
        if pending:  # stopped at an interrupt (a plan to approve): the answer comes with resume(approve=...)
            result.pending = pending
            self.emit({"event": "run", "status": "interrupted", "gen_ai.conversation.id": thread_id,
                       "pending": to_state(pending)})
            return result
        self.emit({"event": "run", "status": "finished", "gen_ai.conversation.id": thread_id,
                   "answer": to_state(result.answer), "notes": result.notes,
                   "usage": {a: u.to_dict() for a, u in result.usage.items()}})
        return result

    def _stream(self, app: Any, inp: dict[str, Any] | None, config: dict[str, Any], thread_id: str
                ) -> dict[str, Any]:
        """Run the compiled graph to its end; trace the run's start, each checkpoint and a failure."""
        fresh = isinstance(inp, dict)  # else None or a Command answering an interrupt: a resumed run
        self.emit({"event": "run", "status": "started" if fresh else "resumed",
                   "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": self.name,
                   "gen_ai.conversation.id": thread_id,
                   **({"question": inp["question"]} if isinstance(inp, dict) else {})})
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
                         usage={a: Usage.from_dict(d) for a, d in state.usage.items()}, thread_id=thread_id,
                         values={k: from_state(v) for k, v in state.values.items()}, plans=list(state.plans),
                         notes=list(state.notes), state=state.model_dump())


def _to_stream_writer(before: EventSink | None) -> EventSink:
    """An event sink that also writes each event to the LangGraph stream writer of the run it happens in (a
    user's graph streamed with ``stream_mode="custom"``); outside a LangGraph run only ``before`` gets it."""
    if getattr(before, "to_stream_writer", False):
        return before  # type: ignore[return-value]

    def sink(event: dict[str, Any]) -> None:
        if before is not None:
            before(event)
        try:
            from langgraph.config import get_stream_writer

            writer = get_stream_writer()
        except Exception:  # not inside a LangGraph run
            return
        writer({"tokenomy": event})

    sink.to_stream_writer = True  # type: ignore[attr-defined]
    return sink
