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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

from pydantic import Field

from tokenomy.errors import UserError

from ..base import Tool, ToolArgumentError
from ..decorator import tool
from .chunking import STOPWORDS, clip, fts_query, phrase_query, same_word, sentences, strip_source, words
from .corpus_store import INDEX_FILENAME, CorpusStore, RefreshStats, default_index_path
from .prose import (
    FAMILIES,
    Family,
    Passage,
    family_words,
    find_value,
    is_a,
    mentioned_families,
    names_about,
)

if TYPE_CHECKING:
    from tokenomy.tools.rag.types import Hit

__all__ = ["CorpusIndex", "RefreshStats", "render_hit", "search_tool", "lookup_tool", "INDEX_FILENAME"]

MAX_RESULT_CHARS = 600
# Column weights of bm25(): path and n are not indexed; a match in the file's title counts half.
_RANKED = "SELECT rowid, path, n, text, title, bm25(chunks, 0.0, 0.0, 0.5, 1.0) AS score FROM chunks " \
          "WHERE chunks MATCH ? ORDER BY score, path, n LIMIT ?"
_ABOUT = "SELECT path, n, title, text FROM chunks WHERE chunks MATCH ? ORDER BY bm25(chunks, 0.0, 0.0, 0.5, 1.0), " \
         "path, n LIMIT ?"
_MAX_PASSAGES = 40
T = TypeVar("T")
_HEADING = re.compile(r"^#+[ \t]*", re.MULTILINE)


def render_hit(hit: Hit, max_chars: int, focus: Sequence[str] = ()) -> str:
    """``[file#n] text``, at most ``max_chars`` characters; with ``focus`` (query words) only the sentences that
    have one of them, ``…`` where others were left out (the whole paragraph if none has one, or if the focus names
    the file's title, the chunk's ``heading``: all its sentences speak of what was asked about)."""
    head = f"[{hit.chunk.cite}] "
    text = _HEADING.sub("", hit.chunk.text)  # "# Title" costs tokens and says what the file name says
    if focus and not set(words(hit.chunk.heading)) <= set(focus):
        text = _focused(text, focus)
    return head + clip(text, max(1, max_chars - len(head)))


def _focused(paragraph: str, focus: Sequence[str]) -> str:
    parts = sentences(paragraph)
    keep = [i for i, s in enumerate(parts) if any(same_word(q, w) for w in words(s) for q in focus)]
    if not keep or len(keep) == len(parts):
        return paragraph
    out: list[str] = []
    for i in keep:
        if i and (not out or i - 1 not in keep):
            out.append("…")
        out.append(parts[i])
    return " ".join(out) + (" …" if keep[-1] < len(parts) - 1 else "")


