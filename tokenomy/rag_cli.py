"""``tokenomy rag ingest DIR`` and ``tokenomy rag ask "question"`` (their arguments: ``tokenomy.cli``).

A roof module, like ``cli``: it uses the store (``tools.rag``) and the pipeline that asks a model (``planners.rag``).
Without ``--store`` the store is ``rag/store.sqlite`` in tokenomy's cache directory (``TOKENOMY_CACHE_DIR``
overrides that, as for the models, the runs and the search indexes).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

__all__ = ["cmd_ingest", "cmd_ask", "default_store_path"]


def default_store_path() -> Path:
    """``<cache>/rag/store.sqlite``, where ``<cache>`` is tokenomy's cache directory (``TOKENOMY_CACHE_DIR``)."""
    from tokenomy.kernels.embedded import cache_root

    return cache_root() / "rag" / "store.sqlite"


def _store(path: str | None) -> Path:
    p = Path(path) if path else default_store_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def cmd_ingest(args: argparse.Namespace) -> int:
    from tokenomy.kernels.usage import Usage
    from tokenomy.planners.rag_extract import make_extractor
    from tokenomy.tools.rag.store import RagStore

    embedder = None
    if not args.no_vectors:
        from tokenomy.tools.rag.embed import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    path = _store(args.store)
    spent: Usage | None = None
    cached = 0
    with RagStore(path) as store:  # opened first: the model extractor keeps its cache in the store's file
        extract = make_extractor(args.extractor, args.model, cache=path)
        for source in args.paths:
            stats = store.ingest(source, embedder=embedder, extract=extract, max_tokens=args.max_tokens)
            print(f"{source}: {stats.added} added, {stats.updated} updated, {stats.unchanged} unchanged, "
                  f"{stats.removed} removed, {stats.chunks} new chunks ({stats.seconds:.1f} s)")
            for skipped, why in stats.skipped:
                print(f"  skipped {skipped}: {why}")
            if stats.extract_usage is not None:
                spent = stats.extract_usage if spent is None else spent + stats.extract_usage
                cached += stats.extract_cached
        s = store.stats()
    print(f"store {path}: {s['docs']} documents, {s['chunks']} chunks, {s['vectors']} vectors, "
          f"{s['triplets']} triplets")
    if spent is not None:
        print(f"extraction: {spent.calls} model calls, prompt {spent.prompt_tokens}, completion "
              f"{spent.completion_tokens} tokens; {cached} chunks from the cache")
    return 0


def _ingest_command(args: argparse.Namespace, path: Path) -> str:
    # `prog`: how the user runs tokenomy from where they stand (tokenomy.cli sets it).
    return f"{getattr(args, 'prog', 'tokenomy')} rag ingest DIR --store {shlex.quote(str(path))}"


def cmd_ask(args: argparse.Namespace) -> int:
    from tokenomy.errors import UserError
    from tokenomy.kernels import default_spec, load_engine
    from tokenomy.planners.rag import RagPipeline
    from tokenomy.tools.rag.store import RagStore

    path = _store(args.store)
    if not path.exists():
        raise UserError(f"no store at {path}: run `{_ingest_command(args, path)}` first")
    with RagStore(path) as store:
        if store.stats()["chunks"] == 0:
            raise UserError(f"the store {path} is empty: run `{_ingest_command(args, path)}` first")
        retriever = args.retriever or ("hybrid" if store.embedder_name else "bm25")
        pipe = RagPipeline(store, model=load_engine(args.model or default_spec()), retriever=retriever,
                           compressor=args.compressor, budget_tokens=args.budget, k=args.k)
        answer = pipe.ask(args.question)
    if args.json:
        print(json.dumps(answer.to_json(), indent=2, ensure_ascii=False))
        return 0
    if args.show_context:
        print(f"context ({answer.context.tokens} tokens):\n{answer.context.text}\n")
    print(answer.text)
    print("sources: " + (", ".join(answer.cites) or "none"))
    u = answer.usage
    print(f"tokens: context {answer.context.tokens}"
          + (f", prompt {u.prompt_tokens}, completion {u.completion_tokens}" if u is not None else ", no model call"))
    return 0
