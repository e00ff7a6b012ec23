"""The Tool type, @tool, the registry, the calculator and the llm tool."""

import asyncio
import subprocess
import sys
import threading
from typing import Literal

import pytest
from pydantic import BaseModel

import tokenomy.tools as tools_pkg
from tokenomy.errors import RunError, UserError
from tokenomy.kernels import ScriptedEngine
from tokenomy.tools import (
    Tool,
    ToolArgumentError,
    ToolError,
    ToolRegistry,
    ToolTimeout,
    UnknownTool,
    calc,
    llm_tool,
    tool,
)
from tokenomy.tools.registry import DuplicateTool, SideEffectsNotAllowed


@tool
def search(query: str, k: int = 5) -> list[str]:
    """Search the notes for a query.
    Second line of the first paragraph.

    A second paragraph, left out of the description.

    Args:
        query: what to look for,
            continued on a second line.
        k (int): how many results.

    Returns:
        The results.
    """
    return [query] * k


@tool(name="fetch_title", timeout_s=5)
async def fetch(title: str, mode: Literal["short", "long"] = "short") -> dict[str, str]:
    """Fetch a page by title."""
    await asyncio.sleep(0)
    return {"title": title, "mode": mode}


def test_decorator_reads_hints_and_docstring():
    assert search.name == "search"
    assert search.description == "Search the notes for a query. Second line of the first paragraph."
    fields = search.args_model.model_fields
    assert fields["query"].description == "what to look for, continued on a second line."
    assert fields["k"].description == "how many results." and fields["k"].default == 5
    assert search.output_type == list[str] and not search.is_async and not search.side_effects
    assert fetch.name == "fetch_title" and fetch.is_async and fetch.timeout_s == 5
    assert fetch.args_model.model_fields["title"].description is None


def test_signature_is_one_short_line():
    assert search.signature() == "search(query: str, k: int = 5) -> list[str]"
    assert fetch.signature() == "fetch_title(title: str, mode: Literal['short', 'long'] = 'short') -> dict[str, str]"

    @tool
    def untyped(x, y=None):
        """No hints."""

    assert untyped.signature() == "untyped(x: Any, y: Any = None)"


def test_openai_schema_shape_without_titles():
    schema = search.openai_schema()
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "search" and fn["description"].startswith("Search the notes")
    params = fn["parameters"]
    assert params["type"] == "object" and params["required"] == ["query"]
    assert params["properties"]["k"] == {"type": "integer", "default": 5, "description": "how many results."}
    assert "title" not in str(params).lower().replace("'title': {", "")

    @tool
    def titled(title: str) -> str:
        """An argument named title must survive the title stripping."""
        return title

    assert "title" in titled.openai_schema()["function"]["parameters"]["properties"]
    assert search.output_schema() == {"type": "array", "items": {"type": "string"}}


def test_sync_and_async_invoke():
    assert search.invoke(query="x", k=2) == ["x", "x"]
    assert fetch.invoke(title="Orrin") == {"title": "Orrin", "mode": "short"}
    assert asyncio.run(search.ainvoke(query="y", k=1)) == ["y"]
    assert asyncio.run(fetch.ainvoke(title="t", mode="long"))["mode"] == "long"


def test_invoke_inside_a_loop_says_to_use_ainvoke():
    async def main():
        search.invoke(query="x")

    with pytest.raises(UserError, match="ainvoke"):
        asyncio.run(main())


def test_argument_errors_name_the_field():
    with pytest.raises(ToolArgumentError) as info:
        search.invoke(k="many")
    assert set(info.value.fields) == {"query", "k"}
    assert "query: required argument is missing" in str(info.value) and "'many'" in str(info.value)
    with pytest.raises(ToolArgumentError, match="unknown argument") as info:
        search.validate({"query": "q", "limit": 3})
    assert info.value.fields == ["limit"]
    with pytest.raises(ToolArgumentError, match="mode"):
        fetch.validate({"title": "t", "mode": "medium"})
    assert isinstance(info.value, UserError)


def test_a_tool_that_raises_gives_tool_error_with_cause():
    @tool
    def broken(x: int) -> int:
        """Always fails."""
        raise ZeroDivisionError("nope")

    with pytest.raises(ToolError) as info:
        broken.invoke(x=1)
    err = info.value
    assert isinstance(err, RunError) and err.tool == "broken" and err.args_given == {"x": 1}
    assert isinstance(err.__cause__, ZeroDivisionError) and "ZeroDivisionError: nope" in str(err)


def test_a_tool_that_hangs_times_out():
    @tool(timeout_s=0.05)
    async def hang_async() -> None:
        """Never returns."""
        await asyncio.Event().wait()

    release = threading.Event()

    @tool(timeout_s=0.05)
    def hang_sync() -> None:
        """Blocks its thread until the test releases it."""
        release.wait()

    with pytest.raises(ToolTimeout, match="0.05 s") as info:
        hang_async.invoke()
    assert isinstance(info.value, RunError) and isinstance(info.value, TimeoutError)

    async def sync_case():
        try:
            with pytest.raises(ToolTimeout):
                await hang_sync.ainvoke()
            assert not release.is_set()  # the timeout came while the tool was still blocked
        finally:
            release.set()  # its thread keeps running after the timeout: let it end, or asyncio.run waits for it

    asyncio.run(sync_case())


