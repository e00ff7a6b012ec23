"""``run(..., answer_type=...)``: the answer parsed as a type, with one constrained call only where needed."""

import pytest
from pydantic import BaseModel

from tokenomy import tool
from tokenomy.kernels import ScriptedEngine
from tokenomy.planners import make_strategy
from tokenomy.planners.rewoo import Rewoo
from tokenomy.planners.typed import AnswerTypeError


class Town(BaseModel):
    name: str
    population: int


@tool
def lookup(entity: str, attribute: str) -> str:
    """Looks a fact up."""
    return {"population": "412,000 [velmora.md#2]"}.get(attribute, "not found")


def _engine(typed_reply):
    plan = 'e1 = lookup(entity="Velmora", attribute="population")\nanswer(e1)'
    return ScriptedEngine(lambda req: {"planner": plan, "answer": None}.get(req.agent) or typed_reply(req))


def test_an_answer_already_of_the_type_costs_no_call():
    engine = ScriptedEngine(lambda req: "answer(412000)")
    r = Rewoo(engine, [lookup]).run("What is the population of Velmora?", answer_type=int)
    assert r.answer == 412000 and "answer" not in r.usage and [q.agent for q in engine.requests] == ["planner"]


def test_a_model_answers_in_the_schema_with_the_grammar_where_the_engine_has_one():
    seen = []

    def typed(req):
        seen.append(req)
        return '{"name": "Velmora", "population": 412000}'

    r = Rewoo(_engine(typed), [lookup]).run("What is the population of Velmora?", answer_type=Town)
    assert r.answer == Town(name="Velmora", population=412000)
    assert r.usage["answer"].calls == 1 and seen[0].agent == "answer"
    assert "412,000" in seen[0].prompt[-1]["content"] and '"population"' in seen[0].prompt[-1]["content"]
    assert seen[0].grammar is None  # the scripted engine constrains nothing; json_schema engines get the schema
    assert r.to_json()["answer"] == {"name": "Velmora", "population": 412000}


def test_a_reply_that_does_not_fit_is_asked_once_more_then_a_clear_error_keeps_the_run():
    replies = iter(['```json\n{"name": "Velmora", "population": "many"}\n```', '{"name": "Velmora"}'])
    with pytest.raises(AnswerTypeError, match="population") as info:
        Rewoo(_engine(lambda req: next(replies)), [lookup]).run("What is the population of Velmora?",
                                                                 answer_type=Town)
    assert info.value.result.answer == "412,000 [velmora.md#2]"  # the untyped answer, not lost
    assert info.value.result.usage["answer"].calls == 2
    fixed = iter(['{"name": "Velmora", "population": "many"}', '{"name": "Velmora", "population": 412000}'])
    r = Rewoo(_engine(lambda req: next(fixed)), [lookup]).run("q?", answer_type=Town)
    assert r.answer.population == 412000 and r.usage["answer"].calls == 2


@pytest.mark.parametrize("name", ["rewoo-nl", "react", "plan-execute"])
def test_every_strategy_takes_an_answer_type(name):
    engine = ScriptedEngine(lambda req: '{"name": "Velmora", "population": 412000}' if req.agent == "answer"
                            else "Answer: Velmora has 412,000 people")
    r = make_strategy(name, engine, [lookup]).run("What is the population of Velmora?", answer_type=Town)
    assert isinstance(r.answer, Town)


@pytest.mark.embedded
def test_the_embedded_model_answers_in_the_schema_under_its_grammar():
    from tokenomy.kernels import load_engine

    engine = load_engine("embedded")
    assert engine.capabilities.json_schema
    r = Rewoo(engine, [lookup]).run("What is the population of Velmora? Give the town and its population.",
                                    answer_type=Town)
    assert isinstance(r.answer, Town) and r.usage["answer"].calls == 1  # constrained: valid at the first try
