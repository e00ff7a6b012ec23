"""tokenomy.tools.rag: retrieval that hands a model the knowledge it needs in as few tokens as possible.

``RagStore`` (SQLite: chunks, an FTS5 index, sentence embeddings, knowledge triplets) is filled by ``ingest``;
retrievers (BM25, dense, hybrid, graph) find chunks; compressors fill a token budget with the best chunks,
sentences or triplets. The built-in ``search``/``lookup`` tools read the same kind of store (``CorpusIndex``).
Asking a model about what was retrieved is a strategy: ``tokenomy.planners.rag.RagPipeline`` (retrieve ->
compress -> generate, also a plan tool), and ``tokenomy rag`` is ``tokenomy.rag_cli``. The embedding model and
torch load only when an embedder is used.
"""

from .retrievers import (
                         RETRIEVERS,
                         BM25Retriever,
                         DenseRetriever,
                         GraphRetriever,
                         HybridRetriever,
                         Retriever,
                         make_retriever,
)
from .store import IngestStats, RagStore
from .types import Chunk, Context, Embedder, Hit, Triplet

__all__ = [
    "RagStore",
    "IngestStats",
    "Retriever",
    "BM25Retriever",
    "DenseRetriever",
    "HybridRetriever",
    "GraphRetriever",
    "RETRIEVERS",
    "make_retriever",
    "Chunk",
    "Triplet",
    "Hit",
    "Context",
    "Embedder",
]
