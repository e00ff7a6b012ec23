"""Checkpoints and the tool journal: one SQLite file (or one PostgreSQL database, for many processes) holding
LangGraph's checkpoints and the finished tool calls of each thread, so a resumed run repeats neither a finished
model call (a checkpointed node) nor a finished tool call (journaled by content: thread, node scope, tool,
arguments, occurrence). Only successful calls are journaled: a failure is tried again on resume. A tool's own
model calls (the ``llm`` tool's) are journaled beside its result and counted in the node's usage under the agent
``tool:<name>``.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenomy.errors import MissingExtra, UserError, storage_error
from tokenomy.events import clip
from tokenomy.kernels import Usage
from tokenomy.tools.base import collect_usage

from .executor import MAX_TEXT, clip_value, text_len
from .state import _big_ints, to_state

if TYPE_CHECKING:
    from .run import Strategy

__all__ = ["Checkpoints", "ToolJournal", "is_postgres_url", "redact", "JournaledTool", "node_tool_usage",
           "end_node_tool_usage"]


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def redact(url: str) -> str:
    """A connection URL without its password (for messages and printed output)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    host += f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


_OPENING: dict[str, threading.Lock] = {}
_OPENING_LOCK = threading.Lock()


def _opening(target: str) -> threading.Lock:
    """One lock per SQLite file: this process's threads set a file up one at a time."""
    key = target if target == ":memory:" else str(Path(target).resolve())
    with _OPENING_LOCK:
        return _OPENING.setdefault(key, threading.Lock())


def _set_up_sqlite(conn: sqlite3.Connection, saver_class: Any, timeout_s: float) -> Any:
    """WAL mode, the journal's table and LangGraph's tables; the saver.

    Switching a new file to WAL needs it to itself, and SQLite answers "database is locked" at once, without its
    busy wait, where another connection is setting the same file up (seen: two questions of a batch starting
    together on a new checkpoint file, one of them failed). That is tried again until ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    pause = 0.01
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS tokenomy_tool_journal (thread_id TEXT, key TEXT, value TEXT, "
                         "PRIMARY KEY (thread_id, key))")
            conn.commit()
            saver = saver_class(conn)
            saver.setup()
            return saver
        except sqlite3.OperationalError as exc:
            contended = "locked" in str(exc) or "busy" in str(exc)
            if not contended or time.monotonic() + pause > deadline:
                raise
            if conn.in_transaction:
                conn.rollback()
            time.sleep(pause)
            pause = min(pause * 2, 0.25)


class Checkpoints:
    """LangGraph's checkpoints and tokenomy's tool journal, in one SQLite file or one PostgreSQL database.

    ``Checkpoints(path)`` opens (or creates) the SQLite file; ``Checkpoints()`` keeps them in memory for this
    process; ``Checkpoints("postgresql://user@host/db")`` uses that database (``langgraph-checkpoint-postgres``,
    the ``postgres`` extra), which many processes on many machines share: one run's thread may be resumed by any
    of them. ``timeout_s`` is how long a write waits for another process's lock (SQLite) or a connection is
    tried (PostgreSQL) before the run stops with a ``StorageError`` (as it does on a failing disk, a damaged
    file or a server that went away; what was written before stays).
    """

    def __init__(self, path: str | Path | None = None, *, timeout_s: float = 30.0) -> None:
        self.url: str | None = None
        self.path: Path | None = None
        if is_postgres_url(path):
            self.url = str(path)
            self._open_postgres(self.url, timeout_s)
            return
        try:
            from langgraph.checkpoint.sqlite import SqliteSaver
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise MissingExtra("langgraph-checkpoint-sqlite", None, "checkpoints",
                               install="pip install langgraph-checkpoint-sqlite") from exc
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        target = str(self.path) if self.path is not None else ":memory:"
        self.errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        try:
            self.conn: Any = sqlite3.connect(target, check_same_thread=False, timeout=timeout_s)
            with _opening(target):
                self.saver: Any = _set_up_sqlite(self.conn, SqliteSaver, timeout_s)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):  # locked, a failing disk: the file may be fine
                raise storage_error(target, exc) from exc
            raise UserError(f"checkpoint file {target} is not a usable SQLite database ({exc}); "
                            "move it away or pass another path") from exc
        # The journal shares the saver's connection, so it takes the saver's lock (sqlite3 connections are not
        # safe to use from two threads at once).
        self._lock = self.saver.lock

    def _open_postgres(self, url: str, timeout_s: float) -> None:
        try:
            import psycopg
            from langgraph.checkpoint.postgres import PostgresSaver
            from psycopg.rows import dict_row
        except ImportError as exc:
            raise MissingExtra("langgraph-checkpoint-postgres", "postgres", "checkpoints on PostgreSQL") from exc
        self.errors = (psycopg.Error,)
        try:
            self.conn = psycopg.connect(url, autocommit=True, prepare_threshold=0, row_factory=dict_row,
                                        connect_timeout=max(1, int(timeout_s)))
        except psycopg.Error as exc:
            raise storage_error(redact(url), exc) from exc
        try:
            # Processes starting together each set the tables up: one at a time (an advisory lock), or two
            # would insert the same migration rows.
            self.conn.execute("SELECT pg_advisory_lock(%s)", (_SETUP_LOCK,))
            try:
                self.saver = PostgresSaver(self.conn)
                self.saver.setup()
                self.conn.execute("CREATE TABLE IF NOT EXISTS tokenomy_tool_journal (thread_id TEXT, key TEXT, "
                                  "value TEXT, PRIMARY KEY (thread_id, key))")
            finally:
                self.conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK,))
        except psycopg.Error as exc:
            self.conn.close()
            raise storage_error(redact(url), exc) from exc
        self._lock = self.saver.lock

    @property
    def where(self) -> str:
        """Where the checkpoints are, for messages: the file, the database's URL (no password) or memory."""
        if self.url is not None:
            return redact(self.url)
        return str(self.path) if self.path is not None else ":memory:"

    def journal(self, thread_id: str) -> ToolJournal:
        return ToolJournal(self, thread_id)

    def _journal_get(self, thread_id: str, key: str) -> str | None:
        with self._lock:
            if self.url is not None:
                row = self.conn.execute("SELECT value FROM tokenomy_tool_journal WHERE thread_id=%s AND key=%s",
                                        (thread_id, key)).fetchone()
                return row["value"] if row else None
            row = self.conn.execute("SELECT value FROM tokenomy_tool_journal WHERE thread_id=? AND key=?",
                                    (thread_id, key)).fetchone()
            return row[0] if row else None

    def _journal_put(self, thread_id: str, key: str, text: str) -> None:
        with self._lock:
            if self.url is not None:
                self.conn.execute("INSERT INTO tokenomy_tool_journal VALUES (%s, %s, %s) ON CONFLICT (thread_id, key) "
                                  "DO UPDATE SET value = EXCLUDED.value", (thread_id, key, text))
                return
            self.conn.execute("INSERT OR REPLACE INTO tokenomy_tool_journal VALUES (?, ?, ?)", (thread_id, key, text))
            self.conn.commit()

    def close(self) -> None:
        self.conn.close()


