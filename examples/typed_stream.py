"""Tokens as they decode, and an answer with a type.

    python examples/typed_stream.py ["question"]

``engine.stream`` yields a reply's text as the model writes it (its usage in the last chunk); ``run(...,
answer_type=Town)`` returns the planner's answer parsed as a pydantic model, written under the model's JSON schema
where the engine constrains decoding. The model is ``$TOKENOMY_MODEL`` or the embedded one (``openai:...@URL`` for a
server: its tokens then stream from the server).
"""

from __future__ import annotations

import sys

from pydantic import BaseModel

from tokenomy import Engine, Rewoo, load_engine
from tokenomy.planners import RunResult
from tokenomy.tools import example_corpus_dir, lookup_tool, search_tool

QUESTION = "What is the population of Velmora?"


class Town(BaseModel):
    name: str
    population: int


def main(question: str = QUESTION, engine: Engine | None = None) -> RunResult:
    engine = engine or load_engine()
    print("streamed: ", end="")
    for chunk in engine.stream([{"role": "user", "content": "Say hello in five words."}], max_tokens=16):
        print(chunk.delta, end="", flush=True)
    print(f"\n  ({chunk.completion.usage})" if chunk.completion else "")
    corpus = example_corpus_dir()
    result = Rewoo(engine, [search_tool(corpus), lookup_tool(corpus)]).run(question, answer_type=Town)
    print(f"typed answer: {result.answer!r}")
    print(f"spent: {result.total}")
    return result


if __name__ == "__main__":
    main(*(sys.argv[1:2] or [QUESTION]))
