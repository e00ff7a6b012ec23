"""The prose corpora and their questions are well-formed: every question has a short answer, a gold program of
tool steps that ends in the answer, and support texts that occur word for word in the files they name.

``tests/prose`` (47 questions) is the corpus the prose tools were developed on; ``tests/prose_heldout`` (20
questions) was written afterwards by someone who had not read the tools or the first corpus, and is only
measured, never tuned to."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest

HERE = Path(__file__).resolve().parent
PROSE = HERE / "prose"
CORPUS = PROSE / "corpus"
KEYS = {"id", "question", "answer", "hops", "support", "program"}


class Shape(NamedTuple):
    """What a corpus under ``tests/<name>`` must have."""

    files: tuple[int, int]  # at least, at most
    questions: int  # at least
    per_hops: dict[int, int]  # questions of each hop count, at least
    most_steps: int
    ids: str  # pattern of the question ids


CORPORA = {
    "prose": Shape((6, 10), 40, {1: 15, 2: 15, 3: 10}, 3, r"q\d\d"),
    "prose_heldout": Shape((4, 8), 20, {1: 5, 2: 4, 3: 4}, 4, r"hq\d\d"),
}


def _questions(name: str = "prose") -> list[dict]:
    lines = (HERE / name / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _plain(text: str) -> str:
    return text.replace(",", "").lower()


@pytest.mark.parametrize("name", CORPORA)
def test_corpus_is_a_handful_of_titled_markdown_files(name):
    files = sorted((HERE / name / "corpus").glob("*.md"))
    low, high = CORPORA[name].files
    assert low <= len(files) <= high
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert text.startswith("# "), f.name
        assert len(text.split("\n\n")) >= 3, f"{f.name}: a title and at least two paragraphs"


@pytest.mark.parametrize("name", CORPORA)
def test_questions_are_well_formed(name):
    shape = CORPORA[name]
    qs = _questions(name)
    assert len(qs) >= shape.questions
    assert len({q["id"] for q in qs}) == len(qs)
    hops = Counter(q["hops"] for q in qs)
    assert all(hops[h] >= n for h, n in shape.per_hops.items()), hops
    for q in qs:
        assert set(q) == KEYS, q["id"]
        assert re.fullmatch(shape.ids, q["id"])
        assert q["question"].endswith("?") and q["answer"].strip() == q["answer"], q["id"]
        assert "," not in q["answer"] or not q["answer"].replace(",", "").isdigit(), "numbers are written plainly"
        assert q["hops"] == len(q["program"]) and 1 <= q["hops"] <= shape.most_steps, q["id"]
        for step in q["program"]:
            assert step["tool"] in ("lookup", "calc"), q["id"]
            want = {"entity", "attribute"} if step["tool"] == "lookup" else {"expression"}
            assert set(step["args"]) == want and all(isinstance(v, str) and v for v in step["args"].values())
            assert isinstance(step["value"], str) and step["value"], q["id"]
        assert q["program"][-1]["value"] == q["answer"], f"{q['id']}: the last step yields the answer"


@pytest.mark.parametrize(("name", "q"), [(n, q) for n in CORPORA for q in _questions(n)],
                         ids=lambda v: v["id"] if isinstance(v, dict) else v)
def test_support_occurs_in_its_file_and_states_each_looked_up_value(name, q):
    said = []
    for s in q["support"]:
        path = HERE / name / "corpus" / s["file"]
        assert path.is_file(), f"{q['id']}: no file {s['file']}"
        assert s["text"] in path.read_text(encoding="utf-8"), f"{q['id']}: {s['text']!r} is not in {s['file']}"
        said.append(_plain(s["text"]))
    for step in q["program"]:
        if step["tool"] == "lookup":
            assert any(_plain(step["value"]) in text for text in said), f"{q['id']}: {step['value']!r} unsupported"
