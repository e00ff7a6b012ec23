"""Triplet extraction by a model, for text the rules of ``tools.rag.extract`` do not read well.

It asks a model, so it lives with the strategies (``planners``, beside the RAG pipeline), not in ``tools``,
which call no model but through the explicit ``llm`` tool; the store it feeds takes any ``extract`` callable.

``ModelExtractor(engine)`` is an ``extract`` callable for ``RagStore.ingest``: one model call per chunk, asking for
``subject | relation | object`` lines. The reply is data: lines that are not three non-empty fields, fields longer
than a short phrase, and facts whose subject or object the chunk does not contain are dropped (a model may not
invent facts into the store). Its usage is kept, so the ingest's token cost is on the record.

With ``cache=`` (a SQLite file, e.g. the store's own) the facts of each chunk are kept under a key of the model
spec, the prompt's version and the sha256 of the chunk's text: re-ingesting a changed file asks the model only
about the chunks that changed, and a second store of the same text costs no call at all.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenomy.errors import UserError
from tokenomy.tools.builtin.chunking import sentences

if TYPE_CHECKING:
    from tokenomy.kernels import Engine, Usage

__all__ = ["ModelExtractor", "ExtractCache", "EXTRACT_PROMPT", "PROMPT_VERSION", "parse_triplet_lines",
           "make_extractor", "EXTRACTORS"]

EXTRACT_PROMPT = ("List the facts the text states, one per line, as: subject | relation | object\n"
                  "Use names exactly as the text writes them; write the full name instead of he, she, it or "
                  "the town. Write nothing else.\n\n"
                  "Example text: Orvel is a town of 8200 people. Its mayor, Ana Toll, was born in 1970.\n"
                  "Example facts:\nOrvel | population | 8200\nOrvel | mayor | Ana Toll\nAna Toll | born | 1970")
PROMPT_VERSION = "3"
"""Part of the cache key: bump it when ``EXTRACT_PROMPT`` or ``parse_triplet_lines`` changes what is kept."""
MAX_FIELD_CHARS = 80
EXTRACTORS = ("rules", "model", "both")
Fact = tuple[str, str, str, str]


def parse_triplet_lines(reply: str, text: str) -> list[Fact]:
    """``(subject, relation, object, sentence)`` from a model's reply, keeping only facts grounded in ``text``."""
    lower = text.lower()
    sents = sentences(text) or [text]
    out: list[Fact] = []
    for line in reply.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line)  # a list marker or a number before the fact
        line = line.strip().strip("`").strip()
        if line.startswith("|") and line.endswith("|"):  # a Markdown table row, as code models like to write
            line = line[1:-1]
        parts = [p.strip().strip("-*•").strip() for p in line.split("|")]
        if len(parts) != 3 or not all(parts) or any(len(p) > MAX_FIELD_CHARS for p in parts):
            continue
        subject, relation, obj = parts
        if subject.lower() not in lower or obj.lower() not in lower or subject.lower() == obj.lower():
            continue  # not grounded in the text, or a thing related to itself (small models loop on those)
        sentence = next((s for s in sents if subject.lower() in s.lower() and obj.lower() in s.lower()),
                        next((s for s in sents if obj.lower() in s.lower()), sents[0]))
        fact = (subject, relation.lower(), obj, sentence)
        if fact not in out:
            out.append(fact)
    return out


