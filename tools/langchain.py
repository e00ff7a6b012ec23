"""Adapters both ways between tokenomy ``Tool`` and LangChain's ``BaseTool``.

``from_langchain`` wraps any LangChain tool (``@tool`` functions, ``StructuredTool``, ``BaseTool`` subclasses,
tools whose schema is a JSON-schema dict); ``to_langchain`` gives a ``StructuredTool`` with the same argument
model, callable sync and async. ``langchain-core`` is imported only when an adapter is used.
"""

from __future__ import annotations

import re
import typing
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tokenomy.errors import MissingExtra, UserError

from .base import Tool, model_from_json_schema

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

__all__ = ["from_langchain", "to_langchain"]


def _langchain_tools() -> Any:
    try:
        import langchain_core.tools as lc_tools
    except ImportError as exc:
        raise MissingExtra("langchain-core", "langchain", what="LangChain tool adapters") from exc
    return lc_tools


def from_langchain(base_tool: BaseTool, *, side_effects: bool = False, timeout_s: float | None = None) -> Tool:
    """A tokenomy ``Tool`` that calls ``base_tool`` (through its async ``ainvoke``).

    Args:
        base_tool: any LangChain ``BaseTool``.
        side_effects: say so if the LangChain tool touches files, processes or the network (LangChain does not).
        timeout_s: seconds a call may take.
    """
    lc_tools = _langchain_tools()
    if not isinstance(base_tool, lc_tools.BaseTool):
        raise UserError(f"from_langchain needs a langchain_core BaseTool, got {type(base_tool).__name__}")
    name = re.sub(r"\W", "_", base_tool.name)
    if not name or name[0].isdigit():
        name = f"_{name}"
    args_model = _args_model(base_tool, name)

    async def call(**kwargs: Any) -> Any:
        return await base_tool.ainvoke(kwargs)

    return Tool(name, base_tool.description or name, args_model, call, output_type=_output_type(base_tool),
                side_effects=side_effects, timeout_s=timeout_s)


def to_langchain(t: Tool) -> BaseTool:
    """A LangChain ``StructuredTool`` with ``t``'s name, description and argument model, sync and async."""
    lc_tools = _langchain_tools()

    def run(**kwargs: Any) -> Any:
        return t.invoke(**kwargs)

    async def arun(**kwargs: Any) -> Any:
        return await t.ainvoke(**kwargs)

    # So that ``from_langchain(to_langchain(t))`` keeps the output type.
    run.__annotations__["return"] = arun.__annotations__["return"] = t.output_type

    return lc_tools.StructuredTool.from_function(  # type: ignore[no-any-return]
        func=run, coroutine=arun, name=t.name, description=t.description or t.name, args_schema=t.args_model)


def _args_model(base_tool: Any, name: str) -> type[BaseModel]:
    schema = base_tool.tool_call_schema  # the arguments a model fills in (injected ones left out)
    given = base_tool.args_schema
    if _is_model(schema):
        # The tool's own model when nothing was left out: it keeps its config (e.g. extra="forbid").
        if _is_model(given) and set(given.model_fields) == set(schema.model_fields):
            return given  # type: ignore[no-any-return]
        return schema  # type: ignore[no-any-return]
    if isinstance(schema, dict):
        return model_from_json_schema(schema, name)
    # A pydantic v1 model (LangChain still accepts them): go through its JSON schema.
    return model_from_json_schema({"properties": base_tool.args, "required": _v1_required(schema)}, name)


def _is_model(x: Any) -> bool:
    return isinstance(x, type) and issubclass(x, BaseModel)


def _v1_required(schema: Any) -> list[str]:
    try:
        return list(schema.schema().get("required", []))
    except Exception:
        return []


def _output_type(base_tool: Any) -> Any:
    fn = getattr(base_tool, "func", None) or getattr(base_tool, "coroutine", None)
    if fn is None:
        return Any
    try:
        return typing.get_type_hints(fn).get("return", Any)
    except Exception:
        return Any
