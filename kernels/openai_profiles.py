"""What each kind of OpenAI-compatible server accepts beyond the standard request, and what it can do.

An OpenAI-compatible server is only compatible in the standard fields; the rest differs. vLLM takes ``top_k``,
``min_tokens``, ``return_token_ids`` and ``structured_outputs`` (every grammar kind) and reports cached prompt
tokens; llama.cpp's server takes ``top_k`` and a GBNF ``grammar`` (and ``json_schema``) and reports its cache in
``timings.cache_n``; Ollama's ``/v1`` takes the standard fields, a JSON schema in ``response_format`` included
(its ``format`` field belongs to its native ``/api`` routes); OpenAI itself, and any strict server, only the
standard fields, and rejects the rest. A ``ServerProfile`` says which fields go out and which capabilities the
engine claims, so a strict server never sees a field it does not know and a policy never counts on a grammar
the server would ignore.

``detect`` asks the server which it is (bounded GETs: vLLM's ``/version``, llama.cpp's ``/props``, Ollama's
``/api/version``); a server that answers none of them is treated as plain OpenAI (standard fields only).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tokenomy.errors import CapabilityError, UserError

from .types import Capabilities, Grammar, SamplingParams

__all__ = ["ServerProfile", "PROFILES", "profile", "detect", "root_url"]


@dataclass(frozen=True)
class ServerProfile:
    """One kind of server: the non-standard fields it takes and what it can do."""

    name: str
    grammar_kinds: frozenset[str] = frozenset()
    """Grammar kinds it constrains decoding with."""
    extras: frozenset[str] = frozenset()
    """Non-standard sampling fields it takes (``top_k``, ``min_tokens``, ``return_token_ids``)."""
    logprobs: bool = True
    max_tokens_field: str = "max_tokens"
    """The chat field that bounds the reply (OpenAI's current one is ``max_completion_tokens``)."""
    grammar_fields: Callable[[Grammar, bool], dict[str, Any]] | None = field(default=None, compare=False)
    """The body fields of a grammar, given whether the request is a chat."""

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(batching=True, prefix_cache=True,
                            grammar=bool(self.grammar_kinds & {"ebnf", "lark"}), logprobs=self.logprobs,
                            token_ids=False, stop_strings=True, min_tokens="min_tokens" in self.extras,
                            json_schema="json_schema" in self.grammar_kinds)

    def sampling_fields(self, p: SamplingParams, *, chat: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """The standard fields of ``p`` and the non-standard ones (sent as ``extra_body``); a knob this server
        does not take (``top_k`` on a plain OpenAI server) is left out."""
        std: dict[str, Any] = {self.max_tokens_field if chat else "max_tokens": p.max_tokens,
                               "temperature": p.temperature, "top_p": p.top_p}
        if p.seed is not None:
            std["seed"] = p.seed
        if p.stop:
            std["stop"] = list(p.stop)
        if p.logprobs:
            std["logprobs"] = True if chat else 1
        extra: dict[str, Any] = {}
        if p.top_k > 0 and "top_k" in self.extras:
            extra["top_k"] = p.top_k
        if p.min_tokens and "min_tokens" in self.extras:
            extra["min_tokens"] = p.min_tokens
        if "return_token_ids" in self.extras:
            extra["return_token_ids"] = True
        return std, extra

    def grammar_body(self, grammar: Grammar, *, chat: bool, who: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The standard and non-standard fields that constrain decoding to ``grammar``; a kind this server
        cannot enforce is a ``CapabilityError`` (never an unconstrained reply that looks constrained)."""
        if grammar.kind not in self.grammar_kinds or self.grammar_fields is None:
            raise CapabilityError(f"a {grammar.kind} grammar", who, ["grammar"],
                                  f"the {self.name} profile enforces {', '.join(sorted(self.grammar_kinds)) or 'none'}")
        fields = self.grammar_fields(grammar, chat)
        std = {k: v for k, v in fields.items() if k == "response_format"}
        return std, {k: v for k, v in fields.items() if k != "response_format"}


def _schema_format(grammar: Grammar) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": json.loads(grammar.source)}}


def _vllm_grammar(grammar: Grammar, chat: bool) -> dict[str, Any]:
    if grammar.kind == "json_schema":
        fields: dict[str, Any] = {"structured_outputs": {"json": json.loads(grammar.source)}}
        if chat:
            fields["response_format"] = _schema_format(grammar)
        return fields
    if grammar.kind == "regex":
        return {"structured_outputs": {"regex": grammar.source}}
    return {"structured_outputs": {"grammar": grammar.source}}  # EBNF (GBNF dialect) or Lark


def _llamacpp_grammar(grammar: Grammar, chat: bool) -> dict[str, Any]:
    if grammar.kind == "json_schema":
        return {"response_format": _schema_format(grammar)} if chat else {"json_schema": json.loads(grammar.source)}
    return {"grammar": grammar.source}  # GBNF


def _standard_grammar(grammar: Grammar, chat: bool) -> dict[str, Any]:
    if not chat:
        raise CapabilityError("a json_schema grammar on /completions", "this server", ["grammar"],
                              "only chat requests take response_format")
    return {"response_format": _schema_format(grammar)}


PROFILES: dict[str, ServerProfile] = {
    "vllm": ServerProfile("vllm", frozenset({"ebnf", "lark", "regex", "json_schema"}),
                          frozenset({"top_k", "min_tokens", "return_token_ids"}),
                          grammar_fields=_vllm_grammar),
    "llamacpp": ServerProfile("llamacpp", frozenset({"ebnf", "json_schema"}), frozenset({"top_k"}),
                              grammar_fields=_llamacpp_grammar),
    "ollama": ServerProfile("ollama", frozenset({"json_schema"}), grammar_fields=_standard_grammar),
    "openai": ServerProfile("openai", frozenset({"json_schema"}), max_tokens_field="max_completion_tokens",
                            grammar_fields=_standard_grammar),
}


def profile(name: str) -> ServerProfile:
    """The profile called ``name`` (``vllm``, ``llamacpp``, ``ollama``, ``openai``)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UserError(f"unknown server profile {name!r}; choose auto or one of {', '.join(PROFILES)}") from None


def root_url(base_url: str) -> str:
    """The server's root: ``base_url`` less a trailing ``/v1``."""
    base = base_url.rstrip("/")
    return base[:-3] if base.endswith("/v1") else base


def detect(base_url: str, get: Callable[[str], tuple[int, Any]]) -> ServerProfile | None:
    """The profile of the server at ``base_url``, asked with ``get(url) -> (status, json or None)`` (bounded by
    the caller); ``None`` when the server could not be reached at all (ask again later), ``openai`` when it
    answers none of the probes."""
    root = root_url(base_url)
    reached = False
    for path, name, looks_right in (
            ("/version", "vllm", lambda d: isinstance(d, dict) and "version" in d),
            ("/props", "llamacpp", lambda d: isinstance(d, dict) and ("default_generation_settings" in d
                                                                     or "build_info" in d)),
            ("/api/version", "ollama", lambda d: isinstance(d, dict) and "version" in d)):
        try:
            status, data = get(root + path)
        except OSError:
            continue
        reached = True
        if status == 200 and looks_right(data):
            return PROFILES[name]
    return PROFILES["openai"] if reached else None

