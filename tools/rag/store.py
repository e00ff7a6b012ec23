"""The RAG store: one SQLite file of documents, chunks, an FTS5 index, sentence embeddings and triplets.

Ingestion is meant to be rerun: a file whose size and mtime are unchanged is not even read, a touched file whose
sha1 is unchanged only has its metadata updated, and each file is one transaction, so a run that is interrupted
(an exception, Ctrl-C, a kill) leaves every file fully in or fully out and the next run picks up where it
stopped. Embeddings and triplets are computed before a file's transaction opens, so the write lock is held only
for the inserts. The store is the user's data: a file that is not a store, or a store of another schema
version, is refused with a ``UserError`` saying what to do, never deleted and rebuilt behind their back.

The built-in ``search``/``lookup`` tools read the same kind of file, chunked by paragraph (``index_of``: a search
index of one directory, ``tools.builtin.search.CorpusIndex``). Everything in such an index is derived from the
directory's files, so it alone may be rebuilt, and only where the file is provably tokenomy's (see ``RagStore``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenomy.errors import UserError
from tokenomy.kernels.tokens import count_text
from tokenomy.kernels.usage import Usage
from tokenomy.tools.builtin.chunking import fts_query

from .documents import MAX_BYTES, SUFFIXES, Document, parse_document, read_bytes, split_chunks
from .types import Chunk, Embedder, Hit, Triplet

__all__ = ["RagStore", "IngestStats", "SCHEMA_VERSION", "Extractor", "Chunker", "index_cache_dir"]

log = logging.getLogger("tokenomy.tools.rag")

SCHEMA_VERSION = 1
_FORMAT = "tokenomy-rag"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_RACY_NS = 2_000_000_000  # a file modified this recently may change again within the same mtime tick
_BATCH = 500  # ids per IN (...) query, well under SQLite's variable limit
_OLD_INDEX_TABLES = {"meta", "files", "chunks"}  # the search index of tokenomy before it was a store (no format)
INDEX_DIR = "indexes"
Extractor = Callable[[str], Sequence[tuple[str, str, str, str]]]
Chunker = Callable[[Document], Sequence[tuple[str, str]]]
"""A document's ``(heading, text)`` chunks, in reading order."""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs(id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
    sha1 TEXT NOT NULL, size INTEGER NOT NULL, mtime INTEGER NOT NULL, title TEXT NOT NULL, kind TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS docs_source ON docs(source);
CREATE TABLE IF NOT EXISTS chunks(id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id INTEGER NOT NULL REFERENCES docs(id),
    n INTEGER NOT NULL, heading TEXT NOT NULL, text TEXT NOT NULL, tokens INTEGER NOT NULL, UNIQUE(doc_id, n));
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(heading, text, content='chunks', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, heading, text) VALUES (new.id, new.heading, new.text); END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, heading, text) VALUES ('delete', old.id, old.heading, old.text); END;
CREATE TRIGGER IF NOT EXISTS chunks_au AFTER UPDATE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, heading, text) VALUES ('delete', old.id, old.heading, old.text);
    INSERT INTO chunks_fts(rowid, heading, text) VALUES (new.id, new.heading, new.text); END;
