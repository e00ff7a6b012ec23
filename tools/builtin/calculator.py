"""``calc``: safe arithmetic over Python's ``ast``, never ``eval``.

Allowed: numbers, ``+ - * / // % **``, unary ``+``/``-``, parentheses and the functions ``abs round min max
sqrt log exp``. Everything else (names, attributes, subscripts, other calls, strings, comprehensions...) is
refused with a ``ToolArgumentError`` that says what was found. Guards bound the work a model-written
expression can ask for: its length, exponents, and the magnitude of every intermediate result.

Numbers may be written as people and tools write them: with thousands separators (``"12,900 + 3,400"``; a comma
followed by exactly three digits is read as one, so write ``max(1, 200)`` with a space), with a unit
(``"95 minutes - 40 minutes"``, ``"1,200 km / 3"``; see ``UNITS``) and with the ``[file#n]`` source that
``lookup`` puts after a value (it is dropped). Units of one dimension are converted to the first one written
(``"1 hour + 30 minutes"`` is 1.5); adding or subtracting different dimensions (``"5 km + 3 minutes"``) is
refused. A counted noun (``"12,900 inhabitants"``) is a plain number. A number instead of a text is its own value
(``calc(expression=e2 - e1)``: the plan computed it).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from ..base import ToolArgumentError
from ..decorator import tool
from .chunking import SOURCE

__all__ = ["calc", "evaluate", "UNITS", "MAX_EXPRESSION_CHARS", "MAX_EXPONENT", "MAX_MAGNITUDE"]

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


def _units(dimension: str, factor: float, *names: str) -> dict[str, tuple[str, float]]:
    return {n: (dimension, factor) for n in names}


UNITS: dict[str, tuple[str, float]] = {
    **_units("length", 1e-3, "mm"), **_units("length", 1e-2, "cm"),
    **_units("length", 1.0, "m", "metre", "metres", "meter", "meters"),
    **_units("length", 1e3, "km", "kilometre", "kilometres", "kilometer", "kilometers"),
    **_units("length", 1609.344, "mile", "miles"),
    **_units("area", 1.0, "m2", "m²", "square metres", "square meters"), **_units("area", 1e4, "hectares", "ha"),
    **_units("area", 1e6, "km2", "km²", "square km", "square kilometres", "square kilometers"),
    **_units("time", 1.0, "s", "sec", "second", "seconds"), **_units("time", 60.0, "min", "minute", "minutes"),
    **_units("time", 3600.0, "h", "hour", "hours"), **_units("time", 86400.0, "day", "days"),
    **_units("time", 604800.0, "week", "weeks"), **_units("time", 31557600.0, "year", "years"),
    **_units("mass", 1e-3, "g", "gram", "grams"), **_units("mass", 1.0, "kg"),
    **_units("mass", 1e3, "t", "tonne", "tonnes", "ton", "tons"),
    **_units("", 1.0, "people", "persons", "inhabitants", "residents", "workers", "employees", "students",
             "visitors", "children", "members"),
}
"""Unit -> (dimension, size in the dimension's base unit); dimension ``""``: a counted noun, a plain number."""

_THOUSANDS = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?![\d,])")
_UNIT_NAMES = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
_QUANTITY = re.compile(rf"(?<![\w.])(\d+(?:\.\d+)?(?:e[+-]?\d+)?)\s*({_UNIT_NAMES})(?![\w²])", re.IGNORECASE)
_WORD_AFTER_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s*([^\W\d_]+)(?!\w)")
_PLACEHOLDER = "_q"
_Quantity = tuple[float, str]  # a value in its dimension's first-written unit, and the dimension


def _read_units(expression: str) -> tuple[str, dict[str, _Quantity]]:
    """The expression with sources and thousands separators dropped and each number with a unit replaced by a
    placeholder name, and the placeholders' values."""
    text = _THOUSANDS.sub(lambda m: m.group().replace(",", ""), SOURCE.sub("", expression))
    written = re.search(rf"\b{_PLACEHOLDER}\d", text)
    if written:  # the placeholders' names are ours alone
        raise _refuse(f"contains the name {written.group()!r}, which is not allowed; allowed: {_ALLOWED}")
    first: dict[str, float] = {}  # dimension -> the size of its first unit
    quantities: dict[str, _Quantity] = {}

    def replace(m: re.Match[str]) -> str:
        unit = m.group(2).lower() if m.group(2).lower() in UNITS else m.group(2)
        dimension, size = UNITS[unit]
        ref = first.setdefault(dimension, size)
        name = f"{_PLACEHOLDER}{len(quantities)}"
        quantities[name] = (float(m.group(1)) * size / ref, dimension)
        return f" {name} "

    text = _QUANTITY.sub(replace, text)
    stray = _WORD_AFTER_NUMBER.search(text)
    if stray:
        raise _refuse(f"has {stray.group(1)!r} after a number, which is not a known unit; known units include "
                      "km, m, square kilometres, minutes, hours, years, kg, tonnes")
    return text, quantities


