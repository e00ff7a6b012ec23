"""Questions over a hand-written prose corpus for ``tokenomy bench rag --corpus DIR --questions FILE``.

The templated world says little about free prose: its sentences come from a few patterns that the rule-based
extractor reads completely. A prose corpus (Markdown files) comes with a questions file, one JSON object per
line::

    {"question": "...", "answer": "12900", "hops": 2,
     "support": [{"file": "port-arlen.md", "text": "The town has 12,900 inhabitants"}, ...],
     "program": [{"tool": "lookup", "args": {"entity": "Port Arlen", "attribute": "population"}, "value": "12900"}]}

``support`` texts are exact substrings of their files; ``program`` (optional) names the lookups a solver makes.
Each needed fact is one support text, with the entity and value of the lookup whose value it states when there
is one. A fact counts as present in a context (see ``support_recall`` in ``benchmarks.rag``) when the context
holds its support text (case, spacing and thousands separators aside), or when one line names the entity and
states the value (or states the value under the entity's own ``[file#n]`` tag).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tokenomy.errors import UserError

__all__ = ["Fact", "Question", "load_questions", "normalize"]


@dataclass(frozen=True)
class Fact:
    """One fact a question needs: ``entity`` and ``value`` (empty when unknown) and the ``support`` text."""

    entity: str
    value: str
    support: str = ""


@dataclass
class Question:
    question: str
    answer: str
    hops: int
    facts: list[Fact] = field(default_factory=list)


def normalize(text: str) -> str:
    """Lowercase, one space between words, no thousands separators (``12,900`` -> ``12900``)."""
    import re

    return " ".join(re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text.lower()).split())


def _facts(obj: dict, where: str) -> list[Fact]:
    lookups = [s for s in obj.get("program") or [] if isinstance(s, dict) and s.get("tool") == "lookup"]
    out = []
    for s in obj["support"]:
        if not isinstance(s, dict) or not isinstance(s.get("text"), str) or not s["text"].strip():
            raise UserError(f"{where}: each support item needs a non-empty 'text' (and the 'file' it is from)")
        said = normalize(s["text"])
        step = next((st for st in lookups if normalize(str(st.get("value", ""))) in said), None)
        if step is None:
            out.append(Fact("", "", s["text"]))
        else:
            out.append(Fact(str(step["args"]["entity"]), str(step["value"]), s["text"]))
    return out


def load_questions(path: str | Path, corpus: str | Path | None = None) -> list[Question]:
    """The questions of a JSON-lines file (see the module docstring).

    Raises:
        UserError: the file is missing or a line is not a question with ``question``, ``answer`` and ``support``;
            with ``corpus``: a support text is not in the file it names.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no questions file at {p}")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not JSON ({exc})") from exc
        if not isinstance(obj, dict) or not {"question", "answer", "support"} <= set(obj):
            raise UserError(f"{where}: a question needs 'question', 'answer' and 'support'")
        if corpus is not None:
            for s in obj["support"]:
                f = Path(corpus) / str(s.get("file", ""))
                if not f.is_file() or str(s.get("text", "")) not in f.read_text(encoding="utf-8"):
                    raise UserError(f"{where}: the support text {s.get('text')!r} is not in {f}")
        out.append(Question(str(obj["question"]), str(obj["answer"]),
                            int(obj.get("hops") or len(obj["support"])), _facts(obj, where)))
    if not out:
        raise UserError(f"{p} holds no questions")
    return out
