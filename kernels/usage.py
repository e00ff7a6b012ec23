"""``Usage``: what a model call cost, as a value you can add.

Unknown is ``None``, never 0: an OpenAI-compatible server that does not report cached tokens gives
``cached_prompt_tokens=None``. When two usages are added, a field is ``None`` only if it is unknown on both
sides; otherwise the known parts are summed and ``unknown_fields`` remembers which fields are a lower bound.
A total therefore never silently turns into ``None`` because one call lacked a number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Usage", "UsageLedger", "ModelCost", "CostLedger"]


def _add(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@dataclass(frozen=True)
class Usage:
    """Token and call counts of one or more model calls."""

    prompt_tokens: int | None = 0
    """Tokens in the prompts, after the chat template, with the model's own tokenizer."""
    cached_prompt_tokens: int | None = 0
    """Prompt tokens whose KV came from a prefix cache instead of being computed."""
    completion_tokens: int | None = 0
    """Tokens generated."""
    calls: int = 0
    """Model calls (one per completion)."""
    reasoning_tokens: int | None = 0
    """Of ``completion_tokens``, those a reasoning model spent thinking, where the server reports them apart
    (OpenAI's ``completion_tokens_details.reasoning_tokens``); ``None`` when a reply had reasoning but no count."""
    unknown_fields: frozenset[str] = field(default=frozenset(), compare=False)
    """Fields that at least one summed call did not report: their value is a lower bound."""

    def __post_init__(self) -> None:
        for f in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens", "calls", "reasoning_tokens"):
            v = getattr(self, f)
            if v is not None and v < 0:
                raise ValueError(f"Usage.{f} must be >= 0, got {v}")
        missing = {f for f in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens", "reasoning_tokens")
                   if getattr(self, f) is None}
        if missing - self.unknown_fields:
            object.__setattr__(self, "unknown_fields", self.unknown_fields | missing)

    @property
    def total_tokens(self) -> int | None:
        """Prompt plus completion tokens (``None`` if both are unknown)."""
        return _add(self.prompt_tokens, self.completion_tokens)

    @property
    def computed_prompt_tokens(self) -> int | None:
        """Prompt tokens that had to be prefilled (prompt minus cached)."""
        if self.prompt_tokens is None or self.cached_prompt_tokens is None:
            return None
        return self.prompt_tokens - self.cached_prompt_tokens

    def __add__(self, other: object) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            prompt_tokens=_add(self.prompt_tokens, other.prompt_tokens),
            cached_prompt_tokens=_add(self.cached_prompt_tokens, other.cached_prompt_tokens),
            completion_tokens=_add(self.completion_tokens, other.completion_tokens),
            calls=self.calls + other.calls,
            reasoning_tokens=_add(self.reasoning_tokens, other.reasoning_tokens),
            unknown_fields=self.unknown_fields | other.unknown_fields,
        )

    def __radd__(self, other: object) -> Usage:
        # Lets ``sum(usages)`` work: sum starts from 0.
        if other == 0:
            return self
        return self.__add__(other)

    def to_otel(self) -> dict[str, int]:
        """The OpenTelemetry GenAI attributes of this usage (unknown fields are left out)."""
        out: dict[str, int] = {}
        if self.prompt_tokens is not None:
            out["gen_ai.usage.input_tokens"] = self.prompt_tokens
        if self.completion_tokens is not None:
            out["gen_ai.usage.output_tokens"] = self.completion_tokens
        if self.cached_prompt_tokens is not None:
            out["gen_ai.usage.cache_read.input_tokens"] = self.cached_prompt_tokens
        return out

    @classmethod
    def from_otel(cls, attributes: Mapping[str, Any], *, calls: int = 1) -> Usage:
        """The usage of one call from its OpenTelemetry GenAI attributes (``to_otel``'s inverse): an attribute that
        is absent, or not a count (a damaged trace file), is unknown (``None``), not 0."""
        return cls(prompt_tokens=_count(attributes.get("gen_ai.usage.input_tokens")),
                   cached_prompt_tokens=_count(attributes.get("gen_ai.usage.cache_read.input_tokens")),
                   completion_tokens=_count(attributes.get("gen_ai.usage.output_tokens")), calls=calls)

    def to_dict(self) -> dict[str, Any]:
        """The counts as plain data (JSON, checkpoints), with ``unknown``: the fields that are a lower bound, only
        when there are any. ``from_dict`` reads it back."""
        out: dict[str, Any] = {"prompt_tokens": self.prompt_tokens, "cached_prompt_tokens": self.cached_prompt_tokens,
                               "completion_tokens": self.completion_tokens, "calls": self.calls}
        if self.reasoning_tokens != 0:
            out["reasoning_tokens"] = self.reasoning_tokens
        if self.unknown_fields:
            out["unknown"] = sorted(self.unknown_fields)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        """``to_dict``'s inverse (a missing count is unknown, ``None``; a missing ``calls`` is 0)."""
        return cls(prompt_tokens=_count(data.get("prompt_tokens")),
                   cached_prompt_tokens=_count(data.get("cached_prompt_tokens")),
                   completion_tokens=_count(data.get("completion_tokens")), calls=_count(data.get("calls")) or 0,
                   reasoning_tokens=_count(data["reasoning_tokens"]) if "reasoning_tokens" in data else 0,
                   unknown_fields=frozenset(data.get("unknown") or ()))

    @staticmethod
    def sum(usages: Iterable[Usage]) -> Usage:
        """The sum of ``usages`` (``Usage()`` for none), started from the first rather than from ``Usage()``, whose
        zeros would turn a count nobody reported (cached tokens from a server that does not report them) into a
        known 0."""
        items = list(usages)
        total = items[0] if items else Usage()
        for u in items[1:]:
            total = total + u
        return total

    def __str__(self) -> str:
        def show(v: int | None, name: str) -> str:
            s = "?" if v is None else str(v)
            return s + ("+" if name in self.unknown_fields and v is not None else "")

        return (
            f"prompt={show(self.prompt_tokens, 'prompt_tokens')} "
            f"(cached={show(self.cached_prompt_tokens, 'cached_prompt_tokens')}) "
            f"completion={show(self.completion_tokens, 'completion_tokens')} calls={self.calls}"
            + ("" if self.reasoning_tokens == 0 else f" reasoning={show(self.reasoning_tokens, 'reasoning_tokens')}")
        )


