"""``@tool``: a ``Tool`` from a plain (sync or async) function, its type hints and its Google-style docstring.

The first paragraph of the docstring is the description; the ``Args:`` section gives each argument's
description (it lands in the pydantic ``Field``, hence in the JSON schema); the return annotation is the
output type. Arguments without a hint are ``Any``; ``*args`` and ``**kwargs`` are refused (a model cannot
see them in a schema).
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any, overload

from pydantic import ConfigDict, Field, create_model

from tokenomy.errors import UserError

from .base import Tool

__all__ = ["tool", "parse_docstring"]

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args|Returns?|Yields?|Raises|Examples?|Notes?|"
                      r"Warnings?|See Also|Attributes|Todo)\s*:\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_ARG_SECTIONS = ("Args", "Arguments", "Parameters", "Params", "Keyword Args")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """``(description, {argument: description})`` from a Google-style docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    i = 0
    while i < len(lines) and lines[i].strip() and not _SECTION.match(lines[i].strip()):
        summary.append(lines[i].strip())
        i += 1
    args: dict[str, str] = {}
    section = ""
    current: str | None = None
    arg_indent: int | None = None
    for line in lines[i:]:
        stripped = line.strip()
        header = _SECTION.match(line)  # a section header starts at column 0 after cleandoc
        if header:
            section, current, arg_indent = header.group(1), None, None
            continue
        if section not in _ARG_SECTIONS or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if arg_indent is None:
            arg_indent = indent
        match = _ARG_LINE.match(stripped)
        if indent <= arg_indent and match:
            current = match.group(1).lstrip("*")
            args[current] = match.group(3).strip()
        elif current is not None:
            args[current] = f"{args[current]} {stripped}".strip()
    return " ".join(summary), args


F = Callable[..., Any]


@overload
def tool(fn: F, /) -> Tool: ...


@overload
def tool(*, name: str | None = None, description: str | None = None, side_effects: bool = False,
         timeout_s: float | None = None) -> Callable[[F], Tool]: ...


def tool(fn: F | None = None, /, *, name: str | None = None, description: str | None = None,
         side_effects: bool = False, timeout_s: float | None = None) -> Tool | Callable[[F], Tool]:
    """Make a ``Tool`` of a function: ``@tool`` or ``@tool(name=..., side_effects=..., timeout_s=...)``.

    Args:
        fn: the function (when used as ``@tool`` without parentheses).
        name: the tool's name (default: the function's name).
        description: overrides the docstring's first paragraph.
        side_effects: the function touches files, processes or the outside world.
        timeout_s: seconds a call may take.
    """

    def build(f: F) -> Tool:
        return _from_function(f, name=name, description=description, side_effects=side_effects,
                              timeout_s=timeout_s)

    return build(fn) if fn is not None else build


def _from_function(fn: F, *, name: str | None, description: str | None, side_effects: bool,
                   timeout_s: float | None) -> Tool:
    if not callable(fn):
        raise UserError(f"@tool needs a function, got {fn!r}")
    tool_name = str(name or getattr(fn, "__name__", ""))
    summary, arg_docs = parse_docstring(inspect.getdoc(fn))
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise UserError(f"@tool {tool_name!r}: cannot resolve the type hints of {fn!r}: {exc}") from exc
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise UserError(f"@tool {tool_name!r}: *args/**kwargs ({param.name}) cannot be described to a model; "
                            "name every argument")
        if param.kind is param.POSITIONAL_ONLY:
            raise UserError(f"@tool {tool_name!r}: positional-only argument {param.name!r}; tools take keywords")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), Field(default, description=arg_docs.get(param.name)))
    model_name = "".join(p.capitalize() for p in tool_name.split("_")) + "Args"
    try:
        args_model = create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)
    except Exception as exc:
        raise UserError(f"@tool {tool_name!r}: pydantic cannot model its arguments: {exc}") from exc
    return Tool(tool_name, description if description is not None else summary, args_model, fn,
                output_type=hints.get("return", Any), side_effects=side_effects, timeout_s=timeout_s)