_SETUP_LOCK = 0x746F6B656E6F6D  # "tokenom": the advisory lock key of the tables' setup


class ToolJournal:
    """Finished tool calls of one thread, by content."""

    def __init__(self, store: Checkpoints, thread_id: str) -> None:
        self.store = store
        self.thread_id = thread_id

    def get(self, key: str) -> tuple[bool, Any]:
        """The journaled value of ``key``; ``(False, None)`` when there is none, or none that can be read (a
        damaged row: the call is made again)."""
        unreadable: tuple[type[BaseException], ...] = (*self.store.errors, ValueError, TypeError, RecursionError)
        try:
            text = self.store._journal_get(self.thread_id, key)
            return (True, _big_ints(json.loads(text))) if text is not None else (False, None)
        except unreadable:
            return False, None

    def put(self, key: str, value: Any) -> None:
        try:
            text = json.dumps(value, allow_nan=False)  # ASCII: a lone surrogate in a result survives, escaped
        except (TypeError, ValueError):
            return  # not JSON: such a call is made again on resume
        try:
            self.store._journal_put(self.thread_id, key, text)
        except self.store.errors as exc:
            # The call itself succeeded: it is not failed (and run again) for a write that did not take. The
            # checkpoint after this node writes to the same store and stops the run with a StorageError if it
            # stays unwritable.
            logging.getLogger("tokenomy").warning("the tool journal in %s could not record a call: %s",
                                                  self.store.where, storage_error(self.store.where, exc))


class StoreJournal:
    """The tool journal in a LangGraph ``BaseStore`` (``InMemoryStore``, ``SqliteStore``, ``PostgresStore`` ...):
    the journal of a strategy run as a subgraph of a user's graph, under the user's checkpointer. ``namespace``
    names one invocation (the thread and the subgraph's checkpoint namespace, which LangGraph keeps on resume)."""

    def __init__(self, store: Any, namespace: tuple[str, ...]) -> None:
        self.store, self.namespace = store, namespace

    def get(self, key: str) -> tuple[bool, Any]:
        try:
            item = self.store.get(self.namespace, key)
            return (True, _big_ints(item.value["v"])) if item is not None else (False, None)
        except Exception:  # a store that fails to read: the call is made again
            return False, None

    def put(self, key: str, value: Any) -> None:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return  # not JSON: such a call is made again on resume
        try:
            self.store.put(self.namespace, key, {"v": value}, index=False)
        except Exception as exc:  # the call itself succeeded; only its replay is lost
            logging.getLogger("tokenomy").warning("the tool journal in %s could not record a call: %s",
                                                  type(self.store).__name__, exc)


