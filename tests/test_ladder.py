"""The difficulty ladder: reproducible items, right answers, prompts, exact checking and level selection (no model)."""

from __future__ import annotations

import re

import pytest

from tokenomy.benchmarks.ladder import (
    FAMILIES,
    INSTRUCTIONS,
    LEVELS,
    SPLITS,
    STOP,
    Item,
    accuracy_by_level,
    chat_prompt,
    check,
    extract,
    few_shot_prompt,
    keep_levels,
    ladder,
    level_items,
    normalizer,
)


def _solve(item: Item) -> str:
    """Each family's answer, recomputed from the question text alone."""
    q = item.question
    if item.family in ("arithmetic", "carry"):
        tokens = re.fullmatch(r"What is (.+)\?", q).group(1).split()
        total = int(tokens[0])
        for op, x in zip(tokens[1::2], tokens[2::2], strict=True):
            total = total + int(x) if op == "+" else total - int(x)
        return str(total)
    if item.family == "last_letters":
        names = re.search(r'"(.+)"', q).group(1).split()
        return "".join(name[-1].lower() for name in names)
    if item.family == "coin_flip":
        flips = len(re.findall(r"\w+ flips the coin\.", q))
        return "yes" if flips % 2 == 0 else "no"
    assert item.family == "sorting"
    numbers = [int(x) for x in q.split(":", 1)[1].split(",")]
    return ", ".join(str(x) for x in sorted(numbers))


def _operands(item: Item) -> list[str]:
    """The numbers or names an item is made of."""
    q = item.question
    if item.family in ("arithmetic", "carry"):
        return re.findall(r"\d+", q)
    if item.family == "last_letters":
        return re.search(r'"(.+)"', q).group(1).split()
    if item.family == "coin_flip":
        return re.findall(r"(\w+) (?:flips|does not flip) the coin", q)
    return [x.strip() for x in q.split(":", 1)[1].split(",")]


# --- reproducibility ----------------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_items():
    assert ladder(n=8, seed=3) == ladder(n=8, seed=3)
    a = ladder(n=8, seed=3)
    assert len(a) == len(FAMILIES) * len(LEVELS) * 8
    assert [(it.family, it.level) for it in a[:9]] == [("arithmetic", 1)] * 8 + [("arithmetic", 2)]
    assert a[0].id == "arithmetic-1-0" and a[8 * 7 + 3].id == "last_letters-3-3"


def test_a_stream_does_not_depend_on_n():
    for family in FAMILIES:
        assert level_items(family, 3, n=5) == level_items(family, 3, n=15)[:5]


def test_splits_are_disjoint_and_items_distinct():
    for family in FAMILIES:
        for level in LEVELS:
            n = 12 if level == 1 else 30  # level 1 is small: 81 carry and 126 arithmetic questions in all
            by_split = {s: {it.question for it in level_items(family, level, n=n, split=s)}
                        for s in ("train", "test")}
            by_split["shots"] = {it.question for it in level_items(family, level, n=5, split="shots")}
            by_split["dev"] = {it.question for it in level_items(family, level, n=5, split="dev")}
            for s, qs in by_split.items():
                assert len(qs) == (5 if s in ("shots", "dev") else n), (family, level, s)
            names = list(by_split)
            for i, s in enumerate(names):
                for t in names[i + 1:]:
                    assert not by_split[s] & by_split[t], (family, level, s, t)


def test_different_seeds_give_different_items():
    for family in FAMILIES:
        for level in (3, 4, 5):
            a = {it.question for it in level_items(family, level, n=20, seed=0)}
            b = {it.question for it in level_items(family, level, n=20, seed=1)}
            assert len(a & b) <= 2, (family, level)
    assert level_items("arithmetic", 1, n=20, seed=0) != level_items("arithmetic", 1, n=20, seed=1)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="family"):
        level_items("poetry", 1)
    with pytest.raises(ValueError, match="split"):
        level_items("arithmetic", 1, split="validation")
    with pytest.raises(ValueError, match="level"):
        level_items("arithmetic", 0)
    with pytest.raises(ValueError, match="distinct"):
        level_items("carry", 1, n=80)  # 81 questions, spread over four splits
    with pytest.raises(ValueError, match="family"):
        extract("poetry", "7")
    assert set(SPLITS) == {"train", "dev", "test", "shots"}


# --- answers and difficulty ---------------------------------------------------------------------------------------


def test_answers_are_right():
    many = [it for f in FAMILIES for lv in LEVELS for it in level_items(f, lv, n=20 if lv == 1 else 60, seed=5)]
    for it in many + ladder(n=6, split="shots") + ladder(n=12, split="train") + ladder(n=20, split="dev"):
        assert it.answer == _solve(it), it
        assert "\n" not in it.question


