"""``CorpusIndex``: BM25 search over a directory of ``.txt``/``.md`` files with SQLite FTS5.

The index is built once and kept beside the corpus (``<dir>/.tokenomy-index.sqlite``; in the tokenomy cache
directory when the corpus directory is not writable). Each search first compares the files' size and mtime
with what the index recorded and re-indexes only files that were added, removed or really changed (a content
sha1 tells a touched file from a changed one), all in one transaction: an interrupted update leaves the
previous, consistent index. An index file that is not a SQLite database or has another schema version is
logged and rebuilt, never a crash.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import Field

from tokenomy.errors import UserError

from ..base import Tool, ToolArgumentError
from ..decorator import tool
from .chunking import best_sentence, clip, fts_query, phrase_query, words
from .corpus_store import INDEX_FILENAME, CorpusStore, RefreshStats, default_index_path

__all__ = ["CorpusIndex", "RefreshStats", "Hit", "search_tool", "lookup_tool", "INDEX_FILENAME"]

MAX_RESULT_CHARS = 600
# Column weights of bm25(): path and n are not indexed; a match in the file's title counts half.
_RANKED = "SELECT path, n, text, bm25(chunks, 0.0, 0.0, 0.5, 1.0) AS score FROM chunks WHERE chunks MATCH ? " \
          "ORDER BY score, path, n LIMIT ?"
T = TypeVar("T")
_HEADING = re.compile(r"^#+[ \t]*", re.MULTILINE)


@dataclass(frozen=True)
class Hit:
    path: str
    n: int
    text: str
    score: float

    def render(self, max_chars: int) -> str:
        """``[file#n] text``, at most ``max_chars`` characters."""
        head = f"[{self.path}#{self.n}] "
        text = _HEADING.sub("", self.text)  # "# Title" costs tokens and says what the file name says
        return head + clip(text, max(1, max_chars - len(head)))


class CorpusIndex:
    """Full-text search over the ``.txt`` and ``.md`` files under ``corpus_dir`` (hidden paths skipped).

    Args:
        corpus_dir: the corpus directory.
        index_path: where to keep the index (default: see ``default_index_path``).
        max_chars: the longest result string ``search`` and ``lookup`` return.
        auto_refresh: check the files for changes before every query (a ``stat`` per file).
    """

    def __init__(self, corpus_dir: str | os.PathLike[str], *, index_path: str | os.PathLike[str] | None = None,
                 max_chars: int = MAX_RESULT_CHARS, auto_refresh: bool = True) -> None:
        self.corpus_dir = Path(corpus_dir).resolve()
        if not self.corpus_dir.is_dir():
            raise UserError(f"corpus directory {self.corpus_dir} does not exist or is not a directory")
        if max_chars < 16:
            raise UserError(f"CorpusIndex.max_chars must be >= 16, got {max_chars}")
        path = Path(index_path) if index_path is not None else default_index_path(self.corpus_dir)
        self.store = CorpusStore(self.corpus_dir, path)
        self.max_chars = max_chars
        self.auto_refresh = auto_refresh
        self.last_refresh: RefreshStats | None = None
        self._lock = threading.Lock()
        self._synced = False

    # -- queries -----------------------------------------------------------------------------------------

    def hits(self, query: str, k: int = 3) -> list[Hit]:
        """The ``k`` best paragraphs for free-text ``query`` by BM25 (best first)."""
        if k < 1:
            raise UserError(f"k must be >= 1, got {k}")
        match = fts_query(query)
        if match is None:
            return []
        return self._with_index(lambda conn: [Hit(*row) for row in conn.execute(_RANKED, (match, k))])

    def search(self, query: str, k: int = 3) -> list[str]:
        """The ``k`` best paragraphs as ``"[file#n] text"`` strings, each at most ``max_chars`` long."""
        return [hit.render(self.max_chars) for hit in self.hits(query, k)]

    def lookup(self, entity: str, attribute: str) -> str:
        """The sentence that gives ``attribute`` of ``entity``, from the best paragraph mentioning the entity
        (the file's title counts as a mention); ``"not found"`` if there is none."""
        phrase = phrase_query(entity)
        if phrase is None:
            raise ToolArgumentError("lookup", [("entity", "has no words")])
        attr_words = [w for w in words(attribute) if w not in words(entity)] or words(attribute)
        attr_query = fts_query(" ".join(attr_words))
        queries = [f"{phrase} AND ({attr_query})"] if attr_query else []

        def find(conn: sqlite3.Connection) -> str:
            for q in [*queries, phrase]:
                for _path, _n, text, _score in conn.execute(_RANKED, (q, 5)):
                    sentence = best_sentence(text, attr_words, words(entity))
                    if sentence:
                        return clip(sentence, self.max_chars)
            return "not found"

        return self._with_index(find)

    # -- keeping the index fresh -------------------------------------------------------------------------

    def refresh(self) -> RefreshStats:
        """Bring the index up to date with the files now; return what changed."""
        return self._with_index(lambda conn: self.last_refresh or RefreshStats(), force=True)

    def _with_index(self, fn: Callable[[sqlite3.Connection], T], *, force: bool = False) -> T:
        with self._lock:
            for attempt in (0, 1):
                conn = self.store.open()
                try:
                    if force or self.auto_refresh or not self._synced:
                        self.last_refresh = self.store.sync(conn)
                        self._synced = True
                    return fn(conn)
                except sqlite3.DatabaseError as exc:
                    # OperationalError is a locked or busy database, not a damaged one: let it surface.
                    if attempt or isinstance(exc, sqlite3.OperationalError):
                        raise
                    self.store.discard(f"it failed to read ({exc})")
                finally:
                    conn.close()
        raise AssertionError("unreachable")

    @property
    def index_path(self) -> Path:
        return self.store.index_path

    @property
    def recoveries(self) -> int:
        """How many times an unusable index file was thrown away and rebuilt."""
        return self.store.recoveries

    def __repr__(self) -> str:
        return f"CorpusIndex({str(self.corpus_dir)!r}, index_path={str(self.index_path)!r})"


def _index(corpus: str | os.PathLike[str] | CorpusIndex, max_chars: int) -> CorpusIndex:
    return corpus if isinstance(corpus, CorpusIndex) else CorpusIndex(corpus, max_chars=max_chars)


def search_tool(corpus_dir: str | os.PathLike[str] | CorpusIndex, *, max_chars: int = MAX_RESULT_CHARS) -> Tool:
    """The ``search(query, k=3) -> list[str]`` tool over a corpus directory (or an existing ``CorpusIndex``)."""
    index = _index(corpus_dir, max_chars)

    @tool
    def search(query: str, k: Annotated[int, Field(ge=1, le=10)] = 3) -> list[str]:
        """Full-text search of the corpus; returns the best paragraphs as "[file#n] text".

        Args:
            query: words to look for.
            k: how many paragraphs to return (1-10).
        """
        return index.search(query, k)

    return search


def lookup_tool(corpus_dir: str | os.PathLike[str] | CorpusIndex, *, max_chars: int = MAX_RESULT_CHARS) -> Tool:
    """The ``lookup(entity, attribute) -> str`` tool: one sentence from the corpus, or "not found"."""
    index = _index(corpus_dir, max_chars)

    @tool
    def lookup(entity: str, attribute: str) -> str:
        """The corpus sentence that gives an attribute of an entity, or "not found".

        Args:
            entity: what the question is about, e.g. "Velmora".
            attribute: what to know about it, e.g. "population".
        """
        return index.lookup(entity, attribute)

    return lookup

