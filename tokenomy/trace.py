"""The trace of a run: one JSON object per line for every model call, tool call, plan, message and checkpoint.

Attribute names follow the OpenTelemetry GenAI semantic conventions where one exists (``gen_ai.operation.name``,
``gen_ai.agent.name``, ``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
``gen_ai.usage.cache_read.input_tokens``, ``gen_ai.input.messages``, ``gen_ai.output.messages``,
``gen_ai.tool.name``, ``gen_ai.tool.call.arguments``, ``gen_ai.tool.call.result``, ``gen_ai.conversation.id``,
``error.type``); tokenomy's own fields have plain names. Every event has ``event`` (its kind), ``time`` (Unix
seconds when it ended) and, where it applies, ``start_time``, ``node`` (the LangGraph node it ran in) and
``step`` (the plan step it ran for). The kinds:

- ``run``: ``status`` started, resumed, finished or failed; the question, then the answer, usage and notes.
- ``model_call``: one per model call, with its agent, prompt, output, tokens and latency (``round`` in graphs).
- ``tool_call``: one per tool call, with its arguments, result (cut to ``RESULT_CHARS``), duration and error.
- ``plan``: a plan's text, whether it is valid, and its statements as ``steps`` (``planners.plan_steps``).
- ``execution``: each plan result's status (ok, error, timeout, skipped, eval) and value after a plan ran.
- ``message``: text sent along an edge of the agent graph, with its tokens.
- ``graph``: the agent graph a run used (agents and edges with their state: runs, pruned or dead).
- ``checkpoint``: LangGraph saved a checkpoint (its id, step and the nodes that run next).

Strategies hand their events to ``TraceWriter`` through their ``on_event`` argument; ``Trace.load`` reads a trace
back (``tokenomy viz`` draws it) and ``export_otel`` sends it to OpenTelemetry when its SDK is installed.
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenomy.errors import MissingExtra, UserError
from tokenomy.events import EVENT_KINDS, utf8_safe
from tokenomy.kernels.usage import Usage

__all__ = ["TraceWriter", "Trace", "runs_dir", "read_trace", "export_otel", "OtelSink", "edge_name"]


def runs_dir() -> Path:
    """Where ``tokenomy run`` keeps its traces and its checkpoint file (under the tokenomy cache directory,
    ``TOKENOMY_CACHE_DIR`` overrides it)."""
    from tokenomy.kernels.embedded import cache_root

    return cache_root() / "runs"


def edge_name(message: Mapping[str, Any]) -> str:
    """The edge a ``message`` event went along (``a -> b`` in graphs, ``planner->executor`` in ReWOO)."""
    return str(message.get("edge") or f"{message.get('src')}->{message.get('dst')}")


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, str):
        return utf8_safe(v)
    if v is None or isinstance(v, int | bool):
        return v
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else str(v)
    return str(v)


class TraceWriter:
    """Appends events to a JSON-lines file (thread-safe); usable as a strategy's ``on_event``. ``common`` fields
    (say ``run=thread_id``) are added to every event."""

    def __init__(self, path: str | Path, **common: Any) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.common = common
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(_jsonable({**self.common, **event}), ensure_ascii=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """The events of a trace file. Lines that are not JSON objects with an ``event`` (a line cut off by a crash)
    are skipped; ``Trace.load`` says how many."""
    return Trace.load(path).events


# The short names of a token row and the ``Usage`` fields they come from.
_ROW = {"prompt": "prompt_tokens", "cached": "cached_prompt_tokens", "completion": "completion_tokens"}


def _row(usage: Usage) -> dict[str, Any]:
    """A token row: prompt, cached, completion and calls (unknown counts as 0), and ``unknown``, the names of the
    counts some call did not report (they are lower bounds), only when there are any."""
    row: dict[str, Any] = {k: getattr(usage, f) or 0 for k, f in _ROW.items()} | {"calls": usage.calls}
    if unknown := sorted(k for k, f in _ROW.items() if f in usage.unknown_fields):
        row["unknown"] = unknown
    return row


def _count(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) < 1e15)


def _text_or_none(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _dicts(v: Any, *, need: tuple[str, ...] = (), text: tuple[str, ...] = ()) -> bool:
    """``v`` is a list of dicts (or None) whose ``need`` fields are text and whose ``text`` fields, where given,
    are text too."""
    return v is None or (isinstance(v, list) and all(_dict(x, need, text) for x in v))


def _dict(x: Any, need: tuple[str, ...], text: tuple[str, ...]) -> bool:
    return (isinstance(x, dict) and all(isinstance(x.get(k), str) for k in need)
            and all(_text_or_none(x.get(k)) for k in text))


def _steps(v: Any) -> bool:
    return _dicts(v, need=("id",)) and all(isinstance(s.get("reads", []), list) for s in v or [])


# The fields the viewer and the sums read, per event, and the shape each must have; an event with another shape
# is skipped (and counted), so a hand-edited or corrupt trace cannot crash `tokenomy viz`.
_TIMES: dict[str, Callable[[Any], bool]] = dict.fromkeys(("time", "start_time", "latency_s", "duration_s"), _count)
_SHAPES: dict[str, dict[str, Callable[[Any], bool]]] = {
    "model_call": {**_TIMES, **dict.fromkeys(("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
                                              "gen_ai.usage.cache_read.input_tokens"), _count),
                   "gen_ai.input.messages": _dicts, "gen_ai.output.messages": _dicts},
    "tool_call": _TIMES,
    "message": {"tokens": _count, **dict.fromkeys(("src", "dst", "kind", "edge"), _text_or_none)},
    "execution": {"steps": _steps, "plan": _text_or_none,
                  "results": lambda v: v is None or (isinstance(v, dict)
                                                     and all(_dict(x, (), ("status",)) for x in v.values()))},
    "plan": {"steps": _steps, "text": _text_or_none},
    "run": {"notes": lambda v: v is None or isinstance(v, list), "status": _text_or_none},
    "graph": {"agents": lambda v: _dicts(v, need=("name",), text=("role", "state")),
              "edges": lambda v: _dicts(v, need=("src", "dst"), text=("kind", "state"))},
}


def _well_formed(e: Mapping[str, Any]) -> bool:
    shapes = _SHAPES.get(e["event"], {})
    return all(check(e[k]) for k, check in shapes.items() if k in e)


@dataclass
class Trace:
    """The events of one trace file (one or more runs), with the sums a viewer needs.

    ``skipped`` counts lines that were not events (cut off, not JSON objects, or fields of the wrong shape).
    """

    events: list[dict[str, Any]]
    path: Path | None = None
    skipped: int = 0

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a trace file.

        Raises:
            UserError: the file is missing, not text, or holds no trace events at all.
        """
        p = Path(path)
        if not p.is_file():
            raise UserError(f"no trace file at {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            raise UserError(f"{p} is not a tokenomy trace (JSON lines): {exc}") from exc
        events, skipped = [], 0
        # "\n" only: str.splitlines() also splits at U+2028, U+0085 ..., which JSON strings may hold unescaped
        for line in text.split("\n"):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                skipped += 1
                continue
            if isinstance(e, dict) and isinstance(e.get("event"), str) and _well_formed(e):
                events.append(e)
            else:
                skipped += 1
        if not events:
            raise UserError(f"{p} holds no trace events ({skipped} lines that are not events); a trace is the "
                            "JSON-lines file `tokenomy run` writes (its path is printed at the end)")
        return cls(events, p, skipped)

    def select(self, run: str) -> Trace:
        """The events of one run (by its id, the ``run`` field ``tokenomy run`` writes).

        Raises:
            UserError: no event of the trace belongs to that run.
        """
        events = [e for e in self.events if str(e.get("run") or e.get("gen_ai.conversation.id")) == run]
        if not events:
            known = ", ".join(sorted({str(r["run"]) for r in self.runs})) or "none"
            raise UserError(f"no run {run!r} in {self.path or 'this trace'} (runs: {known})")
        return Trace(events, self.path, self.skipped)

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The events of one kind (one of ``tokenomy.events.EVENT_KINDS``; a misspelt kind is an error, not [])."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}: one of {', '.join(EVENT_KINDS)}")
        return [e for e in self.events if e.get("event") == kind]

    @property
    def model_calls(self) -> list[dict[str, Any]]:
        return self.of("model_call")

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return self.of("tool_call")

    @property
    def plans(self) -> list[dict[str, Any]]:
        return self.of("plan")

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.of("message")

    @property
    def graph(self) -> dict[str, Any] | None:
        """The last ``graph`` event (the agent graph of the last graph run), if any."""
        g = self.of("graph")
        return g[-1] if g else None

    @property
    def runs(self) -> list[dict[str, Any]]:
        """One summary per run id: question, strategy, status, answer (from its ``run`` events)."""
        out: dict[str, dict[str, Any]] = {}
        for e in self.events:
            rid = str(e.get("run") or e.get("gen_ai.conversation.id") or "")
            r = out.setdefault(rid, {"run": rid, "strategy": e.get("strategy"), "status": None})
            if e.get("event") == "run":
                for k in ("question", "answer", "status", "notes", "error"):
                    if k in e:
                        r[k] = e[k]
        return list(out.values())

    def _usage_by(self, key: str) -> dict[str, Usage]:
        out: dict[str, list[Usage]] = defaultdict(list)
        for e in self.model_calls:
            k = e.get(key)
            out[str(k) if k is not None else "?"].append(Usage.from_otel(e))
        return {k: Usage.sum(us) for k, us in out.items()}

    def tokens_by(self, key: str) -> dict[str, dict[str, Any]]:
        """Prompt, cached, completion tokens and calls of model calls, summed by an event field (``agent``,
        ``node``, ``gen_ai.request.model``, ``round``); a row's ``unknown`` lists the counts that some call did not
        report (a lower bound, not a 0), only when there are any."""
        return {k: _row(u) for k, u in self._usage_by(key).items()}

    def tokens_by_edge(self) -> dict[str, int]:
        """Tokens sent along each edge of the agent graph (``message`` events)."""
        out: dict[str, int] = defaultdict(int)
        for e in self.messages:
            out[edge_name(e)] += int(e.get("tokens") or 0)
        return dict(out)

    def total(self) -> dict[str, Any]:
        """The token row of every model call together (``unknown`` as in ``tokens_by``)."""
        return _row(Usage.sum(self._usage_by("agent").values()))

    def _repr_html_(self) -> str:
        # A notebook's display hook: the one place the reader asks the viewer (above it) for the page, lazily,
        # so that importing tokenomy.trace never imports tokenomy.viz (tests/test_layout.py allows only this).
        from tokenomy.viz import iframe, render_html

        return iframe(render_html(self))

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        t = self.total()
        text = (f"Trace({self.path or 'in memory'}: {len(self.events)} events, {t['calls']} model calls, "
                f"{t['prompt']} prompt + {t['completion']} completion tokens)")
        return {"text/plain": text, "text/html": self._repr_html_()}


