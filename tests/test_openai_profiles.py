"""The ``openai:`` engine's server profiles, streaming, asyncio and reasoning counts, against a strict
OpenAI-compatible test double that rejects every field OpenAI's API does not define (``StrictOpenAIServer``)."""

import asyncio

import pytest

from tokenomy.errors import CapabilityError, UserError
from tokenomy.kernels import Grammar, SamplingParams
from tokenomy.kernels.openai_engine import OpenAIEngine
from tokenomy.kernels.openai_profiles import PROFILES, detect, root_url

from .strict_openai_server import StrictOpenAIServer


@pytest.fixture
def strict():
    with StrictOpenAIServer() as server:
        yield server


@pytest.fixture
def engine(strict):
    with OpenAIEngine("strict-model", strict.url, timeout=5.0, backoff_s=0.01) as e:
        yield e


def test_a_strict_server_gets_only_standard_fields(engine, strict):
    # Every knob a vLLM server would take is asked for; a strict server must see none of them.
    c = engine.chat("hello", max_tokens=9, top_k=5, min_tokens=2, seed=1, stop=["\n"], temperature=0.3)
    assert c.text == "olleh" and c.usage.prompt_tokens == 12 and c.usage.completion_tokens == 5
    assert engine.profile.name == "openai" and strict.gets  # asked, and found none of the other servers
    body = strict.bodies[-1]
    assert set(body) == {"model", "messages", "max_completion_tokens", "temperature", "top_p", "seed", "stop"}
    assert body["max_completion_tokens"] == 9
    c = engine.generate("abc", max_tokens=4, top_k=5)
    assert c.text == "ABC" and set(strict.bodies[-1]) == {"model", "prompt", "max_tokens", "temperature", "top_p"}


def test_capabilities_follow_the_profile(engine):
    caps = engine.capabilities
    assert not caps.grammar and not caps.min_tokens and caps.logprobs  # plain OpenAI: JSON schemas only
    vllm = PROFILES["vllm"].capabilities
    assert vllm.grammar and vllm.min_tokens
    assert PROFILES["llamacpp"].capabilities.grammar and not PROFILES["llamacpp"].capabilities.min_tokens
    assert not PROFILES["ollama"].capabilities.grammar


def test_a_json_schema_goes_in_response_format_and_a_grammar_it_cannot_enforce_is_refused(engine, strict):
    engine.chat("x", grammar=Grammar.json_schema({"type": "object"}))
    assert strict.bodies[-1]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}}}
    with pytest.raises(CapabilityError, match="ebnf grammar.*openai profile enforces json_schema"):
        engine.chat("x", grammar=Grammar.ebnf('root ::= "a"'))
    sent = len(strict.bodies)
    with pytest.raises(CapabilityError, match="only chat requests"):
        engine.generate("x", grammar=Grammar.json_schema({"type": "object"}))
    assert len(strict.bodies) == sent  # refused before anything was sent


@pytest.mark.parametrize("kind", ["llamacpp", "ollama"])
def test_profiles_are_detected_and_their_own_fields_sent(kind):
    with StrictOpenAIServer(kind) as server, OpenAIEngine("m", server.url, timeout=5.0) as engine:
        assert engine.profile.name == kind
        engine.chat("hi", top_k=7)
        assert ("top_k" in server.bodies[-1]) == (kind == "llamacpp")
        if kind == "llamacpp":
            engine.generate("hi", grammar=Grammar.ebnf('root ::= "a"'))
            assert server.bodies[-1]["grammar"] == 'root ::= "a"'
        else:
            with pytest.raises(CapabilityError):
                engine.chat("hi", grammar=Grammar.regex("a+"))


def test_a_named_profile_is_not_asked_for(strict):
    with OpenAIEngine("m", strict.url, profile="openai") as engine:
        engine.chat("hi")
    assert strict.gets == []
    with pytest.raises(UserError, match="unknown server profile 'tgi'"):
        OpenAIEngine("m", strict.url, profile="tgi")


def test_an_unreachable_server_is_asked_again_later():
    calls = []

    def down(url):
        calls.append(url)
        raise OSError("refused")

    assert detect("http://127.0.0.1:9/v1", down) is None and calls[0] == "http://127.0.0.1:9/version"
    assert root_url("http://h:1/v1/") == "http://h:1" and root_url("http://h:1/api") == "http://h:1/api"


def test_stream_yields_pieces_then_the_completion_with_usage(engine, strict):
    chunks = list(engine.stream([{"role": "user", "content": "abcdefgh"}], max_tokens=20))
    assert [c.delta for c in chunks[:-1]] == ["hgf", "edc", "ba"]
    assert all(c.completion is None for c in chunks[:-1])
    last = chunks[-1].completion
    assert last is not None and last.text == "hgfedcba" and last.finish_reason == "stop"
    assert last.usage.prompt_tokens == 12 and last.usage.completion_tokens == 8 and last.usage.calls == 1
    assert strict.bodies[-1]["stream_options"] == {"include_usage": True}
    raw = list(engine.stream("xyz"))
    assert "".join(c.delta for c in raw) == "XYZ" and raw[-1].completion.text == "XYZ"


def test_reasoning_tokens_are_counted_apart(engine):
    c = engine.chat("think about it")
    assert c.usage.reasoning_tokens == 5 and c.usage.completion_tokens == 14
    assert engine.chat("plain").usage.reasoning_tokens == 0
    total = c.usage + engine.chat("plain").usage
    assert total.reasoning_tokens == 5 and "reasoning=5" in str(total)
    assert total.to_dict()["reasoning_tokens"] == 5


def test_asyncio_generate_and_stream_on_the_async_client(engine, strict):
    async def main():
        one, two = await asyncio.gather(engine.agenerate("ab"), engine.agenerate([{"role": "user",
                                                                                   "content": "cd"}]))
        pieces = [c async for c in engine.astream([{"role": "user", "content": "hello"}])]
        return one, two, pieces

    one, two, pieces = asyncio.run(main())
    assert one.text == "AB" and two.text == "dc" and two.usage.prompt_tokens == 12
    assert "".join(p.delta for p in pieces) == "olleh" and pieces[-1].completion.usage.completion_tokens == 5


def test_a_rejected_field_is_a_clear_error_not_a_retry(strict):
    with OpenAIEngine("m", strict.url, profile="vllm", max_retries=3, backoff_s=0.01) as engine:
        with pytest.raises(UserError, match=r"rejected the request \(400\).*top_k"):
            engine.chat("hi", top_k=3)
    assert len(strict.bodies) == 1  # a 400 is not retried


def test_backoff_has_jitter_and_honours_retry_after(engine):
    delays = {round(engine._delay(2, 0.0), 6) for _ in range(50)}
    assert len(delays) > 10 and all(0.02 <= d <= 0.04 for d in delays)  # backoff_s 0.01 x 2**2, half jittered
    assert engine._delay(0, 3.0) == 3.0 and engine._delay(0, 60.0) == 5.0


def test_the_default_sampling_params_survive_a_round_trip(engine, strict):
    engine.generate("q", SamplingParams(max_tokens=3, logprobs=True))
    assert strict.bodies[-1]["logprobs"] == 1
