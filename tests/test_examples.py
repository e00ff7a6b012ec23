"""The examples: wired correctly (with a scripted model) and running for real (with the embedded model)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenomy.kernels import ScriptedEngine

from .conftest import require_module

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scripted(plan, solver="-"):
    return ScriptedEngine(lambda req: plan if req.agent == "planner" else solver)


def test_quickstart_over_the_bundled_corpus(capsys):
    plan = 'founder = lookup(entity="Halvane Instruments", attribute="founder")\nanswer(founder)'
    r = load("quickstart").main("Who founded Halvane Instruments?", engine=scripted(plan, "Corvin Halvane"))
    assert "Corvin Halvane" in str(r.values["founder"])
    # the lookup's value with its source is short enough to be the answer itself (no solver call); a longer one
    # goes to the solver, which answers "Corvin Halvane" here
    assert r.answer == (r.values["founder"] if r.total.calls == 1 else "Corvin Halvane")
    out = capsys.readouterr().out
    assert "answer: Corvin Halvane" in out and "planner" in out


def test_custom_tools_sync_async_and_langchain(capsys):
    require_module("langchain_core", "pip install 'tokenomy[test]'")
    plan = ('h = harbour(town="Pellhaven")\nt = tide(town="Pellhaven", hour=6)\n'
            'ok = draught_ok(depth_m=h.depth_m, draught_m=9)\nanswer(ok)')
    r = load("custom_tools").main(engine=scripted(plan))
    assert r.answer is True and r.values["t"] == 1.6 and r.plan_valid
    assert r.total.calls == 1  # a boolean answer needs no solver
    out = capsys.readouterr().out
    assert "tool draught_ok(depth_m: float, draught_m: float)" in out and "answer: True" in out


@pytest.mark.embedded
@pytest.mark.parametrize("name", ["quickstart", "custom_tools"])
def test_example_runs_on_the_embedded_model(name, embedded_engine):
    env = {k: v for k, v in os.environ.items() if k != "TOKENOMY_MODEL"}
    out = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "plan:" in out.stdout and "answer:" in out.stdout and "total" in out.stdout


def test_debate_pruned_is_wired(capsys, tmp_path):
    out = load("debate_pruned").main(iterations=2, mermaid=str(tmp_path / "team.mmd"),
                                     engine=ScriptedEngine(lambda req: 'answer = "8200"'))
    text = capsys.readouterr().out
    assert "iteration 2:" in text and "training: 8 runs" in text and "fewer tokens" in text
    assert out["debate_tokens"] > 0 and (tmp_path / "team.mmd").read_text().startswith("flowchart LR")


@pytest.mark.embedded
def test_debate_pruned_runs_on_the_embedded_model(embedded_engine):
    env = {k: v for k, v in os.environ.items() if k != "TOKENOMY_MODEL"}
    out = subprocess.run([sys.executable, str(EXAMPLES / "debate_pruned.py"), "--iterations", "1"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "training: 4 runs" in out.stdout and "tokens/question" in out.stdout and "decision" in out.stdout


def test_rag_pipeline_is_wired(capsys):
    from .rag_doubles import HashEmbedder

    spent = load("rag_pipeline").main([], engine=ScriptedEngine(lambda req: "Tormos"), embedder=HashEmbedder())
    out = capsys.readouterr().out
    assert "question: What is" in out and out.count("answer: Tormos") == 2
    bm25, graph = spent.values()
    assert 0 < graph <= 64 < bm25  # the graph context is within its budget, the top-5 chunks are not


@pytest.mark.embedded
def test_rag_pipeline_runs_on_the_embedded_model(embedded_engine):
    env = {k: v for k, v in os.environ.items() if k != "TOKENOMY_MODEL"}
    out = subprocess.run([sys.executable, str(EXAMPLES / "rag_pipeline.py")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("answer:") == 2 and "context" in out.stdout and "sources:" in out.stdout


def test_mcp_time_budget_calls_the_published_time_server_under_a_budget(capsys):
    require_module("mcp_server_time", "pip install 'tokenomy[test]'")
    plan = ('t = convert_time(source_timezone="Europe/Paris", time="14:30", target_timezone="Asia/Tokyo")\n'
            'answer(t.target.datetime)')
    r = load("mcp_time_budget").main(engine=scripted(plan))
    assert r.answer[11:16] in ("22:30", "21:30")  # 8 h later in winter, 7 h in summer
    assert "of 4000 tokens and 4 calls" in capsys.readouterr().out


def test_langgraph_embed_asks_for_approval_then_reports(capsys):
    plan = 'p = lookup(entity="Velmora", attribute="population")\nanswer(p)'
    seen = []
    state = load("langgraph_embed").main(engine=scripted(plan), approve=lambda pending: seen.append(pending) or True)
    assert seen and seen[0]["plan"].startswith("p = lookup(") and "412,000" in str(state["answer"])
    out = capsys.readouterr().out
    assert "plan to approve" in out and "model call: planner" in out and "(1 calls)" in out


def test_typed_stream_streams_then_parses_the_answer(capsys):
    def reply(req):
        if req.agent == "planner":
            return 'p = lookup(entity="Velmora", attribute="population")\nanswer(p)'
        if req.agent == "answer":
            return '{"name": "Velmora", "population": 412000}'
        return "hello there from the model"

    r = load("typed_stream").main(engine=ScriptedEngine(reply))
    assert r.answer.population == 412000 and r.answer.name == "Velmora"
    out = capsys.readouterr().out
    assert "streamed: hello there" in out and "typed answer: Town(" in out


@pytest.mark.embedded
@pytest.mark.parametrize("name, args, expect", [
    ("typed_stream", [], ["streamed:", "typed answer: Town("]),
    ("langgraph_embed", ["--yes"], ["plan to approve", "model call: planner"]),
    ("mcp_time_budget", [], ["answer:", "spent:"]),
])
def test_the_interface_examples_run_on_the_embedded_model(name, args, expect, embedded_engine):
    if name == "mcp_time_budget":
        require_module("mcp_server_time", "pip install 'tokenomy[test]'")
    env = {k: v for k, v in os.environ.items() if k != "TOKENOMY_MODEL"}
    out = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), *args], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert all(e in out.stdout for e in expect), out.stdout


def test_langchain_models_both_ways(capsys):
    require_module("langchain_openai", "pip install 'tokenomy[test]'")
    from .strict_openai_server import StrictOpenAIServer

    engine = ScriptedEngine(lambda req: "Paris is the capital.")
    with StrictOpenAIServer() as server:
        out = load("langchain_models").main(engine=engine, openai=f"strict-model@{server.url}")
    assert out["chain"].content == "Paris is the capital." and out["chain"].usage_metadata["input_tokens"] > 0
    planner = out["run"].usage["planner"]
    assert planner.prompt_tokens == 12 * planner.calls  # counted by the server, through ChatOpenAI
    assert "usage_metadata" in capsys.readouterr().out
