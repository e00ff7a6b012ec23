"""The trace of a run: one JSON object per line for every model call, tool call and plan.

Field names follow the OpenTelemetry GenAI semantic conventions where one exists (``gen_ai.operation.name``,
``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
``gen_ai.usage.cache_read.input_tokens``, ``gen_ai.tool.name``). Strategies hand their events to
``TraceWriter`` through their ``on_event`` argument.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

__all__ = ["TraceWriter", "runs_dir", "read_trace"]


def runs_dir() -> Path:
    """Where ``tokenomy run`` keeps its traces and its checkpoint file (under the tokenomy cache directory,
    ``TOKENOMY_CACHE_DIR`` overrides it)."""
    from tokenomy.kernels.embedded import cache_root

    return cache_root() / "runs"


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, str | int | float | bool):
        return v
    return str(v)


class TraceWriter:
    """Appends events to a JSON-lines file (thread-safe); usable as a strategy's ``on_event``."""

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
    """The events of a trace file; a line cut off by a crash (the last one) is skipped."""
    events = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
