"""lookup on prose (attribute families, pronouns, values with their source) and calc on numbers as people write
them, over the prose corpus of tests/prose."""

from __future__ import annotations

import shutil

import pytest

from tests.test_prose_questions import CORPUS
from tokenomy.tools.base import ToolArgumentError
from tokenomy.tools.builtin import CorpusIndex, calc, lookup_tool, search_tool
from tokenomy.tools.builtin.prose import FAMILIES, Family, attribute_groups, attribute_words, resolve_attribute


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prose") / "corpus"
    shutil.copytree(CORPUS, folder)
    return CorpusIndex(folder)


@pytest.mark.parametrize("entity, attribute, expected", [
    ("Port Arlen", "population", "12,900 [port-arlen.md#2]"),  # "The town has 12,900 inhabitants"
    ("Arlen Falls", "population", "3,400 [arlen-falls.md#2]"),  # not Port Arlen's, nor "a few hundred people"
    ("Arlen Falls", "founder", "Oren Voss [arlen-falls.md#2]"),  # "It was established in 1781 by Oren Voss"
    ("Corrow Ironworks", "founder", "Benedikt Voss [corrow-ironworks.md#1]"),  # "set up ... by"
    ("Veradel", "capital", "Brennock [veradel.md#1]"),
    ("Helena Voss", "birthplace", "Brennock [helena-voss.md#1]"),  # not "Port Arlen" of the apposition
    ("Helena Voss", "born", "1976 [helena-voss.md#1]"),
    ("Idris Kemble", "birthplace", "Tollmere [idris-kemble.md#1]"),  # not Marta Kemble's, who names him
    ("Oren Voss", "birthplace", "Brennock [brennock.md#3]"),  # no file of his own
    ("Marta Kemble", "death", "1921 [marta-kemble.md#2]"),  # "She led it until her death in 1921."
    ("University of Brennock", "founder", "Marta Kemble [marta-kemble.md#2]"),  # "In 1893 she founded ..."
    ("Veradel", "governor", "Aurel Dunmore [veradel.md#3]"),  # apposition
    ("River Tamsin", "length", "212 km [river-tamsin.md#1]"),  # "stretches 212 km"
    ("Mount Corrow", "height", "2,140 metres [veradel.md#2]"),
    ("Brennock", "clock tower height", "52 metres [brennock.md#2]"),
    ("Veradel", "area", "8,450 square kilometres [veradel.md#1]"),
    ("Port Arlen", "province", "Veradel [port-arlen.md#1]"),  # "of Veradel" + "Veradel is a small province"
    ("Helena Voss [port-arlen.md#2]", "year elected", "2019 [port-arlen.md#2]"),  # a result passed on whole
    # attributes as models write them: snake_case, camelCase, hyphens (live plans wrote all three)
    ("Arlen Falls", "founding_year", "1781 [arlen-falls.md#2]"),  # was the founder's name
    ("Port Arlen", "founded_by", "Idris Kemble [port-arlen.md#1]"),  # was the year: "founded by" is the founder
    ("Marta Kemble", "birth_year", "1851 [marta-kemble.md#1]"),  # was "not found"
    ("Marta Kemble", "birthYear", "1851 [marta-kemble.md#1]"),
    ("Helena Voss", "birth_place", "Brennock [helena-voss.md#1]"),  # the place, not the year
    ("Corrow Ironworks", "set_up_by", "Benedikt Voss [corrow-ironworks.md#1]"),
    ("Port Arlen", "ferry_crossing_time", "95 minutes [port-arlen.md#5]"),  # was "Skerra"
    ("River Tamsin", "length-km", "212 km [river-tamsin.md#1]"),
])
def test_lookup_reads_values_worded_otherwise(index, entity, attribute, expected):
    assert index.lookup(entity, attribute) == expected


