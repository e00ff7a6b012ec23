"""``tokenomy rag ingest DIR`` and ``tokenomy rag ask "question"`` (their arguments: ``tokenomy.cli``)."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

__all__ = ["cmd_ingest", "cmd_ask", "default_store_path"]


def default_store_path() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tokenomy")) / "rag" / "store.sqlite"


def _store(path: str | None) -> Path:
    p = Path(path) if path else default_store_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def cmd_ingest(args: argparse.Namespace) -> int:
    from .graph import extract_triplets
    from .model_extract import ModelExtractor
    from .store import Extractor, RagStore

    extract: Extractor = extract_triplets
    model_extract = None
    if args.extractor == "model":
        from tokenomy.kernels import default_spec, load_engine

        extract = model_extract = ModelExtractor(load_engine(args.model or default_spec()))
    embedder = None
    if not args.no_vectors:
        from .embed import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    path = _store(args.store)
    with RagStore(path) as store:
        for source in args.paths:
            stats = store.ingest(source, embedder=embedder, extract=extract, max_tokens=args.max_tokens)
            print(f"{source}: {stats.added} added, {stats.updated} updated, {stats.unchanged} unchanged, "
                  f"{stats.removed} removed, {stats.chunks} new chunks ({stats.seconds:.1f} s)")
            for skipped, why in stats.skipped:
                print(f"  skipped {skipped}: {why}")
        s = store.stats()
    print(f"store {path}: {s['docs']} documents, {s['chunks']} chunks, {s['vectors']} vectors, "
          f"{s['triplets']} triplets")
    if model_extract is not None and model_extract.usage is not None:
        u = model_extract.usage
        print(f"extraction: {u.calls} model calls, prompt {u.prompt_tokens}, completion {u.completion_tokens} tokens")
    return 0


def _ingest_command(args: argparse.Namespace, path: Path) -> str:
    # `prog`: how the user runs tokenomy from where they stand (tokenomy.cli sets it).
    return f"{getattr(args, 'prog', 'tokenomy')} rag ingest DIR --store {shlex.quote(str(path))}"


def cmd_ask(args: argparse.Namespace) -> int:
    from tokenomy.errors import UserError
    from tokenomy.kernels import default_spec, load_engine

    from .pipeline import RagPipeline
    from .store import RagStore

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