# -- OpenTelemetry -----------------------------------------------------------------------------------------


def _attr(v: Any) -> Any:
    """An OpenTelemetry attribute value: primitives and lists of one primitive type; anything else as JSON."""
    if isinstance(v, str | bool | int | float):
        return v
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return v
    return json.dumps(v, ensure_ascii=False, default=str)


def _ns(t: Any) -> int | None:
    return int(float(t) * 1e9) if isinstance(t, int | float) else None


_SPAN_KINDS = {"model_call", "tool_call"}
_SKIP = {"event", "time", "start_time", "latency_s", "duration_s"}


def _call_span(tracer: Any, parent: Any, e: Mapping[str, Any], attrs: dict[str, Any]) -> None:
    """A model or tool call's span under ``parent``, with the call's own start and end times."""
    from opentelemetry.trace import Status, StatusCode

    end = e.get("time")
    start = e.get("start_time")
    if start is None and isinstance(end, int | float):
        start = end - float(e.get("latency_s") or e.get("duration_s") or 0.0)
    name = (f"chat {e.get('gen_ai.request.model', '')}".strip() if e.get("event") == "model_call"
            else f"execute_tool {e.get('gen_ai.tool.name', '')}".strip())
    span = tracer.start_span(name, context=parent, start_time=_ns(start), attributes=attrs)
    if e.get("error"):
        span.set_status(Status(StatusCode.ERROR, str(e["error"])))
    span.end(end_time=_ns(end))


