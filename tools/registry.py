"""``ToolRegistry``: the tools an agent or a plan may call, by name.

Iterating a registry yields its ``Tool`` objects, so it can be passed wherever planners take "an iterable of
tools". Tools with side effects (files, processes, the network) are refused unless the registry was built with
``allow_side_effects=True``: a plan written by a model should not delete files because a tool happened to be
importable.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tokenomy.errors import UserError

from .base import Tool
from .decorator import tool as make_tool

__all__ = ["ToolRegistry", "UnknownTool", "SideEffectsNotAllowed", "DuplicateTool", "as_tool"]


def as_tool(obj: Any) -> Tool:
    """``obj`` as a tokenomy ``Tool``: a ``Tool`` as it is, a LangChain tool through ``from_langchain``, a plain
    function (sync or async, with type hints and a docstring) through ``@tool``."""
    if isinstance(obj, Tool):
        return obj
    lc_tools = sys.modules.get("langchain_core.tools")  # a LangChain tool means LangChain is already imported
    if lc_tools is not None and isinstance(obj, lc_tools.BaseTool):
        from .langchain import from_langchain

        return from_langchain(obj)
    if isinstance(getattr(obj, "name", None), str) and callable(getattr(obj, "ainvoke", None)):
        return obj  # type: ignore[no-any-return]  # shaped like a Tool (a name, ainvoke): used as it is
    if callable(obj) and not isinstance(obj, type):
        return make_tool(obj)
    raise UserError(f"{obj!r} is not a tool: give a tokenomy Tool, a LangChain tool, or a function with type "
                    "hints and a docstring")


class UnknownTool(UserError):
    """A tool name the registry does not hold. ``suggestion`` is the closest known name, if any."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        near = difflib.get_close_matches(name, self.known, n=1)
        self.suggestion: str | None = near[0] if near else None
        hint = f"; did you mean {self.suggestion!r}?" if self.suggestion else ""
        listing = ", ".join(self.known) if self.known else "none"
        super().__init__(f"unknown tool {name!r}{hint} (known tools: {listing})")


class SideEffectsNotAllowed(UserError):
    """A tool with side effects offered to a registry that does not allow them."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"tool {name!r} has side effects (files, processes or the network) and is off by default; "
                         "to enable it, put the tools in ToolRegistry([...], allow_side_effects=True) and pass that")


class DuplicateTool(UserError):
    """Two different tools registered under one name."""


class ToolRegistry:
    """Tools by name.

    Args:
        tools: tools (or plain functions, wrapped with ``@tool``) to register now.
        allow_side_effects: accept tools whose ``side_effects`` is true.
    """

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = (), *, allow_side_effects: bool = False) -> None:
        self.allow_side_effects = allow_side_effects
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.register(t)

    def register(self, t: Tool | Callable[..., Any], *, replace: bool = False) -> Tool:
        """Add a tool (a plain function is wrapped with ``@tool`` first) and return it."""
        item = as_tool(t)
        if item.side_effects and not self.allow_side_effects:
            raise SideEffectsNotAllowed(item.name)
        old = self._tools.get(item.name)
        if old is not None and old is not item and not replace:
            raise DuplicateTool(f"a different tool named {item.name!r} is already registered; "
                                "pass replace=True to replace it")
        self._tools[item.name] = item
        return item

    def unregister(self, name: str) -> Tool:
        """Remove a tool and return it."""
        self.get(name)
        return self._tools.pop(name)

    def get(self, name: str) -> Tool:
        """The tool called ``name``; ``UnknownTool`` (with a close-match suggestion) if there is none."""
        found = self._tools.get(name)
        if found is None:
            raise UnknownTool(name, self._tools)
        return found

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def as_dict(self) -> dict[str, Tool]:
        """A plain ``{name: tool}`` copy, sorted by name."""
        return {name: self._tools[name] for name in self.names()}

    def openai_schemas(self) -> list[dict[str, Any]]:
        """The OpenAI function-calling schemas of every tool, sorted by name."""
        return [self._tools[name].openai_schema() for name in self.names()]

    def signatures(self, *, describe: bool = False) -> str:
        """One signature per line, sorted by name, so prompts that list tools share a stable prefix.

        With ``describe`` each line ends with ``  # `` and the first sentence of the tool's description.
        """
        lines = []
        for name in self.names():
            t = self._tools[name]
            line = t.signature()
            if describe and t.description:
                line += f"  # {_first_sentence(t.description)}"
            lines.append(line)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ToolRegistry({self.names()!r})"


def _first_sentence(text: str) -> str:
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]