class UsageLedger:
    """Usage recorded per agent and per tag, plus the total. Thread-safe."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.total = Usage()
        self.by_agent: dict[str, Usage] = {}
        self.by_tag: dict[str, Usage] = {}

    def record(self, usage: Usage, agent: str | None = None, tags: tuple[str, ...] | list[str] = ()) -> None:
        with self._lock:
            self.total = self.total + usage
            key = agent or "-"
            self.by_agent[key] = self.by_agent.get(key, Usage()) + usage
            for tag in tags:
                self.by_tag[tag] = self.by_tag.get(tag, Usage()) + usage

    def table(self) -> str:
        """A small text table: one row per agent, then the total."""
        rows = [("agent", "calls", "prompt", "cached", "completion")]
        with self._lock:
            items = sorted(self.by_agent.items()) + [("TOTAL", self.total)]
        for name, u in items:
            rows.append((name, str(u.calls), _s(u.prompt_tokens), _s(u.cached_prompt_tokens), _s(u.completion_tokens)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        def line(r: tuple[str, ...]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True)))

        return "\n".join(line(r) for r in rows)


def _s(v: int | None) -> str:
    return "?" if v is None else str(v)


@dataclass
class ModelCost:
    """What one model spent: its usage, the tokens it generated that were thrown away, and FLOPs."""

    model: str
    usage: Usage = field(default_factory=Usage)
    discarded_tokens: int = 0
    """Generated tokens that did not make it into the answer (a rejected draft step, a losing sample)."""
    flops_per_token: float | None = None

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens computed (not read from a prefix cache)."""
        return (self.usage.prompt_tokens or 0) - (self.usage.cached_prompt_tokens or 0)

    @property
    def cached_tokens(self) -> int:
        return self.usage.cached_prompt_tokens or 0

    @property
    def decode_tokens(self) -> int:
        return self.usage.completion_tokens or 0

    @property
    def flops(self) -> float | None:
        """Forward FLOPs of every computed token (prefill and decode; cached prompt tokens cost none)."""
        if self.flops_per_token is None:
            return None
        return self.flops_per_token * (self.prefill_tokens + self.decode_tokens)

    def to_dict(self) -> dict[str, object]:
        """Counts as plain data; ``unknown`` lists the usage fields some call did not report (the counts built
        from them are lower bounds), only when there are any."""
        out: dict[str, object] = {"model": self.model, "calls": self.usage.calls, "prefill_tokens": self.prefill_tokens,
                                  "cached_tokens": self.cached_tokens, "decode_tokens": self.decode_tokens,
                                  "discarded_tokens": self.discarded_tokens, "flops": self.flops}
        if self.usage.unknown_fields:
            out["unknown"] = sorted(self.usage.unknown_fields)
        return out


class CostLedger:
    """Cost per model (``long``, ``short``, ...): prefill, cached, decode and discarded tokens, and FLOPs."""

    def __init__(self) -> None:
        self.models: dict[str, ModelCost] = {}

    def add(self, model: str, usage: Usage, *, discarded: int = 0, flops_per_token: float | None = None) -> None:
        cost = self.models.get(model)
        if cost is None:
            cost = self.models[model] = ModelCost(model, flops_per_token=flops_per_token)
        cost.usage = cost.usage + usage
        cost.discarded_tokens += discarded
        if cost.flops_per_token is None:
            cost.flops_per_token = flops_per_token

    def discard(self, model: str, tokens: int) -> None:
        """Mark ``tokens`` already added for ``model`` as thrown away."""
        self.models.setdefault(model, ModelCost(model)).discarded_tokens += tokens

    def merge(self, other: CostLedger) -> None:
        for name, c in other.models.items():
            self.add(name, c.usage, discarded=c.discarded_tokens, flops_per_token=c.flops_per_token)

    @property
    def usage(self) -> Usage:
        return sum((c.usage for c in self.models.values()), Usage())

    @property
    def tokens(self) -> int:
        """Every prompt and completion token of every model (cached prompt tokens included)."""
        return self.usage.total_tokens or 0

    @property
    def flops(self) -> float | None:
        """Total FLOPs; ``None`` if a model that spent tokens has no FLOPs figure."""
        vals = [c.flops for c in self.models.values()]
        return None if any(v is None for v in vals) else float(sum(v for v in vals if v is not None))

    def to_dict(self) -> dict[str, object]:
        return {"models": {k: c.to_dict() for k, c in self.models.items()}, "tokens": self.tokens,
                "flops": self.flops}


def _count(value: Any) -> int | None:
    """``value`` as a token count read from a file (a trace, a checkpoint): ``None``, unknown, for anything that
    is not a whole number >= 0 (a damaged or hand-edited file must not stop a report)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None
