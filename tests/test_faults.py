"""Fault injection: what a hostile or broken caller, plan, tool, file or server does must fail alone, within its
deadline, with a clear error, and lose nothing already computed (issue 21). One section per part."""

from __future__ import annotations

import time

import pytest

from tokenomy.errors import RequestCancelled, TokenomyError
from tokenomy.kernels import Request, SamplingParams, ScriptedEngine, Worker

# -- the shared worker -----------------------------------------------------------------------------------------


def _queued_together(w: Worker, requests: list[Request]) -> list:
    """Submit ``requests`` so that the scheduler takes them as one batch (it takes nothing while its lock is held)."""
    with w._cv:
        return [w.submit(r) for r in requests]


def test_a_message_without_a_role_fails_alone_and_the_worker_serves_on():
    engine = ScriptedEngine()
    with Worker(engine, gather_s=0.05) as w:
        bad, good = _queued_together(w, [Request(prompt=[{"content": "no role"}]),
                                         Request(prompt="a good prompt\nq1")])
        assert good.result(5).text == "q1"
        with pytest.raises(TokenomyError):
            bad.result(5)
        assert w._thread.is_alive()
        assert w.generate("after\nq2", timeout=5).text == "q2"


class TokenizerBreaks(ScriptedEngine):
    """A scripted engine whose tokenizer raises a plain ``TypeError`` on prompts that say ``BREAK`` (as a chat
    template does on ``"content": None``), in ordering and in the batch alike."""

    def prompt_token_ids(self, prompt):
        if "BREAK" in str(prompt):
            raise TypeError("can only concatenate str (not 'NoneType') to str")
        return super().prompt_token_ids(prompt)

    def _run_batch(self, requests):
        for r in requests:  # a real engine tokenizes the whole batch first: one bad prompt fails the batch
            self.prompt_token_ids(r.prompt)
        return super()._run_batch(requests)


def test_a_prompt_the_tokenizer_chokes_on_fails_alone_and_the_scheduler_thread_survives():
    engine = TokenizerBreaks()
    with Worker(engine, gather_s=0.05) as w:
        futs = _queued_together(w, [Request(prompt="one\nq1"), Request(prompt=[{"role": "assistant", "content": None},
                                                                               {"role": "user", "content": "BREAK"}]),
                                    Request(prompt="two\nq2")])
        assert [futs[0].result(5).text, futs[2].result(5).text] == ["q1", "q2"]
        with pytest.raises(TokenomyError, match="TypeError"):
            futs[1].result(5)
        assert w._thread.is_alive() and w.generate("three\nq3", timeout=5).text == "q3"
    # the batch of three failed as a whole, then each request ran alone: the good ones once each
    assert [len(b) for b in engine.batches] == [1, 1, 1]  # the tokenizer broke the batch before it was recorded
    assert sorted(r.prompt for r in engine.requests if isinstance(r.prompt, str)) == ["one\nq1", "three\nq3",
                                                                                      "two\nq2"]


def test_an_ordering_failure_falls_back_to_arrival_order():
    class OrderingBreaks(ScriptedEngine):
        def cached_prefix_length(self, token_ids):
            raise RuntimeError("a broken cache index")

    with Worker(OrderingBreaks(), gather_s=0.05) as w:
        futs = _queued_together(w, [Request(prompt="a\nq1"), Request(prompt="b\nq2")])
        assert [f.result(5).text for f in futs] == ["q1", "q2"]


def test_generate_has_a_default_deadline():
    engine = ScriptedEngine(delay_s=3600.0)
    with Worker(engine, default_timeout=0.5) as w:
        start = time.monotonic()
        with pytest.raises(RequestCancelled, match="timed out after 0.5 s"):
            w.generate("never\nq")
        assert time.monotonic() - start < 1.5
    assert Worker.__init__.__kwdefaults__["default_timeout"] == 600.0


class Fatal(BaseException):
    """Not an ``Exception``, as ``KeyboardInterrupt`` and ``SystemExit`` are not."""


def test_a_worker_whose_engine_raises_a_base_exception_keeps_serving():
    class Interrupts(ScriptedEngine):
        calls = 0

        def generate_batch(self, requests, *, return_exceptions=False):
            Interrupts.calls += 1
            if Interrupts.calls == 1:
                raise Fatal("the backend gave up")
            return super().generate_batch(requests, return_exceptions=return_exceptions)

    with Worker(Interrupts()) as w:
        with pytest.raises(TokenomyError, match="Fatal"):
            w.generate("first\nq1", timeout=5)
        assert w.generate("second\nq2", timeout=5).text == "q2"
        assert w._thread.is_alive()


@pytest.mark.embedded
@pytest.mark.timeout(300)
def test_on_the_embedded_model_a_message_without_content_fails_alone(embedded_engine):
    bad = [{"role": "assistant", "content": None}, {"role": "user", "content": "Say yes."}]
    with Worker(embedded_engine, gather_s=0.05) as w:
        futs = _queued_together(w, [Request(prompt=bad, params=SamplingParams(max_tokens=2)),
                                    Request(prompt=[{"role": "user", "content": "Say no."}],
                                            params=SamplingParams(max_tokens=2))])
        assert futs[1].result(120).usage.completion_tokens >= 1
        try:
            futs[0].result(120)  # the model's template may read None as empty: then it answers, which is fine too
        except TokenomyError as e:
            assert "content" in str(e) or "None" in str(e), e
        assert w._thread.is_alive()