def test_difficulty_knobs():
    for level in LEVELS:
        for it in level_items("arithmetic", level, n=30):
            numbers = [int(x) for x in _operands(it)]
            assert len(numbers) == level + 1 and all(1 <= x <= 9 for x in numbers)
            tokens = re.fullmatch(r"What is (.+)\?", it.question).group(1).split()
            total = int(tokens[0])
            for op, x in zip(tokens[1::2], tokens[2::2], strict=True):
                total = total + int(x) if op == "+" else total - int(x)
                assert total >= 0  # the running total never goes negative
        for it in level_items("last_letters", level, n=30):
            names = _operands(it)
            assert len(names) == level + 1 == len(set(names)) == len(it.answer) and it.answer.islower()
        for it in level_items("coin_flip", level, n=30):
            people = _operands(it)
            assert len(people) == level + 1 == len(set(people))
            assert it.question.startswith("A coin is heads up. ") and it.question.endswith(
                " Is the coin still heads up?")
            assert it.answer in ("yes", "no")
        for it in level_items("sorting", level, n=30):
            numbers = [int(x) for x in _operands(it)]
            assert len(numbers) == level + 2 == len(set(numbers))
            assert numbers != sorted(numbers) and all(1 <= x <= 20 for x in numbers)
        for it in level_items("carry", level, n=12):
            a, b = (int(x) for x in _operands(it))
            assert len(str(a)) == len(str(b)) == level
            if level >= 2:  # some column carries
                assert any(int(x) + int(y) >= 10 for x, y in zip(str(a), str(b), strict=True))
    # both answers of coin_flip occur
    assert {it.answer for it in level_items("coin_flip", 3, n=30)} == {"yes", "no"}
    assert level_items("arithmetic", 1, n=1)[0].question.count(" ") == 4  # "What is 3 + 4?"


# --- prompts ------------------------------------------------------------------------------------------------------


def test_few_shot_prompt_format():
    it = level_items("arithmetic", 2, n=1)[0]
    p = few_shot_prompt(it)
    assert STOP == ("\n",)
    assert p.startswith(INSTRUCTIONS["arithmetic"] + "\n\n")
    assert p.endswith(f"Q: {it.question}\nA:")
    blocks = p.split("\n\n")
    assert len(blocks) == 1 + 3 + 1
    for block in blocks[1:-1]:
        q, a = block.split("\n")
        assert q.startswith("Q: What is ") and a.startswith("A: ")
        assert len(re.findall(r"\d+", q)) == 3  # the same level
        assert a == "A: " + _solve(Item("arithmetic", 2, 0, q[3:], ""))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shots", [0, 1, 3, 5])
def test_few_shot_prompt_has_exactly_the_shots_and_never_the_item(family, shots):
    for level in (1, 4):
        for it in level_items(family, level, n=6):
            p = few_shot_prompt(it, shots=shots)
            assert p.count("Q: ") == shots + 1 and p.count("\nA:") == shots + 1
            assert p.count(it.question) == 1 and p.endswith(f"Q: {it.question}\nA:")
            examples = re.findall(r"Q: (.+)\nA: (.+)\n\n", p)
            assert len(examples) == shots
            for q, a in examples:
                assert q != it.question
                ex = Item(family, level, 0, q, a)
                assert a == _solve(ex)
                assert len(_operands(ex)) == len(_operands(it))
        # the same examples for every item of a level: the prompts share their prefix
        first, second = (few_shot_prompt(it, shots=shots) for it in level_items(family, level, n=2))
        head = first.rsplit("Q: ", 1)[0]
        assert second.startswith(head)


def test_few_shot_prompt_skips_an_item_from_the_shots_split():
    own = level_items("sorting", 2, n=1, split="shots")[0]
    p = few_shot_prompt(own, shots=3)
    assert p.count(own.question) == 1 and p.count("Q: ") == 4
    with pytest.raises(ValueError):
        few_shot_prompt(own, shots=-1)


def test_chat_prompt():
    it = level_items("coin_flip", 2, n=1)[0]
    msgs = chat_prompt(it)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "answer only" in msgs[0]["content"] and "yes or no" in msgs[0]["content"]
    assert msgs[1]["content"] == it.question
    msgs = chat_prompt(it, shots=2)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"] in ("yes", "no") and msgs[-1]["content"] == it.question


# --- checking -----------------------------------------------------------------------------------------------------


def _item(family: str, answer: str) -> Item:
    return Item(family, 1, 0, "?", answer)


@pytest.mark.parametrize("text", ["7", " 7", "7\nQ: What is 1 + 1?\nA: 2", " 7.", "The answer is 7",
                                  "the answer is: 7 apples", "A: 7", "3 + 4 = 7", "\n 7\n", "7.0", "**7**",
                                  "So the answer is 7.", "**Answer:** 7", "The answer is: 7", "answer = 7"])
def test_check_accepts_a_right_integer(text):
    assert check(_item("arithmetic", "7"), text)


