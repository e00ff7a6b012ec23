"""LangChain chat models as engines (``ChatOpenAI`` against the strict OpenAI test server), tokenomy engines as
LangChain chat models, and LangChain tools or plain functions where a tokenomy tool is expected."""

import asyncio

import pytest

from tokenomy.errors import UserError
from tokenomy.kernels import ScriptedEngine, UsageLimits
from tokenomy.kernels.langchain_engine import LangChainEngine
from tokenomy.planners.rewoo import Rewoo

from .conftest import require_module
from .strict_openai_server import StrictOpenAIServer


@pytest.fixture(scope="module")
def chat_openai():
    require_module("langchain_openai", "pip install 'tokenomy[test]'")
    from langchain_openai import ChatOpenAI

    with StrictOpenAIServer() as server:
        yield server, ChatOpenAI(model="strict-model", base_url=server.url, api_key="sk-test", max_retries=0,
                                 stream_usage=True)


def test_chat_openai_runs_as_an_engine_with_its_usage(chat_openai):
    server, llm = chat_openai
    engine = LangChainEngine(llm)
    c = engine.chat([{"role": "system", "content": "s"}, {"role": "user", "content": "hello"}], max_tokens=7,
                    stop=["\n"])
    assert c.text == "olleh" and c.usage.prompt_tokens == 12 and c.usage.completion_tokens == 5
    assert c.usage.cached_prompt_tokens == 0 and c.usage.calls == 1
    body = server.bodies[-1]
    assert body["stop"] == ["\n"] and body["messages"][0] == {"role": "system", "content": "s"}
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 7
    assert engine.chat("think twice").usage.reasoning_tokens == 5  # output_token_details.reasoning


def test_batch_async_and_stream_through_the_chat_model(chat_openai):
    _, llm = chat_openai
    engine = LangChainEngine(llm)
    from tokenomy.kernels import Request, SamplingParams

    out = engine.generate_batch([Request(prompt=[{"role": "user", "content": w}], params=SamplingParams(max_tokens=5))
                                 for w in ("ab", "cd", "ef")])
    assert [c.text for c in out] == ["ba", "dc", "fe"]
    assert asyncio.run(engine.agenerate("xyz")).text == "zyx"
    chunks = list(engine.stream("abcdefg"))
    assert "".join(c.delta for c in chunks) == "gfedcba" and len(chunks) > 2
    assert chunks[-1].completion.usage.prompt_tokens == 12 and chunks[-1].completion.usage.completion_tokens == 7


def test_a_strategy_takes_a_chat_model_and_a_budget_stops_it(chat_openai):
    server, llm = chat_openai
    sent = len(server.bodies)
    result = Rewoo(llm, []).run("What is x?")  # the strict server's reply is no plan: a run with no answer
    assert result.answer is None and result.usage["planner"].calls >= 1
    assert result.usage["planner"].prompt_tokens == 12 * result.usage["planner"].calls  # the server's count
    assert len(server.bodies) > sent
    with pytest.raises(Exception, match="budget exceeded"):
        Rewoo(llm, []).run("What is x?", limits=UsageLimits(calls=0))


def test_unknown_usage_stays_unknown():
    require_module("langchain_core", "pip install 'tokenomy[test]'")
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    c = LangChainEngine(FakeListChatModel(responses=["fine"])).chat("how are you?")  # reports no usage_metadata
    assert c.text == "fine" and c.usage.prompt_tokens is None and c.usage.completion_tokens is None
    assert c.usage.calls == 1 and "prompt_tokens" in c.usage.unknown_fields


def test_an_engine_as_a_langchain_chat_model_and_back():
    require_module("langchain_core", "pip install 'tokenomy[test]'")
    engine = ScriptedEngine(lambda req: "answer(42)")
    llm = engine.as_langchain()
    msg = llm.invoke("hi")
    assert msg.content == "answer(42)" and msg.usage_metadata["input_tokens"] > 0
    meta = msg.usage_metadata
    assert meta["total_tokens"] == meta["input_tokens"] + meta["output_tokens"]
    pieces = list(llm.stream("hi"))
    whole = pieces[0]
    for p in pieces[1:]:
        whole = whole + p  # LangChain merges chunks, usage included
    assert whole.content == "answer(42)" and whole.usage_metadata["output_tokens"] > 0
    assert asyncio.run(llm.ainvoke("hi")).content == "answer(42)"
    # Round trip: the LangChain model of a tokenomy engine runs a strategy as an engine again.
    result = Rewoo(llm, []).run("What is 6 x 7?")
    assert result.answer == 42 and result.usage["planner"].prompt_tokens > 0


def test_langchain_tools_and_plain_functions_are_tools():
    require_module("langchain_core", "pip install 'tokenomy[test]'")
    from langchain_core.tools import tool as lc_tool

    @lc_tool
    def double(x: int) -> int:
        """Doubles a number."""
        return 2 * x

    def add(a: int, b: int) -> int:
        """Adds two numbers."""
        return a + b

    plan = "e1 = double(x=4)\ne2 = add(a=e1, b=1)\nanswer(e2)"
    engine = ScriptedEngine(lambda req: plan)
    assert Rewoo(engine, [double, add]).run("q").answer == 9
    with pytest.raises(UserError, match="is not a tool"):
        Rewoo(engine, [42])
    with pytest.raises(UserError, match="not a model"):
        Rewoo(object(), [])
