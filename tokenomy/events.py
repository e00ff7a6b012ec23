"""The events of a trace, for every floor of the package: their kinds, the node and step they ran in, and the
helpers that shape their fields (clipping, the OpenTelemetry GenAI message forms, UTF-8-safe text).

A leaf: it imports nothing of tokenomy, so kernels, tools, planners and agents emit events without
importing the trace reader (``tokenomy.trace``) or the viewer (``tokenomy.viz``), which sit above them.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["EVENT_KINDS", "RESULT_CHARS", "in_node", "in_step", "trace_context", "clip", "otel_input", "otel_output",
           "input_messages", "output_text", "utf8_safe"]

# The kinds of event a trace holds (``event`` field); tokenomy.trace's module docstring says what each carries.
EVENT_KINDS = ("run", "model_call", "tool_call", "plan", "execution", "message", "graph", "checkpoint")

RESULT_CHARS = 2000  # tool results and plan values are cut to this many characters in a trace

_node: contextvars.ContextVar[str | None] = contextvars.ContextVar("tokenomy_node", default=None)
_step: contextvars.ContextVar[str | None] = contextvars.ContextVar("tokenomy_step", default=None)


@contextmanager
def in_node(name: str) -> Iterator[None]:
    """Events emitted inside this block (and in tasks it starts) carry ``node=name``."""
    token = _node.set(name)
    try:
        yield
    finally:
        _node.reset(token)


@contextmanager
def in_step(name: str) -> Iterator[None]:
    """Events emitted inside this block (and in tasks it starts) carry ``step=name``."""
    token = _step.set(name)
    try:
        yield
    finally:
        _step.reset(token)


def trace_context() -> dict[str, str]:
    """The ``node`` and ``step`` the current code runs in, where known."""
    out = {}
    if (n := _node.get()) is not None:
        out["node"] = n
    if (s := _step.get()) is not None:
        out["step"] = s
    return out


def clip(value: Any, limit: int = RESULT_CHARS) -> str:
    """``value`` as text (JSON where it is JSON data), cut to ``limit`` characters with a marker."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = str(value)
    return text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit} more characters]"


def otel_input(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages in the GenAI conventions' ``gen_ai.input.messages`` form (role and text parts)."""
    return [{"role": str(m.get("role", "user")), "parts": [{"type": "text", "content": str(m.get("content", ""))}]}
            for m in messages]


def otel_output(text: str, finish_reason: str | None = None) -> list[dict[str, Any]]:
    """A completion in the ``gen_ai.output.messages`` form."""
    out: dict[str, Any] = {"role": "assistant", "parts": [{"type": "text", "content": text}]}
    if finish_reason:
        out["finish_reason"] = finish_reason
    return [out]


def _text(parts: Any) -> str:
    if isinstance(parts, list):
        return "".join(str(p.get("content", "")) if isinstance(p, dict) else str(p) for p in parts)
    return "" if parts is None else str(parts)


def input_messages(event: Mapping[str, Any]) -> list[dict[str, str]]:
    """A ``model_call`` event's prompt as ``{"role", "content"}`` messages."""
    msgs = event.get("gen_ai.input.messages") or []
    return [{"role": str(m.get("role", "")), "content": _text(m.get("parts", m.get("content")))}
            for m in msgs if isinstance(m, dict)]


def output_text(event: Mapping[str, Any]) -> str:
    """A ``model_call`` event's completion text."""
    msgs = event.get("gen_ai.output.messages") or []
    return "".join(_text(m.get("parts")) for m in msgs if isinstance(m, dict))


def utf8_safe(text: str) -> str:
    """``text`` with its lone surrogates (which UTF-8 cannot encode: a tool that decoded bytes with
    ``surrogateescape``) replaced by U+FFFD, so files, SQLite and the checkpointer can hold it."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