def export_otel(trace: Trace | Sequence[Mapping[str, Any]], tracer_provider: Any = None) -> int:
    """Send a trace to OpenTelemetry as spans: one ``invoke_agent`` span per run, a ``chat`` span per model call
    and an ``execute_tool`` span per tool call under it (with their own start and end times), and the other
    events (plans, messages, checkpoints) as span events of the run. Returns the number of spans.

    ``tracer_provider``: an SDK ``TracerProvider`` with its exporters; default: the global one.

    Raises:
        MissingExtra: ``opentelemetry-sdk`` is not installed (``pip install 'tokenomy[otel]'``).
    """
    try:
        from opentelemetry import trace as ot
        from opentelemetry.trace import Status, StatusCode
    except ImportError as exc:
        raise MissingExtra("opentelemetry-sdk", "otel", "exporting a trace to OpenTelemetry") from exc
    events = trace.events if isinstance(trace, Trace) else [dict(e) for e in trace]
    tracer = (tracer_provider or ot.get_tracer_provider()).get_tracer("tokenomy")
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_run[str(e.get("run") or e.get("gen_ai.conversation.id") or "")].append(e)
    spans = 0
    for rid, evs in by_run.items():
        times = [t for e in evs for t in (e.get("start_time"), e.get("time")) if isinstance(t, int | float)]
        if not times:
            continue
        strategy = next((e.get("strategy") for e in evs if e.get("strategy")), "tokenomy")
        root = tracer.start_span(f"invoke_agent {strategy}", start_time=_ns(min(times)), attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": str(strategy),
            "gen_ai.conversation.id": rid})
        spans += 1
        ctx = ot.set_span_in_context(root)
        failed = None
        for e in evs:
            kind = e.get("event")
            attrs = {k: _attr(v) for k, v in e.items() if k not in _SKIP and v is not None}
            if kind in _SPAN_KINDS:
                _call_span(tracer, ctx, e, attrs)
                spans += 1
            else:
                root.add_event(str(kind), attributes=attrs, timestamp=_ns(e.get("time")))
                if kind == "run" and e.get("status") == "failed":
                    failed = str(e.get("error") or "failed")
        if failed:
            root.set_status(Status(StatusCode.ERROR, failed))
        root.end(end_time=_ns(max(times)))
    return spans


