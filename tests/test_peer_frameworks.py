"""Each peer framework of `bench peers` runs in its own process through the referee's proxy (marked `peers`: run in
.venv-peers, which `.ci/setup --peers` makes; `.ci/run` runs them there). The server is the scripted test double
of tests/test_referee.py, which answers "four" to everything: this checks that each framework's agent is built,
reaches the server through the proxy with its own prompts and tool schemas, and gives back an answer, so that a
framework's API change breaks a test here rather than the benchmark."""

from __future__ import annotations

import sys

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
    if framework in ("langgraph", "smolagents-tool", "llamaindex-function"):  # the tool-calling ones
        assert {t["function"]["name"] for t in sent[0].get("tools", [])} >= {"search", "lookup", "calc"}
