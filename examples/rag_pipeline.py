"""A RAG pipeline that spends few context tokens: ingest, retrieve, compress to a budget, answer with sources.

    python examples/rag_pipeline.py [--docs DIR] [--store FILE] [--budget N] ["question"]

Without ``--docs`` it writes a small synthetic world (companies, people, cities; look-alike distractors
included) and asks a two-hop question about it. The same question is answered twice: from BM25's top 5 whole
chunks (the usual RAG context) and from the knowledge-graph context (facts ranked by Personalized PageRank from
the question's entities, packed into ``--budget`` tokens); both answers print with their context tokens. The model
is ``$TOKENOMY_MODEL`` or the default embedded model (Qwen2.5-Coder-1.5B-Instruct; the point is the token ledger).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tokenomy import Engine, load_engine
from tokenomy.benchmarks.world import World
from tokenomy.planners.rag import RagPipeline
from tokenomy.tools.rag import Embedder, RagStore
from tokenomy.tools.rag.embed import MiniLMEmbedder
from tokenomy.tools.rag.graph import extract_triplets


def main(argv: list[str] | None = None, *, engine: Engine | None = None, embedder: Embedder | None = None
         ) -> dict[str, int]:
    """Run the example; returns the context tokens of each pipeline (``engine``/``embedder``: for tests)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("question", nargs="?", default=None)
    p.add_argument("--docs", default=None, help="a directory of .md/.txt/.html files (default: a synthetic world)")
    p.add_argument("--store", default=None, help="the SQLite store (default: a temporary file)")
    p.add_argument("--budget", type=int, default=64, help="context tokens of the graph pipeline")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        question = args.question
        docs = Path(args.docs) if args.docs else None
        if docs is None:
            world = World(seed=11, per_type=8)
            docs = world.write_corpus(Path(tmp) / "world")
            question = question or world.tasks(1, hops=2, salt="example")[0].question
        if not question:
            p.error("give a question to ask about --docs")
        embedder = embedder or MiniLMEmbedder()
        spent: dict[str, int] = {}
        with RagStore(args.store or Path(tmp) / "store.sqlite") as store:
            stats = store.ingest(docs, embedder=embedder, extract=extract_triplets)
            print(f"ingested {stats.added} new, {stats.updated} changed, {stats.unchanged} unchanged files "
                  f"({stats.chunks} chunks) in {stats.seconds:.1f} s")
            model = engine or load_engine()
            print(f"question: {question}")
            for name, pipe in [
                ("BM25 top-5 chunks", RagPipeline(store, model=model, embedder=embedder, retriever="bm25",
                                                  compressor="chunks", budget_tokens=10_000)),
                (f"graph, {args.budget} tokens", RagPipeline(store, model=model, embedder=embedder,
                                                             retriever="hybrid", compressor="graph",
                                                             budget_tokens=args.budget)),
            ]:
                answer = pipe.ask(question)
                usage = answer.usage
                print(f"\n[{name}] context {answer.context.tokens} tokens; prompt "
                      f"{usage.prompt_tokens if usage else 0}, completion {usage.completion_tokens if usage else 0}")
                print(f"context:\n{answer.context.text}")
                print(f"answer: {answer.text}   sources: {', '.join(answer.cites) or 'none'}")
                spent[name] = answer.context.tokens
    return spent


if __name__ == "__main__":
    main()