def test_tool_rejects_bad_definitions():
    class Args(BaseModel):
        x: int

    with pytest.raises(UserError, match="identifier"):
        Tool("bad name", "", Args, lambda x: x)
    with pytest.raises(UserError, match="timeout_s"):
        Tool("ok", "", Args, lambda x: x, timeout_s=0)
    with pytest.raises(UserError, match="kwargs"):
        tool(lambda **kw: kw)


def test_registry_lookup_suggestions_and_signatures():
    reg = ToolRegistry([search, fetch, calc])
    assert reg.get("search") is search and "calc" in reg and len(reg) == 3
    assert [t.name for t in reg] == ["search", "fetch_title", "calc"]
    with pytest.raises(UnknownTool) as info:
        reg.get("serch")
    assert info.value.suggestion == "search" and "did you mean 'search'" in str(info.value)
    assert "calc, fetch_title, search" in str(info.value)
    with pytest.raises(UnknownTool, match="known tools: calc, fetch_title, search"):
        reg["zzz"]
    assert reg.signatures().splitlines() == [calc.signature(), fetch.signature(), search.signature()]
    assert reg.signatures(describe=True).splitlines()[2].endswith("# Search the notes for a query.")
    assert [s["function"]["name"] for s in reg.openai_schemas()] == ["calc", "fetch_title", "search"]
    with pytest.raises(DuplicateTool):
        reg.register(tool(name="calc")(lambda expression: 0))

    def now() -> str:
        """The time."""
        return "noon"

    assert reg.register(now).signature() == "now() -> str"  # a plain function is wrapped with @tool
    assert reg.unregister("now").name == "now" and "now" not in reg


def test_side_effect_tools_are_off_by_default():
    @tool(side_effects=True)
    def delete_file(path: str) -> None:
        """Deletes a file."""

    with pytest.raises(SideEffectsNotAllowed, match="allow_side_effects=True"):
        ToolRegistry([delete_file])
    reg = ToolRegistry(allow_side_effects=True)
    assert reg.register(delete_file) is delete_file


def test_calculator():
    cases = {"(3 + 4) * 2": 14, "-2 ** 2": -4, "7 // 2 + 7 % 2": 4, "sqrt(16) + abs(-1)": 5,
             "round(2.567, 2)": 2.57, "max(1, 5, 3) - min(4, 2)": 3, "log(exp(2))": 2, "2 ** -1": 0.5,
             "1_000 / 8": 125}
    for expression, value in cases.items():
        assert calc.invoke(expression=expression) == pytest.approx(value), expression
    assert isinstance(calc.invoke(expression="2 + 2"), float)


@pytest.mark.parametrize("expression, problem", [
    ("__import__('os')", "__import__"), ("x + 1", "name 'x'"), ("(1).real", "attribute"),
    ("open('f').read()", "only abs"), ("9 ** 9 ** 9", "exponent"), ("10 ** 200 * 10 ** 200", "beyond"),
    ("1 / 0", "divides by zero"), ("1 +", "not a valid"), ("[1, 2]", "List"), ("'a' * 3", "not a number"),
    ("sqrt(-1)", "math domain"), ("1" * 501, "at most 500"), ("exp(10000)", "overflows"),
    ("(-8) ** 0.5", "complex"), ("lambda: 1", "Lambda"), ("True + 1", "not a number"),
])
def test_calculator_refuses(expression, problem):
    with pytest.raises(ToolArgumentError, match="expression") as info:
        calc.invoke(expression=expression)
    assert problem in str(info.value)


def test_llm_tool_records_usage():
    engine = ScriptedEngine(["1487", "Velmora"])
    llm = llm_tool(engine, max_tokens=16)
    assert llm.signature() == "llm(prompt: str, text: str = '') -> str"
    assert llm.invoke(prompt="The founding year only", text="Velmora was founded in 1487.") == "1487"
    first = llm.usage
    assert first.calls == 1 and first.completion_tokens == 4 and first.prompt_tokens > 0
    assert asyncio.run(llm.ainvoke(prompt="Which city?")) == "Velmora"
    assert llm.usage.calls == 2 and llm.usage.prompt_tokens > first.prompt_tokens
    sent = engine.requests[0]
    assert sent.params.max_tokens == 16 and "founded in 1487" in sent.prompt[-1]["content"]
    assert ToolRegistry([llm]).get("llm") is llm


def test_llm_tool_bounds_its_output_and_input():
    engine = ScriptedEngine(lambda req: "x" * 1000)
    llm = llm_tool(engine, max_tokens=8, max_text_chars=50)
    assert llm.invoke(prompt="p", text="y" * 10_000) == "x" * 8
    assert len(engine.requests[0].prompt[-1]["content"]) < 200


def test_public_names_and_lazy_imports():
    assert all(hasattr(tools_pkg, n) for n in tools_pkg.__all__)
    code = ("import sys, tokenomy.tools; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'langchain_core')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
