"""Each peer framework of `bench peers` runs in its own process through the referee's proxy (marked `peers`: run in
.venv-peers, which `.ci/setup --peers` makes; `.ci/run` runs them there). The server is the scripted test double
of tests/test_referee.py, which answers "four" to everything: this checks that each framework's agent is built,
reaches the server through the proxy with its own prompts and tool schemas, and gives back an answer, so that a
framework's API change breaks a test here rather than the benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tokenomy.benchmarks import peers
from tokenomy.benchmarks.referee import RecordingProxy

from .conftest import require
from .test_referee import ScriptedServer

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def proxy():
    server = ScriptedServer()
    with RecordingProxy(server.url) as prox:
        yield prox, server
    server.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("framework", peers.PEERS)
def test_each_framework_answers_through_the_proxy_in_its_own_process(proxy, framework):
    prox, server = proxy
    why = peers.missing_packages(framework, sys.executable)
    if why:
        require(f"{framework}: {why}")
    first = len(server.bodies)
    runner = peers._Runner(framework, f"http://127.0.0.1:{prox.port}", "m", python=sys.executable, seed=0,
                           obs_tokens=20, log=None)
    try:
        row = runner.ask(f"{framework}--t1", "What is the population of Velmora?", timeout=240)
    finally:
        runner.close()
    calls = [r for r in prox.records_for(f"{framework}--t1") if r.path.endswith("/completions")]
    assert calls and all(r.status == 200 for r in calls), (row, calls)
    assert row.get("error_kind") in (None, "max_steps", "parse"), row
    assert sum(r.prompt_tokens or 0 for r in calls) == 120 * len(calls)  # the server's count, through the proxy
    sent = server.bodies[first:]
    assert all(b["model"] == "m" and b["messages"] for b in sent)
    if framework in ("langgraph", "langgraph-prompted", "smolagents-tool", "llamaindex-function"):  # tool calling
        assert {t["function"]["name"] for t in sent[0].get("tools", [])} >= {"search", "lookup", "calc"}
    if framework == "langgraph-prompted":
        from tokenomy.benchmarks.peer_agents import LANGGRAPH_SYSTEM

        assert sent[0]["messages"][0] == {"role": "system", "content": LANGGRAPH_SYSTEM}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("framework", ("langgraph", "smolagents-tool", "llamaindex-function"))
def test_on_a_prose_corpus_the_tool_calling_frameworks_get_its_full_text_search(proxy, framework):
    prox, server = proxy
    why = peers.missing_packages(framework, sys.executable)
    if why:
        require(f"{framework}: {why}")
    prose = Path(__file__).parent / "prose"
    question = json.loads((prose / "questions.jsonl").read_text().splitlines()[0])["question"]
    first = len(server.bodies)
    runner = peers._Runner(framework, f"http://127.0.0.1:{prox.port}", "m", python=sys.executable, seed=0,
                           obs_tokens=20, log=None,
                           prose=(str(prose / "corpus"), str(prose / "questions.jsonl")))
    try:
        row = runner.ask(f"{framework}--p1", question, timeout=240)
    finally:
        runner.close()
    assert row.get("error_kind") in (None, "max_steps", "parse"), row
    tools = {t["function"]["name"]: t["function"] for t in server.bodies[first].get("tools", [])}
    assert set(tools) >= {"search", "lookup", "calc"}
    assert set(tools["search"]["parameters"]["properties"]) == {"query"}
    assert "Full-text search" in tools["search"]["description"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("framework", ("langgraph", "smolagents-tool", "llamaindex-function"))
def test_an_agent_that_never_stops_is_bounded_like_tokenomy_s_react(proxy, framework):
    from tokenomy.benchmarks.peer_agents import MAX_STEPS

    prox, server = proxy
    why = peers.missing_packages(framework, sys.executable)
    if why:
        require(f"{framework}: {why}")
    runner = peers._Runner(framework, f"http://127.0.0.1:{prox.port}", "loop", python=sys.executable, seed=0,
                           obs_tokens=20, log=None)
    try:
        row = runner.ask(f"{framework}--loop", "What is the population of Velmora?", timeout=240)
    finally:
        runner.close()
    calls = [r for r in prox.records_for(f"{framework}--loop") if r.path.endswith("/completions")]
    assert row["error_kind"] == "max_steps", row
    assert MAX_STEPS <= len(calls) <= MAX_STEPS + 1, len(calls)  # the bound, and at most a closing answer
    assert row["tool_calls"] >= MAX_STEPS - 1
