"""``UsageLimits``: a budget of tokens, calls or dollars, checked before every model call wherever it is made."""

import asyncio
import threading

import pytest

from tokenomy import tool
from tokenomy.agents import Problem
from tokenomy.agents.collab import PlanExpand
from tokenomy.errors import BudgetExceeded, UserError
from tokenomy.kernels import Price, Request, SamplingParams, ScriptedEngine, UsageLimits, Worker
from tokenomy.kernels.openai_engine import OpenAIEngine
from tokenomy.planners.rewoo import Rewoo

from .strict_openai_server import StrictOpenAIServer


def test_calls_stop_at_the_limit_and_the_error_says_what_was_spent():
    engine = ScriptedEngine(lambda req: "ok")
    with UsageLimits(calls=2) as limits:
        engine.generate("a")
        engine.generate("b")
        with pytest.raises(BudgetExceeded, match="calls 3 > limit 2; the finished calls spent prompt=2") as info:
            engine.generate("c")
    assert info.value.usage.calls == 2 and limits.spent.calls == 2
    assert len(engine.requests) == 2  # the third call was never made
    engine.generate("d")  # outside the scope: no budget


def test_tokens_lower_max_tokens_to_what_is_left_and_refuse_a_prompt_that_cannot_fit():
    engine = ScriptedEngine(lambda req: "x" * req.params.max_tokens)  # replies as long as it may
    with UsageLimits(total_tokens=30) as limits:
        first = engine.generate("0123456789", max_tokens=100)  # 10 prompt tokens (bytes), 20 left for the reply
        assert first.usage.completion_tokens == 20 and engine.requests[0].params.max_tokens == 20
        with pytest.raises(BudgetExceeded, match="tokens"):
            engine.generate("a")
    assert limits.spent.total_tokens == 30


def test_a_batch_refuses_only_the_requests_that_do_not_fit():
    engine = ScriptedEngine(lambda req: "ok")
    with UsageLimits(calls=2):
        reqs = [Request(prompt=p, params=SamplingParams(max_tokens=4)) for p in "abc"]
    out = engine.generate_batch(reqs, return_exceptions=True)  # the budget came with the requests
    assert [type(o).__name__ for o in out] == ["Completion", "Completion", "BudgetExceeded"]


def test_dollars_are_priced_per_model_and_a_missing_price_is_a_clear_error():
    engine = ScriptedEngine(lambda req: "ok")
    limits = UsageLimits(dollars=0.001, prices={"scripted": Price(input=10.0, output=30.0, cached_input=1.0)})
    with limits:
        engine.generate("hello", max_tokens=2)  # at most 5 x 10 + 2 x 30 per million: fits
    assert limits.dollars_spent == pytest.approx((5 * 10 + 2 * 30) / 1e6)
    with pytest.raises(UserError, match="needs prices"):
        UsageLimits(dollars=1.0)
    with UsageLimits(dollars=1.0, prices={"openai:other@x": Price(1, 1)}), \
            pytest.raises(UserError, match="no price for 'scripted'"):
        engine.generate("hello")
    with UsageLimits(dollars=1e-6, prices={"*": Price(input=10.0, output=30.0)}), \
            pytest.raises(BudgetExceeded, match="dollars"):
        engine.generate("hello", max_tokens=50)


def test_budgets_nest_and_threads_and_workers_inherit_them():
    engine = ScriptedEngine(lambda req: "ok")
    outer = UsageLimits(calls=3)
    inner = UsageLimits(calls=1)
    with outer:
        with inner:
            engine.generate("a")
            with pytest.raises(BudgetExceeded):
                engine.generate("b")
        engine.generate("c")  # the outer budget alone
        errors = []

        def in_thread():
            try:
                engine.generate("d")
                engine.generate("e")
            except BudgetExceeded as exc:
                errors.append(exc)

        import contextvars

        t = threading.Thread(target=contextvars.copy_context().run, args=(in_thread,))
        t.start()
        t.join()
        assert len(errors) == 1 and outer.spent.calls == 3
    with UsageLimits(calls=1), Worker(engine) as worker:  # a worker's own thread checks the caller's budget
        worker.generate("f")
        with pytest.raises(BudgetExceeded):
            worker.generate("g")


