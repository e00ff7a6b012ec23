"""The typed syntax tree of a plan (pydantic models; every node knows its line and column).

Results are substituted on this tree, never in text: a reference is a ``Ref`` node naming a variable, so
``e1`` can never be mistaken for part of ``e10`` (ReWOO's ``#E10`` bug and LangGraph's ``str.replace`` bug).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Node", "Literal_", "Ref", "ListExpr", "BinOp", "BoolOp", "Not", "Neg", "Expr", "Call", "Assign",
    "CallStmt", "If", "For", "Assert", "Answer", "Send", "Stmt", "TypeRef", "Plan",
]


class Node(BaseModel):
    model_config = ConfigDict(frozen=True)
    line: int = 0
    column: int = 0


class Literal_(Node):
    kind: Literal["literal"] = "literal"
    value: str | int | float | bool | None


class Ref(Node):
    """A variable, then field names (``str``) and index expressions along ``path``: ``hits[0].name``."""

    kind: Literal["ref"] = "ref"
    name: str
    path: list[str | Expr] = []


class ListExpr(Node):
    kind: Literal["list"] = "list"
    items: list[Expr] = []


class BinOp(Node):
    """Arithmetic (``+ - * / %``) or a comparison (``== != < <= > >=``)."""

    kind: Literal["binop"] = "binop"
    op: str
    left: Expr
    right: Expr


class BoolOp(Node):
    kind: Literal["boolop"] = "boolop"
    op: Literal["and", "or"]
    values: list[Expr]


class Not(Node):
    kind: Literal["not"] = "not"
    operand: Expr


class Neg(Node):
    kind: Literal["neg"] = "neg"
    operand: Expr


Expr = Annotated[Union[Literal_, Ref, ListExpr, BinOp, BoolOp, Not, Neg], Field(discriminator="kind")]  # noqa: UP007


class TypeRef(Node):
    """A declared type: ``int``, ``list[str]``, ``dict[str, int]``."""

    kind: Literal["type"] = "type"
    name: str
    args: list[TypeRef] = []


class Call(Node):
    """A tool call. ``args`` in the order written; a positional argument has the name ``""``."""

    kind: Literal["call"] = "call"
    tool: str
    args: list[tuple[str, Expr]] = []

    def arg_dict(self) -> dict[str, Any]:
        return dict(self.args)

    def bind(self, parameters: Sequence[str]) -> list[tuple[str, Expr]]:
        """The arguments by name: positional ones bind, in order, to the ``parameters`` (the tool's, in its
        signature's order) that no keyword names, which for a call Python accepts is Python's rule.

        Raises:
            ValueError: more positional arguments than free parameters, or a parameter given twice.
        """
        named = [k for k, _ in self.args if k]
        dup = sorted({k for k in named if named.count(k) > 1})
        if dup:
            raise ValueError(f"{self.tool}() gets {dup[0]!r} twice")
        free = iter([p for p in parameters if p not in named])
        out = []
        for k, v in self.args:
            if not k:
                k = next(free, "")
                if not k:
                    raise ValueError(f"{self.tool}() takes {len(parameters)} argument(s): "
                                     f"{', '.join(parameters) or 'none'}; it got more")
            out.append((k, v))
        return out


class Assign(Node):
    kind: Literal["assign"] = "assign"
    target: str
    type: TypeRef | None = None
    value: Annotated[Union[Call, Expr], Field(union_mode="left_to_right")]  # noqa: UP007


class CallStmt(Node):
    kind: Literal["call_stmt"] = "call_stmt"
    call: Call


class If(Node):
    kind: Literal["if"] = "if"
    cond: Expr
    body: list[Stmt]
    orelse: list[Stmt] = []


class For(Node):
    kind: Literal["for"] = "for"
    var: str
    iter: Expr
    body: list[Stmt]


class Assert(Node):
    kind: Literal["assert"] = "assert"
    cond: Expr
    message: str | None = None


class Send(Node):
    """A message to another role: ``-> critic: value``."""

    kind: Literal["send"] = "send"
    to: str
    value: Expr


class Answer(Node):
    kind: Literal["answer"] = "answer"
    value: Expr


Stmt = Annotated[Union[Assign, CallStmt, If, For, Assert, Send, Answer], Field(discriminator="kind")]  # noqa: UP007


class Plan(BaseModel):
    """A whole plan: statements in order, the last one an ``Answer``."""

    model_config = ConfigDict(frozen=True)
    body: list[Stmt]

    def structure(self) -> Any:
        """The plan as plain data without source positions: equal for plans that differ only in layout."""
        return _strip(self.model_dump())

    def _repr_html_(self) -> str:
        from tokenomy.viz import plan_svg

        from .printer import plan_steps

        return plan_svg(plan_steps(self))

    def calls(self) -> list[Call]:
        """Every tool call in the plan, in source order (inside blocks too)."""
        out: list[Call] = []

        def walk(stmts: list[Any]) -> None:
            for s in stmts:
                if isinstance(s, Assign) and isinstance(s.value, Call):
                    out.append(s.value)
                elif isinstance(s, CallStmt):
                    out.append(s.call)
                elif isinstance(s, If):
                    walk(s.body)
                    walk(s.orelse)
                elif isinstance(s, For):
                    walk(s.body)

        walk(self.body)
        return out


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in ("line", "column")}
    if isinstance(obj, list | tuple):
        return [_strip(v) for v in obj]
    return obj


for _model in (Ref, ListExpr, BinOp, BoolOp, Not, Neg, TypeRef, Call, Assign, If, For, Assert, Send, Answer, Plan):
    _model.model_rebuild()
