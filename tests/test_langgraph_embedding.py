"""A strategy inside the user's own LangGraph graph (subgraph or node, under the user's checkpointer, its events in
the ``custom`` stream), plan approval by ``interrupt()``, and ``arun``/``astream`` on strategies and RAG."""

import asyncio
import sqlite3
from typing import Any, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command

from tokenomy import tool
from tokenomy.kernels import ScriptedEngine
from tokenomy.planners.rewoo import Rewoo

PLAN = 'e1 = lookup(entity="Velmora", attribute="population")\nanswer(e1)'


def _lookup(calls):
    @tool
    def lookup(entity: str, attribute: str) -> str:
        """Looks a fact up."""
        calls.append((entity, attribute))
        return {"Velmora": "412,000", "Orvel": "31,000"}.get(entity, "not found")

    return lookup


class Parent(TypedDict, total=False):
    question: str
    answer: Any
    usage: dict[str, Any]
    summary: str


def _parent(strategy, checkpointer):
    builder = StateGraph(Parent)
    builder.add_node("research", strategy.as_subgraph())
    builder.add_node("summarize", lambda s: {"summary": f"{s['question']} -> {s['answer']}"})
    builder.add_edge(START, "research")
    builder.add_edge("research", "summarize")
    builder.add_edge("summarize", END)
    return builder.compile(checkpointer=checkpointer)


def test_a_strategy_is_a_subgraph_under_the_user_s_checkpointer(tmp_path):
    calls = []
    engine = ScriptedEngine(lambda req: PLAN)
    conn = sqlite3.connect(tmp_path / "user.sqlite", check_same_thread=False)
    for saver in (InMemorySaver(), SqliteSaver(conn)):
        graph = _parent(Rewoo(engine, [_lookup(calls)]), saver)
        config = {"configurable": {"thread_id": "t1"}}
        out = graph.invoke({"question": "What is the population of Velmora?"}, config)
        assert out["answer"] == "412,000" and out["summary"].endswith("-> 412,000")
        assert out["usage"]["planner"]["calls"] == 1 and out["usage"]["planner"]["prompt_tokens"] > 0
        assert graph.get_state(config).values["answer"] == "412,000"  # the user's checkpointer holds it
    conn.close()


def test_its_events_stream_as_custom_and_its_steps_as_updates():
    graph = _parent(Rewoo(ScriptedEngine(lambda req: PLAN), [_lookup([])]), InMemorySaver())
    custom, updates = [], []
    for ns, mode, chunk in graph.stream({"question": "What is the population of Velmora?"},
                                        {"configurable": {"thread_id": "t"}}, stream_mode=["updates", "custom"],
                                        subgraphs=True):
        (custom if mode == "custom" else updates).append((ns, chunk))
    kinds = [c["tokenomy"]["event"] for _, c in custom]
    assert "model_call" in kinds and "execution" in kinds
    assert any("plan" in chunk for ns, chunk in updates if ns)  # the subgraph's own steps, under its namespace
    assert any("summarize" in chunk for ns, chunk in updates if not ns)


def test_as_node_maps_the_user_s_keys():
    class Mine(TypedDict, total=False):
        q: str
        a: Any
        spent: dict[str, Any]

    builder = StateGraph(Mine)
    builder.add_node("ask", Rewoo(ScriptedEngine(lambda req: PLAN), [_lookup([])]).as_node(question="q", answer="a",
                                                                                             usage="spent"))
    builder.add_edge(START, "ask")
    out = builder.compile(checkpointer=InMemorySaver()).invoke({"q": "Velmora?"}, {"configurable": {"thread_id": "x"}})
    assert out["a"] == "412,000" and out["spent"]["planner"]["calls"] == 1


def test_a_plan_waits_for_approval_then_runs_is_replaced_or_is_rejected(tmp_path):
    calls = []
    db = tmp_path / "ck.sqlite"
    strategy = Rewoo(ScriptedEngine(lambda req: PLAN), [_lookup(calls)], approve_plans=True)
    waiting = strategy.run("What is the population of Velmora?", thread_id="a", checkpoints=db)
    assert waiting.answer is None and calls == []  # nothing ran before the approval
    assert waiting.pending[0]["plan"].startswith("e1 = lookup(") and "Velmora" in waiting.pending[0]["question"]
    done = strategy.resume("a", db, approve=True)
    assert done.answer == "412,000" and calls == [("Velmora", "population")] and not done.pending

    strategy.run("q", thread_id="b", checkpoints=db)
    edited = strategy.resume("b", db, approve='e1 = lookup(entity="Orvel", attribute="population")\nanswer(e1)')
    assert edited.answer == "31,000" and "replaced" in " ".join(edited.notes)

    strategy.run("q", thread_id="c", checkpoints=db)
    rejected = strategy.resume("c", db, approve=False)
    assert rejected.answer is None and "rejected" in " ".join(rejected.notes) and len(calls) == 2


def test_approval_inside_the_user_s_graph_with_command():
    calls = []
    graph = _parent(Rewoo(ScriptedEngine(lambda req: PLAN), [_lookup(calls)], approve_plans=True), InMemorySaver())
    config = {"configurable": {"thread_id": "u"}}
    first = graph.invoke({"question": "What is the population of Velmora?"}, config)
    assert "__interrupt__" in first and calls == []
    assert first["__interrupt__"][0].value["plan"].startswith("e1 = lookup(")
    out = graph.invoke(Command(resume=True), config)
    assert out["answer"] == "412,000" and calls == [("Velmora", "population")]


