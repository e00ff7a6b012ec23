"""The values that cross the ``Engine`` boundary: requests, sampling parameters, grammars, completions."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .usage import Usage

__all__ = [
    "Message",
    "PromptInput",
    "SamplingParams",
    "Grammar",
    "Request",
    "Completion",
    "StreamChunk",
    "Capabilities",
    "Scored",
    "CAPABILITY_NAMES",
    "chat_messages",
    "token_ids",
]

Message = Mapping[str, Any]
"""A chat message, OpenAI style: ``{"role": "user", "content": "..."}``."""

PromptInput = str | Sequence[int] | Sequence[Message]
"""A raw text prompt, token ids, or chat messages (rendered with the model's chat template)."""

_ids = itertools.count()


@dataclass(frozen=True)
class SamplingParams:
    """How to decode. ``temperature=0`` is greedy."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    """Generation stops before the first of these strings; the string is not part of the text."""
    logprobs: bool = False
    """Return the log-probability of each generated token."""
    min_tokens: int = 0
    """No end of sequence and no stop string before this many tokens (engines with the ``min_tokens``
    capability; s1's budget forcing needs it)."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"SamplingParams.min_tokens must be in [0, max_tokens], got {self.min_tokens}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {self.top_k}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if any(not s for s in self.stop):
            raise ValueError("SamplingParams.stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GrammarKind = Literal["ebnf", "lark", "regex", "json_schema"]


@dataclass(frozen=True)
class Grammar:
    """A constraint on decoding: EBNF (xgrammar/GBNF dialect, start rule ``root``), Lark, a regex, or a
    JSON schema. Build one with ``Grammar.ebnf(...)``, ``Grammar.lark(...)``, ``Grammar.regex(...)`` or
    ``Grammar.json_schema(...)``."""

    kind: GrammarKind
    source: str

    def __post_init__(self) -> None:
        if self.kind not in ("ebnf", "lark", "regex", "json_schema"):
            raise ValueError(f"Grammar.kind must be ebnf, lark, regex or json_schema, got {self.kind!r}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError("Grammar.source must be a non-empty string")

    @classmethod
    def ebnf(cls, source: str) -> Grammar:
        return cls("ebnf", source)

    @classmethod
    def lark(cls, source: str) -> Grammar:
        return cls("lark", source)

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        return cls("regex", pattern)

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | str) -> Grammar:
        text = schema if isinstance(schema, str) else json.dumps(schema, sort_keys=True)
        return cls("json_schema", text)


def _current_limits() -> tuple[Any, ...]:
    from .limits import active_limits

    return active_limits()


def chat_messages(prompt: PromptInput) -> list[dict[str, Any]] | None:
    """The prompt as chat messages, or ``None`` if it is raw text or token ids."""
    if isinstance(prompt, str) or not len(prompt) or not isinstance(prompt[0], Mapping):
        return None
    return [dict(m) for m in prompt]  # type: ignore[arg-type]


def token_ids(prompt: PromptInput) -> list[int] | None:
    """The prompt as token ids, or ``None`` if it is raw text or chat messages."""
    if isinstance(prompt, str) or (len(prompt) and isinstance(prompt[0], Mapping)):
        return None
    return [int(t) for t in prompt]  # type: ignore[arg-type]


@dataclass
class Request:
    """One generation request, as an agent submits it."""

    prompt: PromptInput
    params: SamplingParams = field(default_factory=SamplingParams)
    grammar: Grammar | None = None
    agent: str | None = None
    """Who asked: usage is recorded per agent."""
    tags: tuple[str, ...] = ()
    """Free labels (node, round, edge...): usage is recorded per tag too."""
    request_id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    limits: tuple[Any, ...] = field(default_factory=lambda: _current_limits(), repr=False, compare=False)
    """The budgets (``UsageLimits``) in force where the request was made; the engine checks each before the call."""
    held: list[Any] = field(default_factory=list, repr=False, compare=False)
    """What the request holds in each budget while it runs (the engine's bookkeeping)."""
    on_text: Any = field(default=None, repr=False, compare=False)
    """``on_text(delta)`` as text is decoded, on engines that stream (``Engine.streams_tokens``); ``Engine.stream``
    sets it."""

    def cancel(self) -> None:
        """Ask for this request to stop: before it starts it never runs; while decoding it stops at the next
        token. Either way its result is ``RequestCancelled``."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def is_chat(self) -> bool:
        return chat_messages(self.prompt) is not None


FinishReason = Literal["stop", "length"]
"""``stop``: end of sequence, a stop string or a completed grammar; ``length``: ``max_tokens`` reached."""


@dataclass
class Completion:
    """What an engine returns for one request."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage
    prompt_token_ids: list[int] | None = None
    """The prompt as the engine tokenized it (``None`` for remote engines that do not say)."""
    logprobs: list[float] | None = None
    request_id: str = ""
    engine: str = ""
    latency_s: float = 0.0
    reasoning: str = ""
    """A reasoning model's thinking, where the server returns it apart from the answer (``text``)."""
    speculation: Any = None
    """What speculative decoding did for this completion (a ``kernels.hf_speculative.Speculation``), where a draft
    model proposed its tokens; ``None`` otherwise."""


@dataclass
class StreamChunk:
    """A piece of a streamed completion (``Engine.stream``): ``delta`` is the text generated since the previous
    chunk; the last chunk carries the whole ``completion`` (with its usage) and is the only one that does."""

    delta: str
    completion: Completion | None = None


CAPABILITY_NAMES = ("batching", "prefix_cache", "grammar", "logprobs", "token_ids", "stop_strings", "prefill",
                    "min_tokens", "n", "prompt_logprobs", "hidden_states", "thinking_cap", "json_schema")


@dataclass
class Scored:
    """Log-probabilities of a given continuation after a prompt (``Engine.score``)."""

    token_ids: list[int]
    logprobs: list[float]
    usage: Usage
    """The scoring pass: the prompt and the continuation count as prompt tokens, nothing is generated."""

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do; a policy that needs more says so at construction (``require``)."""

    batching: bool = False
    """Gains from running several requests in one call."""
    prefix_cache: bool = False
    grammar: bool = False
    logprobs: bool = False
    """Returns the log-probability of each generated token (``SamplingParams.logprobs``)."""
    token_ids: bool = False
    """Accepts prompts as token ids and returns generated token ids."""
    stop_strings: bool = True
    prefill: bool = False
    """Continues a final assistant message (or a raw text prompt) instead of starting a new reply."""
    min_tokens: bool = False
    """Honours ``SamplingParams.min_tokens`` (no end of sequence or stop string before that many tokens)."""
    n: bool = False
    """Returns several samples of one prompt from one request."""
    prompt_logprobs: bool = False
    """Scores given text: ``Engine.score(prompt, continuation)`` returns each continuation token's log-probability."""
    hidden_states: bool = False
    """``Engine.embed(prompt)`` returns the last layer's hidden state at the prompt's last token."""
    thinking_cap: bool = False
    """Enforces a cap on thinking tokens itself (else policies cap thinking with ``max_tokens`` and stop strings)."""
    json_schema: bool = False
    """Constrains a reply to a JSON schema (``Grammar.json_schema``); engines with ``grammar`` do it too."""

    def __post_init__(self) -> None:
        if self.grammar and not self.json_schema:
            object.__setattr__(self, "json_schema", True)

    def missing(self, needs: Sequence[str]) -> list[str]:
        """The capabilities of ``needs`` this engine lacks (unknown names raise ``ValueError``)."""
        unknown = [n for n in needs if n not in CAPABILITY_NAMES]
        if unknown:
            raise ValueError(f"unknown capabilities {unknown}; known: {', '.join(CAPABILITY_NAMES)}")
        return [n for n in needs if not getattr(self, n)]

    def names(self) -> list[str]:
        """The capabilities this engine has."""
        return [n for n in CAPABILITY_NAMES if getattr(self, n)]
