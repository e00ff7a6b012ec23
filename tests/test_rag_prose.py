"""RAG on free prose: the extraction rules for pronouns, appositions, lists, clauses and units (each with sentences
of its own), the model extractor's cache and token count, and ``bench rag --corpus --questions``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenomy.benchmarks.rag import format_rag_report, run_rag_bench, support_recall
from tokenomy.benchmarks.rag_prose import Fact, load_questions
from tokenomy.cli import main
from tokenomy.errors import UserError
from tokenomy.kernels import ScriptedEngine
from tokenomy.planners.rag_extract import ExtractCache, ModelExtractor, make_extractor
from tokenomy.tools.rag import RagStore
from tokenomy.tools.rag.extract import extract_triplets
from tokenomy.tools.rag.prose import is_person

from .rag_doubles import HashEmbedder

PROSE = Path(__file__).resolve().parent / "prose"


def facts(text: str, hint: str = "") -> set[tuple[str, str, str]]:
    return {t[:3] for t in extract_triplets(text, subject_hint=hint)}


# -- references -----------------------------------------------------------------------------------------------

def test_he_and_she_follow_the_last_person_and_it_the_main_subject():
    got = facts("Dunmere is a fishing village on the Grey Coast. It was founded in 1702 by Alma Reyes. "
                "She was born in Ostrel. Its harbour master is Tomas Brill.", "Dunmere")
    assert {("Dunmere", "founded", "1702"), ("Dunmere", "founder", "Alma Reyes"),
            ("Alma Reyes", "birthplace", "Ostrel"), ("Dunmere", "harbour master", "Tomas Brill")} <= got


def test_he_goes_back_to_the_person_of_the_previous_sentence_when_the_text_is_about_a_place():
    got = facts("Ostrel is the birthplace of Karl Benn. He left the town at the age of 19 and moved to Dunmere.",
                "Ostrel")
    assert ("Karl Benn", "birthplace", "Ostrel") in got or ("Ostrel", "birthplace", "Karl Benn") in got
    assert ("Karl Benn", "moved to", "Dunmere") in got and not any(s == "Ostrel" and "moved" in r for s, r, _ in got)


def test_the_town_and_the_company_mean_the_main_subject():
    got = facts("Velden is a river town. The town has 8,200 inhabitants. Today 300 people live in the old quarter.",
                "Velden")
    assert ("Velden", "population", "8,200") in got
    got = facts("Harrow Mills makes paper. The company was set up in 1911 by Ida Harrow.", "Harrow Mills")
    assert {("Harrow Mills", "founded", "1911"), ("Harrow Mills", "founder", "Ida Harrow")} <= got


def test_a_one_word_name_stands_for_the_longer_one_and_a_heading_for_the_opening_name():
    got = facts("The Lenne rises in the Alder Hills. It flows 95 km to the sea.", "River Lenne")
    assert ("River Lenne", "flows", "95") in got or ("River Lenne", "flows", "95 km") in got
    got = facts("Ida Harrow was born in 1880. Harrow died in 1950.", "Ida Harrow")
    assert ("Ida Harrow", "died in", "1950") in got


def test_a_definite_noun_with_no_name_belongs_to_the_main_subject():
    got = facts("Keel is a port. The crossing takes 95 minutes. The old lighthouse on Gull Rock was lit in 1836.",
                "Keel")
    assert ("Keel", "crossing takes", "95") in got and ("Keel", "old lighthouse lit", "1836") in got


# -- appositions, lists, clauses --------------------------------------------------------------------------------

def test_appositions_are_facts_of_their_own():
    got = facts("Mara Voss, a glassmaker from Pellhaven, founded Voss Glass in 1921.")
    assert {("Mara Voss", "is a", "glassmaker"), ("Mara Voss", "comes from", "Pellhaven"),
            ("Mara Voss", "founded", "Voss Glass")} <= got
    got = facts("Ana Roth, the mayor of Keel, was born in 1970 in Ostrel.")
    assert {("Keel", "mayor", "Ana Roth"), ("Ana Roth", "born", "1970"), ("Ana Roth", "birthplace", "Ostrel")} <= got
    got = facts("Keel is a port. Its mayor, Ana Roth, was elected in 2019.", "Keel")
    assert {("Keel", "mayor", "Ana Roth"), ("Ana Roth", "elected", "2019")} <= got
    got = facts("Tom Reyes, born in 1574 in the inland town of Harl, was a merchant.")
    assert {("Tom Reyes", "born", "1574"), ("Tom Reyes", "birthplace", "Harl")} <= got
    got = facts("The highest point of Galt is Mount Orr, 2,140 metres high.", "Galt")
    assert {("Galt", "highest point", "Mount Orr"), ("Mount Orr", "height", "2,140 metres")} <= got


def test_a_list_of_objects_gives_one_fact_each():
    got = facts("Harrow Mills makes paper, card and, since 1990, envelopes for banks.", "Harrow Mills")
    assert {("Harrow Mills", "makes", "paper"), ("Harrow Mills", "makes", "card"),
            ("Harrow Mills", "makes", "envelopes for banks")} <= got
    got = facts("Kelmar Works was founded by Ana Velor and Bo Tam.")
    assert {("Kelmar Works", "founder", "Ana Velor"), ("Kelmar Works", "founder", "Bo Tam")} <= got


def test_relative_and_subordinate_clauses():
    got = facts("Galt is known for its university, which was set up in 1893 by Ida Harrow.", "Galt")
    assert ("Galt university", "founder", "Ida Harrow") in got
    got = facts("Galt holds the Lamp Fair, which began in 1902.", "Galt")
    assert ("Lamp Fair", "began in", "1902") in got
    got = facts("Before she went into politics she worked for 17 years as a pilot.", "Ana Roth")
    assert ("Ana Roth", "worked for", "17") in got
    got = facts("Galt is a province. The highest point is Mount Orr, where the River Lenne has its source.", "Galt")
    assert ("River Lenne", "source", "Mount Orr") in got
    got = facts("Keel lies on the coast, although the two towns lie 64 km apart.", "Keel")
    assert ("Keel", "two towns lie", "64") in got


def test_several_facts_per_sentence_and_coordinated_verbs():
    got = facts("The Lenne rises on the slopes of Mount Orr and stretches 212 km to the sea.", "River Lenne")
    assert {("River Lenne", "rises on the slopes of", "Mount Orr"), ("River Lenne", "stretches", "212")} <= got
    got = facts("He came to Keel in 1603 and, nine years later, founded Galt.", "Tom Reyes")
    assert {("Tom Reyes", "came to", "Keel"), ("Tom Reyes", "founded", "Galt")} <= got
    got = facts("It received its charter in 1391, and it covers 8,450 square kilometres.", "Galt")
    assert ("Galt", "charter", "1391") in got and ("Galt", "covers", "8,450") in got


def test_numbers_with_units_and_dates():
    got = facts("Galt is a town. The clock tower on the square, 52 metres tall, was finished in 1704.", "Galt")
    assert ("Galt", "clock tower height", "52 metres") in got
    got = facts("The Lenne drains an area of 3,150 square kilometres.", "River Lenne")
    assert ("River Lenne", "area", "3,150 square kilometres") in got
    got = facts("In 1893 she founded the Galt School with 120 students. She led it until her death in 1921.",
                "Ida Harrow")
    assert {("Ida Harrow", "founded", "1893"), ("Ida Harrow", "founded", "Galt School"),
            ("Ida Harrow", "death", "1921")} <= got
    assert ("Galt", "population", "310,000") in facts("Galt is a province. About 310,000 people live in the province.",
                                                        "Galt")


def test_person_names_are_told_from_places():
    assert is_person("Helena Voss") and is_person("Ida Harrow")
    assert not any(map(is_person, ["Arlen Falls", "Port Arlen", "Corrow Ironworks", "Brennock", "Salt Coast"]))


def test_the_rules_read_the_prose_corpus():
    """The hand-written corpus (tests/prose): the rules find at least 90 facts (26 before they read prose)."""
    n = 0
    for f in sorted((PROSE / "corpus").glob("*.md")):
        title, _, body = f.read_text(encoding="utf-8").partition("\n")
        n += len(extract_triplets(body, subject_hint=title.lstrip("# ")))
    assert n >= 90


# -- the model extractor ------------------------------------------------------------------------------------------

def _scripted() -> ScriptedEngine:
    return ScriptedEngine(lambda req: "Orvel | population | 8200\nOrvel | mayor | Ana Toll")


def _corpus(tmp_path: Path) -> Path:
    d = tmp_path / "d"
    d.mkdir()
    (d / "o.md").write_text("# Orvel\n\nOrvel is a town of 8200 people. Its mayor is Ana Toll.\n")
    (d / "p.md").write_text("# Pell\n\nPell is a village near Orvel. It has 300 people.\n")
    return d


def test_model_facts_are_cached_per_chunk_so_reingesting_costs_nothing(tmp_path):
    corpus = _corpus(tmp_path)
    engine = _scripted()
    with RagStore(tmp_path / "s.sqlite") as store:
        ex = ModelExtractor(engine, cache=store.path)
        first = store.ingest(corpus, extract=ex)
        assert len(engine.requests) == 2 and first.extract_usage is not None and first.extract_usage.calls == 2
        assert first.extract_usage.prompt_tokens > 0 and first.extract_cached == 0
        (corpus / "p.md").write_text("# Pell\n\nPell is a village near Orvel. It has 310 people.\n")
        (corpus / "o.md").touch()
        second = store.ingest(corpus, extract=ex)  # p.md changed: one call; o.md unchanged: none
        assert len(engine.requests) == 3 and second.extract_usage.calls == 1
    # a new store of the same text, with the same cache file: every chunk from the cache
    with RagStore(tmp_path / "s2.sqlite") as store2:
        ex2 = ModelExtractor(engine, cache=ExtractCache(tmp_path / "s.sqlite"))
        third = store2.ingest(corpus, extract=ex2)
        assert len(engine.requests) == 3 and third.extract_usage.calls == 0 and third.extract_cached == 2
        assert ("Orvel", "mayor", "Ana Toll") in {(t.subject, t.relation, t.object) for t in store2.triplets()}
    # another model or another prompt version is another key
    assert ExtractCache.key("a", "text") != ExtractCache.key("b", "text") != ExtractCache.key("a", "text2")


def test_model_replies_in_numbered_lists_or_markdown_tables_are_read():
    from tokenomy.planners.rag_extract import parse_triplet_lines

    text = "Orvel is a town of 8200 people. Its mayor is Ana Toll."
    reply = ("```\n| Subject | Relation | Object |\n|---|---|---|\n| Orvel | population | 8200 |\n"
             "2. Orvel | mayor | **Ana Toll**\nAna Toll | mother | Ana Toll\n```")
    assert [f[:3] for f in parse_triplet_lines(reply, text)] == [("Orvel", "population", "8200"),
                                                                  ("Orvel", "mayor", "Ana Toll")]


def test_both_extractors_merge_and_unknown_kinds_are_refused(tmp_path):
    engine = _scripted()
    both = make_extractor("both", engine)
    got = both("Orvel is a town of 8200 people. Its mayor is Ana Toll.")
    assert ("Orvel", "population", "8200") in {f[:3] for f in got}
    assert len({f[:3] for f in got}) == len(got) and both.usage.calls == 1
    assert make_extractor("rules") is extract_triplets
    with pytest.raises(UserError, match="unknown extractor"):
        make_extractor("magic")


def test_rag_ingest_extract_model_caches_in_the_store(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    db = tmp_path / "s.sqlite"
    args = ["rag", "ingest", str(corpus), "--store", str(db), "--no-vectors", "--extract", "model", "--model",
            "scripted"]
    assert main(args) == 0
    assert "extraction: 2 model calls" in capsys.readouterr().out
    (corpus / "o.md").write_text("# Orvel\n\nOrvel is a town of 8200 people. Its mayor is Ana Toll. \n\n")
    assert main(args) == 0  # the file changed, its one chunk's text did not
    assert "extraction: 0 model calls" in capsys.readouterr().out
    assert main([*args[:-4], "--extract", "both", "--model", "scripted"]) == 0


# -- bench rag on prose -------------------------------------------------------------------------------------------

def test_support_recall_on_prose_counts_the_support_text_or_entity_and_value():
    fact = Fact("Port Arlen", "12900", "The town has 12,900 inhabitants")
    assert support_recall("[x.md#1] The town has 12,900  inhabitants, and more.", [fact]) == 1
    assert support_recall("Port Arlen: population=12,900", [fact]) == 1
    assert support_recall("Brennock: population=12,900", [fact]) == 0
    assert support_recall("[port-arlen.md#2] It has 12900 people.", [fact]) == 1  # the entity's own file


def test_load_questions_checks_the_support_against_the_corpus(tmp_path):
    qs = load_questions(PROSE / "questions.jsonl", PROSE / "corpus")
    assert len(qs) >= 40 and all(q.facts for q in qs)
    assert any(f.entity == "Port Arlen" and f.value == "12900" for q in qs for f in q.facts)
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"question": "?", "answer": "x", "support": [{"file": "port-arlen.md",
                                                                           "text": "not in it"}]}) + "\n")
    with pytest.raises(UserError, match="not in"):
        load_questions(bad, PROSE / "corpus")
    with pytest.raises(UserError, match="no questions file"):
        load_questions(tmp_path / "none.jsonl")


def test_bench_rag_on_the_prose_corpus(tmp_path):
    result = run_rag_bench(corpus=PROSE / "corpus", questions_file=PROSE / "questions.jsonl", questions=12,
                           budgets=(64,), embedder=HashEmbedder(), progress=None)
    assert result["questions"] == 12 and result["ingest"]["triplets"] >= 90
    assert result["ingest"]["extract"] == "rules" and result["ingest"]["extract_usage"] is None
    ref = result["reference"]
    assert ref.support_recall >= 0.9
    graph = next(r for r in result["records"] if r.retriever == "graph" and r.compressor == "triplets")
    assert graph.support_recall >= 0.5 and graph.context_tokens <= 64
    report = format_rag_report(result)
    assert "corpus" in report and "25%" in report
    with pytest.raises(UserError, match="--questions"):
        run_rag_bench(corpus=PROSE / "corpus", embedder=HashEmbedder(), progress=None)
