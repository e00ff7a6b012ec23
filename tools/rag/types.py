"""The values a RAG pipeline passes along: chunks, triplets, retrieval hits, a built context.

Retrieval is data handling: corpus text is split, indexed, ranked and cut, never interpreted or executed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Chunk", "Triplet", "Hit", "Context", "Embedder"]


@dataclass(frozen=True)
class Chunk:
    """A stored piece of a document: ``id`` is the store's row id; ``n`` its position in the document."""

    id: int
    path: str
    n: int
    text: str
    heading: str = ""
    """The headings above the chunk, outermost first, joined with `` > `` (empty for plain text)."""

    @property
    def cite(self) -> str:
        """How an answer cites it: ``path#n``."""
        return f"{self.path}#{self.n}"


@dataclass(frozen=True)
class Triplet:
    """``(subject, relation, object)`` stated by ``sentence`` of chunk ``chunk_id``."""

    subject: str
    relation: str
    object: str
    sentence: str
    chunk_id: int


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with its retriever's score (higher is better) and rank (0 is best)."""

    chunk: Chunk
    score: float
    rank: int


@dataclass
class Context:
    """What a compressor hands the generator: the text, the tokens it costs, and the chunks it cites."""

    text: str
    tokens: int
    cites: list[str] = field(default_factory=list)
    """``path#n`` of every chunk that contributed text, in the order they appear."""
    pieces: list[str] = field(default_factory=list)
    """The units that were kept (chunks, sentences or triplets), in order."""


@runtime_checkable
class Embedder(Protocol):
    """Sentence embeddings: ``encode(texts)`` is a float32 array of shape ``(len(texts), dim)``, rows L2-normed."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...
