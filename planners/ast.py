"""The typed syntax tree of a plan (pydantic models; every node knows its line and column).

Results are substituted on this tree, never in text: a reference is a ``Ref`` node naming a variable, so
``e1`` can never be mistaken for part of ``e10`` (ReWOO's ``#E10`` bug and LangGraph's ``str.replace`` bug).

The tree's queries live here, once, for the validator, the printer and the executor alike: ``children`` and
``nodes`` (every node, in source order), ``scoped_statements`` and ``statements`` (every statement, blocks'
bodies included), ``evaluated`` (what a statement computes itself), ``calls``, ``free_refs`` (the names an
expression reads), ``assigned`` (the names a statement defines) and ``rename_refs`` (a tree with references
renamed). This module imports nothing else of the planners; only ``Plan._repr_html_``, a notebook's display
hook, reaches up to the printer and the renderer, when it is called.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Node", "Literal_", "Ref", "ListExpr", "BinOp", "BoolOp", "Not", "Neg", "Expr", "Call", "Assign",
    "CallStmt", "If", "For", "Assert", "Answer", "Send", "Stmt", "TypeRef", "Plan",
    "Block", "children", "nodes", "scoped_statements", "statements", "evaluated", "calls", "free_refs", "assigned",
    "rename_refs",
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
        # A notebook's display hook, the one lazy import allowed here (tests/test_layout.py): drawing is above the AST.
        from .printer import plan_steps
        from .render import plan_svg

        return plan_svg(plan_steps(self))

    def calls(self) -> list[Call]:
        """Every tool call in the plan, in source order (inside blocks too): ``calls(plan)``."""
        return calls(self)


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in ("line", "column")}
    if isinstance(obj, list | tuple):
        return [_strip(v) for v in obj]
    return obj


for _model in (Ref, ListExpr, BinOp, BoolOp, Not, Neg, TypeRef, Call, Assign, If, For, Assert, Send, Answer, Plan):
    _model.model_rebuild()


# -- Queries over the tree ------------------------------------------------------------------------------------

Block = If | For


def children(node: Node | Plan) -> Iterator[Node]:
    """The nodes directly inside ``node``, in source order: a plan's statements, a statement's expressions, type
    and blocks, an expression's operands, a reference's index expressions, a call's argument values."""
    for name in type(node).model_fields:
        yield from _nodes_of(getattr(node, name))


def _nodes_of(value: Any) -> Iterator[Node]:
    if isinstance(value, Node):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _nodes_of(item)


def nodes(node: Node | Plan | Sequence[Node] | None) -> Iterator[Node]:
    """``node`` and every node inside it, depth first in source order (a plan or a list of nodes: the nodes in
    it). Iterative, so a deeply nested hand-built tree does not exhaust Python's stack."""
    stack = list(reversed(list(_nodes_of(node) if not isinstance(node, Plan) else children(node))))
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(list(children(n))))


def scoped_statements(node: Plan | Sequence[Stmt]) -> Iterator[tuple[Stmt, tuple[Block, ...]]]:
    """Every statement of a plan (or block), the bodies of ``if`` and ``for`` included, in source order (a block
    before its statements, an ``if``'s body before its ``else``), each with the blocks it is inside, outermost
    first."""
    body = node.body if isinstance(node, Plan) else node
    stack: list[tuple[Any, tuple[Block, ...]]] = [(s, ()) for s in reversed(body)]
    while stack:
        s, outer = stack.pop()
        yield s, outer
        if isinstance(s, If | For):
            inner = [*s.body, *s.orelse] if isinstance(s, If) else s.body
            stack.extend((st, (*outer, s)) for st in reversed(inner))


def statements(node: Plan | Sequence[Stmt]) -> Iterator[Stmt]:
    """Every statement of a plan (or block), the bodies of ``if`` and ``for`` included, in source order."""
    return (s for s, _ in scoped_statements(node))


def evaluated(s: Stmt) -> Expr | Call:
    """What a statement computes itself (never its blocks' statements): an assignment's value, a call, the
    value of an ``answer`` or a message, the condition of an ``assert`` or ``if``, what a ``for`` loops over."""
    if isinstance(s, CallStmt):
        return s.call
    if isinstance(s, Assert | If):
        return s.cond
    if isinstance(s, For):
        return s.iter
    return s.value


def calls(node: Plan | Sequence[Stmt]) -> list[Call]:
    """Every tool call of a plan (or block), in source order, inside blocks too."""
    out: list[Call] = []
    for s in statements(node):
        if isinstance(s, Assign) and isinstance(s.value, Call):
            out.append(s.value)
        elif isinstance(s, CallStmt):
            out.append(s.call)
    return out


def free_refs(e: Expr | Call | None) -> set[str]:
    """The variable names an expression (or a call's arguments) reads, index expressions included."""
    return {n.name for n in nodes(e) if isinstance(n, Ref)}


def assigned(s: Stmt) -> list[str]:
    """The names a statement defines in its enclosing scope: an assignment's target; for a block, every name
    assigned anywhere inside it (sorted). After a ``for`` each is the list of its per-iteration values; after an
    ``if``, one the branch taken did not assign is a "not assigned" error value."""
    if isinstance(s, Assign):
        return [s.target]
    if isinstance(s, If | For):
        inner = [*s.body, *s.orelse] if isinstance(s, If) else s.body
        return sorted({st.target for st in statements(inner) if isinstance(st, Assign)})
    return []


def rename_refs(node: Any, names: Mapping[str, str]) -> Any:
    """``node`` (a node, a plan's statement list, any value inside a tree) with its references renamed by
    ``names``; a ``for``'s variable hides an outer name of its own in the loop's body. A new tree (a part without
    references is kept as it is); ``node`` itself is never changed."""
    if not names:
        return node
    if isinstance(node, Ref):
        path = [rename_refs(p, names) for p in node.path]
        return node.model_copy(update={"name": names.get(node.name, node.name), "path": path})
    if isinstance(node, For) and node.var in names:
        inner = {k: v for k, v in names.items() if k != node.var}
        return node.model_copy(update={"iter": rename_refs(node.iter, names), "body": rename_refs(node.body, inner)})
    if isinstance(node, Node):
        update = {}
        for field in type(node).model_fields:
            value = getattr(node, field)
            new = rename_refs(value, names)
            if new is not value:
                update[field] = new
        return node.model_copy(update=update) if update else node
    if isinstance(node, list):
        items = [rename_refs(x, names) for x in node]
        return items if any(a is not b for a, b in zip(items, node, strict=True)) else node
    if isinstance(node, tuple):
        items = [rename_refs(x, names) for x in node]
        return tuple(items) if any(a is not b for a, b in zip(items, node, strict=True)) else node
    return node