def _dimension(node: ast.AST, quantities: dict[str, _Quantity]) -> str:
    """The dimension of ``node``'s value ("" for a plain number); refuses + - % // min max across dimensions."""
    if isinstance(node, ast.Name) and node.id in quantities:
        return quantities[node.id][1]
    if isinstance(node, ast.UnaryOp):
        return _dimension(node.operand, quantities)
    if isinstance(node, ast.BinOp):
        left, right = _dimension(node.left, quantities), _dimension(node.right, quantities)
        if isinstance(node.op, ast.Mult):
            return "*".join(d for d in (left, right) if d)
        if isinstance(node.op, ast.Div):
            return "" if left == right else f"{left or 1}/{right}" if right else left
        if isinstance(node.op, ast.Pow):
            return f"{left}^" if left else ""
        if left and right and left != right:
            raise _refuse(f"mixes units of {left} and {right}; convert one of them first")
        return left or right
    if isinstance(node, ast.Call):
        dims = {_dimension(a, quantities) for a in node.args} - {""}
        if len(dims) > 1:
            raise _refuse(f"mixes units of {' and '.join(sorted(dims))}; convert one of them first")
        return dims.pop() if dims else ""
    return ""


def _refuse(problem: str) -> ToolArgumentError:
    return ToolArgumentError("calc", [("expression", problem)])


def evaluate(expression: str | int | float) -> float:
    """The value of an arithmetic ``expression`` (see the module docstring for what is allowed). A number is its
    own value: a plan may compute ``calc(expression=e2 - e1)`` itself, and the executor then passes the result."""
    if isinstance(expression, (int, float)) and not isinstance(expression, bool):
        if not math.isfinite(expression) or abs(expression) > MAX_MAGNITUDE:
            raise _refuse(f"is {expression:g}; results are limited to {MAX_MAGNITUDE:g}")
        return float(expression)
    if not isinstance(expression, str):
        raise _refuse(f"must be a string or a number, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise _refuse(f"is {len(expression)} characters long; at most {MAX_EXPRESSION_CHARS} allowed")
    if not expression.strip():
        raise _refuse("is empty")
    text, quantities = _read_units(expression)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        msg = getattr(exc, "msg", None) or type(exc).__name__
        raise _refuse(f"is not a valid arithmetic expression ({msg}); allowed: {_ALLOWED}") from None
    try:
        _dimension(tree.body, quantities)
        value = _eval(tree.body, {k: v for k, (v, _) in quantities.items()})
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


def _eval(node: ast.AST, names: dict[str, float]) -> Number:
    if isinstance(node, ast.Name) and node.id in names:
        return _bounded(names[node.id])
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise _refuse(f"contains {node.value!r}, which is not a number; allowed: {_ALLOWED}")
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, names), _eval(node.right, names)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _bounded(_UNARY[type(node.op)](_eval(node.operand, names)))
    if isinstance(node, ast.Call):
        return _call(node, names)
    raise _refuse(f"contains {_describe(node)}, which is not allowed; allowed: {_ALLOWED}")


def _call(node: ast.Call, names: dict[str, float]) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
        raise _refuse(f"calls {_describe(node.func)}; only {', '.join(_FUNCTIONS)} may be called")
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise _refuse(f"{node.func.id}() takes plain positional numbers only")
    args = [_eval(a, names) for a in node.args]
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
def _calc(expression: str | float) -> float:
    """Evaluate an arithmetic expression: numbers, + - * / // % **, parentheses, abs round min max sqrt log exp.
    Numbers may have thousands separators, units and lookup's [file#n] sources: "12,900 + 3,400 [a.md#2]",
    "95 minutes - 40 minutes". A number (a result the plan computed itself) is returned as it is.

    Args:
        expression: the arithmetic expression, e.g. "(3 + 4) * 2".
    """
    return evaluate(expression)


calc = _calc
"""The ``calc`` tool."""
