"""tokenomy.planners: codified plans.

The plan language (``grammar``: one Lark grammar for parsing and constrained decoding), its typed syntax tree
(``ast``), the parser with line and column in its errors, the validator (names, tools, argument names and
types, cycles), the printers (canonical text, and ReWOO's natural-language format for comparison) and the
executor (a DAG of tool calls run concurrently, control flow in tokenomy's own interpreter, errors as values).
"""

from . import ast
from .executor import ExecutionResult, PlanExecutor, StepError, StepRecord
from .grammar import PLAN_GRAMMAR, for_tools
from .parser import PlanParseError, close_plan, parse_plan
from .printer import print_expr, print_plan, print_rewoo
from .validate import Issue, PlanValidationError, check_plan, validate_plan

__all__ = [
    "ast",
    "PLAN_GRAMMAR",
    "for_tools",
    "parse_plan",
    "close_plan",
    "PlanParseError",
    "print_plan",
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
]