def test_not_found_says_what_the_text_does_give(index):
    out = index.lookup("Port Arlen", "airport")
    assert out.startswith("not found; the text on Port Arlen gives: ") and "founded" in out and len(out) < 160
    assert index.lookup("Skerra", "population").startswith("not found")  # named, but nothing is said of it
    assert index.lookup("Quenby", "population") == "not found: no text names Quenby"


def test_families_are_data_and_extendable(tmp_path, index):
    assert attribute_groups("inhabitants", "X")[1] == "quantity"
    assert attribute_groups("year elected", "X")[1] == "year"
    assert attribute_groups("university founder", "X")[1] == "name"
    assert index.lookup("Port Arlen", "yield").startswith("not found")
    custom = CorpusIndex(index.corpus_dir, index_path=tmp_path / "i.sqlite",
                         families=(*FAMILIES, Family("yield", ("produce", "produces"), "quantity")))
    assert custom.lookup("Port Arlen", "yield") == "4,200 tonnes [port-arlen.md#3]"


@pytest.mark.parametrize("attribute, fields, expected", [
    ("born", ("born", "birthplace", "employer"), "born"),  # its own name first
    ("birth year", ("born", "birthplace", "employer"), "born"),
    ("year of birth", ("born", "birthplace", "employer"), "born"),
    ("place of birth", ("born", "birthplace", "employer"), "birthplace"),
    ("works for", ("born", "birthplace", "employer"), "employer"),
    ("founding year", ("founded", "founder", "product"), "founded"),
    ("main product", ("founded", "founder", "product"), "product"),
    ("number of employees", ("founded", "employees"), "employees"),
    ("Head Office", ("founded", "headquarters"), "headquarters"),
    ("release year", ("maker", "released", "price"), "released"),
    ("manufacturer", ("maker", "released", "price"), "maker"),
    ("city", ("population", "mayor", "river"), None),  # nothing means it
    ("year", ("founded", "released"), None),  # only the kind of value: too vague to pick one
    ("founder and founding year", ("founded", "founder"), None),  # two fields: refused, not guessed
    ("birth_year", ("born", "birthplace", "employer"), "born"),  # as models write attributes
    ("placeOfBirth", ("born", "birthplace", "employer"), "birthplace"),
    ("founded_by", ("founded", "founder", "product"), "founder"),
    ("founding-year", ("founded", "founder", "product"), "founded"),
])

def test_resolve_attribute_picks_the_one_field_a_wording_means(attribute, fields, expected):
    assert resolve_attribute(attribute, fields) == expected


@pytest.mark.parametrize("attribute, words", [
    ("founding_year", ["founding", "year"]), ("birthYear", ["birth", "year"]), ("head-office", ["head", "office"]),
    ("CEO", ["ceo"]), ("number of employees", ["number", "of", "employees"]), ("length_km2", ["length", "km2"]),
])
def test_attribute_words_reads_the_ways_models_write_names(attribute, words):
    assert attribute_words(attribute) == words


def test_lookup_tool_says_how_its_values_look(index):
    lookup = lookup_tool(index)
    assert "[velmora.md#2]" in lookup.description and "calc accepts it" in lookup.description
    assert lookup.invoke(entity="Brennock", attribute="population") == "48,500 [brennock.md#1]"


@pytest.mark.parametrize("expression, value", [
    ("12,900 + 3,400", 16300), ("95 minutes - 40 minutes", 55), ("1,200 km / 3", 400), ("2024 - 1987", 37),
    ("12,900 [port-arlen.md#2] + 3,400 [arlen-falls.md#2]", 16300), ("2,140 metres - 27 metres", 2113),
    ("95 minutes [port-arlen.md#5] * 2", 190), ("1 hour + 30 minutes", 1.5), ("12,900 inhabitants + 3,400 people",
                                                                          16300),
    ("8,450 square kilometres / 2", 4225), ("max(1, 200)", 200), ("1e3 km / 2", 500), ("(64 km - 58 km) * 2", 12),
])
def test_calc_reads_numbers_as_written(expression, value):
    assert calc.invoke(expression=expression) == pytest.approx(value)


