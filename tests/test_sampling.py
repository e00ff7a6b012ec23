"""Answer-level sampling: normalizers, stopping rules, short-m@k accounting, live runs on the scripted engine,
record/replay."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import pytest

from tokenomy.agents.answers import NORMALIZERS, normalize_answer
from tokenomy.agents.consistency import SelfConsistency
from tokenomy.agents.replay import load_pools, replay, save_pools
from tokenomy.agents.sampling import Sample, majority_vote, vote_counts
from tokenomy.agents.stopping import ESC, AdaptiveConsistency, FixedN, ShortMK, beta_majority_probability, short_m_at_k
from tokenomy.kernels import ScriptedEngine

# -- normalizers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("The answer is 42.", "42"),
    ("Answer: $1,234.00", "1234"),
    ("answer: 5.0", "5"),
    ("5.0", "5"),
    ("-3", "-3"),
    ("The value is -3", "-3"),
    ("5-3 = 2", "2"),
    ("Answer: 0.50", "0.5"),
    ("Answer: 2+3 = 5", "5"),
    ("x = 3 + 4\nSo 7", "7"),
    ("I got 10 first, then 12", "12"),
    ("A: 17 apples\nand 3 pears", "17"),
    ("Q: 2+2?\nA: 4", "4"),
    ("Q: 2+2? A: 4 (not 5)", "5"),
    ("Answer:\n**42**", "42"),
    ("<think>maybe 3</think>Answer: 4", "4"),
    ("It went up 50%", "50"),
    ("1,2345", "2345"),
    ("Answer: five (not 6)", "6"),
    ("Answer: five", None),
    ("no numbers here", None),
    ("", None),
    (None, None),
])
def test_number(text, expected):
    assert normalize_answer(text, "number") == expected


@pytest.mark.parametrize("text, expected", [
    ('**"Paris."**', "paris"),
    ("Answer:   New   York!", "new york"),
    ("The answer is Paris", "paris"),
    ('answer = "Paris"', "paris"),
    ("Paris\nbecause it is the capital", "paris"),
    ("Plan A: go north", "plan a: go north"),
    ("Q: capital?\nA: Rome", "rome"),
    ("  'Ça va'  ", "ça va"),
    ("...", None),
    ("", None),
])
def test_text(text, expected):
    assert normalize_answer(text, "text") == expected


@pytest.mark.parametrize("text, expected", [
    ("Yes, because it rains.", "yes"),
    ("No.", "no"),
    ("True", "yes"),
    ("answer: false", "no"),
    ("Answer: Correct", "yes"),
    ("Nope", "no"),
    ("I think yes", "yes"),
    ("maybe", None),
    ("it is true and false", None),
    ("", None),
])
def test_yesno(text, expected):
    assert normalize_answer(text, "yesno") == expected


@pytest.mark.parametrize("text, expected", [
    ("Answer: [A, b, and C.]", "a,b,c"),
    ("1 2.0 3", "1,2,3"),
    ("red; Green ;blue", "red,green,blue"),
    ("Answer: x", "x"),
    ("", None),
    (",,", None),
])
def test_list(text, expected):
    assert normalize_answer(text, "list") == expected


@pytest.mark.parametrize("text, expected", [
    ("Answer: 5.0", "5"),
    ("$1,000", "1000"),
    ("Answer: Paris.", "paris"),
    ("5 apples", "5 apples"),
    ("**-2**", "-2"),
    ("", None),
])
def test_auto(text, expected):
    assert normalize_answer(text) == expected


def test_normalizer_registry_and_errors():
    assert set(NORMALIZERS) == {"auto", "number", "text", "yesno", "list"}
    for fn in NORMALIZERS.values():
        assert fn(None) is None
        assert fn("\n\n") is None
    with pytest.raises(ValueError, match="unknown answer kind"):
        normalize_answer("5", "numbers")


# -- votes ---------------------------------------------------------------------------------------------------------


def test_vote_ties_and_none():
    assert majority_vote(["b", "a", "a", "b"]) == "a"  # a reached 2 first
    assert majority_vote(["a", "b"]) == "a"
    assert majority_vote([None, "b", None, None]) == "b"  # None never votes
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    assert vote_counts(["b", None, "a", "a", "b", "c"]) == {"a": 2, "b": 2, "c": 1}
    assert list(vote_counts(["b", None, "a", "a", "b", "c"])) == ["a", "b", "c"]


# -- stopping rules ------------------------------------------------------------------------------------------------


def stops_at(rule, answers):
    """The number of answers after which ``rule`` stops (len(answers) if it never does)."""
    for i in range(1, len(answers) + 1):
        if rule.should_stop(answers[:i]):
            return i
    return len(answers)


def test_fixed_n():
    rule = FixedN(3)
    assert rule.max_samples == 3 and rule.name == "fixed(n=3)"
    assert stops_at(rule, ["a"] * 10) == 3
    with pytest.raises(ValueError):
        FixedN(0)


def test_esc_stops_on_unanimous_window():
    rule = ESC()
    assert rule.name == "esc(w=5)"
    answers = ["x"] * 40
    assert [rule.should_stop(answers[:i]) for i in range(1, 6)] == [False] * 4 + [True]
    assert rule.reason(answers[:5]) == "unanimous window"
    assert rule.vote(answers[:5]) == "x"


def test_esc_goes_on_when_a_window_is_split():
    rule = ESC(window=5)
    answers = ["x", "x", "y", "x", "x"] + ["y"] * 5
    assert stops_at(rule, answers) == 10
    assert not any(rule.should_stop(answers[:i]) for i in range(1, 10))
    assert rule.vote(answers) == "y"  # the vote is over all samples: 6 y against 4 x
    # A window of unparseable answers is not unanimous; only window boundaries count.
    assert not rule.should_stop([None] * 5)
    assert not rule.should_stop(["x", "y", "x", "x", "x", "x"])  # the last five agree, but 6 is no boundary
    capped = ESC(window=5, max_samples=12)
    assert capped.name == "esc(w=5,max=12)"
    mixed = ["a", "b"] * 10
    assert stops_at(capped, mixed) == 12 and capped.reason(mixed[:12]) == "max samples"
    assert [capped.next_chunk(n, batch=3) for n in (0, 2, 5, 10)] == [5, 3, 5, 2]


def _simpson(f, lo, hi, n=2000):
    h = (hi - lo) / n
    s = f(lo) + f(hi) + sum((4 if i % 2 else 2) * f(lo + i * h) for i in range(1, n))
    return s * h / 3


@pytest.mark.parametrize("a, b", [(0, 0), (1, 0), (5, 0), (3, 1), (2, 2), (7, 3), (10, 4), (1, 6)])
def test_beta_probability_is_exact(a, b):
    p = beta_majority_probability(a, b)
    assert isinstance(p, Fraction)
    density = lambda x: x**a * (1 - x) ** b  # noqa: E731
    numeric = _simpson(density, 0.5, 1.0) / _simpson(density, 0.0, 1.0)
    assert float(p) == pytest.approx(numeric, abs=1e-10)
    n = a + b + 1  # the binomial tail, by symmetry of Binomial(n, 1/2)
    assert p == Fraction(sum(comb(n, j) for j in range(b + 1, n + 1)), 2**n)


def test_beta_probability_values():
    assert beta_majority_probability(5, 0) == Fraction(63, 64) and float(beta_majority_probability(5, 0)) == 0.984375
    assert beta_majority_probability(3, 1) == Fraction(26, 32)
    assert beta_majority_probability(0, 0) == Fraction(1, 2)
    assert beta_majority_probability(2, 2) == Fraction(1, 2)
    with pytest.raises(ValueError):
        beta_majority_probability(-1, 0)


def test_adaptive_consistency_stopping_point():
    rule = AdaptiveConsistency()  # threshold 0.95
    assert rule.name == "adaptive(t=0.95)"
    assert stops_at(rule, ["x"] * 40) == 4  # 1 - 1/32 >= 0.95 > 1 - 1/16
    assert rule.reason(["x"] * 4) == "confident"
    # x y x x x x x: (6, 1) gives 247/256 >= 0.95 at the 7th sample; (5, 1) gives 120/128 < 0.95.
    stream = ["x", "y"] + ["x"] * 20
    assert stops_at(rule, stream) == 7
    assert rule.probability(stream[:7]) == Fraction(247, 256)
    # Unparseable answers are never votes: they delay the stop.
    assert stops_at(rule, [None] * 10 + ["x"] * 10) == 14
    assert stops_at(rule, [None] * 50) == 40 and rule.reason([None] * 40) == "max samples"
    assert stops_at(AdaptiveConsistency(min_samples=6), ["x"] * 40) == 6
    # The threshold compares exactly: 15/16 is reached at a=3, b=0.
    assert stops_at(AdaptiveConsistency(threshold=0.9375), ["x"] * 40) == 3
    assert stops_at(AdaptiveConsistency(threshold=0.9375), ["x", "y"] * 20) == 40
    with pytest.raises(ValueError):
        AdaptiveConsistency(threshold=0)
    with pytest.raises(ValueError):
        AdaptiveConsistency(min_samples=50)


def mk(answer, tokens, text=None):
    return Sample(text=text or f"Answer: {answer}", answer=answer, completion_tokens=tokens)


def test_short_m_at_k_accounting():
    samples = [mk("a", 10), mk("b", 4), mk("a", 7), mk("c", 4), mk("a", 20)]
    answer, used, tokens = short_m_at_k(samples, 3)
    assert [s.completion_tokens for s in used] == [4, 4, 7]
    assert answer == "b"  # a three-way tie goes to the shortest
    assert tokens == (4 + 4 + 7) + (5 - 3) * 7
    answer, used, tokens = short_m_at_k(samples, 1)
    assert (answer, tokens) == ("b", 5 * 4)
    answer, used, tokens = short_m_at_k(samples, 5)
    assert (answer, tokens, len(used)) == ("a", 45, 5)
    answer, _, _ = short_m_at_k([mk("a", 9), mk("b", 3), mk("a", 5), mk("b", 8)], 4)
    assert answer == "b"  # 2-2: b reaches 2 first in finishing order (3, 5, 8, 9)
    answer, _, _ = short_m_at_k([mk(None, 1), mk("z", 2), mk(None, 3)], 2)
    assert answer == "z"
    for m in (0, 6):
        with pytest.raises(ValueError):
            short_m_at_k(samples, m)
    rule = ShortMK(2, 4)
    assert rule.name == "short-2@4" and rule.max_samples == 4
    decision = rule.apply(samples)
    assert decision.stopped == "first m finished"
    assert decision.completion_tokens == (4 + 4) + 2 * 4  # the first 4 samples: lengths 10, 4, 7, 4 -> 4, 4
    with pytest.raises(ValueError):
        ShortMK(5, 4)


def test_sample_roundtrip(tmp_path):
    s = Sample(text="Answer: 5", answer="5", completion_tokens=9, prompt_tokens=12, cached_prompt_tokens=4, seed=3)
    assert Sample.from_dict(s.to_dict()) == s
    assert Sample.from_dict({"text": "t", "answer": None, "completion_tokens": 1, "extra": 0}).seed is None
    pools = [[s, mk("6", 2)], [mk(None, 3)]]
    save_pools(tmp_path / "pools.json", pools)
    assert load_pools(tmp_path / "pools.json") == pools


# -- live ------------------------------------------------------------------------------------------------------------

PROMPT = "Q: what is it?\n"


def scripted(answers):
    """A scripted engine whose reply to the sample with seed s is ``answers[s]`` (lengths differ by answer)."""

    def reply(request):
        return f"Reasoning.\nAnswer: {answers[request.params.seed]}"

    return ScriptedEngine(script=reply)


def test_live_esc_unanimous_first_window():
    engine = scripted(["7"] * 40)
    sc = SelfConsistency(engine, ESC(), normalizer="number", temperature=0.7)
    result = sc.run(PROMPT)
    assert result.answer == "7" and result.stopped == "unanimous window"
    assert result.n_samples == len(engine.requests) == 5
    assert [len(b) for b in engine.batches] == [5]
    assert [r.params.seed for r in engine.requests] == [0, 1, 2, 3, 4]
    assert all(r.params.temperature == 0.7 and r.params.top_p == 0.95 for r in engine.requests)
    each = len(b"Reasoning.\nAnswer: 7")
    assert result.usage.completion_tokens == 5 * each == result.generated_tokens
    assert result.usage.prompt_tokens == 5 * len(PROMPT.encode()) and result.usage.calls == 5
    assert result.tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert result.votes == {"7": 5} and result.discarded == [] and result.discarded_tokens == 0


def test_live_esc_split_window():
    engine = scripted(["7", "7", "8", "7", "7"] + ["7"] * 35)
    result = SelfConsistency(engine, ESC(), normalizer="number", seed=0).run(PROMPT)
    assert result.n_samples == len(engine.requests) == 10
    assert [len(b) for b in engine.batches] == [5, 5]
    assert result.votes == {"7": 9, "8": 1} and result.answer == "7"
    assert result.usage.completion_tokens == sum(s.completion_tokens for s in result.samples)


def test_live_adaptive_one_at_a_time_and_batched():
    answers = ["x", "y"] + ["x"] * 38
    engine = scripted(answers)
    result = SelfConsistency(engine, AdaptiveConsistency(), normalizer="text").run(PROMPT)
    assert result.stopped == "confident" and result.answer == "x"
    assert result.n_samples == len(engine.requests) == 7
    assert all(len(b) == 1 for b in engine.batches)
    assert result.usage.completion_tokens == sum(s.completion_tokens for s in result.samples)
    assert result.usage.calls == 7

    engine = scripted(answers)
    result = SelfConsistency(engine, AdaptiveConsistency(), normalizer="text", batch=3).run(PROMPT)
    assert [len(b) for b in engine.batches] == [3, 3, 3]
    assert result.n_samples == 7 and len(result.discarded) == 2  # the batch overshot the stop by two
    assert result.usage.calls == len(engine.requests) == 9
    assert result.usage.completion_tokens == result.generated_tokens
    assert result.discarded_tokens == sum(s.completion_tokens for s in result.discarded)


def test_live_fixed_and_max_samples():
    engine = scripted(["a", "b", "c"] * 5)
    result = SelfConsistency(engine, FixedN(5), batch=2, seed=3).run(PROMPT)
    assert [len(b) for b in engine.batches] == [2, 2, 1]
    assert [r.params.seed for r in engine.requests] == [3, 4, 5, 6, 7]
    assert result.stopped == "max samples" and result.n_samples == 5
    assert result.answer == "a"  # a b c a b: a reaches 2 first
    engine = scripted(["a", "b"] * 10)
    result = SelfConsistency(engine, ESC(window=4, max_samples=10)).run(PROMPT)
    assert result.stopped == "max samples" and len(engine.requests) == 10
    assert [len(b) for b in engine.batches] == [4, 4, 2]


def test_live_short_m_at_k():
    answers = ["12345", "1", "22", "1", "333"]  # reply lengths grow with the answer
    engine = scripted(answers)
    result = SelfConsistency(engine, ShortMK(2, 5), normalizer="number").run(PROMPT)
    assert len(engine.requests) == 5 and [len(b) for b in engine.batches] == [5]
    assert result.stopped == "first m finished" and result.answer == "1" and result.n_samples == 2
    lengths = sorted(len(f"Reasoning.\nAnswer: {a}".encode()) for a in answers)
    assert result.usage.completion_tokens == lengths[0] + lengths[1] + 3 * lengths[1]
    assert result.generated_tokens == sum(lengths)
    assert result.discarded_tokens == sum(lengths) - lengths[0] - lengths[1]
    assert len(result.discarded) == 3
    assert result.usage.calls == 5 and result.usage.prompt_tokens == 5 * len(PROMPT.encode())


def test_live_pool_then_replay():
    engine = scripted(["4"] * 12)
    sc = SelfConsistency(engine, ESC(), normalizer="number", batch=4)
    pool = sc.sample(PROMPT, 12)
    assert [s.seed for s in pool] == list(range(12)) and [len(b) for b in engine.batches] == [4, 4, 4]
    assert all(s.answer == "4" and s.prompt_tokens == len(PROMPT.encode()) for s in pool)
    report = replay(ESC(), [pool], gold=["4"], shuffles=3)
    assert report.mean_samples == 5 and report.accuracy == 1.0


# -- replay ----------------------------------------------------------------------------------------------------------


def test_replay_known_results():
    same = [mk("7", 10) for _ in range(40)]
    mixed = [mk("a", 10) for _ in range(30)] + [mk("b", 10) for _ in range(10)]
    esc = replay(ESC(), [same], gold=["7"], shuffles=20)
    assert esc.rule == "esc(w=5)" and esc.shuffles == 20
    assert esc.mean_samples == 5 and esc.mean_tokens == 50
    assert esc.accuracy == 1.0 and esc.agreement == 1.0 and esc.per_item_samples == [5.0]
    ada = replay(AdaptiveConsistency(), [same, mixed], gold=["7", "a"], shuffles=20)
    assert ada.per_item_samples[0] == 4 and ada.mean_samples < 40
    assert 0 < ada.agreement <= 1 and ada.accuracy is not None
    fixed = replay(FixedN(40), [same, mixed], gold=["7", "b"])
    assert fixed.mean_samples == 40 and fixed.accuracy == 0.5 and fixed.agreement == 1.0
    assert replay(FixedN(3), [same], shuffles=2).accuracy is None
    # gold normalized on request
    assert replay(ESC(), [same], gold=["7.0"], normalizer="number", shuffles=2).accuracy == 1.0
    # a rule that never stops uses the whole pool
    assert replay(ESC(window=5), [[mk("a", 1), mk("b", 1), mk("a", 1)]], shuffles=4).mean_samples == 3


def test_replay_is_seeded_and_shared_across_rules():
    pool = [mk(a, 5 + i) for i, a in enumerate("aabacbaaab" * 3)]
    r1 = replay(ESC(), [pool, pool], shuffles=30, seed=1)
    r2 = replay(ESC(), [pool, pool], shuffles=30, seed=1)
    assert r1 == r2
    assert 5 <= r1.mean_samples <= 30
    assert str(r1).startswith("esc(w=5): samples=")


def test_replay_short_m_at_k():
    pool = [mk("a", 8) for _ in range(6)] + [mk("b", 3) for _ in range(2)]
    report = replay(ShortMK(2, 8), [pool], gold=["b"], shuffles=10)
    assert report.rule == "short-2@8" and report.mean_samples == 8
    assert report.accuracy == 1.0  # the two short ones finish first, whatever the order
    assert report.mean_tokens == 3 + 3 + 6 * 3
    report = replay(ShortMK(1, 4), [[mk("a", 5)] * 6], shuffles=3)
    assert report.mean_tokens == 4 * 5
    with pytest.raises(ValueError, match="needs 8 samples"):
        replay(ShortMK(2, 8), [pool[:5]])
    with pytest.raises(ValueError):
        replay(ESC(), [[]])
    with pytest.raises(ValueError):
        replay(ESC(), [pool], gold=["a", "b"])