def _lookup_tool(calls):
    @tool
    def lookup(entity: str, attribute: str) -> str:
        """Looks a fact up."""
        calls.append(entity)
        return f"the registry of the northern province, as of its last census, lists {entity}'s {attribute} as 7"

    return lookup


def test_a_strategy_stopped_by_its_budget_keeps_what_it_computed_and_resumes(tmp_path):
    plan = 'e1 = lookup(entity="a", attribute="b")\nanswer(e1)'
    seen, calls = [], []
    engine = ScriptedEngine(lambda req: seen.append(req.agent) or (plan if req.agent == "planner" else "7"))
    db = tmp_path / "ck.sqlite"
    strategy = Rewoo(engine, [_lookup_tool(calls)])  # a sentence, not a scalar: the solver must read it
    with pytest.raises(BudgetExceeded, match="calls 2 > limit 1"):
        strategy.run("What is a's b?", thread_id="t", checkpoints=db, limits=UsageLimits(calls=1))
    assert seen == ["planner"] and calls == ["a"]  # the plan and its tool call ran; the solver was refused
    done = Rewoo(engine, [_lookup_tool(calls)]).resume("t", db, limits=UsageLimits(calls=1))
    assert done.answer == "7" and seen == ["planner", "solver"] and calls == ["a"]  # nothing made twice


def test_a_team_a_collaboration_policy_and_rag_stop_at_the_budget(tmp_path):
    from tokenomy.graphs import AgentGraph, GraphTeam

    engine = ScriptedEngine(lambda r: f'answer = "{r.agent}"', prefix_cache=False)
    with pytest.raises(BudgetExceeded):
        GraphTeam(AgentGraph.mesh(["a", "b", "c"], rounds=2), engine).run("q", limits=UsageLimits(calls=4))
    assert len(engine.requests) == 4

    long = ScriptedEngine(lambda req: "add them")
    short = ScriptedEngine(lambda req: "7")
    with pytest.raises(BudgetExceeded):
        PlanExpand(long, short).run(Problem("What is 3 + 4?"), limits=UsageLimits(calls=2))
    assert len(long.requests) + len(short.requests) == 2


def test_openai_engine_checks_the_budget_on_every_path():
    with StrictOpenAIServer() as server, OpenAIEngine("m", server.url, timeout=5.0) as engine:
        with UsageLimits(calls=3):
            engine.chat("one")
            list(engine.stream("two"))

            async def third_and_fourth():
                await engine.agenerate("three")
                await engine.agenerate("four")

            with pytest.raises(BudgetExceeded):
                asyncio.run(third_and_fourth())
        assert len(server.bodies) == 3
        with UsageLimits(total_tokens=40):  # o200k_base counts the prompt; the reply is capped to what is left
            engine.chat("hello")
            assert server.bodies[-1]["max_completion_tokens"] < 40


def test_bad_limits_are_refused():
    with pytest.raises(UserError, match="calls must be >= 0"):
        UsageLimits(calls=-1)
    with pytest.raises(UserError, match="prices must be >= 0"):
        Price(input=-1, output=0)


def test_a_scoring_pass_is_a_call_within_the_budget():
    engine = ScriptedEngine(lambda req: "ok", scorer=lambda prompt, cont: [-0.5] * len(cont.encode()))
    with UsageLimits(calls=1) as limits:
        scored = engine.score("2 + 2 =", " 4")
        assert scored.usage.prompt_tokens == len("2 + 2 =") + 2 and limits.spent.calls == 1
        with pytest.raises(BudgetExceeded):
            engine.score("2 + 2 =", " 5")


def test_one_budget_entered_in_many_threads_at_once_counts_them_all():
    from concurrent.futures import ThreadPoolExecutor

    engine = ScriptedEngine(lambda req: "ok")
    limits = UsageLimits(calls=6)

    def run(_):
        with limits:
            engine.generate("a")
            engine.generate("b")

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda i: _try(run, i), range(4)))
    assert limits.spent.calls == 6 and outcomes.count("refused") in (1, 2)  # 8 asked, 6 made, however interleaved


def _try(fn, arg):
    try:
        fn(arg)
        return "ok"
    except BudgetExceeded:
        return "refused"