def test_arun_and_astream():
    strategy = Rewoo(ScriptedEngine(lambda req: PLAN), [_lookup([])])

    async def main():
        one = await strategy.arun("What is the population of Velmora?")
        events = [e async for e in strategy.astream("What is the population of Velmora?")]
        return one, events

    one, events = asyncio.run(main())
    assert one.answer == "412,000"
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run" and "model_call" in kinds and kinds[-1] == "result"
    assert events[-1]["result"].answer == "412,000" and strategy.on_event is None  # the sink was this run's only


def test_rag_arun_and_astream(tmp_path):
    from tokenomy.planners.rag import RagPipeline
    from tokenomy.tools.rag.store import RagStore

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "velmora.md").write_text("# Velmora\n\nVelmora has 412,000 inhabitants.\n")
    store = RagStore(tmp_path / "store.sqlite")
    store.ingest(tmp_path / "corpus")
    engine = ScriptedEngine(lambda req: "412,000 [velmora.md#1]")
    pipe = RagPipeline(store, model=engine, retriever="bm25", compressor="chunks")

    async def main():
        whole = await pipe.arun("How many people live in Velmora?")
        pieces = [p async for p in pipe.astream("How many people live in Velmora?")]
        return whole, pieces

    whole, pieces = asyncio.run(main())
    store.close()
    assert whole.text == "412,000" and whole.cited == ["velmora.md#1"]
    *text, answer = pieces
    assert "".join(text) == "412,000 [velmora.md#1]" and answer.text == "412,000" and answer.usage.calls == 1


def test_messages_mode_gets_the_model_s_tokens_as_they_decode():
    engine = ScriptedEngine(lambda req: PLAN)
    graph = _parent(Rewoo(engine, [_lookup([])]), InMemorySaver())
    pieces, agents = [], set()
    out = None
    for ns, mode, chunk in graph.stream({"question": "What is the population of Velmora?"},
                                        {"configurable": {"thread_id": "m"}}, stream_mode=["messages", "values"],
                                        subgraphs=True):  # LangGraph streams a subgraph's messages with subgraphs
        if mode == "values" and ns:
            continue
        if mode == "messages":
            message, meta = chunk
            pieces.append(message.content)
            agents.add(meta.get("tokenomy_agent"))
        else:
            out = chunk
    assert "".join(pieces) == PLAN and agents == {"planner"}
    assert out["answer"] == "412,000" and out["usage"]["planner"]["prompt_tokens"] > 0
    assert [r.agent for r in engine.requests] == ["planner"]  # one call, made once


def test_under_the_user_s_checkpointer_and_store_a_resumed_step_does_not_call_a_finished_tool_again():
    from langgraph.store.memory import InMemoryStore

    calls, crash = [], [True]

    @tool
    def first(x: str) -> str:
        """The first step."""
        calls.append(("first", x))
        return f"<{x}>"

    @tool
    def second(y: str) -> str:
        """The second step; the first time, the process dies in it."""
        calls.append(("second", y))
        if crash[0]:
            crash[0] = False
            raise KeyboardInterrupt("killed mid-step")
        return y.upper()

    plan = 'e1 = first(x="a")\ne2 = second(y=e1)\nanswer(e2)'
    for store, again in ((InMemoryStore(), []), (None, [("first", "a")])):  # without a store: no journal
        calls.clear()
        crash[0] = True
        builder = StateGraph(Parent)
        builder.add_node("research", Rewoo(ScriptedEngine(lambda req: plan), [first, second]).as_subgraph())
        builder.add_edge(START, "research")
        graph = builder.compile(checkpointer=InMemorySaver(), store=store)
        config = {"configurable": {"thread_id": "k"}}
        try:
            graph.invoke({"question": "q"}, config)
        except KeyboardInterrupt:
            pass
        assert calls == [("first", "a"), ("second", "<a>")]
        out = graph.invoke(None, config)  # LangGraph resumes the step; the journal answers for the finished call
        assert out["answer"] == "<A>" and calls == [("first", "a"), ("second", "<a>"), *again, ("second", "<a>")]


def test_under_postgres_the_user_s_checkpointer_and_store_keep_the_run_and_its_journal():
    from .conftest import require, require_module
    from .pg import pg_bin, postgres_server

    require_module("langgraph.checkpoint.postgres", "pip install 'tokenomy[test]'")
    if pg_bin() is None:
        require("PostgreSQL's initdb and pg_ctl (apt install postgresql)")
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.store.postgres import PostgresStore

    calls, crash = [], [True]

    @tool
    def first(x: str) -> str:
        """The first step."""
        calls.append("first")
        return f"<{x}>"

    @tool
    def second(y: str) -> str:
        """The second step; the first time, the process dies in it."""
        calls.append("second")
        if crash[0]:
            crash[0] = False
            raise KeyboardInterrupt("killed mid-step")
        return y.upper()

    plan = 'e1 = first(x="a")\ne2 = second(y=e1)\nanswer(e2)'
    with postgres_server() as url, PostgresSaver.from_conn_string(url) as saver, \
            PostgresStore.from_conn_string(url) as store:
        saver.setup()
        store.setup()
        builder = StateGraph(Parent)
        builder.add_node("research", Rewoo(ScriptedEngine(lambda req: plan), [first, second]).as_subgraph())
        builder.add_edge(START, "research")
        graph = builder.compile(checkpointer=saver, store=store)
        config = {"configurable": {"thread_id": "pg"}}
        try:
            graph.invoke({"question": "q"}, config)
        except KeyboardInterrupt:
            pass
        out = graph.invoke(None, config)
        assert out["answer"] == "<A>" and calls == ["first", "second", "second"]  # first: not run again
        assert out["usage"]["planner"]["calls"] == 1 and graph.get_state(config).values["answer"] == "<A>"
