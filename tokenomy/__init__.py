"""tokenomy: multi-agent LLM workflows that spend as few tokens as the task allows.

The public API is small; names are loaded on first use so that ``import tokenomy`` stays fast and imports
neither torch nor transformers::

    from tokenomy import load_engine, Rewoo
    from tokenomy.tools import calc, example_corpus_dir, lookup_tool, search_tool

    engine = load_engine()                  # the embedded Qwen2.5-Coder-1.5B-Instruct
    corpus = example_corpus_dir()
    result = Rewoo(engine, [search_tool(corpus), lookup_tool(corpus), calc]).run("Who founded Halvane Instruments?")
    print(result.answer, result.usage)      # usage per agent (planner, solver)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "tokenomy.kernels",
    "Completion": "tokenomy.kernels",
    "Grammar": "tokenomy.kernels",
    "Request": "tokenomy.kernels",
    "SamplingParams": "tokenomy.kernels",
    "Usage": "tokenomy.kernels",
    "UsageLedger": "tokenomy.kernels",
    "UsageLimits": "tokenomy.kernels",
    "Price": "tokenomy.kernels",
    "StreamChunk": "tokenomy.kernels",
    "Worker": "tokenomy.kernels",
    "Router": "tokenomy.kernels",
    "ScriptedEngine": "tokenomy.kernels",
    "load_engine": "tokenomy.kernels",
    "shared_engine": "tokenomy.kernels",
    "Rewoo": "tokenomy.planners",
    "RewooNL": "tokenomy.planners",
    "React": "tokenomy.planners",
    "PlanExecute": "tokenomy.planners",
    "Checkpoints": "tokenomy.planners",
    "make_strategy": "tokenomy.planners",
    "Agent": "tokenomy.agents",
    "AgentGraph": "tokenomy.graphs",
    "GraphTeam": "tokenomy.graphs",
    "Tool": "tokenomy.tools",
    "tool": "tokenomy.tools",
    "TokenomyError": "tokenomy.errors",
    "UserError": "tokenomy.errors",
    "RunError": "tokenomy.errors",
    "BudgetExceeded": "tokenomy.errors",
    "PlanError": "tokenomy.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tokenomy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
