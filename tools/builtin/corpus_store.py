"""The on-disk index of a corpus: one SQLite file with an FTS5 table of paragraphs and a table of files.

``CorpusStore.sync`` brings it in step with the files: it compares each file's size and mtime with what was
recorded and re-indexes only files that were added, removed or really changed (a content sha1 tells a touched
file from a changed one), all in one transaction, so an interrupted update leaves the previous, consistent
index. ``CorpusStore.open`` logs and rebuilds an index file that is not a SQLite database or has another schema
version, instead of failing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .chunking import paragraphs, title_of

__all__ = ["CorpusStore", "RefreshStats", "default_index_path", "INDEX_FILENAME", "SCHEMA_VERSION"]

log = logging.getLogger("tokenomy.tools.builtin.search")

INDEX_FILENAME = ".tokenomy-index.sqlite"
SCHEMA_VERSION = 1
SUFFIXES = (".txt", ".md")
MAX_FILE_BYTES = 16 << 20
_RACY_NS = 2_000_000_000  # a file modified this recently may change again within the same mtime tick
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files(path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                                 sha1 TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5(path UNINDEXED, n UNINDEXED, title, text,
                                                     tokenize = 'porter unicode61 remove_diacritics 2');
INSERT OR REPLACE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""


@dataclass
class RefreshStats:
    """What one refresh did, file by file."""

    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    hashed: int = 0
    """Files whose content was read to compare sha1s (size or mtime differed, or the mtime was too recent)."""

    @property
    def reindexed(self) -> int:
        return self.added + self.changed + self.removed


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def default_index_path(corpus_dir: Path) -> Path:
    """Beside the corpus if the directory is writable, else ``cache_root()/indexes/<sha1 of the path>.sqlite``."""
    beside = corpus_dir / INDEX_FILENAME
    if _writable(corpus_dir) and (not beside.exists() or _writable(beside)):
        return beside
    from tokenomy.kernels.embedded import cache_root

    return cache_root() / "indexes" / f"{hashlib.sha1(str(corpus_dir).encode()).hexdigest()}.sqlite"


class CorpusStore:
    """The index file of the ``.txt``/``.md`` files under ``corpus_dir`` (hidden paths are skipped)."""

    def __init__(self, corpus_dir: Path, index_path: Path) -> None:
        self.corpus_dir = corpus_dir
        self.index_path = index_path
        self.recoveries = 0
        """How many times an unusable index file was thrown away and rebuilt."""

    def open(self) -> sqlite3.Connection:
        """A connection to an index of this schema version; an unusable file is logged, removed and rebuilt."""
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.index_path.exists() and self.index_path.stat().st_size > 0
        conn = sqlite3.connect(self.index_path, timeout=30, isolation_level=None)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row and row[0] == str(SCHEMA_VERSION):
                return conn
            problem = f"schema version {row[0] if row else None!r}, expected {SCHEMA_VERSION}"
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):  # locked or busy: the file may be fine, so never delete it
                conn.close()
                raise
            problem = str(exc)
        except sqlite3.DatabaseError as exc:  # not a database at all
            problem = str(exc)
        conn.close()
        if existed:
            self.discard(problem)
        conn = sqlite3.connect(self.index_path, timeout=30, isolation_level=None)
        conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nCOMMIT;")
        return conn

    def discard(self, why: str) -> None:
        log.warning("search index %s is unusable (%s); rebuilding it from %s", self.index_path, why, self.corpus_dir)
        self.recoveries += 1
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{self.index_path}{suffix}").unlink(missing_ok=True)

    def scan(self) -> dict[str, tuple[Path, os.stat_result]]:
        found: dict[str, tuple[Path, os.stat_result]] = {}
        for path in sorted(self.corpus_dir.rglob("*")):
            rel = path.relative_to(self.corpus_dir)
            if path.suffix.lower() not in SUFFIXES or any(p.startswith(".") for p in rel.parts):
                continue
            try:
                st = path.stat()
                inside = path.resolve().is_relative_to(self.corpus_dir.resolve())
            except (OSError, RuntimeError):  # a broken or looping link
                continue
            if not inside:  # a link out of the corpus: a corpus must not index the rest of the disk
                log.warning("skipping %s: it links outside the corpus %s", path, self.corpus_dir)
                continue
            if path.is_file():
                found[rel.as_posix()] = (path, st)
        return found

    def sync(self, conn: sqlite3.Connection) -> RefreshStats:
        stats = RefreshStats()
        on_disk = self.scan()
        conn.execute("BEGIN IMMEDIATE")  # also keeps two processes from updating the same index at once
        try:
            known = {p: (size, mtime, sha) for p, size, mtime, sha in conn.execute("SELECT * FROM files")}
            for rel in sorted(known.keys() - on_disk.keys()):
                self._forget(conn, rel)
                stats.removed += 1
            for rel, (path, st) in on_disk.items():
                old = known.get(rel)
                if old and old[0] == st.st_size and old[1] == st.st_mtime_ns:
                    stats.unchanged += 1
                    continue
                data = self._read(path, st)
                if data is not None and b"\x00" in data:  # a binary file named .txt or .md: not text to search
                    log.warning("skipping %s: it holds NUL bytes, so it is not text", path)
                    data = None
                if data is None:
                    if old:
                        self._forget(conn, rel)
                        stats.removed += 1
                    continue
                stats.hashed += 1
                sha = hashlib.sha1(data).hexdigest()
                # A file written in the last moments may change again without changing its mtime: record an
                # impossible mtime so that the next refresh compares its content again.
                mtime = -1 if time.time_ns() - st.st_mtime_ns < _RACY_NS else st.st_mtime_ns
                if old and old[2] == sha:
                    stats.unchanged += 1
                else:
                    if old:
                        stats.changed += 1
                    else:
                        stats.added += 1
                    self._index_file(conn, rel, data.decode("utf-8", errors="replace"))
                conn.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (rel, st.st_size, mtime, sha))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if stats.reindexed:
            log.info("search index %s: %s", self.index_path, stats)
        return stats

    @staticmethod
    def _read(path: Path, st: os.stat_result) -> bytes | None:
        if st.st_size > MAX_FILE_BYTES:
            log.warning("skipping %s: %d bytes is more than the %d indexed per file", path, st.st_size,
                        MAX_FILE_BYTES)
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            log.warning("skipping %s: %s", path, exc)
            return None

    @staticmethod
    def _forget(conn: sqlite3.Connection, rel: str) -> None:
        conn.execute("DELETE FROM chunks WHERE path = ?", (rel,))
        conn.execute("DELETE FROM files WHERE path = ?", (rel,))

    @staticmethod
    def _index_file(conn: sqlite3.Connection, rel: str, text: str) -> None:
        conn.execute("DELETE FROM chunks WHERE path = ?", (rel,))
        title = title_of(text, Path(rel).stem)
        conn.executemany("INSERT INTO chunks(path, n, title, text) VALUES (?, ?, ?, ?)",
                         [(rel, n, title, p) for n, p in enumerate(paragraphs(text), start=1)])
