"""LangChain chat models and tokenomy engines, both ways.

    python examples/langchain_models.py ["question"] [--openai MODEL@URL]

``engine.as_langchain()`` makes any tokenomy engine a LangChain ``BaseChatModel``: here the embedded model answers
inside an LCEL chain (prompt | model), with ``usage_metadata`` on its reply. The other way, any LangChain chat
model runs a tokenomy strategy: with ``--openai MODEL@URL`` a ``ChatOpenAI`` (``pip install langchain-openai``)
plans over the bundled corpus; usage comes from its replies' ``usage_metadata``.
"""

from __future__ import annotations

import sys
from typing import Any

from langchain_core.prompts import ChatPromptTemplate

from tokenomy import Engine, Rewoo, load_engine
from tokenomy.tools import example_corpus_dir, lookup_tool, search_tool

QUESTION = "What is the population of Velmora?"


def main(question: str = QUESTION, engine: Engine | None = None, openai: str | None = None) -> dict[str, Any]:
    llm = (engine or load_engine()).as_langchain()
    chain = ChatPromptTemplate.from_messages([("system", "Answer in one short sentence."), ("user", "{q}")]) | llm
    reply = chain.invoke({"q": "What is the capital of France?"})
    print(f"chain: {reply.content}\n  usage_metadata: {reply.usage_metadata}")
    out: dict[str, Any] = {"chain": reply}
    if openai:
        from langchain_openai import ChatOpenAI

        model, _, url = openai.partition("@")
        corpus = example_corpus_dir()
        result = Rewoo(ChatOpenAI(model=model, base_url=url, api_key="EMPTY", temperature=0),
                       [search_tool(corpus), lookup_tool(corpus)]).run(question)
        print(f"ChatOpenAI planned: answer {result.answer}, spent {result.total}")
        out["run"] = result
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    target = args[args.index("--openai") + 1] if "--openai" in args else None
    rest = [a for i, a in enumerate(args) if a != "--openai" and (i == 0 or args[i - 1] != "--openai")]
    main(*(rest[:1] or [QUESTION]), openai=target)