def store_journal() -> StoreJournal | None:
    """The journal of the LangGraph run this is called in, where the user's graph has a store; else ``None``."""
    try:
        from langgraph.config import get_config, get_store

        store = get_store()
        configurable = get_config().get("configurable") or {}
    except Exception:  # not inside a LangGraph run
        return None
    if store is None:
        return None
    thread = str(configurable.get("thread_id") or "")
    ns = str(configurable.get("checkpoint_ns") or "").replace(".", "_")
    return StoreJournal(store, ("tokenomy_tool_journal", thread or "-", ns or "-"))


class JournaledTool:
    """A tool seen through the journal: a call already journaled in this scope returns its recorded value."""

    def __init__(self, tool: Any, strategy: Strategy, journal: ToolJournal | StoreJournal | None, scope: str,
                 counters: dict[str, int]) -> None:
        self.tool = tool
        self.name = tool.name
        self.args_model = tool.args_model
        self.side_effects = bool(getattr(tool, "side_effects", False))
        self.strategy = strategy
        self.journal = journal
        self.scope = scope
        self.counters = counters

    async def ainvoke(self, **kwargs: Any) -> Any:
        args = json.dumps(to_state(kwargs), sort_keys=True, ensure_ascii=False)
        base = hashlib.sha256(f"{self.scope}\x00{self.name}\x00{args}".encode()).hexdigest()[:32]
        n = self.counters.get(base, 0)
        self.counters[base] = n + 1
        key = f"{base}:{n}"
        base_event = {"event": "tool_call", "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": self.name,
                      "gen_ai.tool.call.arguments": kwargs}
        if self.journal is not None:
            found, value = self.journal.get(key)
            if found:
                self.strategy.emit({**base_event, "replayed": True, "start_time": time.time(), "duration_s": 0.0,
                                    "gen_ai.tool.call.result": clip(value)})
                # Its model calls count once: the node that made them did not finish, so its state update (and
                # the usage in it) was never checkpointed; the journal kept what they spent.
                found, spent = self.journal.get(f"{key}:usage")
                if found:
                    _count_tool_usage(self.name, [Usage.from_dict(spent)])
                return value
        start, wall = time.perf_counter(), time.time()
        try:
            with collect_usage() as spent:
                raw = await self.tool.ainvoke(**kwargs)
        except BaseException as exc:
            self.strategy.emit({**base_event, "error.type": type(exc).__name__, "error": f"{type(exc).__name__}: {exc}",
                                "start_time": wall, "duration_s": time.perf_counter() - start})
            raise
        size = text_len(raw, 10**12)
        value = clip_value(raw, MAX_TEXT)  # what the journal, the checkpoints and the trace can hold
        del raw
        self.strategy.emit({**base_event, "start_time": wall, "duration_s": time.perf_counter() - start,
                            "gen_ai.tool.call.result": clip(value), "result_chars": size})
        if self.journal is not None:
            if spent:  # first: a journaled result always has its usage beside it
                self.journal.put(f"{key}:usage", Usage.sum(spent).to_dict())
            self.journal.put(key, to_state(value))
        _count_tool_usage(self.name, spent)
        return value


_NODE_TOOL_USAGE: contextvars.ContextVar[dict[str, Usage] | None] = contextvars.ContextVar(
    "tokenomy_node_tool_usage", default=None)


def _count_tool_usage(tool: str, spent: Sequence[Usage]) -> None:
    """Add a tool call's model usage to the running node's, under the agent ``tool:<name>``."""
    sink = _NODE_TOOL_USAGE.get()
    if sink is None or not spent:
        return
    agent = f"tool:{tool}"
    sink[agent] = Usage.sum([sink[agent], *spent] if agent in sink else list(spent))


def node_tool_usage() -> tuple[dict[str, Usage], contextvars.Token[dict[str, Usage] | None]]:
    """Start collecting the model usage of the tools a node calls: the dict fills as they run; pass the token to
    ``end_node_tool_usage`` when the node is done."""
    spent: dict[str, Usage] = {}
    return spent, _NODE_TOOL_USAGE.set(spent)


def end_node_tool_usage(token: contextvars.Token[dict[str, Usage] | None]) -> None:
    _NODE_TOOL_USAGE.reset(token)
