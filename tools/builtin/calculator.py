"""``calc``: safe arithmetic over Python's ``ast``, never ``eval``.

Allowed: numbers, ``+ - * / // % **``, unary ``+``/``-``, parentheses and the functions ``abs round min max
sqrt log exp``. Everything else (names, attributes, subscripts, other calls, strings, comprehensions...) is
refused with a ``ToolArgumentError`` that says what was found. Guards bound the work a model-written
expression can ask for: its length, exponents, and the magnitude of every intermediate result.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from ..base import ToolArgumentError
from ..decorator import tool

__all__ = ["calc", "evaluate", "MAX_EXPRESSION_CHARS", "MAX_EXPONENT", "MAX_MAGNITUDE"]

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000
"""Largest absolute exponent of ``**``."""
MAX_MAGNITUDE = 1e300
"""Largest absolute value of any intermediate result (floats overflow a little above)."""

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt, "log": math.log, "exp": math.exp,
}
_ALLOWED = "numbers, + - * / // % **, parentheses and " + ", ".join(_FUNCTIONS)


def _refuse(problem: str) -> ToolArgumentError:
    return ToolArgumentError("calc", [("expression", problem)])


def evaluate(expression: str) -> float:
    """The value of an arithmetic ``expression`` (see the module docstring for what is allowed)."""
    if not isinstance(expression, str):
        raise _refuse(f"must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise _refuse(f"is {len(expression)} characters long; at most {MAX_EXPRESSION_CHARS} allowed")
    if not expression.strip():
        raise _refuse("is empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        msg = getattr(exc, "msg", None) or type(exc).__name__
        raise _refuse(f"is not a valid arithmetic expression ({msg}); allowed: {_ALLOWED}") from None
    try:
        value = _eval(tree.body)
    except ToolArgumentError:
        raise
    except ZeroDivisionError:
        raise _refuse("divides by zero") from None
    except (OverflowError, MemoryError):
        raise _refuse(f"overflows (results are limited to {MAX_MAGNITUDE:g})") from None
    except RecursionError:
        raise _refuse("is nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise _refuse(f"has no value: {exc}") from None
    return float(value)


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise _refuse(f"contains {node.value!r}, which is not a number; allowed: {_ALLOWED}")
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _bounded(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.Call):
        return _call(node)
    raise _refuse(f"contains {_describe(node)}, which is not allowed; allowed: {_ALLOWED}")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
        raise _refuse(f"calls {_describe(node.func)}; only {', '.join(_FUNCTIONS)} may be called")
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise _refuse(f"{node.func.id}() takes plain positional numbers only")
    args = [_eval(a) for a in node.args]
    name = node.func.id
    if name == "round" and len(args) == 2:
        if not float(args[1]).is_integer():
            raise _refuse("round(x, n) needs a whole number n")
        args[1] = int(args[1])
    if name in ("min", "max") and not args:
        raise _refuse(f"{name}() needs at least one number")
    return _bounded(_FUNCTIONS[name](*args))


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise _refuse(f"has the exponent {exponent:g}; at most {MAX_EXPONENT} allowed")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise _refuse(f"{base:g} ** {exponent:g} exceeds {MAX_MAGNITUDE:g}")


def _bounded(value: Any) -> Number:
    if isinstance(value, complex):
        raise _refuse("has a complex result (e.g. a fractional power of a negative number)")
    if isinstance(value, float) and math.isnan(value):
        raise _refuse("is not a number (NaN)")
    if abs(value) > MAX_MAGNITUDE:
        raise _refuse(f"has an intermediate result beyond {MAX_MAGNITUDE:g}")
    return value  # type: ignore[no-any-return]


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Attribute):
        return f"the attribute access .{node.attr}"
    if isinstance(node, ast.Call):
        return f"a call of {_describe(node.func)}"
    return f"a {type(node).__name__} expression"


@tool(name="calc")
def _calc(expression: str) -> float:
    """Evaluate an arithmetic expression: numbers, + - * / // % **, parentheses, abs round min max sqrt log exp.

    Args:
        expression: the arithmetic expression, e.g. "(3 + 4) * 2".
    """
    return evaluate(expression)


calc = _calc
"""The ``calc`` tool."""
