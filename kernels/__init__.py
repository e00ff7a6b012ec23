"""tokenomy.kernels: turning prompts into tokens.

The ``Engine`` protocol and its backends (embedded transformers with a radix prefix cache, vLLM offline, any
OpenAI-compatible server, the scripted test double), the shared ``Worker`` and its cache-aware scheduler, the
``Router`` across engines, token counting and the ``Usage`` ledger. Nothing here knows about plans, agents or
graphs. Heavy libraries (torch, transformers, vllm) are imported only when an engine is built.
"""

if __name__ != "tokenomy.kernels":  # found as a top-level package from the repository root
    from tokenomy._toplevel import defer_to_installed

    defer_to_installed(__name__)
else:
    from .engine import Engine
    from .limits import Price, UsageLimits
    from .radix import RadixCache
    from .registry import default_spec, load_engine, parse_spec, shared_engine
    from .scripted import ScriptedEngine
    from .types import CAPABILITY_NAMES, Capabilities, Completion, Grammar, Request, SamplingParams, Scored, StreamChunk
    from .usage import Usage, UsageLedger
    from .worker import Router, Worker

__all__ = [
    "Engine",
    "Capabilities",
    "CAPABILITY_NAMES",
    "Scored",
    "Completion",
    "StreamChunk",
    "Grammar",
    "Request",
    "SamplingParams",
    "Usage",
    "UsageLedger",
    "UsageLimits",
    "Price",
    "RadixCache",
    "ScriptedEngine",
    "Worker",
    "Router",
    "load_engine",
    "shared_engine",
    "parse_spec",
    "default_spec",
]