class CorpusIndex:
    """Full-text search over the ``.txt`` and ``.md`` files under ``corpus_dir`` (hidden paths skipped).

    Args:
        corpus_dir: the corpus directory.
        index_path: where to keep the index (default: see ``default_index_path``).
        max_chars: the longest result string ``search`` and ``lookup`` return.
        auto_refresh: check the files for changes before every query (a ``stat`` per file).
        families: the attribute families ``lookup`` knows (default ``prose.FAMILIES``; add your own wordings).
    """

    def __init__(self, corpus_dir: str | os.PathLike[str], *, index_path: str | os.PathLike[str] | None = None,
                 max_chars: int = MAX_RESULT_CHARS, auto_refresh: bool = True,
                 families: tuple[Family, ...] = FAMILIES) -> None:
        self.corpus_dir = Path(corpus_dir).resolve()
        if not self.corpus_dir.is_dir():
            raise UserError(f"corpus directory {self.corpus_dir} does not exist or is not a directory")
        if max_chars < 16:
            raise UserError(f"CorpusIndex.max_chars must be >= 16, got {max_chars}")
        path = Path(index_path) if index_path is not None else default_index_path(self.corpus_dir)
        self.store = CorpusStore(self.corpus_dir, path)
        self.max_chars = max_chars
        self.auto_refresh = auto_refresh
        self.families = families
        self.last_refresh: RefreshStats | None = None
        self._lock = threading.Lock()
        self._synced = False

    # -- queries -----------------------------------------------------------------------------------------

    def hits(self, query: str, k: int = 3, *, synonyms: bool = False) -> list[Hit]:
        """The ``k`` best paragraphs for free-text ``query`` by BM25, best first (a hit's ``score`` is BM25's,
        negated: higher is better; its chunk's ``heading`` is the file's title); ``synonyms``: an attribute's name
        also matches the words of its family ("population" finds "3,400 people live there")."""
        from tokenomy.tools.rag.types import Chunk, Hit

        if k < 1:
            raise UserError(f"k must be >= 1, got {k}")
        match = fts_query(f"{query} {' '.join(family_words(query, self.families))}" if synonyms else query)
        if match is None:
            return []
        return self._with_index(lambda conn: [Hit(Chunk(*row[:5]), -float(row[5]), rank)
                                              for rank, row in enumerate(conn.execute(_RANKED, (match, k)))])

    def search(self, query: str, k: int = 3, *, brief: bool = False) -> list[str]:
        """The ``k`` best paragraphs as ``"[file#n] text"`` strings, each at most ``max_chars`` long; ``brief``:
        only their sentences that have a word of the query (what the ``search`` tool returns: fewer tokens)."""
        focus = [w for w in words(query) if w not in STOPWORDS] if brief else []
        focus += family_words(query, self.families) if brief else []
        return [render_hit(hit, self.max_chars, focus) for hit in self.hits(query, k, synonyms=brief)]

    def lookup(self, entity: str, attribute: str) -> str:
        """One value of ``attribute`` of ``entity`` with its source, ``"12,900 [port-arlen.md#2]"``: a year, a
        number with its unit (``"212 km"``) or a name, read from the sentences about the entity even where they
        word the attribute otherwise (see ``tools.builtin.prose``). Where there is none: ``"not found"`` and the
        attributes the text about the entity does give, so that a caller can ask again. ``[file#n]`` sources in
        the arguments are ignored, so one lookup's result can be the next one's entity."""
        entity, attribute = strip_source(entity), strip_source(attribute)
        phrase = phrase_query(entity)
        if phrase is None:
            raise ToolArgumentError("lookup", [("entity", "has no words")])
        if not words(attribute):
            raise ToolArgumentError("lookup", [("attribute", "has no words")])
        entity_words = set(words(entity))

        def find(conn: sqlite3.Connection) -> str:
            rows = conn.execute(_ABOUT, (phrase, _MAX_PASSAGES)).fetchall()
            passages = [Passage(path, n, title, text, own=entity_words <= set(words(title)))
                        for path, n, title, text in rows]
            if not passages:
                return f"not found: no text names {clip(entity, 60)}"
            known = {w for p in passages for w in words(p.title)} | entity_words
            found = find_value(passages, entity, attribute, known=known, families=self.families)
            if found is None:  # "on the coast of Veradel" and "Veradel is a small province"
                found = next((f for f in names_about(passages, entity, known)
                              if is_a(self._first_sentence(conn, f.value), f.value, attribute, self.families)), None)
            if found is None:
                hint = mentioned_families(passages, entity, self.families)
                return clip(f"not found; the text on {entity} gives: {', '.join(hint)}" if hint else "not found",
                            self.max_chars)
            return clip(f"{found.value} [{found.path}#{found.n}]", self.max_chars)

        return self._with_index(find)

    @staticmethod
    def _first_sentence(conn: sqlite3.Connection, title: str) -> str:
        """The first sentence of the file titled ``title`` ("" if there is none)."""
        phrase = phrase_query(title)
        for row_title, text in conn.execute("SELECT title, text FROM chunks WHERE chunks MATCH ? AND n = 1",
                                            (f"title : {phrase}",) if phrase else ()):
            if row_title.lower() == title.lower():
                return next(iter(sentences(text)), "")
        return ""

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
        """Full-text search of the corpus; returns the best paragraphs as "[file#n] text", cut to the
        sentences with a word of the query.

        Args:
            query: words to look for.
            k: how many paragraphs to return (1-10).
        """
        return index.search(query, k, brief=True)

    return search


def lookup_tool(corpus_dir: str | os.PathLike[str] | CorpusIndex, *, max_chars: int = MAX_RESULT_CHARS) -> Tool:
    """The ``lookup(entity, attribute) -> str`` tool: one value with its source, or "not found" and a hint
    (see ``CorpusIndex.lookup``)."""
    index = _index(corpus_dir, max_chars)

    @tool
    def lookup(entity: str, attribute: str) -> str:
        """One value from the corpus with its source, e.g. "12,900 [velmora.md#2]", "212 km [orrin.md#1]" or a
        name; calc accepts it as it is, and so does lookup's entity. "not found; ... gives: ..." lists attributes to
        try instead.

        Args:
            entity: what the question is about, e.g. "Velmora".
            attribute: what to know about it, e.g. "population", "founder", "born", "length".
        """
        return index.lookup(entity, attribute)

    return lookup