_CONTENT = {"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "question", "answer",
            "gen_ai.tool.call.arguments", "gen_ai.tool.call.result", "args", "result", "plan", "text", "evidence"}
"""Attributes that carry what was said (prompts, replies, tool arguments and results): sent only when content
capture is on, as the GenAI conventions ask."""


class OtelSink:
    """Live OpenTelemetry spans, as a run happens: pass it as a strategy's ``on_event``. A run is an
    ``invoke_agent`` span, open from its start to its end; each model call a ``chat`` span and each tool call an
    ``execute_tool`` span under it, sent when the call ends (with its own start time); other events (plans,
    checkpoints) are span events of the run. Content (messages, tool arguments and results, plans, the answer) is
    left out unless ``capture_content`` is true (default: ``$OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``
    is ``true``). ``tracer_provider``: an SDK ``TracerProvider``; default: the global one.

    Raises:
        MissingExtra: ``opentelemetry-sdk`` is not installed (``pip install 'tokenomy[otel]'``).
    """

    def __init__(self, tracer_provider: Any = None, *, capture_content: bool | None = None) -> None:
        try:
            from opentelemetry import trace as ot
        except ImportError as exc:
            raise MissingExtra("opentelemetry-sdk", "otel", "live OpenTelemetry spans") from exc
        if capture_content is None:
            capture_content = os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "").lower() == "true"
        self.capture_content = capture_content
        self._ot = ot
        self._tracer = (tracer_provider or ot.get_tracer_provider()).get_tracer("tokenomy")
        self._runs: dict[str, Any] = {}
        self._current: dict[str, str] = {}
        self._lock = threading.Lock()

    def _attrs(self, e: Mapping[str, Any]) -> dict[str, Any]:
        skip = _SKIP if self.capture_content else _SKIP | _CONTENT
        return {k: _attr(v) for k, v in e.items() if k not in skip and v is not None}

    def __call__(self, event: Mapping[str, Any]) -> None:
        from opentelemetry.trace import Status, StatusCode

        kind = event.get("event")
        strategy = str(event.get("strategy") or "tokenomy")
        with self._lock:
            # Model and tool calls name no run: they belong to the strategy's run in progress (one at a time).
            rid = str(event.get("run") or event.get("gen_ai.conversation.id") or self._current.get(strategy, ""))
            root = self._runs.get(rid)
            if kind == "run" and event.get("status") in ("started", "resumed") and root is None:
                self._current[strategy] = rid
                self._runs[rid] = self._tracer.start_span(
                    f"invoke_agent {strategy}", start_time=_ns(event.get("time")),
                    attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": strategy,
                                "gen_ai.conversation.id": rid})
                return
            if root is None:  # an event outside a run this sink saw start
                return
            if kind in _SPAN_KINDS:
                _call_span(self._tracer, self._ot.set_span_in_context(root), event, self._attrs(event))
                return
            root.add_event(str(kind), attributes=self._attrs(event), timestamp=_ns(event.get("time")))
            if kind == "run" and event.get("status") in ("finished", "failed", "interrupted"):
                if event.get("status") == "failed":
                    root.set_status(Status(StatusCode.ERROR, str(event.get("error") or "failed")))
                root.end(end_time=_ns(event.get("time")))
                del self._runs[rid]
                self._current.pop(strategy, None)
