"""Triplet extraction by a model, for text the rules of ``extract`` do not read well.

``ModelExtractor(engine)`` is an ``extract`` callable for ``RagStore.ingest``: one model call per chunk, asking for
``subject | relation | object`` lines. The reply is data: lines that are not three non-empty fields, fields longer
than a short phrase, and facts whose subject or object the chunk does not contain are dropped (a model may not
invent facts into the store). Its usage is kept, so the ingest's token cost is on the record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .extract import sentences

if TYPE_CHECKING:
    from tokenomy.kernels import Engine, Usage

__all__ = ["ModelExtractor", "EXTRACT_PROMPT", "parse_triplet_lines"]

EXTRACT_PROMPT = ("List the facts the text states, one per line, as: subject | relation | object\n"
                  "Use names exactly as the text writes them. Write nothing else.")
MAX_FIELD_CHARS = 80


def parse_triplet_lines(reply: str, text: str) -> list[tuple[str, str, str, str]]:
    """``(subject, relation, object, sentence)`` from a model's reply, keeping only facts grounded in ``text``."""
    lower = text.lower()
    sents = sentences(text) or [text]
    out: list[tuple[str, str, str, str]] = []
    for line in reply.splitlines():
        parts = [p.strip().strip("-*•").strip() for p in line.split("|")]
        if len(parts) != 3 or not all(parts) or any(len(p) > MAX_FIELD_CHARS for p in parts):
            continue
        subject, relation, obj = parts
        if subject.lower() not in lower or obj.lower() not in lower:
            continue
        sentence = next((s for s in sents if subject.lower() in s.lower() and obj.lower() in s.lower()),
                        next((s for s in sents if obj.lower() in s.lower()), sents[0]))
        fact = (subject, relation.lower(), obj, sentence)
        if fact not in out:
            out.append(fact)
    return out


class ModelExtractor:
    """``extract(text)`` by a model: one call per chunk, at most ``max_tokens`` tokens of reply.

    Args:
        engine: any engine (``load_engine(spec)``).
        max_tokens: the most tokens of one reply.
    """

    def __init__(self, engine: Engine, *, max_tokens: int = 160) -> None:
        self.engine, self.max_tokens = engine, max_tokens
        self.usage: Usage | None = None

    def __call__(self, text: str) -> list[tuple[str, str, str, str]]:
        if not text.strip():
            return []
        c = self.engine.chat([{"role": "system", "content": EXTRACT_PROMPT}, {"role": "user", "content": text}],
                             max_tokens=self.max_tokens, agent="extractor")
        self.usage = c.usage if self.usage is None else self.usage + c.usage
        return parse_triplet_lines(c.text, text)
