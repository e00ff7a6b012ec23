"""tokenomy.planners: codified plans.

The plan language (``grammar``: one Lark grammar for parsing and constrained decoding), its typed syntax tree
(``ast``), the parser with line and column in its errors, the validator (names, tools, argument names and
types, cycles), the printers (canonical text, and ReWOO's natural-language format for comparison) and the
executor (a DAG of tool calls run concurrently, control flow in tokenomy's own interpreter, errors as values).

The strategies (``STRATEGIES``): ``rewoo`` (codified plans), and the baselines ``rewoo-nl``, ``react`` and
``plan-execute``; each is a LangGraph graph with a SQLite checkpointer (``Checkpoints``) that resumes a killed
run without repeating finished model or tool calls.
"""

from __future__ import annotations

from typing import Any

if __name__ != "tokenomy.planners":  # found as a top-level package from the repository root
    from tokenomy._toplevel import defer_to_installed

    defer_to_installed(__name__)
else:
    from . import ast
    from .baselines import PlanExecute, React, RewooNL
    from .executor import ExecutionResult, PlanExecutor, StepError, StepRecord
    from .exemplars import ORVEL, Exemplar
    from .grammar import PLAN_GRAMMAR, for_tools
    from .journal import Checkpoints
    from .parser import PlanParseError, close_plan, parse_plan
    from .printer import plan_steps, print_expr, print_plan, print_rewoo
    from .rewoo import Rewoo
    from .run import Strategy
    from .state import RunResult, RunState
    from .validate import Issue, PlanValidationError, check_plan, validate_plan

    STRATEGIES: dict[str, type[Strategy]] = {"rewoo": Rewoo, "rewoo-nl": RewooNL, "react": React,
                                             "plan-execute": PlanExecute}


def make_strategy(name: str, model: Any, tools: Any, **options: Any) -> Strategy:
    """A strategy by name (``rewoo``, ``rewoo-nl``, ``react``, ``plan-execute``) over a model and tools."""
    from tokenomy.errors import UserError

    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](model, tools, **options)


__all__ = [
    "Exemplar",
    "ORVEL",
    "ast",
    "PLAN_GRAMMAR",
    "for_tools",
    "parse_plan",
    "close_plan",
    "PlanParseError",
    "print_plan",
    "plan_steps",
    "print_expr",
    "print_rewoo",
    "validate_plan",
    "check_plan",
    "Issue",
    "PlanValidationError",
    "PlanExecutor",
    "ExecutionResult",
    "StepError",
    "StepRecord",
    "Strategy",
    "RunState",
    "RunResult",
    "Checkpoints",
    "STRATEGIES",
    "make_strategy",
    "Rewoo",
    "RewooNL",
    "React",
    "PlanExecute",
]