CREATE TABLE IF NOT EXISTS vectors(chunk_id INTEGER PRIMARY KEY REFERENCES chunks(id), vec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS triplets(id INTEGER PRIMARY KEY, chunk_id INTEGER NOT NULL REFERENCES chunks(id),
    subject TEXT NOT NULL COLLATE NOCASE, relation TEXT NOT NULL, object TEXT NOT NULL COLLATE NOCASE,
    sentence TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS triplets_subject ON triplets(subject);
CREATE INDEX IF NOT EXISTS triplets_object ON triplets(object);
CREATE INDEX IF NOT EXISTS triplets_chunk ON triplets(chunk_id);
INSERT OR IGNORE INTO meta VALUES ('format', '{_FORMAT}'), ('schema_version', '{SCHEMA_VERSION}'),
    ('generation', '0');
"""
_CHUNK_SQL = "SELECT c.id, d.path, c.n, c.text, c.heading FROM chunks c JOIN docs d ON d.id = c.doc_id"


@dataclass
class IngestStats:
    """What one :meth:`RagStore.ingest` did, file by file."""

    added: int = 0
    updated: int = 0
    """Files already in the store whose content changed: re-read, re-chunked, re-embedded."""
    unchanged: int = 0
    """Files skipped because size and mtime (or, after a touch, the sha1 of the content) are unchanged."""
    removed: int = 0
    hashed: int = 0
    """Files whose content was read to compare sha1s (size or mtime differed, or the mtime was too recent)."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of each file that could not be ingested (empty, binary, too big...)."""
    chunks: int = 0
    """New chunks written."""
    vectors: int = 0
    """Vectors written, including those added to chunks that had none (ingested earlier without an embedder)."""
    seconds: float = 0.0
    extract_usage: Usage | None = None
    """The tokens the triplet extractor spent in this run, if it reports them (a model extractor: ``calls`` 0
    when every chunk came from its cache); ``None`` for the rules."""
    extract_cached: int = 0
    """Chunks whose triplets came from the extractor's cache (no model call)."""

    @property
    def changed(self) -> int:
        """``updated``, by the name ``CorpusIndex.refresh`` callers use: files re-indexed as their content changed."""
        return self.updated

    @property
    def reindexed(self) -> int:
        """Files added, updated or removed."""
        return self.added + self.updated + self.removed


def index_cache_dir() -> Path:
    """tokenomy's own directory of search indexes: ``indexes`` in its cache directory (``TOKENOMY_CACHE_DIR``
    overrides that), for corpora whose own directory is not writable."""
    from tokenomy.kernels.embedded import cache_root

    return cache_root() / INDEX_DIR


class _Unusable(Exception):
    """Why an existing file cannot be opened as the store asked for, and whether tokenomy may rebuild it."""

    def __init__(self, why: str, refusal: UserError, *, ours: bool) -> None:
        super().__init__(why)
        self.why, self.refusal, self.ours = why, refusal, ours


class RagStore:
    """A SQLite RAG store at ``path`` (created if missing); use it as a context manager or call :meth:`close`.

    One policy for a file that cannot be used as it is (not SQLite, damaged, another program's database, another
    schema version, or the other kind of tokenomy file): it is refused with a ``UserError`` that names it and
    says how to get a usable one, and it is left as it is. The one exception is a search index (``index_of``),
    which holds nothing but what tokenomy derives from a directory's files: when such a file is provably tokenomy's
    own index (it says so inside, it is the index file of an older tokenomy, or it lies in tokenomy's own
    ``indexes`` cache directory), it is deleted and built again, with a warning, instead of refused. A store is
    never rebuilt: its vectors and model-extracted triplets cost a model to make again.

    Args:
        path: The store's file.
        index_of: The directory this file is the search index of (``CorpusIndex``: the built-in ``search`` and
            ``lookup`` tools); ``None``: a RAG store (``tokenomy rag ingest``).

    Raises:
        UserError: ``path`` is a directory, or a file that cannot be used and may not be rebuilt (see above).
    """

    def __init__(self, path: str | Path, *, index_of: str | Path | None = None) -> None:
        self.path = Path(path)
        self.index_of = None if index_of is None else Path(index_of)
        self.kind = "store" if index_of is None else "index"
        self.rebuilt: list[str] = []
        """Why the file was deleted and built again, once per time (a search index only)."""
        self._lock = threading.RLock()
        self._cache: tuple[int, list[int], np.ndarray] | None = None
        if self.path.is_dir():
            raise UserError(f"{self.path} is a directory; a RAG store is a file (e.g. {self.path / 'rag.sqlite'})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._connect()
        except _Unusable as unusable:
            if not (self.kind == "index" and unusable.ours):
                raise unusable.refusal from None
            self._discard(unusable.why)
            self._conn = self._connect()

    def _refusal(self, why: str) -> UserError:
        if self.kind == "index":
            return UserError(f"{self.path} is not a tokenomy search index ({why}); it was left as it is: delete "
                             f"{self.path} and the next search rebuilds the index from {self.index_of}, or give "
                             f"the index another path (CorpusIndex(..., index_path=...))")
        return UserError(f"{self.path} is not a tokenomy RAG store ({why}); it was left as it is: give another path "
                         f"for the store, or delete {self.path} if you no longer need it and ingest your documents "
                         f"again (tokenomy rag ingest DIR --store {self.path})")

    def _in_index_cache(self) -> bool:
        """The file lies in tokenomy's own cache directory of search indexes, where nothing else writes."""
        try:
            return self.path.resolve().parent == index_cache_dir().resolve()
        except OSError:
            return False

    def _connect(self) -> sqlite3.Connection:
        """A connection to a usable store of this kind (a missing or empty file gets the schema), or ``_Unusable``."""
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as f:
                if f.read(16) != _SQLITE_MAGIC:
                    why = "not a SQLite database"
                    raise _Unusable(why, self._refusal(why), ours=self._in_index_cache())
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            self._check(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check(self, conn: sqlite3.Connection) -> None:
        try:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nINSERT OR IGNORE INTO meta VALUES ('kind', "
                                   f"'{self.kind}');\nCOMMIT;")
                tables = {"meta"}
            meta = dict(conn.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
                raise  # in use, not damaged: never a reason to delete anything
            raise _Unusable(str(exc), self._refusal(str(exc)), ours=self._in_index_cache()) from exc
        if meta.get("format") != _FORMAT:
            if _OLD_INDEX_TABLES <= tables and "format" not in meta and "schema_version" in meta:
                why = "the search index of an older tokenomy"
                raise _Unusable(why, self._refusal(why), ours=True)
            why = "a SQLite database without tokenomy's RAG tables"
            raise _Unusable(why, self._refusal(why), ours=self._in_index_cache())
        kind = meta.get("kind", "store")  # stores made before the kind was recorded are stores
        if kind != self.kind:  # tokenomy's, but the other kind: not to be rebuilt, nor mixed
            what = ("a RAG store (tokenomy rag ingest), not a search index" if kind == "store" else
                    "tokenomy's search index of a directory (the search tool rebuilds it from the files at will), "
                    "not a RAG store")
            raise UserError(f"{self.path} is {what}; it was left as it is: give another path")
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            why = f"schema version {meta.get('schema_version')}, expected {SCHEMA_VERSION}"
            raise _Unusable(why, UserError(
                f"{self.path} is a RAG store of schema version {meta.get('schema_version')}, but this tokenomy reads "
                f"version {SCHEMA_VERSION}; it was left as it is: re-ingest your documents into a new store, or "
                f"delete {self.path} and ingest them again (tokenomy rag ingest DIR --store {self.path})"), ours=True)

    def _discard(self, why: str) -> None:
        log.warning("search index %s is unusable (%s); rebuilding it from %s", self.path, why, self.index_of)
        self.rebuilt.append(why)
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def rebuild(self, why: str) -> None:
        """Delete a search index found damaged while it was read and start it afresh (empty: ingest again).

        Raises:
            UserError: this is a RAG store, which is never rebuilt (its vectors and triplets cost a model).
        """
        if self.kind != "index":
            raise UserError(f"{self.path} is a RAG store ({why}); it is not rebuilt: re-ingest your documents into "
                            f"a new store (tokenomy rag ingest DIR --store NEW)")
        with self._lock:
            self._conn.close()
            self._cache = None
            self._discard(why)
            self._conn = self._connect()

    def close(self) -> None:
        """Close the connection (the store stays on disk)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RagStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; it bumps ``generation`` so that caches (here and in other processes) expire."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def ingest(self, source: str | Path | Iterable[str | Path], *, embedder: Embedder | None = None,
               extract: Extractor | None = None, max_tokens: int = 200, max_bytes: int = MAX_BYTES,
               on_file: Callable[[str, str], None] | None = None, chunker: Chunker | None = None,
               suffixes: Collection[str] = tuple(SUFFIXES), source_name: str | None = None) -> IngestStats:
        """Bring the store in step with a directory (recursively, hidden paths skipped) or a list of files.

        Paths are stored relative to the directory (POSIX style); files given one by one are stored as given.
        Files that were ingested from this directory and are gone from it are removed.

        Args:
            source: A directory, a file, or an iterable of files (``.txt``, ``.md``, ``.html``, ``.pdf``).
            embedder: Makes a vector for each new chunk (and for chunks that have none yet); ``None``: no vectors.
            extract: ``extract(chunk_text)`` is a list of ``(subject, relation, object, sentence)``; ``None``:
                no triplets.
            max_tokens: The most o200k_base tokens of a chunk's text.
            max_bytes: Larger files are skipped.
            on_file: Called as ``on_file(path, status)`` after each file, with status ``added``, ``updated``,
                ``unchanged``, ``removed`` or ``skipped``.
            chunker: Cuts a document into ``(heading, text)`` chunks; ``None``: sections cut to ``max_tokens``
                (``split_chunks``). ``CorpusIndex`` gives one chunk per paragraph, headed by the file's title.
            suffixes: The file types a directory is scanned for (lowercase, with the dot).
            source_name: What the directory's files are recorded as coming from (default: its resolved path);
                ``CorpusIndex`` records ``"."``, so that an index that moves with its corpus stays valid.

        Returns:
            What was done.

        Raises:
            UserError: ``source`` does not exist, or the store holds vectors from another embedder.
        """
        t0 = time.perf_counter()
        stats = IngestStats()
        root, files = _scan(source, suffixes)
        if root is not None and source_name is not None:
            root = source_name
        calls0, hits0 = len(getattr(extract, "call_usages", ())), getattr(extract, "cache_hits", 0)
        self._check_embedder(embedder)
        if embedder is None and self._select("SELECT 1 FROM vectors LIMIT 1"):
            log.warning("%s: ingesting without an embedder; new chunks get no vectors", self.path)

        def done(rel: str, status: str) -> None:
            if on_file is not None:
                on_file(rel, status)

        if root is not None:
            with self._lock:
                known = [r for (r,) in self._conn.execute("SELECT path FROM docs WHERE source = ?", (root,))]
            gone = sorted(set(known) - {rel for rel, _ in files})
            if gone:
                with self._write() as conn:
                    for rel in gone:
                        self._forget(conn, rel)
            for rel in gone:
                stats.removed += 1
                done(rel, "removed")
        for rel, path in files:
            status, why = self._ingest_file(rel, path, root or "", embedder, extract, max_tokens, max_bytes, stats,
                                            chunker)
            if status == "skipped":
                stats.skipped.append((rel, why))
            else:
                setattr(stats, status, getattr(stats, status) + 1)
            done(rel, status)
        if embedder is not None:
            stats.vectors += self._backfill(embedder)
        usages = getattr(extract, "call_usages", None)
        if usages is not None:
            stats.extract_usage = sum(list(usages)[calls0:], Usage())
            stats.extract_cached = getattr(extract, "cache_hits", 0) - hits0
        stats.seconds = time.perf_counter() - t0
        return stats

    def _ingest_file(self, rel: str, path: Path, source: str, embedder: Embedder | None, extract: Extractor | None,
                     max_tokens: int, max_bytes: int, stats: IngestStats,
                     chunker: Chunker | None) -> tuple[str, str]:
        with self._lock:
            row = self._conn.execute("SELECT source, sha1, size, mtime FROM docs WHERE path = ?", (rel,)).fetchone()
        if row and row[0] != source:
            return "skipped", (f"{rel!r} is already in the store from {row[0] or 'a list of files'}; "
                               "ingest each directory into its own store")
        try:
            st = path.stat()
            if row and (row[2], row[3]) == (st.st_size, st.st_mtime_ns):
                return "unchanged", ""
            data = read_bytes(path, max_bytes)
            stats.hashed += 1
            sha = hashlib.sha1(data).hexdigest()
            # A file written in the last moments may change again without changing its mtime: record an
            # impossible mtime so that the next run compares its content again.
            mtime = -1 if time.time_ns() - st.st_mtime_ns < _RACY_NS else st.st_mtime_ns
            if row and row[1] == sha:
                with self._write() as conn:
                    conn.execute("UPDATE docs SET size = ?, mtime = ? WHERE path = ?", (len(data), mtime, rel))
                return "unchanged", ""
            doc = parse_document(path, data)
            pieces = list(chunker(doc) if chunker is not None else
                          split_chunks(doc.text, max_tokens=max_tokens, headings=doc.kind != "text"))
        except (UserError, OSError) as exc:
            if row:  # what the store holds of it is stale now
                with self._write() as conn:
                    self._forget(conn, rel)
            return "skipped", str(exc)
        vecs = self._encode(embedder, pieces) if embedder else None
        facts = [_facts(extract, _titled(h, t)) for h, t in pieces] if extract else None
        with self._write() as conn:
            if embedder is not None:
                self._claim_embedder(conn, embedder)
            old = conn.execute("SELECT id FROM docs WHERE path = ?", (rel,)).fetchone()
            if old:
                self._forget(conn, rel, keep_doc=True)
                conn.execute("UPDATE docs SET sha1 = ?, size = ?, mtime = ?, title = ?, kind = ? WHERE id = ?",
                             (sha, len(data), mtime, doc.title, doc.kind, old[0]))
                doc_id = old[0]
            else:
                doc_id = conn.execute("INSERT INTO docs(path, source, sha1, size, mtime, title, kind) "
                                      "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                      (rel, source, sha, len(data), mtime, doc.title, doc.kind)).lastrowid
            for i, (heading, text) in enumerate(pieces):
                chunk_id = conn.execute("INSERT INTO chunks(doc_id, n, heading, text, tokens) VALUES (?, ?, ?, ?, ?)",
                                        (doc_id, i + 1, heading, text, count_text(text))).lastrowid
                if vecs is not None:
                    conn.execute("INSERT INTO vectors VALUES (?, ?)", (chunk_id, vecs[i].tobytes()))
                if facts is not None:
                    conn.executemany("INSERT INTO triplets(chunk_id, subject, relation, object, sentence) "
                                     "VALUES (?, ?, ?, ?, ?)", [(chunk_id, *f) for f in facts[i]])
        stats.chunks += len(pieces)
        stats.vectors += len(pieces) if vecs is not None else 0
        return ("updated" if old else "added"), ""

    @staticmethod
    def _forget(conn: sqlite3.Connection, rel: str, keep_doc: bool = False) -> None:
        """Delete a document's triplets, vectors and chunks (their FTS rows go by trigger), and the document."""
        ids = "SELECT c.id FROM chunks c JOIN docs d ON d.id = c.doc_id WHERE d.path = ?"
        conn.execute(f"DELETE FROM triplets WHERE chunk_id IN ({ids})", (rel,))
        conn.execute(f"DELETE FROM vectors WHERE chunk_id IN ({ids})", (rel,))
        conn.execute("DELETE FROM chunks WHERE doc_id IN (SELECT id FROM docs WHERE path = ?)", (rel,))
        if not keep_doc:
            conn.execute("DELETE FROM docs WHERE path = ?", (rel,))

    def _meta(self) -> dict[str, str]:
        with self._lock:
            return dict(self._conn.execute("SELECT key, value FROM meta"))

    def _check_embedder(self, embedder: Embedder | None) -> None:
        if embedder is None:
            return
        meta = self._meta()
        name, dim = meta.get("embedder_name"), meta.get("embedder_dim")
        if name is None or (name, dim) == (embedder.name, str(embedder.dim)):
            return
        if self._select("SELECT 1 FROM vectors LIMIT 1"):
            raise UserError(f"{self.path} holds vectors from the embedder {name!r} (dim {dim}), not "
                            f"{embedder.name!r} (dim {embedder.dim}): mixing vector spaces gives meaningless "
                            f"scores. Ingest with {name!r}, or into a new store")

    def _claim_embedder(self, conn: sqlite3.Connection, embedder: Embedder) -> None:
        self._check_embedder(embedder)  # again, inside the transaction: another process may have written
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                         [("embedder_name", embedder.name), ("embedder_dim", str(embedder.dim))])

    @staticmethod
    def _encode(embedder: Embedder, pieces: Sequence[tuple[str, str]]) -> np.ndarray:
        """Vectors of ``(heading, text)`` chunks: the heading is embedded too, as it says what the text is about."""
        texts = [f"{h}\n\n{t}" if h else t for h, t in pieces]
        vecs = np.asarray(embedder.encode(texts), dtype=np.float32)
        if vecs.shape != (len(texts), embedder.dim):
            raise UserError(f"the embedder {embedder.name!r} returned an array of shape {vecs.shape} for "
                            f"{len(texts)} texts; expected ({len(texts)}, {embedder.dim})")
        return vecs

    def _backfill(self, embedder: Embedder, batch: int = 64) -> int:
        """Vectors for chunks that have none (ingested without an embedder); returns how many were written."""
        written = last = 0
        while True:
            rows = self._select("SELECT c.id, c.heading, c.text FROM chunks c LEFT JOIN vectors v ON v.chunk_id = "
                                "c.id WHERE v.chunk_id IS NULL AND c.id > ? ORDER BY c.id LIMIT ?", (last, batch))
            if not rows:
                return written
            last = rows[-1][0]
            vecs = self._encode(embedder, [(h, t) for _, h, t in rows])
            with self._write() as conn:
                self._claim_embedder(conn, embedder)
                for (chunk_id, _, _), vec in zip(rows, vecs, strict=True):
                    written += conn.execute("INSERT OR IGNORE INTO vectors SELECT ?, ? WHERE EXISTS "
                                            "(SELECT 1 FROM chunks WHERE id = ?)",
                                            (chunk_id, vec.tobytes(), chunk_id)).rowcount
            if len(rows) < batch:
                return written

    # -- reading --------------------------------------------------------------------------------------------

    def _select(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def chunk(self, chunk_id: int) -> Chunk:
        """The chunk with this id; a ``UserError`` if there is none (it may have been re-chunked since)."""
        return self.chunks([chunk_id])[0]

    def chunks(self, ids: Sequence[int]) -> list[Chunk]:
        """The chunks with these ids, in the order given; a ``UserError`` if an id names no chunk."""
        found: dict[int, Chunk] = {}
        unique = list(dict.fromkeys(int(i) for i in ids))
        for start in range(0, len(unique), _BATCH):
            part = unique[start:start + _BATCH]
            rows = self._select(f"{_CHUNK_SQL} WHERE c.id IN ({','.join('?' * len(part))})", part)
            found.update((r[0], Chunk(*r)) for r in rows)
        missing = [i for i in unique if i not in found]
        if missing:
            raise UserError(f"{self.path} has no chunk with id {', '.join(map(str, missing[:5]))}")
        return [found[int(i)] for i in ids]

    def all_chunks(self) -> list[Chunk]:
        """Every chunk, in id order (documents in ingestion order, each in reading order)."""
        return [Chunk(*r) for r in self._select(f"{_CHUNK_SQL} ORDER BY c.id")]

    def bm25(self, query: str, k: int = 5, *, heading_weight: float = 1.0) -> list[Hit]:
        """The ``k`` chunks that best match ``query`` by BM25 over heading and text (higher score is better).

        The query is free text: its words are quoted and OR'ed, so FTS5 syntax in it is matched as words.
        ``heading_weight``: what a match in the heading counts, a match in the text counting 1.
        """
        match = fts_query(query)
        return [] if match is None else self.match(match, k, heading_weight=heading_weight)

    def match(self, expression: str, k: int = 5, *, heading_weight: float = 1.0, n: int | None = None) -> list[Hit]:
        """The ``k`` chunks that match an FTS5 ``expression``, best first by BM25 (ties: by path and position).

        Args:
            expression: FTS5 syntax over the columns ``heading`` and ``text``: build it with ``fts_query`` or
                ``phrase_query`` (``tools.builtin.chunking``), never from raw text.
            k: How many at most.
            heading_weight: What a match in the heading counts, a match in the text counting 1.
            n: Only chunks at this position in their document (1: the first).
        """
        if k <= 0:
            return []
        where = "chunks_fts MATCH ?" + ("" if n is None else " AND c.n = ?")
        args: list[Any] = [float(heading_weight), expression, *(() if n is None else (n,)), k]
        rows = self._select("SELECT c.id, d.path, c.n, c.text, c.heading, bm25(chunks_fts, ?, 1.0) AS s FROM "
                            "chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid JOIN docs d ON d.id = c.doc_id "
                            f"WHERE {where} ORDER BY s, d.path, c.n LIMIT ?", args)
        return [Hit(Chunk(*r[:5]), -float(r[5]), rank) for rank, r in enumerate(rows)]

    def vectors(self) -> tuple[list[int], np.ndarray]:
        """Chunk ids and their vectors, an ``(n, dim)`` float32 matrix (read-only; cached until the store changes)."""
        with self._lock:
            generation = self.generation
            if self._cache is None or self._cache[0] != generation:
                rows = self._conn.execute("SELECT chunk_id, vec FROM vectors ORDER BY chunk_id").fetchall()
                dim = int(self._meta().get("embedder_dim", 0))
                matrix = np.frombuffer(b"".join(v for _, v in rows), dtype=np.float32).reshape(len(rows), dim)
                matrix.flags.writeable = False
                self._cache = (generation, [i for i, _ in rows], matrix)
            return list(self._cache[1]), self._cache[2]

    def triplets(self, chunk_ids: Sequence[int] | None = None) -> list[Triplet]:
        """The triplets of these chunks (all of them when ``None``), in insertion order."""
        sql = "SELECT subject, relation, object, sentence, chunk_id FROM triplets"
        if chunk_ids is None:
            return [Triplet(*r) for r in self._select(f"{sql} ORDER BY id")]
        rows: list[tuple[Any, ...]] = []
        ids = list(dict.fromkeys(int(i) for i in chunk_ids))
        for start in range(0, len(ids), _BATCH):
            part = ids[start:start + _BATCH]
            rows += self._select(f"SELECT id, subject, relation, object, sentence, chunk_id FROM triplets "
                                 f"WHERE chunk_id IN ({','.join('?' * len(part))})", part)
        return [Triplet(*r[1:]) for r in sorted(rows)]

    @property
    def generation(self) -> int:
        """A number that changes with every write, from any process: the cache key for derived structures."""
        return int(self._meta()["generation"])

    @property
    def embedder_name(self) -> str | None:
        """The name of the embedder the store's vectors were made by (``None``: no vectors yet)."""
        return self._meta().get("embedder_name")

    def stats(self) -> dict[str, Any]:
        """Counts of ``docs``, ``chunks``, ``vectors``, ``triplets``; ``embedder`` (name or ``None``), ``dim``, and
        ``generation``, a number that changes with every write (a cache key for derived structures)."""
        meta = self._meta()
        tables = ("docs", "chunks", "vectors", "triplets")
        counts = {t: self._select(f"SELECT count(*) FROM {t}")[0][0] for t in tables}
        dim = meta.get("embedder_dim")
        return {**counts, "embedder": meta.get("embedder_name"), "dim": int(dim) if dim else None,
                "generation": int(meta["generation"])}


def _titled(heading: str, text: str) -> str:
    """A chunk as its extractor reads it: under its own heading (what "It" and "the town" refer to), unless the
    text already opens with one."""
    title = heading.split(" > ")[-1].strip()
    return f"# {title}\n\n{text}" if title and not text.lstrip().startswith("#") else text


def _facts(extract: Extractor, text: str) -> list[tuple[str, ...]]:
    facts = [tuple(str(x) for x in fact) for fact in extract(text)]
    if any(len(f) != 4 for f in facts):
        raise UserError(f"the triplet extractor returned {facts!r}; expected (subject, relation, object, sentence)")
    return facts


def _inside(path: Path, root: Path) -> bool:
    """``path`` stays inside ``root`` once its links are followed (a link out of a corpus is not ingested)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):
        return False


def _scan(source: str | Path | Iterable[str | Path],
          suffixes: Collection[str] = tuple(SUFFIXES)) -> tuple[str | None, list[tuple[str, Path]]]:
    """``(root, [(stored path, file)])``: root is the resolved directory, or ``None`` for files."""
    if isinstance(source, (str, os.PathLike)):
        top = Path(source)
        if top.is_dir():
            root = top.resolve()
            found: list[tuple[str, Path]] = []
            for folder, dirs, names in os.walk(root):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    path = Path(folder) / name
                    if not name.startswith(".") and path.suffix.lower() in suffixes and path.is_file() \
                            and _inside(path, root):
                        found.append((path.relative_to(root).as_posix(), path))
            return root.as_posix(), sorted(found)
        if not top.exists():
            raise UserError(f"{top}: no such file or directory to ingest")
        source = [top]
    return None, [(Path(p).as_posix(), Path(p)) for p in source]
