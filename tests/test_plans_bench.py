"""``tokenomy bench plans``: what its numbers mean (on a scripted planner whose plans are known), the command, and
the README's claim on the embedded model (every plan valid under the grammar)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tokenomy.benchmarks import plans
from tokenomy.cli import main
from tokenomy.kernels import ScriptedEngine
from tokenomy.kernels.scripted import render_chatml

VALID = 'e1 = lookup(entity="Halvane Instruments", attribute="founder")\nanswer(e1)'
INVALID = 'e1 = lookp(entity="Halvane Instruments")\nanswer(e1)'  # an unknown tool
QUESTIONS = ["q valid", "q repaired", "q hopeless"]


class GrammarScripted(ScriptedEngine):
    """The scripted double, claiming constrained decoding (it ignores the grammar and records that one came)."""

    capabilities = replace(ScriptedEngine.capabilities, grammar=True)


def planner(req):
    question = next(m["content"] for m in reversed(req.prompt) if m["content"] in QUESTIONS)
    repair = req.prompt[-1]["content"].startswith("Your plan has problems")
    if question == "q valid":
        return VALID
    if question == "q repaired":
        return VALID if repair else INVALID
    return INVALID


@pytest.mark.parametrize("engine_type", [GrammarScripted, ScriptedEngine])
def test_the_numbers_mean_what_the_table_says(engine_type):
    engine = engine_type(planner)
    records = plans.run_plans_bench(questions=QUESTIONS, engine=engine)
    # An engine without grammars has only the free mode.
    modes = ["grammar", "free"] if engine_type is GrammarScripted else ["free"]
    assert [r.mode for r in records] == [m for m in modes for _ in QUESTIONS]
    for mode in modes:
        rs = {r.question: r for r in records if r.mode == mode}
        # valid as written: one call; repaired: two calls, valid after; hopeless: two calls, never valid
        assert [(rs[q].valid_first, rs[q].valid_after_repair, rs[q].calls) for q in QUESTIONS] == [
            (True, True, 1), (False, True, 2), (False, False, 2)]
        assert "unknown tool 'lookp'" in rs["q hopeless"].error and "after repair" in rs["q hopeless"].error
    # Tokens: the scripted engine counts UTF-8 bytes of each prompt (after the ChatML template) and reply.
    assert len(engine.requests) == 5 * len(modes)
    prompt = [len(render_chatml(r.prompt).encode()) for r in engine.requests]
    replies = [len(planner(r).encode()) for r in engine.requests]
    summary = plans.summary(records)
    for i, s in enumerate(summary):
        assert s == {"mode": modes[i], "plans": 3, "valid_first": 1 / 3, "valid_after_repair": 2 / 3, "calls": 5,
                     "prompt_tokens": sum(prompt[5 * i:5 * i + 5]),
                     "completion_tokens": sum(replies[5 * i:5 * i + 5])}
    # The grammar mode sends the plan grammar; the free mode sends none.
    sent = [r.grammar is not None for r in engine.requests]
    assert sent == [True] * 5 + [False] * 5 if engine_type is GrammarScripted else sent == [False] * 5
    rows = plans.format_table(records).splitlines()
    assert rows[1].split() == [modes[0], "3", "33%", "67%", "5", str(summary[0]["prompt_tokens"]),
                               str(summary[0]["completion_tokens"])]


def test_a_plan_cut_off_by_the_grammar_s_token_limit_is_not_valid_as_written():
    long_plan = "\n".join(f'e{i} = lookup(entity="x{i}", attribute="y")' for i in range(1, 40)) + "\nanswer(e1)"
    engine = GrammarScripted(lambda req: long_plan)
    (rec,) = plans.run_plans_bench(questions=["q"], engine=engine, modes=("grammar",))
    # closed after its last complete statement, so it runs, but it was cut: not valid as written, no repair call
    assert (rec.valid_first, rec.valid_after_repair, rec.calls) == (False, True, 1)


def test_the_command_writes_the_summary_and_the_records(tmp_path, capsys):
    out = tmp_path / "plans.json"
    assert main(["bench", "plans", "--quick", "--model", "scripted", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    # The scripted double echoes the question: no plan, and its repair echoes the feedback, no plan either.
    assert data["summary"] == [{"mode": "free", "plans": 3, "valid_first": 0.0, "valid_after_repair": 0.0,
                                "calls": 6, "prompt_tokens": data["summary"][0]["prompt_tokens"],
                                "completion_tokens": data["summary"][0]["completion_tokens"]}]
    assert [r["question"] for r in data["records"]] == plans.QUESTIONS[:3]
    assert all(r["calls"] == 2 and not r["valid_first"] for r in data["records"])
    assert "free" in text and "0%" in text and f"wrote {out}" in text


@pytest.mark.embedded
def test_the_embedded_model_s_plans_are_all_valid_under_the_grammar(embedded_engine):
    """The README's table (100% valid as written with the grammar, 30% without), on its first questions."""
    records = plans.run_plans_bench(questions=plans.QUESTIONS[:2], engine=embedded_engine, modes=("grammar",))
    assert [(r.mode, r.valid_first, r.calls) for r in records] == [("grammar", True, 1)] * 2, [
        r.error for r in records]
    # Without the grammar the same model gets the first question wrong (search() given an entity and an
    # attribute): the 100% is the grammar's doing.
    (free,) = plans.run_plans_bench(questions=plans.QUESTIONS[:1], engine=embedded_engine, modes=("free",))
    assert not free.valid_first and "search() has no argument" in free.error
