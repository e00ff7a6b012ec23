"""Built-in tools: ``calc`` (safe arithmetic), ``search``/``lookup`` over a corpus (SQLite FTS5, BM25) and
``llm`` (the only one that calls a model), plus a small example corpus about fictional places and people."""

from __future__ import annotations

from pathlib import Path

from .calculator import calc
from .llm import llm_tool
from .search import CorpusIndex, lookup_tool, search_tool

__all__ = ["calc", "llm_tool", "CorpusIndex", "search_tool", "lookup_tool", "example_corpus_dir"]


def example_corpus_dir() -> Path:
    """The bundled example corpus: short Markdown files about made-up cities, a river, a company and its
    founder, with facts that agree across files and that no model knows from training."""
    return Path(__file__).resolve().parent / "corpus"
