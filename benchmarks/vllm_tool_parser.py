"""A vLLM tool parser for the referee of `tokenomy bench peers`: Qwen2.5's hermes format (``<tool_call>{...}
</tool_call>``), plus the form the Qwen2.5-Coder models write instead most of the time, one JSON object
``{"name": ..., "arguments": {...}}`` in a fenced block (```json ... ```) or alone.

Why: with vLLM's own ``hermes`` parser, Qwen2.5-Coder-1.5B's calls (all six of a first run) came back as text,
so every tool-calling framework (LangGraph, smolagents' ToolCallingAgent, LlamaIndex's FunctionAgent) stopped at
its first step with a JSON blob for an answer. The benchmark compares frameworks at their best, so the referee
reads those calls as calls. Only objects whose ``name`` is one of the request's tools count; anything else stays
text. tokenomy's strategies do not use tool calling, so this parser cannot help them.

Loaded by vLLM with ``--tool-parser-plugin THIS_FILE --tool-parser tokenomy_hermes`` (it imports vLLM, so it
runs only in the vLLM environment). ``as_hermes`` is plain Python, tested without vLLM.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

_FENCE = re.compile(r"```[ \t]*[A-Za-z]*[ \t]*\n?(.*?)```", re.DOTALL)
_OPEN = re.compile(r"```[ \t]*[A-Za-z]*[ \t]*\n?")  # the language may be half-written while streaming
_CALL_START = re.compile(r'\{\s*"name"\s*:\s*"')
_SPECIAL = re.compile(r"(?:\s*<\|[a-z_]+\|>)+\s*(?:assistant\s*)?")
_NAMED = re.compile(r'\{\s*"name"\s*:\s*"([^"]*)"')


def _call(text: str, names: Collection[str]) -> str | None:
    """``text`` as one compact tool-call object when it is one (a known tool's name, object arguments)."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, dict):
        return None
    return json.dumps({"name": obj["name"], "arguments": args}, ensure_ascii=False)


def _could_start_call(text: str) -> bool:
    """Whether ``text`` (what follows an opening fence so far) is, or may still become, ``{"name": "``."""
    stripped = text.lstrip()
    if _CALL_START.match(stripped):
        return True
    probe = '{"name": "'
    squeezed = re.sub(r"\s+", "", stripped)
    return probe.replace(" ", "").startswith(squeezed)


def as_hermes(text: str, names: Collection[str], *, final: bool) -> str:
    """``text`` with the model's other tool-call forms rewritten as hermes tags. ``final=False`` (streaming): an
    opening fence that may still become a call is held back (rewritten as ``<``, which the hermes parser holds
    back as a possible tag), and one that has become a call is an open ``<tool_call>``."""
    if "<tool_call>" in text or not names:
        return text
    lead = _SPECIAL.match(text)
    if lead and lead.end() < len(text) and text[lead.end():].lstrip().startswith("{"):
        text = text[lead.end():]  # "<|im_start|>" before a bare object: the model reopening a turn
    whole = _call(text.strip(), names)
    if whole is not None:
        return f"<tool_call>{whole}</tool_call>"
    if not final and text.lstrip().startswith("{"):  # a bare object on its way
        named = _NAMED.match(text.lstrip())
        if named is not None and named.group(1) in names:
            return "<tool_call>" + text.lstrip()
        if named is None and _could_start_call(text):
            return "<"
    out: list[str] = []
    pos = 0
    for m in _FENCE.finditer(text):
        call = _call(m.group(1).strip(), names)
        if call is None:
            continue
        out += [text[pos:m.start()], f"<tool_call>{call}</tool_call>"]
        pos = m.end()
    rest = text[pos:]
    if not final:
        opened = None
        for m in _OPEN.finditer(rest):
            if rest.count("```", m.end()) == 0:  # a fence not closed yet
                opened = m
                break
        if opened is not None:
            body = rest[opened.end():].lstrip()
            named = _NAMED.match(body)
            if named is not None and named.group(1) in names:
                return "".join(out) + rest[:opened.start()] + "<tool_call>" + body
            if named is None and _could_start_call(body):
                return "".join(out) + rest[:opened.start()] + "<"
        elif rest.endswith(("`", "``")):
            return "".join(out) + rest.rstrip("`") + "<"
    return "".join(out) + rest


def _names(request: Any) -> list[str]:
    names = []
    for t in getattr(request, "tools", None) or []:
        fn = getattr(t, "function", None)
        name = getattr(fn, "name", None) if fn is not None else None
        if name:
            names.append(name)
    return names


try:  # the parser itself: only where vLLM is installed
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser
except ImportError:  # pragma: no cover - imported for as_hermes alone
    pass
else:

    @ToolParserManager.register_module("tokenomy_hermes")
    class LenientHermesToolParser(Hermes2ProToolParser):
        """vLLM's hermes parser over ``as_hermes``'s rewrite of the model's output."""

        def extract_tool_calls(self, model_output: str, request: Any) -> Any:
            return super().extract_tool_calls(as_hermes(model_output, _names(request), final=True), request)

        def extract_tool_calls_streaming(self, previous_text: str, current_text: str, delta_text: str,
                                         previous_token_ids: Any, current_token_ids: Any, delta_token_ids: Any,
                                         request: Any) -> Any:
            names = _names(request)
            prev, cur = as_hermes(previous_text, names, final=False), as_hermes(current_text, names, final=False)
            return super().extract_tool_calls_streaming(prev, cur, cur[len(prev):] if cur.startswith(prev) else
                                                        delta_text, previous_token_ids, current_token_ids,
                                                        delta_token_ids, request)
