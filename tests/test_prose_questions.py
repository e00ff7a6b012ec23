"""The prose corpus (tests/prose/corpus) and its questions (tests/prose/questions.jsonl) are well-formed: every
question has a short answer, a gold program of 1-3 tool steps that ends in the answer, and support texts that
occur word for word in the files they name."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

PROSE = Path(__file__).resolve().parent / "prose"
CORPUS = PROSE / "corpus"
KEYS = {"id", "question", "answer", "hops", "support", "program"}


def _questions() -> list[dict]:
    lines = (PROSE / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _plain(text: str) -> str:
    return text.replace(",", "").lower()


def test_corpus_is_a_handful_of_titled_markdown_files():
    files = sorted(CORPUS.glob("*.md"))
    assert 6 <= len(files) <= 10
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert text.startswith("# "), f.name
        assert len(text.split("\n\n")) >= 3, f"{f.name}: a title and at least two paragraphs"


def test_questions_are_well_formed():
    qs = _questions()
    assert len(qs) >= 40
    assert len({q["id"] for q in qs}) == len(qs)
    hops = Counter(q["hops"] for q in qs)
    assert hops[1] >= 15 and hops[2] >= 15 and hops[3] >= 10, hops
    for q in qs:
        assert set(q) == KEYS, q["id"]
        assert re.fullmatch(r"q\d\d", q["id"])
        assert q["question"].endswith("?") and q["answer"].strip() == q["answer"], q["id"]
        assert "," not in q["answer"] or not q["answer"].replace(",", "").isdigit(), "numbers are written plainly"
        assert q["hops"] == len(q["program"]) and 1 <= q["hops"] <= 3, q["id"]
        for step in q["program"]:
            assert step["tool"] in ("lookup", "calc"), q["id"]
            want = {"entity", "attribute"} if step["tool"] == "lookup" else {"expression"}
            assert set(step["args"]) == want and all(isinstance(v, str) and v for v in step["args"].values())
            assert isinstance(step["value"], str) and step["value"], q["id"]
        assert q["program"][-1]["value"] == q["answer"], f"{q['id']}: the last step yields the answer"


@pytest.mark.parametrize("q", _questions(), ids=lambda q: q["id"])
def test_support_occurs_in_its_file_and_states_each_looked_up_value(q):
    said = []
    for s in q["support"]:
        path = CORPUS / s["file"]
        assert path.is_file(), f"{q['id']}: no file {s['file']}"
        assert s["text"] in path.read_text(encoding="utf-8"), f"{q['id']}: {s['text']!r} is not in {s['file']}"
        said.append(_plain(s["text"]))
    for step in q["program"]:
        if step["tool"] == "lookup":
            assert any(_plain(step["value"]) in text for text in said), f"{q['id']}: {step['value']!r} unsupported"
