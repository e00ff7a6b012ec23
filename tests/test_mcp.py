"""MCP both ways, against real MCP servers started here: a test double written with the ``mcp`` SDK
(``tests/mcp_doubles.py``, over stdio and streamable HTTP), the published ``mcp-server-time`` (no network), and
``tokenomy mcp`` itself."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tokenomy.errors import RunError, UserError
from tokenomy.kernels import ScriptedEngine
from tokenomy.planners.rewoo import Rewoo
from tokenomy.tools import ToolError
from tokenomy.tools.mcp import McpServer, McpToolError
from tokenomy.tools.registry import SideEffectsNotAllowed

from .conftest import require_module

DOUBLE = [sys.executable, str(Path(__file__).with_name("mcp_doubles.py"))]
# What a server started here needs of this process's environment (the suite's model pins, a test's import path).
PASS_ON = {k: os.environ[k] for k in ("PYTHONPATH", "PYTHONSAFEPATH", "TOKENOMY_EMBEDDED", "TOKENOMY_DTYPE",
                                      "TOKENOMY_CACHE_DIR", "HF_HUB_OFFLINE") if k in os.environ}
ALL = ["add", "shout", "fail", "slow", "write_note"]


@pytest.fixture(autouse=True, scope="module")
def _sdk():
    require_module("mcp", "pip install 'tokenomy[mcp]'")


@pytest.fixture(scope="module")
def double(_sdk):
    with McpServer(DOUBLE, allow=ALL, env=PASS_ON, timeout_s=2.0) as server:
        yield server


def test_tools_are_off_until_named_and_keep_the_server_s_schemas(double):
    with McpServer(DOUBLE, env=PASS_ON) as unnamed:
        with pytest.raises(UserError, match="off until you name them.*add, fail, shout, slow, write_note"):
            unnamed.tools()
    with McpServer(DOUBLE, allow=["add", "divide"], env=PASS_ON) as wrong, \
            pytest.raises(UserError, match="has no tool divide; it offers: add"):
        wrong.tools()
    tools = {t.name: t for t in double.tools()}
    assert tools["add"].signature() == "add(a: int, b: int)" and tools["add"].description == "Adds two whole numbers."
    assert tools["shout"].signature() == "shout(text: str, times: int = 1)"
    assert not tools["add"].side_effects and tools["write_note"].side_effects  # no read-only hint: a side effect


def test_calls_return_values_and_errors_come_back_as_tool_errors(double):
    tools = {t.name: t for t in double.tools()}
    assert tools["add"].invoke(a=2, b=40) == 42 and tools["shout"].invoke(text="hi", times=2) == "HI HI"
    with pytest.raises(ToolError, match="McpToolError: Error executing tool fail: refused: no"):
        tools["fail"].invoke(why="no")
    start = time.monotonic()
    with pytest.raises(RunError):  # the tool's bound or the MCP call's, both 2 s
        tools["slow"].invoke(seconds=30)
    assert time.monotonic() - start < 5
    assert tools["add"].invoke(a=1, b=1) == 2  # the session outlived the timed-out call
    with pytest.raises(UserError, match="a: Input should be a valid integer"):
        tools["add"].invoke(a="x", b=1)


def test_a_plan_calls_mcp_tools_and_a_side_effect_needs_permission(double):
    tools = {t.name: t for t in double.tools()}
    engine = ScriptedEngine(lambda req: 'e1 = add(a=2, b=3)\ne2 = shout(text="done")\nanswer(e1)')
    assert Rewoo(engine, [tools["add"], tools["shout"]]).run("What is 2 + 3?").answer == 5
    with pytest.raises(SideEffectsNotAllowed):
        Rewoo(engine, [tools["add"], tools["write_note"]])


def test_the_published_time_server_over_stdio():
    require_module("mcp_server_time", "pip install mcp-server-time")
    with McpServer([sys.executable, "-m", "mcp_server_time"], allow=["get_current_time", "convert_time"],
                   env=PASS_ON) as server:
        now, convert = server.tools()
        assert now.signature() == "get_current_time(timezone: str)"
        value = now.invoke(timezone="Asia/Tokyo")
        assert value["timezone"] == "Asia/Tokyo" and value["datetime"].endswith("+09:00")
        moved = convert.invoke(source_timezone="Europe/Paris", time="14:30", target_timezone="Asia/Tokyo")
        assert moved["target"]["datetime"][11:16] in ("22:30", "21:30")  # 8 h later in winter, 7 h in summer


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_over_streamable_http():
    port = _free_port()
    proc = subprocess.Popen([*DOUBLE, "--http", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **PASS_ON})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, "the MCP server exited"
            time.sleep(0.2)
        with McpServer(url=f"http://127.0.0.1:{port}/mcp", allow=["add"]) as server:
            (add,) = server.tools()
            assert add.invoke(a=20, b=22) == 42
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_server_that_cannot_start_or_never_answers_is_a_clear_error_in_time():
    with pytest.raises(UserError, match="could not be started: FileNotFoundError"):
        McpServer(["no-such-mcp-server-here"]).start()
    start = time.monotonic()
    with pytest.raises(UserError, match="did not finish its handshake in 2 s"):
        McpServer([sys.executable, "-c", "import time; time.sleep(60)"], connect_timeout_s=2).start()
    assert time.monotonic() - start < 10
    with pytest.raises(UserError, match="a command .* or a url"):
        McpServer()


def _tokenomy_mcp(*args):
    return McpServer([sys.executable, "-c", "from tokenomy.cli import main; raise SystemExit(main())", "mcp", *args],
                     allow=["run", "rag_ask"], env=PASS_ON, timeout_s=300, connect_timeout_s=60)


def test_tokenomy_mcp_serves_run_and_rag_ask(tmp_path):
    with _tokenomy_mcp("--model", "scripted", "--store", str(tmp_path / "none.sqlite")) as server:
        run, rag_ask = server.tools()
        assert not run.side_effects and not rag_ask.side_effects
        out = run.invoke(question="What is the population of Velmora?")
        assert out["model"] == "scripted" and out["strategy"] == "rewoo" and out["total"]["calls"] >= 1
        assert out["usage"]["planner"]["prompt_tokens"] > 0
        with pytest.raises(ToolError, match="UserError: no RAG store at") as info:
            rag_ask.invoke(question="anything")
        assert isinstance(info.value.__cause__, McpToolError)


@pytest.mark.embedded
@pytest.mark.timeout(900)
def test_tokenomy_mcp_answers_with_the_embedded_model():
    with _tokenomy_mcp() as server:
        run, _ = server.tools()
        out = run.invoke(question="What is the population of Velmora?")
    assert out["model"].startswith("embedded") and out["total"]["completion_tokens"] > 0
    assert out["answer"] is not None and out["plan"]
