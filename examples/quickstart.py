"""Quickstart: a question over a folder of documents, answered by tokenomy's codified-plan planner.

    python examples/quickstart.py ["question"] [corpus_dir]

The planner writes one plan (tool calls with variables), the tools run it without the model, and a solver
answers from the evidence (no solver call when a tool's result already is the answer). The model is
``$TOKENOMY_MODEL`` (for example ``openai:gpt-4o-mini@https://api.openai.com/v1`` or ``vllm:/path/to/model``),
or the default embedded model, Qwen2.5-Coder-1.5B-Instruct (``TOKENOMY_EMBEDDED=smollm2-135m`` for the fast tiny
one: valid plans, mostly wrong answers).
"""

from __future__ import annotations

import sys

from tokenomy import Engine, Rewoo, load_engine
from tokenomy.planners import RunResult
from tokenomy.tools import calc, example_corpus_dir, lookup_tool, search_tool


def main(question: str = "Who founded Halvane Instruments?", corpus: str | None = None,
         engine: Engine | None = None) -> RunResult:
    engine = engine or load_engine()  # $TOKENOMY_MODEL, else the embedded model
    folder = corpus or example_corpus_dir()  # .md and .txt files; the search index is kept beside them
    tools = [search_tool(folder), lookup_tool(folder), calc]
    result = Rewoo(engine, tools).run(question)

    print("plan:\n  " + result.plan.replace("\n", "\n  "))
    print(f"answer: {result.answer}")
    for agent, usage in sorted(result.usage.items()):
        print(f"  {agent:8s} {usage}")
    print(f"  {'total':8s} {result.total}")
    return result


if __name__ == "__main__":
    main(*sys.argv[1:3])
