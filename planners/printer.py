"""``Plan`` -> text: the canonical plan language, and ReWOO's natural-language format for comparison.

``print_plan(parse_plan(t))`` is the canonical form of ``t``: one space around operators, arguments in the
order written (by position or keyword, as written), minimal parentheses, two-space indentation in blocks,
strings as JSON. Parsing the canonical text gives the same tree back (tested), so plans can be compared, cached
and counted exactly.

``print_rewoo`` writes the same plan the way ReWOO's planner does (``Plan: ...`` then ``#E1 = Tool[input]``),
so the two formats can be compared token for token.
"""

from __future__ import annotations

import json
from typing import Any

from . import ast as A

__all__ = ["print_plan", "print_expr", "print_rewoo", "plan_steps"]

_PREC = {"or": 1, "and": 2, "not": 3, "==": 4, "!=": 4, "<": 4, "<=": 4, ">": 4, ">=": 4,
         "+": 5, "-": 5, "*": 6, "/": 6, "%": 6, "neg": 7}


def _prec(e: Any) -> int:
    if isinstance(e, A.BoolOp):
        return _PREC[e.op]
    if isinstance(e, A.Not):
        return _PREC["not"]
    if isinstance(e, A.BinOp):
        return _PREC[e.op]
    if isinstance(e, A.Neg):
        return _PREC["neg"]
    return 9


def print_expr(e: Any, parent: int = 0, right: bool = False, rename: dict[str, str] | None = None) -> str:
    """One expression; parenthesised only where precedence (or right-hand associativity) needs it.
    ``rename`` maps variable names to the text written for them (ReWOO's ``#E<n>``)."""
    text = _expr(e, rename or {})
    p = _prec(e)
    if p < parent or (right and p == parent and p in (4, 5, 6)):
        return f"({text})"
    return text


def _expr(e: Any, rn: dict[str, str]) -> str:
    if isinstance(e, A.Literal_):
        v = e.value
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        return repr(v)
    if isinstance(e, A.Ref):
        out = rn.get(e.name, e.name)
        for step in e.path:
            out += f".{step}" if isinstance(step, str) else f"[{print_expr(step, rename=rn)}]"
        return out
    if isinstance(e, A.ListExpr):
        return "[" + ", ".join(print_expr(x, rename=rn) for x in e.items) + "]"
    if isinstance(e, A.BoolOp):
        p = _PREC[e.op]
        return f" {e.op} ".join(print_expr(v, p + 1, rename=rn) for v in e.values)
    if isinstance(e, A.Not):
        return "not " + print_expr(e.operand, _PREC["not"], rename=rn)
    if isinstance(e, A.Neg):
        return "-" + print_expr(e.operand, _PREC["neg"], rename=rn)
    if isinstance(e, A.BinOp):
        p = _PREC[e.op]
        left_prec = p + 1 if p == 4 else p  # comparisons do not chain
        return f"{print_expr(e.left, left_prec, rename=rn)} {e.op} {print_expr(e.right, p, right=True, rename=rn)}"
    raise TypeError(f"not an expression: {e!r}")


def _call(c: A.Call) -> str:
    return f"{c.tool}(" + ", ".join(f"{k}={print_expr(v)}" if k else print_expr(v) for k, v in c.args) + ")"


def _type(t: A.TypeRef) -> str:
    return t.name + (f"[{', '.join(_type(a) for a in t.args)}]" if t.args else "")


def _stmt(s: Any, indent: str) -> list[str]:
    if isinstance(s, A.Assign):
        typ = f": {_type(s.type)}" if s.type is not None else ""
        value = _call(s.value) if isinstance(s.value, A.Call) else print_expr(s.value)
        return [f"{indent}{s.target}{typ} = {value}"]
    if isinstance(s, A.CallStmt):
        return [indent + _call(s.call)]
    if isinstance(s, A.If):
        lines = [f"{indent}if {print_expr(s.cond)} {{"] + _block(s.body, indent + "  ")
        if s.orelse:
            lines += [f"{indent}}} else {{"] + _block(s.orelse, indent + "  ")
        return lines + [indent + "}"]
    if isinstance(s, A.For):
        return [f"{indent}for {s.var} in {print_expr(s.iter)} {{"] + _block(s.body, indent + "  ") + [indent + "}"]
    if isinstance(s, A.Assert):
        msg = f", {json.dumps(s.message, ensure_ascii=False)}" if s.message is not None else ""
        return [f"{indent}assert {print_expr(s.cond)}{msg}"]
    if isinstance(s, A.Send):
        return [f"{indent}-> {s.to}: {print_expr(s.value)}"]
    if isinstance(s, A.Answer):
        return [f"{indent}answer({print_expr(s.value)})"]
    raise TypeError(f"not a statement: {s!r}")


