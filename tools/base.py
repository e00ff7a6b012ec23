"""The ``Tool`` type: a named, described, typed callable that planners and agents can call.

A tool validates its arguments with a pydantic model before it runs, runs sync callables in a thread so the
event loop stays free, bounds its run time, and turns whatever its callable raises into one of three errors::

    UserError
     └── ToolArgumentError    the arguments do not fit the tool (names the fields); retrying will not help
    RunError
     ├── ToolError            the tool's callable raised (the original exception is ``__cause__``)
     └── ToolTimeout          the tool ran longer than ``timeout_s``

It also describes itself two ways: ``openai_schema()`` for function-calling APIs and ``signature()``, a one-line
text signature for plan prompts (tokens are the product, so it stays short).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import re
import threading
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from tokenomy._threads import in_daemon_thread
from tokenomy.errors import BudgetExceeded, RunError, UserError
from tokenomy.kernels.usage import Usage

__all__ = ["Tool", "ToolArgumentError", "ToolError", "ToolTimeout", "strip_titles", "type_text", "collect_usage",
           "model_from_json_schema"]

_USAGE_SINK: contextvars.ContextVar[list[Usage] | None] = contextvars.ContextVar("tokenomy_tool_usage", default=None)


@contextlib.contextmanager
def collect_usage() -> Iterator[list[Usage]]:
    """Collect the model usage that tools record (``Tool.record_usage``) while the block runs in this context:
    the caller of one tool call learns what that call spent, also when calls of one tool run concurrently (each
    asyncio task, and each thread a sync tool runs in, carries the context it was started from)."""
    sink: list[Usage] = []
    token = _USAGE_SINK.set(sink)
    try:
        yield sink
    finally:
        _USAGE_SINK.reset(token)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_ARGS_REPR_CHARS = 200


class ToolArgumentError(UserError):
    """Arguments that do not fit a tool. ``fields`` names the offending arguments, ``problems`` says why."""

    def __init__(self, tool: str, problems: list[tuple[str, str]]) -> None:
        self.tool = tool
        self.problems = problems
        self.fields = [f for f, _ in problems]
        detail = "; ".join(f"{f}: {msg}" if f else msg for f, msg in problems)
        super().__init__(f"{tool}(): {detail}")


class ToolError(RunError):
    """A tool's callable raised. ``tool`` and ``args`` say which call; the original exception is ``__cause__``."""

    def __init__(self, tool: str, args: dict[str, Any], exc: BaseException) -> None:
        self.tool = tool
        self.args_given = args
        shown = repr(args)
        if len(shown) > _ARGS_REPR_CHARS:
            shown = shown[:_ARGS_REPR_CHARS] + "...}"
        super().__init__(f"tool {tool!r} failed on {shown}: {type(exc).__name__}: {exc}")
        self.__cause__ = exc


class ToolTimeout(RunError, TimeoutError):
    """A tool ran longer than its ``timeout_s``. It is a ``TimeoutError`` too, so generic handlers see a timeout."""

    def __init__(self, tool: str, timeout_s: float) -> None:
        self.tool = tool
        self.timeout_s = timeout_s
        super().__init__(f"tool {tool!r} timed out after {timeout_s:g} s")


