"""The learned step router (``agents.step_router.LearnedStepRoute``): training rows from both models' outcomes,
a router that learns which steps the long model should rewrite, and what the data cost."""

from __future__ import annotations

import pytest

from tokenomy.agents.policy import Problem
from tokenomy.agents.step_router import FEATURES, LearnedStepRoute, step_features
from tokenomy.errors import CapabilityError, UserError
from tokenomy.kernels.scripted import ScriptedEngine
from tokenomy.kernels.types import Completion
from tokenomy.kernels.usage import Usage


def _kind(req) -> str:
    return req.tags[0] if req.tags else ""


def _short(req) -> str:
    """A short model that guesses on hard questions (unsure: low log-probabilities) and computes on easy ones;
    its answer is right only after a computed step."""
    text = req.prompt if isinstance(req.prompt, str) else ""
    kind = _kind(req)
    if kind == "answer":
        return "right" if "compute" in text.rsplit("</think>", 1)[0].rsplit("<think>", 1)[-1] else "wrong"
    if kind == "rollout":
        return ""
    if text.rstrip().endswith(("compute 5", "guess 7")):
        return ""  # one step, then the thinking closes
    return "guess 7" if "hard" in text else "compute 5"


def _scorer(prompt: str, reply: str) -> list[float]:
    return [-3.0] if "guess" in reply else [-0.1]


def _pair():
    short = ScriptedEngine(_short, scorer=_scorer, flops_per_token=1.0)
    long = ScriptedEngine(lambda req: "compute 5", flops_per_token=3.0)
    return long, short


def _problems(n: int, start: int = 0) -> list[Problem]:
    return [Problem(f"{'hard' if i % 2 else 'easy'} question {i}: 2 + 3?") for i in range(start, start + n)]


def test_collect_labels_the_steps_where_the_long_model_pays_and_counts_the_cost():
    long, short = _pair()
    policy = LearnedStepRoute(long, short, max_steps=2)
    rows, cost = policy.collect(_problems(6), [lambda a: a == "right"] * 6)
    assert len(rows) == 6  # one step each, then the short model closes its thinking
    assert [r.long_pays for r in rows] == [False, True] * 3
    assert all(r.long_correct for r in rows) and [r.short_correct for r in rows] == [True, False] * 3
    assert all(len(r.features) == len(FEATURES) for r in rows)
    assert cost.models["long"].usage.calls == 6 and cost.models["short"].usage.calls > 6
    assert cost.flops is not None and cost.flops > 0


def test_the_trained_router_sends_only_the_steps_that_pay_to_the_long_model():
    long, short = _pair()
    policy = LearnedStepRoute(long, short, max_steps=2)
    untrained = policy.run(_problems(1)[0])
    assert untrained.escalated  # untrained: every step to the long model
    rows, cost = policy.collect(_problems(10), [lambda a: a == "right"] * 10)
    fit = policy.fit(rows, cost=cost)
    assert fit.rows == 10 and fit.positives == 5 and fit.accuracy == 1.0
    assert fit.to_dict()["cost"]["models"]["long"]["calls"] == 5 + 5
    for p in _problems(6, start=100):
        res = policy.run(p)
        assert res.answer == "right"
        assert res.escalated == p.question.startswith("hard")
        if res.escalated:  # the short model's step was thrown away, and counted as spent
            assert res.ledger.models["short"].discarded_tokens > 0


def test_long_rate_sets_the_threshold_for_a_share_of_the_steps():
    long, short = _pair()
    policy = LearnedStepRoute(long, short, max_steps=2)
    rows, _ = policy.collect(_problems(8), [lambda a: a == "right"] * 8)
    policy.fit(rows, long_rate=0.0)
    assert not any(policy.run(p).escalated for p in _problems(4, start=50))
    policy.fit(rows, long_rate=1.0)
    assert all(policy.run(p).escalated for p in _problems(4, start=50))


def test_bad_input_is_refused():
    long, short = _pair()
    with pytest.raises(CapabilityError):  # the router reads the short model's log-probabilities
        LearnedStepRoute(long, ScriptedEngine(lambda r: "x"))
    policy = LearnedStepRoute(long, short)
    with pytest.raises(UserError):
        policy.fit([])
    with pytest.raises(UserError):
        policy.collect(_problems(2), [lambda a: True])
    with pytest.raises(UserError):
        LearnedStepRoute(long, short, threshold=1.5)


def test_features_without_logprobs_are_zeros_not_errors():
    c = Completion(text="3 + 4 = 7", token_ids=[1, 2, 3], finish_reason="stop", usage=Usage())
    f = step_features(c, 1, 4, 24)
    assert f[:3] == [0.0, 0.0, 0.0] and f[3] == pytest.approx(3 / 24) and f[4] == 0.25 and f[-1] == 1.0
