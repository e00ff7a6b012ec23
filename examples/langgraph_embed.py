"""tokenomy's planner as one step of your own LangGraph graph, with a person approving its plan.

    python examples/langgraph_embed.py ["question"]

The ReWOO strategy is added as a subgraph (``as_subgraph``): your graph's checkpointer keeps its steps, your state
gets its ``answer`` and ``usage``, and its events (model calls, tool calls) come in your graph's ``custom`` stream.
With ``approve_plans=True`` it stops before its plan runs (LangGraph's ``interrupt``); here the approval is a
prompt on the terminal (or ``--yes``), and ``Command(resume=...)`` goes on. The model is ``$TOKENOMY_MODEL`` or the
embedded one; the tools search the bundled corpus.
"""


import sys
from collections.abc import Callable
from typing import Any, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command

from tokenomy import Engine, Rewoo, load_engine
from tokenomy.tools import calc, example_corpus_dir, lookup_tool, search_tool

QUESTION = "What is the population of Velmora?"


class State(TypedDict, total=False):
    question: str
    answer: Any
    usage: dict[str, Any]
    report: str


def build(engine: Engine) -> Any:
    corpus = example_corpus_dir()
    planner = Rewoo(engine, [search_tool(corpus), lookup_tool(corpus), calc], approve_plans=True)
    builder = StateGraph(State)
    builder.add_node("research", planner.as_subgraph())
    builder.add_node("report", lambda s: {"report": f"{s['question']} {s.get('answer')} "
                                                     f"({sum(u['calls'] for u in s['usage'].values())} calls)"})
    builder.add_edge(START, "research")
    builder.add_edge("research", "report")
    builder.add_edge("report", END)
    return builder.compile(checkpointer=InMemorySaver(), store=InMemoryStore())


def main(question: str = QUESTION, engine: Engine | None = None,
         approve: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    graph = build(engine or load_engine())
    config = {"configurable": {"thread_id": "example"}}
    ask: Any = {"question": question}
    while True:
        for _ns, mode, chunk in graph.stream(ask, config, stream_mode=["custom", "updates"], subgraphs=True):
            if mode == "custom" and chunk["tokenomy"]["event"] == "model_call":
                e = chunk["tokenomy"]
                print(f"  model call: {e['agent']}, {e.get('gen_ai.usage.input_tokens')} prompt tokens")
            elif mode == "updates" and "__interrupt__" in chunk:
                pending = chunk["__interrupt__"][0].value
                print(f"plan to approve:\n  {pending['plan'].replace(chr(10), chr(10) + '  ')}")
                decision = approve(pending) if approve else input("run it? [y/n] ").strip().lower() == "y"
                ask = Command(resume=decision)
                break
        else:
            break
    state = graph.get_state(config).values
    print(state.get("report"))
    return state


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--yes"]
    main(*(args[:1] or [QUESTION]), approve=(lambda p: True) if "--yes" in sys.argv else None)