class ExtractCache:
    """Facts per chunk in a SQLite table ``extract_cache`` (in the RAG store's file or any other).

    Args:
        path: the SQLite file (created if missing).
    """

    _SQL = "CREATE TABLE IF NOT EXISTS extract_cache(key TEXT PRIMARY KEY, facts TEXT NOT NULL)"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._conn.execute(self._SQL)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"cannot keep the extraction cache in {self.path}: {exc}") from exc

    @staticmethod
    def key(model: str, text: str) -> str:
        return f"{model}|v{PROMPT_VERSION}|{hashlib.sha256(text.encode('utf-8')).hexdigest()}"

    def get(self, key: str) -> list[Fact] | None:
        with self._lock:
            row = self._conn.execute("SELECT facts FROM extract_cache WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return [(str(a), str(b), str(c), str(d)) for a, b, c, d in json.loads(row[0])]
        except (ValueError, TypeError):  # a damaged row is asked again, not trusted
            return None

    def put(self, key: str, facts: Sequence[Fact]) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO extract_cache VALUES (?, ?)", (key, json.dumps(list(facts))))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class ModelExtractor:
    """``extract(text)`` by a model: one call per chunk not in the cache, at most ``max_tokens`` tokens of reply.

    Args:
        engine: any engine (``load_engine(spec)``); Qwen2.5-Coder and SmolLM2 instruct models follow the prompt.
        max_tokens: the most tokens of one reply.
        cache: an :class:`ExtractCache` or the path of its SQLite file (``None``: no cache).
        model: the model's name in the cache key (default: the engine's ``spec``).
    """

    def __init__(self, engine: Engine, *, max_tokens: int = 256, cache: ExtractCache | str | Path | None = None,
                 model: str | None = None) -> None:
        self.engine, self.max_tokens = engine, max_tokens
        self.cache = ExtractCache(cache) if isinstance(cache, (str, Path)) else cache
        self.model = model or str(getattr(engine, "spec", "") or type(engine).__name__)
        self.usage: Usage | None = None
        """The tokens of every model call made so far (``None``: none made)."""
        self.call_usages: list[Usage] = []
        """Each call's usage, in order (``RagStore.ingest`` sums those of its own run into its stats)."""
        self.cache_hits = 0
        """Chunks answered from the cache, without a call."""

    def __call__(self, text: str) -> list[Fact]:
        if not text.strip():
            return []
        key = ExtractCache.key(self.model, text)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.cache_hits += 1
            return hit
        c = self.engine.chat([{"role": "system", "content": EXTRACT_PROMPT}, {"role": "user", "content": text}],
                             max_tokens=self.max_tokens, agent="extractor")
        self.usage = c.usage if self.usage is None else self.usage + c.usage
        self.call_usages.append(c.usage)
        facts = parse_triplet_lines(c.text, text)
        if self.cache is not None:
            self.cache.put(key, facts)
        return facts


class _Both:
    """The rules' facts, then the model's that the rules did not find (one list, no repeats)."""

    def __init__(self, rules: Callable[[str], Sequence[Fact]], model: ModelExtractor) -> None:
        self.rules, self.model = rules, model

    @property
    def usage(self) -> Usage | None:
        return self.model.usage

    @property
    def call_usages(self) -> list[Usage]:
        return self.model.call_usages

    @property
    def cache_hits(self) -> int:
        return self.model.cache_hits

    def __call__(self, text: str) -> list[Fact]:
        out = list(self.rules(text))
        seen = {(s.lower(), r, o.lower()) for s, r, o, _ in out}
        out += [f for f in self.model(text) if (f[0].lower(), f[1], f[2].lower()) not in seen]
        return out


def make_extractor(kind: str, model: Engine | str | None = None, *, cache: ExtractCache | str | Path | None = None
                   ) -> Any:
    """The triplet extractor ``kind`` for ``RagStore.ingest``: ``rules`` (English rules, no model), ``model``
    (:class:`ModelExtractor`) or ``both`` (the rules' facts and the model's).

    Args:
        kind: one of ``EXTRACTORS``.
        model: the engine or spec of the model extractor (default: ``default_spec()``).
        cache: where the model extractor keeps its facts per chunk (the store's path serves).

    Returns:
        A callable ``extract(text)``; for ``model`` and ``both`` it has ``usage`` (the extraction's tokens).
    """
    from tokenomy.tools.rag.extract import extract_triplets

    if kind not in EXTRACTORS:
        raise UserError(f"unknown extractor {kind!r}; choose one of {', '.join(EXTRACTORS)}")
    if kind == "rules":
        return extract_triplets
    if model is None or isinstance(model, str):
        from tokenomy.kernels import default_spec, load_engine

        model = load_engine(model or default_spec())
    extractor = ModelExtractor(model, cache=cache)
    return extractor if kind == "model" else _Both(extract_triplets, extractor)
