"""Retrievers over a ``RagStore``: BM25, dense, hybrid (reciprocal rank fusion) and graph (Personalized PageRank).

Each has ``retrieve(question, k) -> list[Hit]``, best first, and returns nothing rather than noise: BM25 needs a
shared word, dense a cosine above ``min_score``, graph an entity of the question in the knowledge graph. An
empty result lets the pipeline say "no match" without spending a model call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from tokenomy.errors import UserError

from .types import Embedder, Hit, Triplet

if TYPE_CHECKING:
    from .graph import KnowledgeGraph
    from .store import RagStore

__all__ = ["Retriever", "BM25Retriever", "DenseRetriever", "HybridRetriever", "GraphRetriever", "RETRIEVERS",
           "make_retriever"]


@runtime_checkable
class Retriever(Protocol):
    name: str

    def retrieve(self, question: str, k: int = 5) -> list[Hit]: ...


class BM25Retriever:
    """SQLite FTS5's BM25 over the chunks (the question's words, OR'ed, quoted: no FTS syntax gets through)."""

    name = "bm25"

    def __init__(self, store: RagStore) -> None:
        self.store = store

    def retrieve(self, question: str, k: int = 5) -> list[Hit]:
        return self.store.bm25(question, k)


class DenseRetriever:
    """Cosine similarity between the question's embedding and the stored chunk embeddings.

    Args:
        store: a store ingested with an embedder.
        embedder: the same embedder (same name and dimension) the store was ingested with.
        min_score: chunks below this cosine are not returned (unrelated text scores near 0 with MiniLM).
    """

    name = "dense"

    def __init__(self, store: RagStore, embedder: Embedder, *, min_score: float = 0.2) -> None:
        stored = store.embedder_name
        if stored and stored != embedder.name:
            raise UserError(f"the store's vectors were made by {stored!r}, not {embedder.name!r}: retrieve with "
                            "the embedder it was ingested with")
        self.store, self.embedder, self.min_score = store, embedder, min_score

    def retrieve(self, question: str, k: int = 5) -> list[Hit]:
        ids, matrix = self.store.vectors()
        if not ids or not question.strip():
            return []
        q = self.embedder.encode([question])[0]
        scores = matrix @ q
        order = np.argsort(-scores, kind="stable")[:k]
        keep = [int(i) for i in order if scores[i] >= self.min_score]
        chunks = self.store.chunks([ids[i] for i in keep])
        return [Hit(c, float(scores[i]), r) for r, (c, i) in enumerate(zip(chunks, keep, strict=True))]


class HybridRetriever:
    """Reciprocal rank fusion (Cormack et al., 2009): score = sum over retrievers of 1 / (c + rank).

    Each member is asked for ``depth`` hits (default ``max(4k, 20)``) so that a chunk ranked low by one and high
    by another still surfaces.
    """

    name = "hybrid"

    def __init__(self, retrievers: Sequence[Retriever], *, c: int = 60, depth: int | None = None) -> None:
        if not retrievers:
            raise UserError("a hybrid retriever needs at least one retriever")
        self.retrievers, self.c, self.depth = list(retrievers), c, depth

    def retrieve(self, question: str, k: int = 5) -> list[Hit]:
        depth = self.depth or max(4 * k, 20)
        fused: dict[int, float] = {}
        chunks = {}
        for r in self.retrievers:
            for hit in r.retrieve(question, depth):
                fused[hit.chunk.id] = fused.get(hit.chunk.id, 0.0) + 1.0 / (self.c + hit.rank + 1)
                chunks[hit.chunk.id] = hit.chunk
        best = sorted(fused, key=lambda cid: (-fused[cid], cid))[:k]
        return [Hit(chunks[cid], fused[cid], r) for r, cid in enumerate(best)]


class GraphRetriever:
    """The knowledge graph of the store's triplets, ranked by Personalized PageRank from the question's entities.

    ``triplets(question)`` gives the ranked facts (what the graph compressor packs); ``retrieve`` the chunks
    those facts came from, in the order of their best fact. The graph is built on first use and again after the
    store changes.
    """

    name = "graph"

    def __init__(self, store: RagStore, *, alpha: float = 0.85) -> None:
        self.store, self.alpha = store, alpha
        self._graph: KnowledgeGraph | None = None
        self._built_for: object = None
        self._lock = threading.Lock()

    @property
    def graph(self) -> KnowledgeGraph:
        from .graph import KnowledgeGraph

        with self._lock:
            version = self.store.generation  # bumped by every write, from any process
            if self._graph is None or version != self._built_for:
                self._graph, self._built_for = KnowledgeGraph(self.store.triplets()), version
            return self._graph

    def triplets(self, question: str, k: int | None = None) -> list[tuple[Triplet, float]]:
        from .graph import rank_triplets

        return rank_triplets(self.graph, question, k)

    def retrieve(self, question: str, k: int = 5) -> list[Hit]:
        best: dict[int, float] = {}
        for t, score in self.triplets(question):
            if t.chunk_id not in best:
                best[t.chunk_id] = score
                if len(best) == k:
                    break
        chunks = self.store.chunks(list(best))
        return [Hit(c, best[c.id], r) for r, c in enumerate(chunks)]


RETRIEVERS = ("bm25", "dense", "hybrid", "graph")


def make_retriever(name: str, store: RagStore, embedder: Embedder | None = None) -> Retriever:
    """A retriever by name (``RETRIEVERS``); ``dense`` and ``hybrid`` need the store's embedder."""
    if name == "bm25":
        return BM25Retriever(store)
    if name == "graph":
        return GraphRetriever(store)
    if name in ("dense", "hybrid"):
        if embedder is None:
            raise UserError(f"the {name} retriever needs an embedder (the one the store was ingested with)")
        dense = DenseRetriever(store, embedder)
        return dense if name == "dense" else HybridRetriever([BM25Retriever(store), dense])
    raise UserError(f"unknown retriever {name!r}; choose one of {', '.join(RETRIEVERS)}")
