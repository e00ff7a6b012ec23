"""``CorpusIndex``: BM25 search over a directory of ``.txt``/``.md`` files, a view over a ``RagStore``.

The ``search`` and ``lookup`` tools read one paragraph-chunked ``tools.rag.RagStore`` (SQLite FTS5), built once
and kept beside the corpus (``<dir>/.tokenomy-index.sqlite``; in the tokenomy cache directory when the corpus
directory is not writable). Each search first brings it in step with the files: the store compares their size and
mtime with what it recorded and re-indexes only files that were added, removed or really changed (a content sha1
tells a touched file from a changed one), each file in one transaction, so an interrupted update leaves every file
fully in or fully out. A file at the index's path that is not a usable index follows the store's one policy: it is
refused with an error that says how to rebuild it, and left as it is, unless it is provably tokenomy's own index
(stale, or damaged in tokenomy's own cache directory): that one is rebuilt, with a warning (see ``RagStore``).
"""

from __future__ import annotations

import hashlib
import logging
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
from .chunking import (
    STOPWORDS,
    clip,
    paragraphs,
    phrase_query,
    same_word,
    sentences,
    strip_source,
    title_of,
    words,
)
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
    from tokenomy.tools.rag.documents import Document
    from tokenomy.tools.rag.store import IngestStats, RagStore
    from tokenomy.tools.rag.types import Hit

__all__ = ["CorpusIndex", "render_hit", "search_tool", "lookup_tool", "default_index_path", "INDEX_FILENAME"]

log = logging.getLogger("tokenomy.tools.builtin.search")

INDEX_FILENAME = ".tokenomy-index.sqlite"
SUFFIXES = (".txt", ".md")
MAX_FILE_BYTES = 16 << 20
MAX_RESULT_CHARS = 600
_TITLE_WEIGHT = 0.5  # bm25(): a match in the file's title (the chunk's heading) counts half one in the paragraph
_MAX_PASSAGES = 40
_MAX_TITLES = 200
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


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def default_index_path(corpus_dir: Path) -> Path:
    """Beside the corpus if the directory is writable, else ``<cache>/indexes/<sha1 of the path>.sqlite``."""
    from tokenomy.tools.rag.store import index_cache_dir

    beside = corpus_dir / INDEX_FILENAME
    if _writable(corpus_dir) and (not beside.exists() or _writable(beside)):
        return beside
    return index_cache_dir() / f"{hashlib.sha1(str(corpus_dir).encode()).hexdigest()}.sqlite"


def _paragraph_chunks(doc: Document) -> list[tuple[str, str]]:
    """The index's chunks: one per paragraph (a Markdown heading joins the paragraph below it), each headed by
    the file's title (its first heading, else its name)."""
    title = title_of(doc.text, doc.path.stem)
    return [(title, p) for p in paragraphs(doc.text)]