@pytest.mark.parametrize("text", ["8", " 17", "-7", "7.5", "", "seven", None, "\n8\n7", "I think 8, not 7"])
def test_check_rejects_a_wrong_integer(text):
    assert not check(_item("arithmetic", "7"), text)


def test_integer_extraction_on_messy_text():
    assert extract("carry", " 1,234 is the sum") == "1234"
    assert extract("carry", "132\n\nQ: What is 5 + 5?") == "132"
    assert extract("arithmetic", "= -3") == "-3"
    assert extract("arithmetic", "007") == "7"
    assert extract("arithmetic", "no idea") is None
    assert extract("arithmetic", "") is None
    assert extract("arithmetic", None) is None
    it = Item("carry", 2, 0, "What is 47 + 85?", "132")
    assert check(it, " 132") and check(it, "47 + 85 = 132.") and not check(it, "47 + 85")


def test_last_letters_extraction():
    it = _item("last_letters", "nk")
    for text in [" nk", "nk\nQ: Take", '"nk"', " NK.", "The answer is nk", "n k", "n, k", "Answer: nk",
                 "**Answer:** nk", "The answer is: **nk**"]:
        assert check(it, text), text
    for text in [" kn", "n", "nkx", "The last letters are nk", "Answering: nk", "", None, "\nkn\nnk"]:
        assert not check(it, text), text
    assert extract("last_letters", " 'Ab cd'") == "ab"
    assert extract("last_letters", "123") is None


def test_coin_flip_extraction():
    yes, no = _item("coin_flip", "yes"), _item("coin_flip", "no")
    for text in [" Yes", "yes.", "Yes, it is.", "heads", " Heads up.", "The answer is yes\nQ: no"]:
        assert check(yes, text) and not check(no, text), text
    for text in [" No", "no.", "NO", "tails", "No, it is tails."]:
        assert check(no, text) and not check(yes, text), text
    for text in ["maybe", "", "not sure", "nothing", "\nyesterday"]:
        assert extract("coin_flip", text) is None, text


def test_sorting_extraction():
    it = _item("sorting", "1, 4, 9")
    for text in [" 1, 4, 9", "1,4,9", "1 4 9", "[1, 4, 9]", "1, 4, 9.\nQ: Sort", "The answer is 1, 4, 9"]:
        assert check(it, text), text
    for text in [" 1, 9, 4", "1, 4", "1, 4, 9, 10", "one, four, nine", "", None]:
        assert not check(it, text), text


def test_every_gold_answer_checks_and_normalizes_to_itself():
    for it in ladder(n=10):
        assert check(it, " " + it.answer + "\nQ: next")
        assert check(it, f"The answer is {it.answer}.")
        assert normalizer(it.family)(it.answer) == it.answer == extract(it, it.answer)
        assert normalizer(it.family)(None) is None


def test_normalizer_groups_equal_answers():
    norm = normalizer("coin_flip")
    assert norm(" Yes.") == norm("heads") == "yes"
    assert normalizer("sorting")("1,4,9") == normalizer("sorting")(" 1, 4, 9.")
    with pytest.raises(ValueError):
        normalizer("poetry")


# --- selecting levels ---------------------------------------------------------------------------------------------


def test_accuracy_by_level():
    its = level_items("arithmetic", 1, n=4) + level_items("sorting", 2, n=2)
    texts: list[str | None] = [its[0].answer, "x", None, its[3].answer, its[4].answer, its[5].answer]
    assert accuracy_by_level(its, texts) == {("arithmetic", 1): 0.5, ("sorting", 2): 1.0}
    with pytest.raises(ValueError):
        accuracy_by_level(its, texts[:-1])


def test_keep_levels():
    scores = {
        ("arithmetic", 1): {"smol": 0.9, "gemma": 0.6},   # smol too good
        ("arithmetic", 2): {"smol": 0.5, "gemma": 0.3},   # both in band
        ("arithmetic", 3): {"smol": 0.2, "gemma": 0.8},   # the bounds count as in band
        ("sorting", 4): {"smol": 0.1, "gemma": 0.5},      # smol too weak
        ("carry", 2): {"gemma": 0.5},                     # smol not scored
        ("carry", 3): {},                                 # nobody scored
    }
    assert keep_levels(scores) == [("arithmetic", 2), ("arithmetic", 3), ("carry", 2)]
    assert keep_levels(scores, models=["smol", "gemma"]) == [("arithmetic", 2), ("arithmetic", 3)]
    assert keep_levels(scores, models=["gemma"]) == [("arithmetic", 1), ("arithmetic", 2), ("arithmetic", 3),
                                                     ("sorting", 4), ("carry", 2)]
    assert keep_levels(scores, lo=0.3, hi=0.6) == [("arithmetic", 2), ("carry", 2)]
    assert keep_levels(scores, models=[]) == []
    assert keep_levels({}) == []
