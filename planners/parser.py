"""Plan text -> ``Plan``: parsed with the plan grammar (LALR), errors with line, column and what was expected."""

from __future__ import annotations

import json
from functools import cache
from typing import Any, TypedDict

from tokenomy.errors import PlanError

from . import ast as A
from .grammar import PLAN_GRAMMAR

__all__ = ["PlanParseError", "parse_plan", "close_plan"]


class PlanParseError(PlanError):
    """A plan that does not parse. ``line``/``column`` locate it; ``feedback`` is meant for the model."""

    def __init__(self, message: str, line: int, column: int, expected: list[str] | None = None) -> None:
        self.line = line
        self.column = column
        self.expected = expected or []
        want = f" Expected one of: {', '.join(self.expected)}." if self.expected else ""
        super().__init__(f"line {line}, column {column}: {message}",
                         feedback=f"Your plan does not parse at line {line}, column {column}: {message}.{want}")


@cache
def _parser() -> Any:
    import lark

    return lark.Lark(PLAN_GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse_plan(text: str) -> A.Plan:
    """Parse plan text into a typed ``Plan``; raises ``PlanParseError``."""
    import lark

    if not text.endswith("\n"):
        text += "\n"
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedCharacters as exc:
        char = text[exc.pos_in_stream] if exc.pos_in_stream is not None else exc.char
        raise PlanParseError(f"unexpected character {char!r}", exc.line, exc.column,
                             sorted(exc.allowed or [])) from None
    except lark.exceptions.UnexpectedToken as exc:
        token = exc.token
        what = "end of the plan (a plan must end with answer(...))" if token.type == "$END" else repr(str(token))
        raise PlanParseError(f"unexpected {what}", exc.line if exc.line > 0 else text.count("\n"),
                             max(exc.column, 1), sorted(_readable(t) for t in exc.expected)) from None
    except lark.exceptions.UnexpectedEOF as exc:
        raise PlanParseError("unexpected end of the plan (a plan must end with answer(...))",
                             text.count("\n"), 1, sorted(_readable(t) for t in exc.expected)) from None
    _check_depth(tree)
    return _ToAst().transform(tree)  # type: ignore[no-any-return]


MAX_DEPTH = 100
"""How deeply a plan may nest: blocks, brackets and operator chains (``a + b + c`` nests two deep, as it is
evaluated). Deeper plans are refused at parse time, so no later pass (validation, execution, the journal) can
run out of stack on them."""

_CHAINS = frozenset({"comparison", "sum", "product"})


def _check_depth(tree: Any) -> None:
    """Raise ``PlanParseError`` where ``tree`` nests deeper than ``MAX_DEPTH`` (walked without recursion)."""
    import lark

    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            pos = _pos(node.meta)
            raise PlanParseError(f"the plan nests more than {MAX_DEPTH} levels deep (brackets, blocks or a chain "
                                 "of operators); split it into steps", pos["line"], max(pos["column"], 1))
        # A chain of n operators becomes n nested operations.
        step = 1 + (len(node.children) // 2 if node.data in _CHAINS else 0)
        stack.extend((c, depth + step) for c in node.children if isinstance(c, lark.Tree))


def close_plan(text: str) -> str:
    """Finish a plan the model left incomplete (cut off at its token limit, or never reaching ``answer``):
    keep the longest run of complete top-level statements that parses and answer with the last result.

    The result always parses. It is a repair, not the model's plan: callers should count it as such.
    """
    lines = text.split("\n")
    kept: list[str] = []
    depth = 0
    statement: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("answer("):
            break
        statement.append(line)
        depth += line.count("{") - line.count("}")
        if depth == 0 and stripped:
            candidate = kept + statement
            try:
                parse_plan("\n".join(candidate + ["answer(null)"]))
            except PlanParseError:
                break
            kept = candidate
            statement = []
        elif depth < 0:
            break
    result = _last_assignment(kept)
    return "\n".join(kept + [f"answer({result})"])


def _last_assignment(lines: list[str]) -> str:
    if not lines:
        return "null"
    plan = parse_plan("\n".join(lines + ["answer(null)"]))
    for stmt in reversed(plan.body):
        if isinstance(stmt, A.Assign):
            return stmt.target
    return "null"


_NAMES = {"NAME": "a name", "STRING": "a string", "NUMBER": "a number", "_NL": "a new line", "LPAR": "'('",
          "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'", "EQUAL": "'='",
          "COMMA": "','", "COLON": "':'", "DOT": "'.'", "COMP_OP": "a comparison", "ADD_OP": "'+' or '-'",
          "MUL_OP": "'*', '/' or '%'", "MINUS": "'-'", "ANSWER": "answer(...)", "IF": "if", "FOR": "for"}


def _readable(terminal: str) -> str:
    if terminal in _NAMES:
        return _NAMES[terminal]
    try:
        pattern = _parser().get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    return repr(pattern.value) if pattern.type == "str" else terminal.lower()


class _Pos(TypedDict):
    line: int
    column: int


def _pos(meta: Any) -> _Pos:
    return {"line": getattr(meta, "line", 0) or 0, "column": getattr(meta, "column", 0) or 0}


class _ToAst:
    """Lark tree -> pydantic AST (a small hand-written transformer: explicit beats magic here)."""

    def transform(self, tree: Any) -> A.Plan:
        return A.Plan(body=[self.stmt(c) for c in tree.children])

    def stmt(self, t: Any) -> Any:
        kind, c, pos = t.data, t.children, _pos(t.meta)
        if kind == "assign":
            name, typ, value = c
            return A.Assign(target=str(name), type=self.type(typ) if typ is not None else None,
                            value=self.call(value) if getattr(value, "data", None) == "call" else self.expr(value),
                            **pos)
        if kind == "call_stmt":
            return A.CallStmt(call=self.call(c[0]), **pos)
        if kind == "if_stmt":
            cond, body, orelse = c
            return A.If(cond=self.expr(cond), body=self.block(body),
                        orelse=self.block(orelse) if orelse is not None else [], **pos)
        if kind == "for_stmt":
            var, it, body = c
            return A.For(var=str(var), iter=self.expr(it), body=self.block(body), **pos)
        if kind == "assert_stmt":
            cond, msg = c
            return A.Assert(cond=self.expr(cond), message=_literal(msg) if msg is not None else None, **pos)
        if kind == "send_stmt":
            to, value = c
            return A.Send(to=str(to), value=self.expr(value), **pos)
        if kind == "answer_stmt":
            return A.Answer(value=self.expr(c[0]), **pos)
        raise AssertionError(f"unknown statement {kind}")

    def block(self, t: Any) -> list[Any]:
        return [self.stmt(c) for c in t.children]

    def type(self, t: Any) -> A.TypeRef:
        name, *args = t.children
        return A.TypeRef(name=str(name), args=[self.type(a) for a in args if a is not None], **_pos(t.meta))

    def call(self, t: Any) -> A.Call:
        name, *given = t.children
        args = [(str(k.children[0]), self.expr(k.children[1])) if getattr(k, "data", None) == "kwarg"
                else ("", self.expr(k)) for k in given if k is not None]
        return A.Call(tool=str(name), args=args, **_pos(t.meta))

    def expr(self, t: Any) -> Any:
        import lark

        if isinstance(t, lark.Token):  # a bare token only appears inside literal/ref, handled below
            raise AssertionError(f"unexpected token {t!r}")
        kind, c, pos = t.data, t.children, _pos(t.meta)
        if kind == "literal":
            return A.Literal_(value=_literal(c[0]), **pos)
        if kind == "ref":
            name, *rest = c
            path: list[Any] = [str(p) if isinstance(p, lark.Token) else self.expr(p) for p in rest]
            return A.Ref(name=str(name), path=path, **pos)
        if kind == "list":
            return A.ListExpr(items=[self.expr(x) for x in c if x is not None], **pos)
        if kind == "not_op":
            return A.Not(operand=self.expr(c[0]), **pos)
        if kind == "neg":
            return A.Neg(operand=self.expr(c[0]), **pos)
        if kind in ("and_expr", "or_expr"):
            return A.BoolOp(op="and" if kind == "and_expr" else "or", values=[self.expr(x) for x in c], **pos)
        if kind in ("comparison", "sum", "product"):
            # Left-associative chain: a - b - c is (a - b) - c.
            node = self.expr(c[0])
            for op, right in zip(c[1::2], c[2::2], strict=True):
                node = A.BinOp(op=str(op), left=node, right=self.expr(right), **pos)
            return node
        raise AssertionError(f"unknown expression {kind}")


def _literal(tok: Any) -> Any:
    if tok.type == "STRING":
        try:
            return json.loads(str(tok))
        except ValueError:  # an escape JSON does not know (\q): keep the characters as written
            return str(tok)[1:-1]
    if tok.type == "NUMBER":
        s = str(tok)
        return float(s) if "." in s else int(s)
    return {"TRUE": True, "FALSE": False, "NULL": None}[tok.type]