class CorpusIndex:
    """Full-text search over the ``.txt`` and ``.md`` files under ``corpus_dir`` (hidden paths skipped).

    Args:
        corpus_dir: the corpus directory.
        index_path: where to keep the index (default: see ``default_index_path``).
        max_chars: the longest result string ``search`` and ``lookup`` return.
        auto_refresh: check the files for changes before every query (a ``stat`` per file).
        families: the attribute families ``lookup`` knows (default ``prose.FAMILIES``; add your own wordings).

    Raises:
        UserError: ``corpus_dir`` is not a directory, or ``index_path`` holds a file that is not a usable index
            and may not be rebuilt (the message names it and says how to rebuild it; see ``RagStore``).
    """

    def __init__(self, corpus_dir: str | os.PathLike[str], *, index_path: str | os.PathLike[str] | None = None,
                 max_chars: int = MAX_RESULT_CHARS, auto_refresh: bool = True,
                 families: tuple[Family, ...] = FAMILIES) -> None:
        from tokenomy.tools.rag.store import RagStore

        self.corpus_dir = Path(corpus_dir).resolve()
        if not self.corpus_dir.is_dir():
            raise UserError(f"corpus directory {self.corpus_dir} does not exist or is not a directory")
        if max_chars < 16:
            raise UserError(f"CorpusIndex.max_chars must be >= 16, got {max_chars}")
        path = Path(index_path) if index_path is not None else default_index_path(self.corpus_dir)
        self.store: RagStore = RagStore(path, index_of=self.corpus_dir)
        self.max_chars = max_chars
        self.auto_refresh = auto_refresh
        self.families = families
        self.last_refresh: IngestStats | None = None
        self._lock = threading.Lock()
        self._synced = False

    # -- queries -----------------------------------------------------------------------------------------

    def hits(self, query: str, k: int = 3, *, synonyms: bool = False) -> list[Hit]:
        """The ``k`` best paragraphs for free-text ``query`` by BM25, best first (a hit's ``score`` is BM25's,
        negated: higher is better; its chunk's ``heading`` is the file's title); ``synonyms``: an attribute's name
        also matches the words of its family ("population" finds "3,400 people live there")."""
        if k < 1:
            raise UserError(f"k must be >= 1, got {k}")
        text = f"{query} {' '.join(family_words(query, self.families))}" if synonyms else query
        return self._with_store(lambda store: store.bm25(text, k, heading_weight=_TITLE_WEIGHT))

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

        def find(store: RagStore) -> str:
            passages = [Passage(c.path, c.n, c.heading, c.text, own=entity_words <= set(words(c.heading)))
                        for c in (h.chunk for h in store.match(phrase, _MAX_PASSAGES, heading_weight=_TITLE_WEIGHT))]
            if not passages:
                return f"not found: no text names {clip(entity, 60)}"
            known = {w for p in passages for w in words(p.title)} | entity_words
            found = find_value(passages, entity, attribute, known=known, families=self.families)
            if found is None:  # "on the coast of Veradel" and "Veradel is a small province"
                found = next((f for f in names_about(passages, entity, known)
                              if is_a(_first_sentence(store, f.value), f.value, attribute, self.families)), None)
            if found is None:
                hint = mentioned_families(passages, entity, self.families)
                return clip(f"not found; the text on {entity} gives: {', '.join(hint)}" if hint else "not found",
                            self.max_chars)
            return clip(f"{found.value} [{found.path}#{found.n}]", self.max_chars)

        return self._with_store(find)

    # -- keeping the index fresh -------------------------------------------------------------------------

    def refresh(self) -> IngestStats:
        """Bring the index up to date with the files now; return what changed."""
        return self._with_store(lambda store: self._refreshed(), force=True)

    def _refreshed(self) -> IngestStats:
        assert self.last_refresh is not None
        return self.last_refresh

    def _sync(self) -> IngestStats:
        stats = self.store.ingest(self.corpus_dir, chunker=_paragraph_chunks, suffixes=SUFFIXES,
                                  max_bytes=MAX_FILE_BYTES, source_name=".")
        for rel, why in stats.skipped:
            log.info("search index %s: skipping %s: %s", self.index_path, rel, why)
        return stats

    def _with_store(self, fn: Callable[[RagStore], T], *, force: bool = False) -> T:
        with self._lock:
            for attempt in (0, 1):
                try:
                    if force or self.auto_refresh or not self._synced:
                        self.last_refresh = self._sync()
                        self._synced = True
                    return fn(self.store)
                except sqlite3.DatabaseError as exc:
                    # Only the plain DatabaseError is a damaged file ("database disk image is malformed"): a locked
                    # or busy one (OperationalError) or a broken constraint is not, and surfaces as it is.
                    if attempt or type(exc) is not sqlite3.DatabaseError:
                        raise
                    self.store.rebuild(f"it failed to read ({exc})")  # our own index, opened as such: derived data
                    self._synced = False
        raise AssertionError("unreachable")

    @property
    def index_path(self) -> Path:
        return self.store.path

    @property
    def recoveries(self) -> int:
        """How many times this index's file was found unusable and rebuilt (see ``RagStore``)."""
        return len(self.store.rebuilt)

    def close(self) -> None:
        """Close the index file (it stays on disk)."""
        self.store.close()

    def __repr__(self) -> str:
        return f"CorpusIndex({str(self.corpus_dir)!r}, index_path={str(self.index_path)!r})"


def _first_sentence(store: RagStore, title: str) -> str:
    """The first sentence of the file titled ``title`` ("" if there is none)."""
    phrase = phrase_query(title)
    for hit in store.match(f"heading : {phrase}", _MAX_TITLES, n=1) if phrase else ():
        if hit.chunk.heading.lower() == title.lower():
            return next(iter(sentences(hit.chunk.text)), "")
    return ""


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

