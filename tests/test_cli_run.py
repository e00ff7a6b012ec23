"""``tokenomy run`` as the README describes it: the fields of ``--json``, ``--resume`` of a process killed mid-run,
and ``$TOKENOMY_MODEL``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tokenomy.cli import main
from tokenomy.kernels import ScriptedEngine
from tokenomy.kernels.scripted import render_chatml

QUESTION = "Who founded Halvane Instruments?"
PLAN = 'e1 = search(query="Halvane Instruments")\nanswer(e1)'  # a passage: too long to be the answer itself
ANSWER = "Corvin Halvane"


def plan_then_answer(req):
    return PLAN if req.agent == "planner" else ANSWER


@pytest.fixture
def scripted_model(monkeypatch):
    """``--model`` loads this scripted engine (the CLI loads its engine through the registry)."""
    engine = ScriptedEngine(plan_then_answer)
    monkeypatch.setattr("tokenomy.kernels.registry.load_engine", lambda spec=None, **kw: engine)
    return engine


def test_run_json_has_usage_by_agent_cached_tokens_and_the_checkpoint(tmp_path, capsys, scripted_model):
    engine = scripted_model
    assert main(["run", QUESTION, "--json", "--runs-dir", str(tmp_path), "--thread", "t1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["answer"] == ANSWER and out["plan"] == PLAN and out["plan_valid"] is True
    planner, solver = engine.requests
    assert (planner.agent, solver.agent) == ("planner", "solver")
    # Scripted tokens are UTF-8 bytes. The planner's prompt is the first: nothing cached. The solver's prompt
    # starts as the planner's did, "<|im_start|>system\n" (19 bytes), then its own system message.
    planner_bytes = len(render_chatml(planner.prompt).encode())
    solver_bytes = len(render_chatml(solver.prompt).encode())
    assert render_chatml(solver.prompt).startswith("<|im_start|>system\nAnswer the question")
    assert out["usage_by_agent"] == {
        "planner": {"prompt_tokens": planner_bytes, "cached_prompt_tokens": 0, "completion_tokens": len(PLAN),
                    "calls": 1},
        "solver": {"prompt_tokens": solver_bytes, "cached_prompt_tokens": 19, "completion_tokens": len(ANSWER),
                   "calls": 1}}
    assert out["usage"] == {"prompt_tokens": planner_bytes + solver_bytes, "cached_prompt_tokens": 19,
                            "completion_tokens": len(PLAN) + len(ANSWER), "calls": 2}
    # The checkpoint: where it says, and it holds the run (resuming it from there calls nothing again).
    assert out["checkpoint"] == str(tmp_path / "checkpoints.sqlite")
    assert main(["run", "--resume", "t1", "--json", "--runs-dir", str(tmp_path)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert len(engine.requests) == 2 and again["answer"] == ANSWER and again["usage"] == out["usage"]
    elsewhere = tmp_path / "other" / "ck.sqlite"
    elsewhere.parent.mkdir()
    assert main(["run", QUESTION, "--json", "--runs-dir", str(tmp_path), "--checkpoint", str(elsewhere)]) == 0
    third = json.loads(capsys.readouterr().out)
    assert third["checkpoint"] == str(elsewhere) and elsewhere.stat().st_size > 0
    # The same question again on the same engine: each prompt is cached but its last token (which a model must
    # compute to answer), and the JSON says so.
    assert {a: u["cached_prompt_tokens"] for a, u in third["usage_by_agent"].items()} == {
        "planner": planner_bytes - 1, "solver": solver_bytes - 1}
    assert third["usage"]["cached_prompt_tokens"] == planner_bytes + solver_bytes - 2


# -- --resume of a process killed mid-run, through the command -----------------------------------------------------


TOOL_PLAN = ('e1 = search(query="Halvane Instruments")\ne2 = llm(prompt="Who founded it? The name only.", text=e1[0])\n'
             'answer(e2)')


class FakeServer:
    """An OpenAI-compatible server for a run with ``--llm-tool``: the planner gets TOOL_PLAN, the plan's ``llm``
    tool call gets ANSWER (a short value: no solver call). The first ``llm`` request hangs until ``answering``
    is set, so the test can kill the client in the middle of the plan's execution. It logs who asked."""

    def __init__(self) -> None:
        from tokenomy.tools.builtin.llm import LLM_INSTRUCTION

        self.seen: list[str] = []
        self.answering = threading.Event()
        self.waiting = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                system = body["messages"][0]["content"]
                who = ("llm-tool" if system == LLM_INSTRUCTION else
                       "planner" if system.startswith("You write plans") else "other")
                server.seen.append(who)
                if who == "llm-tool" and not server.answering.is_set():
                    server.waiting.set()
                    server.answering.wait(60)
                    return  # the client is gone by now
                text = {"planner": TOOL_PLAN, "llm-tool": ANSWER}.get(who, "unexpected")
                prompt = sum(len(m["content"]) for m in body["messages"])
                data = json.dumps({"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": prompt, "completion_tokens": len(text)}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.answering.set()
        self.httpd.shutdown()


def _events(path, skip=0):
    lines = path.read_text().splitlines()[skip:]
    return [json.loads(line) for line in lines if line.strip().endswith("}")], len(lines) + skip


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server for the module's tests (``tests/pg.py``)."""
    from tests.conftest import require, require_module

    from .pg import pg_bin, postgres_server

    require_module("langgraph.checkpoint.postgres", "pip install 'tokenomy[postgres]'")
    if pg_bin() is None:
        require("PostgreSQL's initdb and pg_ctl (apt install postgresql)")
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def checkpoints(request, tmp_path):
    """``--checkpoints``: the default SQLite file in the runs dir, or a PostgreSQL database."""
    if request.param == "sqlite":
        return []
    return ["--checkpoints", request.getfixturevalue("postgres_url")]


def test_a_run_killed_mid_way_resumes_through_the_command_without_repeating_anything(tmp_path, checkpoints):
    server = FakeServer()
    try:
        base = [sys.executable, "-m", "tokenomy.cli", "run"]
        opts = ["--model", f"openai:m@{server.url}", "--runs-dir", str(tmp_path), "--llm-tool", "--json",
                *checkpoints]
        proc = subprocess.Popen([*base, QUESTION, "--thread", "k1", *opts], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            # Killed in the middle of the plan: search has run, the llm tool's model call is in flight.
            if not server.waiting.wait(120):
                proc.kill()
                pytest.fail(f"the run never reached the llm tool: {proc.communicate()[1].decode()[-2000:]}")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL and server.seen == ["planner", "llm-tool"]
        trace = tmp_path / "k1.trace.jsonl"
        before, n = _events(trace)
        assert [e["gen_ai.tool.name"] for e in before if e["event"] == "tool_call"] == ["search"]
        server.answering.set()
        done = subprocess.run([*base, "--resume", "k1", *opts], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout)
        assert out["answer"] == ANSWER and out["thread_id"] == "k1" and out["plan"] == TOOL_PLAN
        # Nothing that finished ran again: the planner once in all, search once (journaled before the kill);
        # only the llm tool's call, cut off, is made again.
        assert server.seen == ["planner", "llm-tool", "llm-tool"]
        after, _ = _events(trace, n)
        assert [(e["gen_ai.tool.name"], e.get("replayed", False)) for e in after if e["event"] == "tool_call"] == [
            ("search", True), ("llm", False)]  # search's result comes from the journal
        assert [e.get("status") for e in after if e["event"] == "run"] == ["resumed", "finished"]
        assert out["usage_by_agent"]["planner"]["calls"] == 1
        # The server reports no cached tokens: unknown (null) for the planner and so for the total, not 0.
        assert out["usage_by_agent"]["planner"]["cached_prompt_tokens"] is None
        assert out["usage"]["cached_prompt_tokens"] is None
    finally:
        server.close()


# -- $TOKENOMY_MODEL --------------------------------------------------------------------------------------------


def test_tokenomy_model_picks_the_model_when_none_is_given(tmp_path, monkeypatch, capsys):
    from tokenomy.kernels import load_engine

    monkeypatch.setenv("TOKENOMY_MODEL", "scripted")
    assert load_engine().spec == "scripted"
    assert main(["chat", "hello there", "--json", str(tmp_path / "a.json")]) == 0
    assert capsys.readouterr().out.startswith("hello there")  # the scripted double echoes
    assert json.loads((tmp_path / "a.json").read_text())["model"] == "scripted"
    assert main(["info"]) == 0
    assert "default model spec: scripted" in capsys.readouterr().out
    assert main(["run", QUESTION, "--runs-dir", str(tmp_path)]) == 1  # the echo is no plan: no answer
    assert "model: scripted" in capsys.readouterr().out
    # The variable is read each time, and --model wins over it.
    monkeypatch.setenv("TOKENOMY_MODEL", "gpt-17")
    assert main(["chat", "hi"]) == 1
    assert "unknown model spec 'gpt-17'" in capsys.readouterr().err
    assert main(["chat", "hi", "--model", "scripted"]) == 0
    monkeypatch.delenv("TOKENOMY_MODEL")
    from tokenomy.kernels.registry import default_spec

    assert default_spec() == "embedded"


def test_tokenomy_model_in_a_fresh_process(tmp_path):
    env = {**os.environ, "TOKENOMY_MODEL": "scripted"}
    p = subprocess.run([sys.executable, "-m", "tokenomy.cli", "chat", "from the environment"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("from the environment") and "model: scripted" in p.stdout


def test_the_llm_tool_s_model_calls_count_in_the_run_s_usage():
    from tokenomy.planners import make_strategy
    from tokenomy.tools import calc, example_corpus_dir, llm_tool, lookup_tool, search_tool

    engine = ScriptedEngine(lambda req: TOOL_PLAN if req.agent == "planner" else ANSWER)
    corpus = example_corpus_dir()
    tools = [search_tool(corpus), lookup_tool(corpus), calc, llm_tool(engine)]
    result = make_strategy("rewoo", engine, tools).run(QUESTION)
    assert result.answer == ANSWER and len(engine.requests) == 2  # the planner, and the plan's llm call
    planner, tool_call = engine.requests
    assert result.total.calls == 2 and set(result.usage) == {"planner", "tool:llm"}
    assert result.usage["tool:llm"].prompt_tokens == len(render_chatml(tool_call.prompt).encode())
    assert result.usage["tool:llm"].completion_tokens == len(ANSWER)


class Crash(BaseException):
    """Stands for the process dying mid-node (not an error the executor would turn into a value)."""


def test_a_run_cut_off_after_the_llm_tool_answered_counts_that_call_once_on_resume(tmp_path):
    """The llm call finished and was journaled, then the run died before its node finished (so the node's usage
    was never checkpointed): on resume the call is replayed from the journal, not made again, and its usage
    counts once, from the journal."""
    from tokenomy.planners import make_strategy
    from tokenomy.tools import calc, example_corpus_dir, llm_tool, lookup_tool, search_tool, tool

    plan = ('e1 = search(query="Halvane Instruments")\ne2 = llm(prompt="Who founded it? The name only.", '
            'text=e1[0])\ne3 = check(name=e2)\nanswer(e2)')
    engine = ScriptedEngine(lambda req: plan if req.agent == "planner" else ANSWER)
    dying = {"now": True}

    @tool
    def check(name: str) -> str:
        """Check a name."""
        if dying["now"]:
            raise Crash("killed")
        return name

    corpus = example_corpus_dir()
    tools = [search_tool(corpus), lookup_tool(corpus), calc, llm_tool(engine), check]
    strategy = make_strategy("rewoo", engine, tools)
    db = tmp_path / "runs.sqlite"
    with pytest.raises(Crash):
        strategy.run(QUESTION, thread_id="cut", checkpoints=db)
    assert [r.agent for r in engine.requests] == ["planner", None]  # the llm tool's call happened
    dying["now"] = False
    result = strategy.resume("cut", db)
    assert result.answer == ANSWER
    assert [r.agent for r in engine.requests] == ["planner", None]  # nothing called again
    assert result.usage["tool:llm"].calls == 1 and result.total.calls == 2
    assert result.usage["tool:llm"].prompt_tokens == len(render_chatml(engine.requests[1].prompt).encode())


def test_two_processes_run_their_threads_at_once_on_one_postgres_store(tmp_path, postgres_url):
    """Two ``tokenomy run`` processes, different threads, one database: both finish, each resumable from it by a
    third process (which calls nothing again)."""
    server = FakeServer()
    server.answering.set()
    try:
        base = [sys.executable, "-m", "tokenomy.cli", "run"]
        opts = ["--model", f"openai:m@{server.url}", "--llm-tool", "--json", "--checkpoints", postgres_url]
        procs = [subprocess.Popen([*base, QUESTION, "--thread", f"pg{i}", "--runs-dir", str(tmp_path / str(i)),
                                   *opts], stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()[-3000:]
            outs.append(json.loads(out))
        assert [o["thread_id"] for o in outs] == ["pg0", "pg1"] and all(o["answer"] == ANSWER for o in outs)
        assert all(o["checkpoint"] == postgres_url for o in outs)  # no password in it to hide
        calls = len(server.seen)
        assert sorted(server.seen) == sorted(["planner", "llm-tool"] * 2)
        for i in range(2):
            again = subprocess.run([*base, "--resume", f"pg{i}", "--runs-dir", str(tmp_path / "other"), *opts],
                                   capture_output=True, text=True, timeout=300)
            assert again.returncode == 0, again.stderr[-3000:]
            assert json.loads(again.stdout)["answer"] == ANSWER
        assert len(server.seen) == calls
    finally:
        server.close()


def test_a_postgres_store_that_cannot_be_reached_is_a_clear_error(tmp_path, capsys):
    from tokenomy.errors import StorageError
    from tokenomy.planners import Checkpoints
    from tokenomy.planners.journal import redact

    pytest.importorskip("langgraph.checkpoint.postgres")
    # Nothing listens on port 9; the password never shows.
    with pytest.raises(StorageError) as err:
        Checkpoints("postgresql://u:secret@127.0.0.1:9/db", timeout_s=2)
    assert "secret" not in str(err.value) and "127.0.0.1:9" in str(err.value)
    assert redact("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
