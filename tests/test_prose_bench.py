"""bench planning on prose: the lookup hit rate of the gold programs (no model), the gold programs through the
real strategies and tools, and the live path on the scripted double."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.test_prose_questions import CORPUS, PROSE
from tokenomy.agents.answers import answer_matches
from tokenomy.benchmarks.planning import OracleEngine, strategy_for
from tokenomy.benchmarks.prose import (
    contains_value,
    format_prose_report,
    load_questions,
    lookup_hit_rate,
    run_prose_bench,
    to_task,
)
from tokenomy.errors import UserError
from tokenomy.tools import calc, lookup_tool, search_tool
from tokenomy.tools.builtin import CorpusIndex

QUESTIONS = PROSE / "questions.jsonl"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench") / "corpus"
    shutil.copytree(CORPUS, folder)
    return folder


def test_lookup_hit_rate_on_the_prose_corpus(corpus):
    rate = lookup_hit_rate(CorpusIndex(corpus).lookup, load_questions(QUESTIONS))
    assert rate.total >= 70
    assert rate.rate >= 0.95, rate.misses


def test_values_and_answers_compare_without_separators_sources_or_case():
    assert contains_value("12,900 [port-arlen.md#2]", "12900") and contains_value(16300.0, "16300")
    assert contains_value("Helena Voss [port-arlen.md#2]", "helena voss")
    assert not contains_value("2 [a.md#2]", "12") and not contains_value("1,2900", "290")
    for said in ("16,300", "16300", "16300.0", "16300 [a.md#3]", "It is 16,300."):
        assert answer_matches(said, "16300"), said
    assert answer_matches("1781 [arlen-falls.md#2]", "1781") and answer_matches("idris kemble.", "Idris Kemble")


def test_bad_question_files_are_user_errors(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": "q1", "question": "?", "answer": "1", "hops": 1, "program": [{"tool": "rm"}]}\n')
    with pytest.raises(UserError, match="q.jsonl:1"):
        load_questions(bad)
    bad.write_text("\n")
    with pytest.raises(UserError, match="no questions"):
        load_questions(bad)


def test_gold_programs_run_through_rewoo_with_the_real_tools(corpus, tiny_tokenizer):
    index = CorpusIndex(corpus)
    tools = [search_tool(index), lookup_tool(index), calc]
    for q in load_questions(QUESTIONS):
        task = to_task(q)
        engine = OracleEngine("rewoo", [task], tiny_tokenizer)
        result = strategy_for("rewoo", engine, tools, task, [], tokens_per_step=100).run(q.question)
        assert result.plan_valid, (q.id, result.notes)
        assert contains_value(result.values[task.answer_name], q.answer), (q.id, result.values)


def test_calc_steps_read_earlier_results():
    q = next(q for q in load_questions(QUESTIONS) if q.id == "q42")  # "64 km - 58 km"
    assert to_task(q).program.splitlines()[2] == 'e3 = calc(expression=e1 + " - " + e2)'
    q = next(q for q in load_questions(QUESTIONS) if q.id == "q31")  # "2024 - 1612"
    assert to_task(q).program.splitlines()[1] == 'e2 = calc(expression="2024 - " + e1)'


def test_live_path_on_the_scripted_double(corpus, tiny_tokenizer):
    rows = []
    report = run_prose_bench(corpus, QUESTIONS, strategies=("react", "rewoo", "rewoo-parallel"), limit=3,
                             engine_for=lambda name, tasks: OracleEngine(name, tasks, tiny_tokenizer),
                             tokenizer=tiny_tokenizer, tokens_per_step=100, transcript=rows.append)
    assert [(r["strategy"], r["correct"]) for r in rows] == [("react", True)] * 3 + [("rewoo", True)] * 3
    assert report.exemplars == ["q35"] and report.hit_rate.rate >= 0.95
    assert [r.strategy for r in report.records] == ["react", "rewoo"]  # rewoo-parallel: rewoo's model calls
    for r in report.records:
        assert r.tasks == 3 and not r.errors and r.accuracy == 1.0
        assert (r.accuracy_low, r.accuracy_high) == (1.0, 1.0)
        assert r.prompt_tokens > 0 and r.completion_tokens > 0 and r.calls >= 3
    react, rewoo = report.records
    assert rewoo.prompt_tokens < react.prompt_tokens
    text = format_prose_report(report)
    assert "lookup hit rate" in text and "95% CI" in text and "q35" in text
    data = json.loads(json.dumps(report.to_json()))
    assert data["lookup_steps"] == report.hit_rate.total and len(data["records"]) == 2


def test_cli_transcripts_file_gets_one_json_line_per_task(tmp_path):
    import argparse

    from tokenomy.benchmarks.commands import _transcripts

    path = tmp_path / "runs" / "t.jsonl"
    path.parent.mkdir()
    path.write_text("an older run\n")
    write = _transcripts(argparse.Namespace(transcripts=str(path)))
    write({"task": "q1", "answer": "12,900 [port-arlen.md#2]", "correct": True})
    write({"task": "q2", "answer": None, "correct": False, "error": "RuntimeError: x"})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["task"] for r in rows] == ["q1", "q2"]  # the older run is replaced
    assert _transcripts(argparse.Namespace(transcripts=None)) is None


def test_cli_prose_hit_rate_without_a_model(corpus, tmp_path, capsys):
    from tokenomy.cli import main

    out = tmp_path / "p.json"
    assert main(["bench", "planning", "--corpus", str(corpus), "--questions", str(QUESTIONS), "--no-live",
                 "--json", str(out)]) == 0
    assert "lookup hit rate" in capsys.readouterr().out
    assert json.loads(out.read_text())["lookup_hit_rate"] >= 0.95
    assert main(["bench", "planning", "--corpus", str(corpus), "--no-live"]) == 1
    assert "--questions" in capsys.readouterr().err
    assert main(["bench", "planning", "--corpus", str(corpus), "--questions", str(QUESTIONS), "--no-live",
                 "--strategies", "rewoo,nope"]) == 1
    assert "nope" in capsys.readouterr().err
