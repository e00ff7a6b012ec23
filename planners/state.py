"""The graph state every strategy carries, and the codec of its values.

LangGraph checkpoints the state after each node (msgpack, in SQLite), so every value in it is plain JSON data:
``to_state`` turns errors, pydantic models, dataclasses, non-finite floats and integers over 64 bits into such
data and ``from_state`` reads them back. Usage per agent is ``Usage.to_dict()`` data, summed by ``merge_usage``.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from tokenomy.events import utf8_safe
from tokenomy.kernels import Usage

from .executor import StepError

__all__ = ["RunState", "RunResult", "merge_usage", "to_state", "from_state"]


def merge_usage(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The state reducer of ``usage``: sums per agent."""
    out = dict(a)
    for agent, d in b.items():
        out[agent] = (Usage.from_dict(out[agent]) + Usage.from_dict(d)).to_dict() if agent in out else d
    return out


def to_state(value: Any) -> Any:
    """A JSON value for the graph state and the journal: errors become ``{"$error": ...}``, pydantic models and
    dataclasses their fields; anything else that JSON cannot hold becomes its ``str``."""
    if isinstance(value, StepError):
        return {"$error": value.message, "step": value.step, "kind": value.kind}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_state(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_state(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_state(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": JSON has no such numbers
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return {"$int": hex(value)}  # the checkpointer's msgpack holds 64 bits (hex: no 4,300-digit limit)
    if isinstance(value, str):
        return utf8_safe(value)
    if value is None or isinstance(value, int | float | bool):
        return value
    return utf8_safe(str(value))


def from_state(value: Any) -> Any:
    """The value ``to_state`` wrote: an error as a ``StepError``, integers of more than 64 bits as ``int``."""
    if isinstance(value, dict) and "$error" in value:
        return StepError(value.get("step", "?"), value["$error"], value.get("kind", "error"))
    return _big_ints(value)


def _big_ints(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$int"), str):
            try:
                return int(value["$int"], 16)
            except ValueError:
                return value
        return {k: _big_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_big_ints(v) for v in value]
    return value


class RunState(BaseModel):
    """The state every strategy's graph carries (strategies add their own fields)."""

    model_config = ConfigDict(arbitrary_types_allowed=False)

    question: str
    strategy: str = ""
    plan: str = ""
    """The first plan in the strategy's own format, as the model wrote it."""
    plan_valid: bool | None = None
    """Whether the model's first plan parsed and validated without repair (``None``: the strategy has no plan)."""
    plans: Annotated[list[str], operator.add] = Field(default_factory=list)
    values: dict[str, Any] = Field(default_factory=dict)
    """Results by name (errors as ``{"$error": ...}``)."""
    answer: Any = None
    done: bool = False
    usage: Annotated[dict[str, dict[str, Any]], merge_usage] = Field(default_factory=dict)
    notes: Annotated[list[str], operator.add] = Field(default_factory=list)


@dataclass
class RunResult:
    """The outcome of one run of a strategy."""

    question: str
    strategy: str
    answer: Any
    plan: str
    plan_valid: bool | None
    usage: dict[str, Usage]
    thread_id: str
    values: dict[str, Any] = field(default_factory=dict)
    plans: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    pending: list[Any] = field(default_factory=list)
    """What a run stopped to ask (LangGraph interrupts: a plan to approve); empty when it finished."""

    @property
    def total(self) -> Usage:
        return Usage.sum(list(self.usage.values()))

    def to_json(self) -> dict[str, Any]:
        t = self.total
        return {
            "question": self.question,
            "answer": to_state(self.answer),
            "strategy": self.strategy,
            "plan": self.plan,
            "plan_valid": self.plan_valid,
            "usage": {"prompt_tokens": t.prompt_tokens, "cached_prompt_tokens": t.cached_prompt_tokens,
                      "completion_tokens": t.completion_tokens, "calls": t.calls},
            "usage_by_agent": {a: u.to_dict() for a, u in sorted(self.usage.items())},
            "thread_id": self.thread_id,
            "notes": self.notes,
        }