def _block(stmts: list[Any], indent: str) -> list[str]:
    return [line for s in stmts for line in _stmt(s, indent)]


def print_plan(plan: A.Plan) -> str:
    """The canonical text of ``plan`` (no trailing newline)."""
    return "\n".join(_block(plan.body, ""))


def plan_steps(plan: A.Plan) -> list[dict[str, Any]]:
    """The plan's statements as the nodes of its data-flow DAG, for traces and pictures.

    Each step has ``id`` (the result it assigns, ``answer``, or ``<kind>@<line>``), ``kind`` (call, compute,
    answer, assert, send, if, for), ``text`` (its canonical line), ``tool`` (for calls), ``reads`` (the ids of
    earlier steps whose results it reads: the DAG's edges), ``line`` and ``parent`` (the ``if``/``for`` it is
    inside, or ``None``). The ids are the names the executor reports results under.
    """
    steps: list[dict[str, Any]] = []
    results: set[str] = set()  # the names assigned so far: a step's id is the name it assigns
    for st, blocks in A.scoped_statements(plan):
        parent = _step_id(blocks[-1]) if blocks else None
        local = {b.var for b in blocks if isinstance(b, A.For)}  # loop variables are not steps
        value = A.evaluated(st)
        reads = {n for n in A.free_refs(value) if n in results and n not in local}
        if parent is not None:
            reads.add(parent)
        tool = value.tool if isinstance(value, A.Call) else None
        kind = "call" if tool is not None else "compute" if isinstance(st, A.Assign) else st.kind
        steps.append({"line": st.line, "parent": parent, "text": _stmt(st, "")[0].rstrip(" {"), "tool": tool,
                      "id": _step_id(st), "kind": kind, "reads": sorted(reads)})
        if isinstance(st, A.Assign):
            results.add(st.target)
    return steps


def _step_id(s: Any) -> str:
    if isinstance(s, A.Assign):
        return s.target
    if isinstance(s, A.Answer):
        return "answer"
    if isinstance(s, A.CallStmt):
        return f"{s.call.tool}@{s.line}"
    return f"{s.kind}@{s.line}"  # assert, send, if, for


# -- ReWOO's natural-language format ---------------------------------------------------------------------------

def print_rewoo(plan: A.Plan, descriptions: dict[int, str] | None = None) -> str:
    """The plan in ReWOO's format: a ``Plan:`` line and an ``#E<n> = Tool[input]`` line per tool call.

    Variables become evidence ids (``#E1``, ``#E2`` ...) in the order their calls appear; arguments are written
    the way ReWOO's exemplars write them (values joined by ", ", references as ``#E<n>``). ``descriptions``
    maps a call's index to its ``Plan:`` sentence; by default one is composed from the tool and arguments.
    Control flow has no ReWOO form and is written as a ``Plan:`` sentence.
    """
    evidence: dict[str, str] = {}
    lines: list[str] = []
    counter = 0

    def arg_text(e: Any) -> str:
        if isinstance(e, A.Literal_) and isinstance(e.value, str):
            return e.value  # ReWOO writes tool inputs unquoted
        return print_expr(e, rename=evidence)

    def emit(target: str | None, call: A.Call) -> None:
        nonlocal counter
        counter += 1
        inputs = ", ".join(arg_text(v) for _, v in call.args)
        sentence = (descriptions or {}).get(counter - 1) or \
            f"Use {call.tool} with {', '.join(f'{k} {arg_text(v)}' for k, v in call.args)}."
        eid = f"#E{counter}"
        lines.append(f"Plan: {sentence}")
        lines.append(f"{eid} = {call.tool.capitalize()}[{inputs}]")
        if target:
            evidence[target] = eid

    def walk(stmts: list[Any]) -> None:
        for s in stmts:
            if isinstance(s, A.Assign) and isinstance(s.value, A.Call):
                emit(s.target, s.value)
            elif isinstance(s, A.CallStmt):
                emit(None, s.call)
            elif isinstance(s, A.If):
                lines.append(f"Plan: If {arg_text(s.cond)}, do the following.")
                walk(s.body)
                if s.orelse:
                    lines.append("Plan: Otherwise, do the following.")
                    walk(s.orelse)
            elif isinstance(s, A.For):
                lines.append(f"Plan: For each {s.var} in {arg_text(s.iter)}, do the following.")
                walk(s.body)

    walk(plan.body)
    return "\n".join(lines)
