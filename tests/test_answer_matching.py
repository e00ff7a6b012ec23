"""``answer_matches``: the one scorer of every benchmark (planning, prose, batch, graph, peers)."""

import pytest

from tokenomy.agents.answers import answer_matches

MAYOR = "Who is the mayor of Brannock?"


@pytest.mark.parametrize("said", [
    "Petra Lunde", "petra lunde.", "Petra Lunde is the mayor of Brannock.", "The mayor of Brannock is Petra Lunde.",
    "Brannock's mayor is Petra Lunde [brannock.md#3].", "According to the article, the mayor is Petra Lunde.",
    "**Petra Lunde**", "It is Petra Lunde, since 2019.", "Answer: Petra Lunde",
])
def test_a_name_inside_a_sentence_matches(said):
    assert answer_matches(said, "Petra Lunde", MAYOR), said


@pytest.mark.parametrize("said", [
    "Petra", "Lunde", "Petra Lunde Bridge", "Mayor Petra Lunde", "Petra Lunde or Tobiah Grell",
    "Tobiah Grell is the mayor; Petra Lunde was before him.", "petra lunde is the mayor", "", "Brannock", None,
    "The mayor is not known.",
])
def test_another_name_part_of_a_name_or_two_names_do_not(said):
    assert not answer_matches(said, "Petra Lunde", MAYOR), said


def test_without_the_question_a_name_it_holds_counts_against():
    assert answer_matches("Petra Lunde is the mayor.", "Petra Lunde")
    assert not answer_matches("Petra Lunde is the mayor of Brannock.", "Petra Lunde")


def test_a_gold_name_the_question_holds_must_be_said_exactly():
    asked = "Which town is larger, Velmora or Brannock?"
    assert answer_matches("Velmora", "Velmora", asked) and answer_matches("velmora.", "Velmora", asked)
    # either sentence names both towns: the name rule proves nothing here
    assert not answer_matches("Velmora is larger than Brannock.", "Velmora", asked)
    assert not answer_matches("Brannock is larger than Velmora.", "Velmora", asked)


def test_multi_hop_answers_naming_the_hops_are_not_read_as_the_name():
    # the rule is "the only name", as for numbers "the only number": an answer listing the chain is not scored
    asked = "Where was the founder of the Greywater Ferry Company born?"
    assert answer_matches("The founder of the Greywater Ferry Company was born in Teskemouth.", "Teskemouth", asked)
    assert not answer_matches("Ysolde Marrick founded it; she was born in Teskemouth.", "Teskemouth", asked)


def test_only_golds_that_are_one_capitalized_name_get_the_rule():
    assert not answer_matches("The colour is blue.", "blue")
    assert not answer_matches("It was Jan van Dijk.", "Jan van Dijk")  # not one run: exact only
    assert answer_matches("jan van dijk", "Jan van Dijk")
    assert not answer_matches("Yes, it is.", "Yes")


def test_numbers_keep_their_rule():
    assert answer_matches("The population is 14,600.", "14600", "What is the population of Sallowford?")
    assert answer_matches("The price of Urthudav 41 is 611.", "611", "What does Urthudav 41 cost?")
    assert not answer_matches("Between 14,600 and 8,245.", "14600")
    assert not answer_matches("Petra Lunde", "14600")


@pytest.mark.timeout(30)
def test_a_huge_or_hostile_answer_is_scored_without_backtracking():
    # a peer's runaway answer (CodeAgent printed 23k tokens a task) is still one linear pass
    for said in ["A" + "a" * 200_000 + "-", "Ab-" * 100_000, "Ab " * 100_000 + "Petra Lunde"]:
        assert not answer_matches(said, "Petra Lunde", MAYOR)
    assert answer_matches("Petra Lunde. " + "x " * 500_000, "Petra Lunde", MAYOR)
