"""tokenomy.graphs: teams of agents that talk only where it pays.

``AgentGraph`` (networkx) holds agents, spatial edges (within a round), temporal edges (from the round before),
a decision node and a budget, with presets for fair baselines (``mesh``, ``chain``, ``star``, ``layered``,
``debate``, ``single``). ``GraphTeam`` compiles a graph to a LangGraph ``StateGraph`` and runs it with a SQLite
checkpointer, counting tokens per call, agent, round and edge. Pruning policies (``tokenomy.graphs.policy``, which
imports torch) choose the agents, edges and rounds a question runs on and are trained by REINFORCE
(``tokenomy.graphs.train``); ``Simulator`` is a team with a known best mask; ``to_mermaid``, ``to_dot`` and
``to_ascii`` draw a graph with what was pruned.
"""

import importlib
from typing import Any

if __name__ != "tokenomy.graphs":  # found as a top-level package from the repository root
    from tokenomy._toplevel import defer_to_installed

    defer_to_installed(__name__)
else:
    from .graph import DECISION, PRESETS, AgentGraph, Budget, Call, Edge, GraphError, Mask, Schedule
    from .render import to_ascii, to_dot, to_mermaid
    from .runtime import GraphResult, GraphTeam
    from .simulator import SimAgent, SimQuestion, Simulator

# Training needs torch: its names load on first use, so building and running graphs does not import torch.
_LAZY = {name: ".train" for name in ("EvalReport", "TeamTask", "TrainConfig", "TrainReport", "evaluate",
                                     "train_policy")}
_LAZY.update({name: ".policy" for name in ("IndependentLogits", "LowRank", "GNNPolicy", "StaticPolicy", "load_policy",
                                           "POLICIES", "mask_f1")})


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tokenomy.graphs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AgentGraph",
    "Budget",
    "Call",
    "DECISION",
    "Edge",
    "GraphError",
    "Mask",
    "PRESETS",
    "Schedule",
    "GraphTeam",
    "GraphResult",
    "SimAgent",
    "SimQuestion",
    "Simulator",
    "to_mermaid",
    "to_dot",
    "to_ascii",
    *sorted(_LAZY),
]