@pytest.mark.parametrize("number", [2113, 53.0, -35600, 0])
def test_calc_takes_a_number_the_plan_computed_itself(number):
    assert calc.invoke(expression=number) == number


def test_a_plan_that_computes_with_lookup_values_gets_its_number(index):
    """Live plans write ``calc(expression=e1 - e2)``: the executor subtracts the two looked-up quantities (units and
    sources read), and calc passes the number on instead of refusing it as not a string."""
    from tokenomy import Rewoo
    from tokenomy.kernels import ScriptedEngine

    plan = ('e1 = lookup(entity="Mount Corrow", attribute="height")\n'
            'e2 = lookup(entity="Arlen Falls", attribute="waterfall_height")\n'
            'e3 = calc(expression=e1 - e2)\nanswer(e3)')
    engine = ScriptedEngine(lambda req: plan if req.agent == "planner" else "unused")
    result = Rewoo(engine, [lookup_tool(index), calc]).run("How many metres higher is Mount Corrow than the falls?")
    assert result.answer == 2113 and result.total.calls == 1


@pytest.mark.parametrize("expression, problem", [
    ("5 km + 3 minutes", "mixes units of length and time"), ("max(3 km, 4 minutes)", "mixes units"),
    ("12 apples + 3", "'apples' after a number"), ("_q0 + 1", "name '_q0'"), ("3 km + x", "name 'x'"),
    (float("inf"), "limited to"), (float("nan"), "limited to"), (None, "valid string"),
])
def test_calc_refuses_what_it_cannot_read(expression, problem):
    with pytest.raises(ToolArgumentError, match="expression") as info:
        calc.invoke(expression=expression)
    assert problem in str(info.value)


def test_gold_calc_steps_evaluate_to_their_values():
    from tests.test_prose_questions import CORPORA, _questions

    for q in (q for name in CORPORA for q in _questions(name)):
        for step in q["program"]:
            if step["tool"] == "calc":
                assert calc.invoke(**step["args"]) == pytest.approx(float(step["value"])), q["id"]


def test_search_tool_is_brief_and_knows_attribute_words(index):
    search = search_tool(index)
    top = search.invoke(query="population of Arlen Falls")
    assert top[0].startswith("[arlen-falls.md#2]") and "3,400 people" in top[0]  # "population" finds "people"
    other = next(r for r in top if r.startswith("[veradel.md#1]"))
    assert other == "[veradel.md#1] … About 310,000 people live in the province."  # only what was asked about
    whole = index.search("population of Arlen Falls", k=3)  # the plain index call keeps whole paragraphs
    assert sum(map(len, top)) < sum(map(len, whole))


def test_a_verb_with_the_entity_as_object_gives_the_name_before_it(tmp_path):
    """"X, who later founded Y, was born at Z": Y's founder is X, not Z (the name after the object); the passive
    "founded by" still reads the name after it."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "kestrel-bay.md").write_text(
        "# Kestrel Bay\n\nKestrel Bay is a fishing port. The engineer Mira Holt, who later founded Dunmere, was born "
        "at Kestrel Bay in 1801. In 1840 Ana Velor married Oren Quill at the harbour chapel.\n")
    (folder / "dunmere.md").write_text("# Dunmere\n\nDunmere is a mill town on the river Ost. It has 4,200 "
                                       "inhabitants.\n")
    (folder / "ost-mills.md").write_text("# Ost Mills\n\nOst Mills was founded by Teodor Brisk in 1862, beside "
                                         "Dunmere.\n")
    index = CorpusIndex(folder)
    try:
        assert index.lookup("Dunmere", "founder") == "Mira Holt [kestrel-bay.md#1]"
        assert index.lookup("Oren Quill", "spouse") == "Ana Velor [kestrel-bay.md#1]"
        assert index.lookup("Ost Mills", "founder") == "Teodor Brisk [ost-mills.md#1]"
        assert index.lookup("Mira Holt", "birthplace") == "Kestrel Bay [kestrel-bay.md#1]"
    finally:
        index.close()