class Tool:
    """A callable with a name, a description, a pydantic argument model and an output type.

    Args:
        name: how plans and models call it (a Python identifier, at most 64 characters).
        description: what it does, for the model (one or two sentences).
        args_model: the pydantic model of its keyword arguments.
        fn: the callable, sync or async; it gets the validated arguments as keywords.
        output_type: the type it returns (any annotation); ``Any`` when unknown.
        side_effects: it touches files, processes or the outside world; registries refuse it unless allowed.
        timeout_s: seconds a call may take (``None``: no limit). A sync callable that times out keeps running
            in its worker thread until it returns; only the caller stops waiting.
    """

    def __init__(self, name: str, description: str, args_model: type[BaseModel], fn: Callable[..., Any], *,
                 output_type: Any = Any, side_effects: bool = False, timeout_s: float | None = None) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise UserError(f"tool name must be a Python identifier of at most 64 characters, got {name!r}")
        if not (isinstance(args_model, type) and issubclass(args_model, BaseModel)):
            raise UserError(f"tool {name!r}: args_model must be a pydantic BaseModel subclass, got {args_model!r}")
        if not callable(fn):
            raise UserError(f"tool {name!r}: fn must be callable, got {fn!r}")
        if timeout_s is not None and not timeout_s > 0:
            raise UserError(f"tool {name!r}: timeout_s must be > 0 or None, got {timeout_s!r}")
        self.name = name
        self.description = " ".join(description.split())
        self.args_model = args_model
        self.fn = fn
        self.output_type = output_type
        self.side_effects = bool(side_effects)
        self.timeout_s = timeout_s
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
        self.usage = Usage()
        """Model usage of this tool's calls (only tools that call a model, such as ``llm``, add to it)."""
        self._usage_lock = threading.Lock()

    # -- calling -----------------------------------------------------------------------------------------

    def validate(self, args: dict[str, Any]) -> BaseModel:
        """The arguments as an instance of ``args_model``; ``ToolArgumentError`` names each bad field."""
        if not isinstance(args, dict):
            raise ToolArgumentError(self.name, [("", f"arguments must be a mapping, got {type(args).__name__}")])
        fields = self.args_model.model_fields
        if self.args_model.model_config.get("extra") != "allow":
            unknown = [k for k in args if k not in fields]
            if unknown:
                takes = ", ".join(fields) or "no arguments"
                raise ToolArgumentError(self.name, [(k, f"unknown argument; it takes {takes}") for k in unknown])
        try:
            return self.args_model.model_validate(args)
        except ValidationError as exc:
            problems = [(".".join(str(p) for p in e["loc"]), _problem(e)) for e in exc.errors()]
            raise ToolArgumentError(self.name, problems) from None

    async def ainvoke(self, **kwargs: Any) -> Any:
        """Validate ``kwargs``, run the tool under ``timeout_s``, return its value. Sync callables run in a daemon
        thread of their own: one that hangs past its timeout is abandoned and cannot hold the run."""
        model = self.validate(kwargs)
        values = {name: getattr(model, name) for name in type(model).model_fields}
        if getattr(model, "model_extra", None):
            values.update(model.model_extra or {})
        try:
            if self.is_async:
                work = self.fn(**values)
            else:
                work = in_daemon_thread(self.fn, (), values, name=f"tokenomy-tool-{self.name}")
            if self.timeout_s is None:
                return await work
            return await asyncio.wait_for(work, self.timeout_s)
        except asyncio.TimeoutError as exc:
            if self.timeout_s is None:  # the tool's own timeout (an HTTP call...), not ours
                raise ToolError(self.name, kwargs, exc) from exc
            raise ToolTimeout(self.name, self.timeout_s) from None
        except (UserError, BudgetExceeded):
            # Bad input (the tool itself said so) or a spent budget: a retry fails the same way, so they pass.
            raise
        except Exception as exc:
            raise ToolError(self.name, kwargs, exc) from exc

    def invoke(self, **kwargs: Any) -> Any:
        """``ainvoke`` for synchronous callers (no event loop may be running in this thread)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ainvoke(**kwargs))
        raise UserError(f"Tool.invoke() of {self.name!r} was called inside a running event loop; "
                        f"use `await tool.ainvoke(...)` there instead")

    def record_usage(self, usage: Usage) -> None:
        """Add one model call's usage to ``self.usage`` (thread-safe), and to the caller's ``collect_usage``."""
        with self._usage_lock:
            self.usage = self.usage + usage
        sink = _USAGE_SINK.get()
        if sink is not None:
            sink.append(usage)

    # -- describing --------------------------------------------------------------------------------------

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema of the output type (titles removed), or ``None`` where pydantic cannot make one."""
        if self.output_type is Any:
            return None
        try:
            return strip_titles(TypeAdapter(self.output_type).json_schema())  # type: ignore[no-any-return]
        except Exception:
            return None

    def parameters_schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments, without pydantic's titles."""
        return strip_titles(self.args_model.model_json_schema())  # type: ignore[no-any-return]

    def openai_schema(self) -> dict[str, Any]:
        """The OpenAI function-calling description of this tool."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description,
                             "parameters": self.parameters_schema()}}

    def signature(self) -> str:
        """``name(arg: type, opt: type = default) -> output``, on one line (the arrow is left out if unknown)."""
        parts = []
        for name, field in self.args_model.model_fields.items():
            text = f"{name}: {type_text(field.annotation)}"
            if not field.is_required():
                text += f" = {'...' if field.default_factory is not None else repr(field.default)}"
            parts.append(text)
        out = "" if self.output_type is Any else f" -> {type_text(self.output_type)}"
        return f"{self.name}({', '.join(parts)}){out}"

    def __repr__(self) -> str:
        return f"Tool({self.signature()!r}{', side_effects=True' if self.side_effects else ''})"


def _problem(error: Any) -> str:
    msg = str(error.get("msg", "invalid"))
    if error.get("type") == "missing":
        return "required argument is missing"
    if "input" in error and error.get("type") != "extra_forbidden":
        shown = repr(error["input"])
        msg += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
    return msg


_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_DATA = ("default", "const", "enum", "examples")


def strip_titles(schema: Any) -> Any:
    """``schema`` without the ``title`` keys pydantic adds (a property *named* ``title`` is kept)."""
    if isinstance(schema, list):
        return [strip_titles(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: strip_titles(sub) for name, sub in value.items()}
        elif key in _SCHEMA_DATA:
            out[key] = value
        else:
            out[key] = strip_titles(value)
    return out


_MODULE_PREFIX = re.compile(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])")


def type_text(annotation: Any) -> str:
    """A short text for a type annotation: ``str``, ``list[str]``, ``int | None``, ``Literal['a', 'b']``."""
    if annotation is None or annotation is type(None):
        return "None"
    if annotation is Any:
        return "Any"
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return type_text(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias):
        return annotation.__name__
    return _MODULE_PREFIX.sub("", str(annotation).replace("NoneType", "None"))


_JSON_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool,
                               "array": list, "object": dict, "null": type(None)}


def model_from_json_schema(schema: dict[str, Any], name: str) -> type[BaseModel]:
    """The argument model of a tool described by a JSON schema (a LangChain tool's, an MCP tool's ``inputSchema``):
    a field per property, typed by its JSON type (``Any`` for nested ones), required as the schema says, extra
    arguments refused; the model is named after ``name``."""
    required = set(schema.get("required", []))
    fields: dict[str, Any] = {}
    for arg, prop in schema.get("properties", {}).items():
        kind = prop.get("type")
        annotation = _JSON_TYPES.get(kind, Any) if isinstance(kind, str) else Any
        default = ... if arg in required else prop.get("default")
        if default is None and arg not in required:
            annotation = annotation | None if annotation is not Any else Any
        fields[arg] = (annotation, Field(default, description=prop.get("description")))
    model_name = "".join(p.capitalize() for p in name.split("_")) + "Args"
    return create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)  # type: ignore[no-any-return]
