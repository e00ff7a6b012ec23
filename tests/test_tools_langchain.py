"""Adapters between tokenomy tools and LangChain tools, both ways, sync and async."""

import asyncio
import builtins
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenomy.errors import MissingExtra
from tokenomy.tools import ToolArgumentError, ToolError, from_langchain, to_langchain, tool

from .conftest import require_module


@pytest.fixture
def lc_tools():
    """langchain_core.tools, for the adapter tests (the test extra installs it; in CI its absence fails)."""
    return require_module("langchain_core.tools", "pip install 'tokenomy[test]'")


@tool
def area(width: float, height: float = 1.0) -> float:
    """Area of a rectangle.

    Args:
        width: the width.
        height: the height.
    """
    return width * height


@tool
async def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


def test_to_langchain_sync_and_async(lc_tools):
    lc = to_langchain(area)
    assert isinstance(lc, lc_tools.BaseTool)
    assert lc.name == "area" and lc.description == "Area of a rectangle."
    assert lc.args_schema is area.args_model
    assert lc.invoke({"width": 2, "height": 3}) == 6
    assert asyncio.run(lc.ainvoke({"width": 2})) == 2
    lc_async = to_langchain(shout)
    assert lc_async.invoke({"text": "a"}) == "A"
    assert asyncio.run(lc_async.ainvoke({"text": "b"})) == "B"


def test_round_trip_keeps_name_schema_and_output_type(lc_tools):
    back = from_langchain(to_langchain(area))
    assert back.name == "area" and back.description == area.description
    assert back.openai_schema() == area.openai_schema()
    assert back.signature() == area.signature()
    assert back.invoke(width=4, height=2) == 8
    assert asyncio.run(back.ainvoke(width=3)) == 3


def test_from_langchain_tool_decorator_and_subclass(lc_tools):
    @lc_tools.tool
    def multiply(a: int, b: int = 2) -> int:
        """Multiply two numbers."""
        return a * b

    t = from_langchain(multiply)
    assert t.name == "multiply" and t.signature() == "multiply(a: int, b: int = 2) -> int"
    assert t.invoke(a=3) == 6 and asyncio.run(t.ainvoke(a=3, b=3)) == 9
    with pytest.raises(ToolArgumentError, match="a"):
        t.invoke(a="three")

    class Echo(lc_tools.BaseTool):
        name: str = "echo-tool"
        description: str = "Echo the query."

        def _run(self, query: str) -> str:
            if query == "boom":
                raise ValueError("boom")
            return query

    echo = from_langchain(Echo(), side_effects=False)
    assert echo.name == "echo_tool"  # made a plan-safe identifier
    assert echo.invoke(query="hi") == "hi"
    with pytest.raises(ToolError) as info:
        echo.invoke(query="boom")
    assert isinstance(info.value.__cause__, ValueError)


def test_from_langchain_with_a_json_schema_dict(lc_tools):
    schema = {"type": "object", "required": ["q"],
              "properties": {"q": {"type": "string", "description": "query"}, "n": {"type": "integer", "default": 3}}}
    lc = lc_tools.StructuredTool.from_function(func=lambda q, n=3: f"{q}:{n}", name="find", description="Find.",
                                               args_schema=schema)
    t = from_langchain(lc)
    assert t.signature() == "find(q: str, n: int = 3)"
    assert t.args_model.model_fields["q"].description == "query"
    assert t.invoke(q="x") == "x:3"


def test_missing_langchain_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_langchain(name, *args, **kwargs):
        if name.startswith("langchain_core"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_langchain)
    with pytest.raises(MissingExtra, match=r"tokenomy\[langchain\]"):
        to_langchain(area)


def test_without_langchain_only_the_adapter_tests_skip(tmp_path):
    """This file run where langchain_core cannot be imported: the test of its absence still runs."""
    blocked = tmp_path / "langchain_core"
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ModuleNotFoundError('langchain_core is blocked for this test')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(tmp_path)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "not without_langchain"], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 passed, 4 skipped" in out.stdout, out.stdout[-3000:]
    assert "langchain_core is blocked for this test" in out.stdout  # the skips say why
