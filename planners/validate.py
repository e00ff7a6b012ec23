"""Check a plan before anything runs: names, tools, arguments, types, and the dependency graph.

Every problem is reported at once, with its line and column, as ``PlanValidationError.issues``; its
``feedback`` is the text sent back to the model for a repair. Rules:

* every variable is defined before use, and assigned once (a loop body's assignment is once per iteration);
  a variable assigned in only one branch of an ``if`` cannot be used after it;
* every tool exists (with a close-match suggestion), gets only arguments it declares and all it requires;
  literal arguments and typed variables must fit the declared types;
* the plan ends with exactly one ``answer(...)``; messages go to known roles (when roles are given);
* the steps' dependency graph is acyclic (networkx), which also gives the order the executor may run them in.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tokenomy.errors import PlanError

from . import ast as A
from .ast import free_refs  # re-exported: callers read it from here too
from .grammar import TYPE_NAMES
from .printer import print_expr

__all__ = ["ToolSpec", "Issue", "PlanValidationError", "validate_plan", "check_plan", "free_refs", "rename_reassigned",
           "number_results", "merge_repeated_calls"]


class ToolSpec(Protocol):
    """What the validator needs of a tool: its name and its pydantic argument model."""

    name: str
    args_model: Any


@dataclass(frozen=True)
class Issue:
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


class PlanValidationError(PlanError):
    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        text = "\n".join(str(i) for i in issues)
        super().__init__(f"the plan has {len(issues)} problem(s):\n{text}",
                         feedback=f"Your plan has problems:\n{text}\nWrite the whole plan again, fixed.")


_SCALARS: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
                                         "list": (list,), "dict": (dict,)}


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a literal value fits a Python annotation (lenient where the annotation is not simple)."""
    if annotation in (Any, object, None) or isinstance(annotation, typing.TypeVar):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_fits(value, a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    target = origin or annotation
    if value is None:
        return False
    if target is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if target is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(target, type):
        return isinstance(value, list) if target in (list, tuple, set) else isinstance(value, target)
    return True


def _literal_value(e: Any) -> tuple[bool, Any]:
    if isinstance(e, A.Literal_):
        return True, e.value
    if isinstance(e, A.Neg):
        inner = e.operand
        if isinstance(inner, A.Literal_) and isinstance(inner.value, int | float):
            return True, -inner.value
    if isinstance(e, A.ListExpr):
        items = [x for x in e.items if isinstance(x, A.Literal_)]
        if len(items) == len(e.items):
            return True, [x.value for x in items]
    return False, None


class _Checker:
    def __init__(self, tools: Mapping[str, ToolSpec], roles: Iterable[str] | None) -> None:
        self.tools = tools
        self.roles = set(roles) if roles is not None else None
        self.issues: list[Issue] = []
        self.types: dict[str, str] = {}
        self.edges: list[tuple[str, str]] = []

    def issue(self, node: Any, message: str) -> None:
        self.issues.append(Issue(node.line, node.column, message))

    def reads(self, node: Any, e: Any, defined: set[str], maybe: dict[str, int]) -> None:
        for name in sorted(free_refs(e)):
            if name in defined:
                continue
            if name in maybe:
                self.issue(node, f"{name!r} is assigned in only one branch of the if at line {maybe[name]}")
            else:
                near = difflib.get_close_matches(name, sorted(defined), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                self.issue(node, f"{name!r} is used before it is assigned{hint}")

    def call(self, c: A.Call, defined: set[str], maybe: dict[str, int]) -> None:
        self.reads(c, c, defined, maybe)
        tool = self.tools.get(c.tool)
        if tool is None:
            near = difflib.get_close_matches(c.tool, sorted(self.tools), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; tools: {', '.join(sorted(self.tools))}"
            self.issue(c, f"unknown tool {c.tool!r}{hint}")
            return
        fields = tool.args_model.model_fields
        try:
            args = c.bind(list(fields))
        except ValueError as exc:
            self.issue(c, str(exc))
            return
        seen: set[str] = set()
        for name, value in args:
            seen.add(name)
            if name not in fields:
                self.issue(c, f"{c.tool}() has no argument {name!r}; it takes {', '.join(fields) or 'none'}")
                continue
            is_lit, lit = _literal_value(value)
            annotation = fields[name].annotation
            if is_lit and not _fits(lit, annotation):
                self.issue(value, f"{c.tool}({name}=...) wants {_show(annotation)}, got {lit!r}")
            elif isinstance(value, A.Ref) and not value.path and value.name in self.types:
                declared = self.types[value.name]
                py = _SCALARS.get(declared)
                if py and not any(_fits(_example(t), annotation) for t in py):
                    self.issue(value, f"{c.tool}({name}=...) wants {_show(annotation)}, "
                                      f"but {value.name!r} is declared {declared}")
        for name, f in fields.items():
            if f.is_required() and name not in seen:
                self.issue(c, f"{c.tool}() is missing its required argument {name!r}")

    def block(self, stmts: list[Any], defined: set[str], maybe: dict[str, int], top: bool) -> set[str]:
        """Check ``stmts``; returns the names they define (``defined`` is updated in place)."""
        made: set[str] = set()
        for i, s in enumerate(stmts):
            if isinstance(s, A.Answer):
                if not top or i != len(stmts) - 1:
                    self.issue(s, "answer(...) must be the last statement of the plan")
                self.reads(s, s.value, defined, maybe)
                continue
            if top and i == len(stmts) - 1:
                self.issue(s, "the plan must end with answer(...)")
            if isinstance(s, A.Assign):
                if isinstance(s.value, A.Call):
                    self.call(s.value, defined, maybe)
                else:
                    self.reads(s, s.value, defined, maybe)
                if s.target in defined or s.target in self.tools:
                    what = "a tool" if s.target in self.tools else "assigned before"
                    self.issue(s, f"{s.target!r} is {what}; give this result a new name")
                if s.type is not None:
                    self.types[s.target] = s.type.name
                    for name in (t.name for t in A.nodes(s.type) if isinstance(t, A.TypeRef)):
                        if name not in TYPE_NAMES:
                            self.issue(s, f"unknown type {name!r}; types: {', '.join(TYPE_NAMES)}")
                    is_lit, lit = _literal_value(s.value)
                    py = _SCALARS.get(s.type.name)
                    if is_lit and py and not (isinstance(lit, py) and not (isinstance(lit, bool) and bool not in py)):
                        self.issue(s, f"{s.target!r} is declared {s.type.name} but gets {lit!r}")
                for name in free_refs(s.value):
                    self.edges.append((name, s.target))
                defined.add(s.target)
                made.add(s.target)
            elif isinstance(s, A.CallStmt):
                self.call(s.call, defined, maybe)
            elif isinstance(s, A.If):
                self.reads(s, s.cond, defined, maybe)
                a = self.block(s.body, set(defined), maybe, top=False)
                b = self.block(s.orelse, set(defined), maybe, top=False)
                both = a & b
                for name in (a | b) - both:
                    maybe[name] = s.line
                defined |= both
                made |= both
            elif isinstance(s, A.For):
                self.reads(s, s.iter, defined, maybe)
                if s.var in defined:
                    self.issue(s, f"loop variable {s.var!r} shadows an earlier result")
                inner = self.block(s.body, defined | {s.var}, maybe, top=False)
                defined |= inner  # after the loop each is the list of its per-iteration values
                made |= inner
            elif isinstance(s, A.Assert):
                self.reads(s, s.cond, defined, maybe)
            elif isinstance(s, A.Send):
                self.reads(s, s.value, defined, maybe)
                if self.roles is not None and s.to not in self.roles:
                    self.issue(s, f"unknown role {s.to!r}; roles: {', '.join(sorted(self.roles))}")
        return made


def validate_plan(plan: A.Plan, tools: Mapping[str, ToolSpec] | Iterable[ToolSpec],
                  roles: Iterable[str] | None = None) -> list[Issue]:
    """Every problem of ``plan`` against ``tools`` (empty if it is valid)."""
    import networkx as nx

    table = dict(tools) if isinstance(tools, Mapping) else {t.name: t for t in tools}
    checker = _Checker(table, roles)
    if not plan.body:
        return [Issue(1, 1, "the plan is empty; it must end with answer(...)")]
    checker.block(list(plan.body), set(), {}, top=True)
    graph = nx.DiGraph(checker.edges)
    if not nx.is_directed_acyclic_graph(graph):
        edges = nx.find_cycle(graph)
        cycle = " -> ".join([a for a, _ in edges] + [edges[0][0]])  # back to where it starts: a -> b -> a
        checker.issues.append(Issue(1, 1, f"the steps depend on each other in a cycle: {cycle}"))
    return checker.issues


def check_plan(plan: A.Plan, tools: Mapping[str, ToolSpec] | Iterable[ToolSpec],
               roles: Iterable[str] | None = None) -> A.Plan:
    """``plan`` if it is valid; otherwise raises ``PlanValidationError`` with every problem."""
    issues = validate_plan(plan, tools, roles)
    if issues:
        raise PlanValidationError(issues)
    return plan


def _show(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _example(t: type) -> Any:
    return {str: "", int: 0, float: 0.0, bool: False, list: [], dict: {}}[t]


def rename_reassigned(plan: A.Plan, taken: Iterable[str] = ()) -> tuple[A.Plan, dict[str, str]]:
    """Give each top-level re-assignment its own name, read by the lines after it (``x = f()`` then
    ``x = g(a=x)`` becomes ``x = f()`` then ``x_2 = g(a=x)``, and later lines read ``x_2``).

    Small models often reuse a name for the next step; read in order, such a plan is meaningful, but as a
    dataflow graph it has a cycle. Re-assignments inside ``if``/``for`` blocks are left for the validator.
    Returns the plan and the new names (``{"x_2": "x"}``)."""
    used = {s.target for s in plan.body if isinstance(s, A.Assign)} | set(taken)
    current: dict[str, str] = {}
    assigned: set[str] = set(taken)
    renamed: dict[str, str] = {}
    body = []
    for stmt in plan.body:
        target = stmt.target if isinstance(stmt, A.Assign) else None
        stmt = A.rename_refs(stmt, current)
        if target is not None:
            if target in assigned:
                n = 2
                while f"{target}_{n}" in used:
                    n += 1
                new = f"{target}_{n}"
                used.add(new)
                renamed[new] = target
                current[target] = new
                stmt = stmt.model_copy(update={"target": new})
            assigned.add(target)
        body.append(stmt)
    return (plan.model_copy(update={"body": body}) if renamed else plan), renamed


def number_results(plan: A.Plan, start: int = 1, known: Mapping[str, str] | None = None
                   ) -> tuple[A.Plan, dict[str, str]]:
    """The plan with its top-level results named ``e<start>``, ``e<start+1>`` ... in order, and references
    renamed to match (the form the numbered decoding grammar writes); references to results the plan reads but
    does not assign are renamed by ``known`` (old name -> the name they have). Returns the plan and the new
    names (``{"e1": "founder"}``)."""
    names: dict[str, str] = dict(known or {})
    new_names: dict[str, str] = {}
    body = []
    for stmt in plan.body:
        stmt = A.rename_refs(stmt, names)
        if isinstance(stmt, A.Assign):
            new = f"e{start + len(new_names)}"
            names[stmt.target] = new
            new_names[new] = stmt.target
            stmt = stmt.model_copy(update={"target": new})
        body.append(stmt)
    return plan.model_copy(update={"body": body}), new_names


def merge_repeated_calls(plan: A.Plan, pure: Callable[[str], bool]) -> tuple[A.Plan, dict[str, str]]:
    """Drop a top-level ``y = tool(...)`` that repeats an earlier ``x = tool(...)`` with the same arguments, and
    let later lines read ``x`` (common subexpression elimination). Only calls of tools for which ``pure(name)``
    holds are merged (never tools with side effects). Returns the plan and ``{"y": "x"}``."""
    seen: dict[str, str] = {}
    alias: dict[str, str] = {}
    body = []
    for stmt in plan.body:
        stmt = A.rename_refs(stmt, alias)
        if isinstance(stmt, A.Assign) and isinstance(stmt.value, A.Call) and stmt.type is None \
                and pure(stmt.value.tool):
            key = stmt.value.tool + "(" + ", ".join(f"{k}={print_expr(v)}" for k, v in stmt.value.args) + ")"
            if key in seen:
                alias[stmt.target] = seen[key]
                continue
            seen[key] = stmt.target
        body.append(stmt)
    return (plan.model_copy(update={"body": body}) if alias else plan), alias
