"""The shared worker: ordering, batching, cancellation, failures, usage per agent and tag; the router."""

import asyncio
import threading

import pytest

from tokenomy.errors import EngineError, RequestCancelled
from tokenomy.kernels import Request, Router, ScriptedEngine, Worker
from tokenomy.kernels.worker import order_requests


class RunsUntilCancelled(ScriptedEngine):
    """A scripted engine whose requests run until they are cancelled (an hour otherwise): ``started`` is set when
    one begins to run; ``stopped`` lists the prompts of those that stopped on their cancellation."""

    def __init__(self, **kwargs):
        super().__init__(delay_s=3600.0, **kwargs)
        self.started = threading.Event()
        self.stopped = []

    def _one(self, req):
        self.started.set()
        try:
            return super()._one(req)
        except RequestCancelled:
            self.stopped.append(req.prompt)
            raise


def test_order_puts_cached_prefixes_first_then_siblings_together():
    e = ScriptedEngine()
    e.generate("CACHED PREFIX xyz")
    reqs = [Request(prompt=p) for p in ["B shared 1", "A other", "B shared 2", "CACHED PREFIX 1", "A other 2"]]
    ordered = [r.prompt for r in order_requests(reqs, e)]
    assert ordered[0] == "CACHED PREFIX 1"
    assert ordered[1:] == ["A other", "A other 2", "B shared 1", "B shared 2"]


def test_concurrent_submissions_are_batched_and_ordered():
    e = ScriptedEngine()
    shared = "S" * 200
    with Worker(e, gather_s=0.05) as w:
        with w._cv:  # the scheduler takes nothing while its lock is held: all 8 arrive together, however slow
            futs = [w.submit(Request(prompt=shared + f"\nrole {i % 4}\nq{i}", agent=f"a{i % 2}",
                                     tags=("round0",))) for i in range(8)]
        outs = [f.result(5) for f in futs]
    assert [o.text for o in outs] == [f"q{i}" for i in range(8)]
    assert len(e.batches) == 1 and len(e.batches[0]) == 8
    roles = [r.prompt.split("\n")[1] for r in e.requests]
    assert roles == sorted(roles)  # siblings adjacent
    # The 200-token shared prefix was computed once: everything else is cached.
    total = w.ledger.total
    assert total.calls == 8
    assert total.prompt_tokens - total.cached_prompt_tokens < 200 + 8 * 12
    assert set(w.ledger.by_agent) == {"a0", "a1"}
    assert w.ledger.by_tag["round0"] == total
    assert w.ledger.by_agent["a0"] + w.ledger.by_agent["a1"] == total


def test_failures_come_back_in_their_slot():
    script = ["one", EngineError("boom"), "three"]
    with Worker(ScriptedEngine(script), schedule="fcfs", gather_s=0.05) as w:
        out = w.map([Request(prompt=f"p{i}") for i in range(3)])
    assert out[0].text == "one" and isinstance(out[1], EngineError) and out[2].text == "three"


def test_cancel_a_queued_request_and_a_running_one():
    e = RunsUntilCancelled()
    with Worker(e, max_batch=1, schedule="fcfs", gather_s=0) as w:
        running = Request(prompt="slow")
        f1 = w.submit(running)
        queued = Request(prompt="never")
        f2 = w.submit(queued)
        assert e.started.wait(60)  # "slow" is running; "never" waits behind it (max_batch=1)
        assert f2.cancel()
        running.cancel()
        with pytest.raises(RequestCancelled):
            f1.result(60)
    assert [r.prompt for r in e.requests] == ["slow"] and e.stopped == ["slow"]


def test_timeout_cancels_and_nothing_hangs():
    e = RunsUntilCancelled()
    with Worker(e, gather_s=0) as w:
        with pytest.raises(RequestCancelled):
            w.generate("x", timeout=0.1)  # returns although the request would run for an hour
    # Closing joined the scheduler thread: the request stopped on its cancellation (or never started).
    assert not w._thread.is_alive()
    assert e.stopped == ["x"] or e.requests == []


def test_asyncio_agents_share_one_worker():
    e = ScriptedEngine()

    async def agent(w, i):
        return await w.agenerate(f"shared context\nagent {i}", agent=f"agent{i}")

    async def main(w):
        return await asyncio.gather(*(agent(w, i) for i in range(5)))

    with Worker(e) as w:
        outs = asyncio.run(main(w))
    assert [o.text for o in outs] == [f"agent {i}" for i in range(5)]
    assert len(w.ledger.by_agent) == 5


def test_asyncio_cancellation_cancels_the_request():
    e = RunsUntilCancelled()

    async def main(w):
        task = asyncio.ensure_future(w.agenerate("slow"))
        assert await asyncio.to_thread(e.started.wait, 60)  # the request is running in the engine
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with Worker(e, gather_s=0) as w:
        asyncio.run(main(w))
    assert not w._thread.is_alive() and e.stopped == ["slow"]  # the engine stopped it: it would run for an hour


def test_engine_that_raises_does_not_hang_callers():
    class Dying(ScriptedEngine):
        def _run_batch(self, requests):
            raise MemoryError("engine died")

    with Worker(Dying(), gather_s=0) as w:
        with pytest.raises(EngineError, match="engine died"):
            w.generate("x", timeout=5)


def test_worker_validates_its_config():
    with pytest.raises(ValueError, match="max_batch"):
        Worker(ScriptedEngine(), max_batch=0)
    with pytest.raises(ValueError, match="schedule"):
        Worker(ScriptedEngine(), schedule="random")


def test_router_keeps_prefix_affinity_and_guards_load():
    engines = [ScriptedEngine() for _ in range(2)]
    workers = [Worker(e) for e in engines]
    router = Router(workers, balance_abs=1000)
    prompts = [f"{'AAAA' if i % 2 else 'BBBB'} shared system prompt {'x' * 100} q{i}" for i in range(8)]
    router.map([Request(prompt=p) for p in prompts])
    for e in engines:
        heads = {r.prompt[:4] for r in e.requests}
        assert len(heads) == 1  # each prefix family stays on one replica
    assert sorted(router.routed) == [4, 4]
    # Load guard: with one replica backed up, new requests go to the other one.
    router2 = Router(workers, balance_abs=2, balance_rel=1.5)
    router2._inflight = [10, 0]
    assert router2.pick(list(b"AAAA anything")) == 1
    router.close()


def test_threads_share_one_worker():
    e = ScriptedEngine()
    results = {}
    with Worker(e) as w:
        def agent(i):
            results[i] = w.generate(f"common\n{i}", agent=str(i)).text
        threads = [threading.Thread(target=agent, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
    assert results == {i: str(i) for i in range(6)}


def test_requests_for_remote_engines_are_ordered_by_text():
    class Remote(ScriptedEngine):
        def prompt_token_ids(self, prompt):
            return None

    reqs = [Request(prompt=[{"role": "user", "content": c}]) for c in ["b 1", "a 1", "b 2", "a 2"]]
    ordered = [r.prompt[0]["content"] for r in order_requests(reqs, Remote())]
    assert ordered == ["a 1", "a 2", "b 1", "b 2"]
