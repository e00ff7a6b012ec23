"""The plan language's grammar: the single source of truth for the parser and for constrained decoding.

A plan is typed pseudocode, one statement per line::

    hq = lookup(entity="Zarvon Motors", attribute="headquarters")
    pop: int = lookup(entity=hq, attribute="population")
    if pop > 1000000 {
      -> critic: "large city"
    }
    assert pop > 0, "population must be positive"
    answer(pop)

Statements: assignments (optionally typed), tool calls (arguments by keyword, or by position, bound in the
tool's parameter order to the parameters no keyword names: ``lookup("Zarvon Motors", "founder")``),
``if``/``else`` and ``for`` blocks in braces, ``assert cond, "feedback"``, messages to a role
(``-> role: value``) and one final ``answer(...)``.
Expressions: literals, references with field access and indexing (``city.name``, ``hits[0]``), lists,
arithmetic, comparisons and ``and``/``or``/``not``. No comments and bounded names, strings and numbers: a small
model under constrained decoding cannot wander off into free text or an endless token.

The grammar is Lark. ``lark`` parses it (LALR, with line and column in errors); llguidance constrains decoding
with it. For decoding, ``for_tools`` specialises the ``call`` rule to the registered tools and their argument
names (and type annotations to the known type names), so even a 135M model can only write calls that exist;
``numbered_for_tools`` goes further for plans whose results are numbered (``e1``, ``e2`` ...): unrolled over the
statements, it lets each expression read only the results assigned before it, so every plan it accepts also
validates its names. Both specialised languages are subsets of this one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PLAN_GRAMMAR", "for_tools", "numbered_for_tools", "result_index"]

# Literals and terminals: shared by the general grammar and the numbered decoding grammar.
_TERMINALS = r"""literal: STRING | NUMBER | TRUE | FALSE | NULL

TRUE: "true"
FALSE: "false"
NULL: "null"
COMP_OP: "==" | "!=" | "<=" | ">=" | "<" | ">"
ADD_OP: "+" | "-"
MUL_OP: "*" | "/" | "%"
NAME: /[A-Za-z_][A-Za-z0-9_]{0,31}/
STRING: /"([^"\\\n]|\\.){0,300}"/
NUMBER: /[0-9]{1,15}(\.[0-9]{1,10})?/
_NL: /\n/
"""

PLAN_GRAMMAR = r"""
start: _NL* (stmt _NL+)* answer_stmt _NL?

?stmt: assign | call_stmt | if_stmt | for_stmt | assert_stmt | send_stmt

assign: NAME [":" type] "=" value
?value: call | expr
call_stmt: call
call: NAME "(" [arg ("," arg)*] ")"
?arg: kwarg | expr
kwarg: NAME "=" expr
if_stmt: "if" expr block ["else" block]
for_stmt: "for" NAME "in" expr block
block: "{" _NL+ (stmt _NL+)* "}"
assert_stmt: "assert" expr ["," STRING]
answer_stmt: "answer" "(" expr ")"
send_stmt: "->" NAME ":" expr

type: NAME ["[" type ("," type)* "]"]

?expr: or_expr
?or_expr: and_expr ("or" and_expr)*
?and_expr: not_expr ("and" not_expr)*
?not_expr: "not" not_expr -> not_op
    | comparison
?comparison: sum (COMP_OP sum)?
?sum: product (ADD_OP product)*
?product: unary (MUL_OP unary)*
?unary: "-" unary -> neg
    | atom
?atom: literal | ref | list | "(" expr ")"
ref: NAME ("." NAME | "[" expr "]")*
list: "[" [expr ("," expr)*] "]"
""" + _TERMINALS + "%ignore /[ \\t]+/\n"

_GENERIC_CALL = 'call: NAME "(" [arg ("," arg)*] ")"'
_GENERIC_TYPE = 'type: NAME ["[" type ("," type)* "]"]'
TYPE_NAMES = ("str", "int", "float", "bool", "list", "dict", "any")


_TOP = "start: _NL* (stmt _NL+)* answer_stmt _NL?"
_BLOCK = 'block: "{" _NL+ (stmt _NL+)* "}"'


ToolsSpec = Mapping[str, Sequence[str]] | Mapping[str, Mapping[str, Any]]
"""Tool name -> argument names (all required), or -> {argument: required} or {argument: (required, kind)} where
kind is ``"int"``, ``"number"``, ``"bool"`` or ``"any"``: a numeric or boolean argument takes a literal of its
type or a reference, nothing else (a small model cannot pass ``k="Island"``)."""


def for_tools(tools: ToolsSpec, *,
              max_statements: int = 12, dialect: str = "llguidance") -> str:
    """The decoding grammar: calls limited to ``tools`` (a ``ToolsSpec``; optional arguments may be left out,
    order follows the signature; numeric and boolean arguments take literals of their type), and at most
    ``max_statements`` statements before ``answer(...)`` (and in each block), so a model that starts repeating
    itself is led to the answer instead of to the token limit. ``dialect`` is ``"llguidance"`` (``{m,n}``
    repetition, for decoding) or ``"lark"`` (``~ m..n``, for the lark library). Every plan it accepts parses
    with ``PLAN_GRAMMAR``."""
    _check(tools, max_statements, dialect, "for_tools")
    alternatives = _call_alternatives(tools, "expr")
    types = " | ".join(json.dumps(t) for t in TYPE_NAMES)
    bound = f"{{0,{max_statements}}}" if dialect == "llguidance" else f" ~ 0..{max_statements}"
    grammar = (PLAN_GRAMMAR.replace(_GENERIC_CALL, "call: " + "\n    | ".join(alternatives))
               .replace(_TOP, f"start: _NL* (stmt _NL+){bound} answer_stmt _NL?")
               .replace(_BLOCK, f'block: "{{" _NL+ (stmt _NL+){bound} "}}"')
               .replace(_GENERIC_TYPE, f'type: ({types}) ["[" type ("," type)* "]"]'))
    assert _GENERIC_CALL not in grammar and _TOP not in grammar and _BLOCK not in grammar
    assert _GENERIC_TYPE not in grammar
    return grammar


def _check(tools: Mapping[str, Any], max_statements: int, dialect: str, who: str) -> None:
    if dialect not in ("llguidance", "lark"):
        raise ValueError(f"dialect must be 'llguidance' or 'lark', got {dialect!r}")
    if max_statements < 1:
        raise ValueError(f"max_statements must be >= 1, got {max_statements}")
    if not tools:
        raise ValueError(f"{who} needs at least one tool")


def _call_alternatives(tools: ToolsSpec, expr: str, space: str = "", ref: str = "ref") -> list[str]:
    """One alternative per tool: its name and its arguments in a fixed order, each an ``expr`` (or, when typed,
    a literal of its type or a ``ref``; ``ref=""`` where nothing can be referenced). ``space``: the rule for
    the spaces allowed around ``=`` and after ``,`` (none, when whitespace is ``%ignore``d)."""
    alternatives = []
    for name in sorted(tools):
        spec = tools[name]
        raw = {a: True for a in spec} if not isinstance(spec, Mapping) else dict(spec)
        args = {a: v if isinstance(v, tuple) else (bool(v), "any") for a, v in raw.items()}
        # The leading required arguments (in the signature's order) may be given by position: their label is
        # optional, and the order is fixed, so a positional argument always binds where its label would.
        leading = set()
        for arg, (required, _kind) in args.items():
            if not required:
                break
            leading.add(arg)
        args = dict(sorted(args.items(), key=lambda kv: not kv[1][0]))  # required first (stable)
        parts = []
        for i, (arg, (required, kind)) in enumerate(args.items()):
            sep = f'"," {space} ' if i else ""
            assign = f'"{arg}" {space} "=" {space}'
            label = f"[{assign}]" if arg in leading else assign
            or_ref = f" | {ref}" if ref else ""
            value = {"int": f'(["-"] NUMBER{or_ref})', "number": f'(["-"] NUMBER{or_ref})',
                     "bool": f"(TRUE | FALSE{or_ref})"}.get(kind, expr)
            piece = f"{sep}{label} {value}"
            parts.append(piece if required else f"[{piece}]")
        body = " ".join(parts)
        alternatives.append(f'{json.dumps(name)} "(" {body} ")"')
    return alternatives


_RESULT = re.compile(r"e([1-9][0-9]{0,3})")


def result_index(name: str) -> int:
    """``n`` for a numbered result name ``e<n>``, else 0."""
    m = _RESULT.fullmatch(name)
    return int(m.group(1)) if m else 0


def numbered_for_tools(tools: ToolsSpec, *,
                       max_statements: int = 12, known: Sequence[str] = (), taken: Sequence[str] = (),
                       dialect: str = "llguidance") -> str:
    """The decoding grammar of plans whose results are numbered: statement k assigns ``e<k>``, and every
    expression may read only the ``known`` names and the results assigned before it. The names a plan reads
    are then always defined, which no grammar over free names can promise (a name's being defined is not
    context-free; unrolled over at most ``max_statements`` statements, it is). Numbering starts after the
    highest ``e<n>`` among ``known`` and ``taken`` (the names of a run so far, failed ones included), so a
    re-plan never reuses a name.

    The language: assignments ``e<k> = call`` or ``e<k> = expression`` (no blocks, types, asserts or messages)
    and a final ``answer(expression)``, one per line. It is bounded everywhere a small model tends to loop:
    whitespace is one optional space where a space belongs (no ``%ignore``: a model under a grammar that
    ignores whitespace can fill its whole budget with spaces), expressions have at most 5 operands, lists 8
    items and references 3 accessors. Every plan it accepts parses with ``PLAN_GRAMMAR`` and reads no name
    before it is assigned. ``dialect`` as in ``for_tools``; it needs an Earley parser (llguidance's, or
    lark's ``parser="earley"``); the ``"lark"`` dialect, for checking plans against it, leaves out the bounds
    on repetition."""
    _check(tools, max_statements, dialect, "numbered_for_tools")

    def upto(n: int) -> str:  # lark's Earley expands ``~ 0..n`` into alternatives and crawls: unbounded there
        return f"{{0,{n}}}" if dialect == "llguidance" else "*"

    first = max([0, *(result_index(n) for n in [*known, *taken])]) + 1
    last = first + max_statements  # the state after max_statements assignments: only answer(...) is left
    rules = [f"start: _NL? s{first}"]
    for k in range(first, last + 1):
        names = [*dict.fromkeys(known), *(f"e{j}" for j in range(first, k))]
        refs = " | ".join(json.dumps(n) for n in names)
        if k < last:
            rules.append(f"s{k}: a{k} _NL s{k + 1} | answer{k} _NL?")
            calls = _call_alternatives(tools, f"expr{k}", "_S?", f"ref{k}" if names else "")
            rules.append(f'a{k}: "e{k}" _S? "=" _S? (call{k} | expr{k})')
            rules.append(f"call{k}: " + "\n    | ".join(calls))
        else:
            rules.append(f"s{k}: answer{k} _NL?")
        rules += [f'answer{k}: "answer" "(" expr{k} ")"',
                  f'expr{k}: cmp{k} (_S ("and" | "or") _S cmp{k}){upto(2)}',
                  f"cmp{k}: arith{k} (_S? COMP_OP _S? arith{k})?",
                  f"arith{k}: unary{k} (_S? (ADD_OP | MUL_OP) _S? unary{k}){upto(4)}",
                  f'unary{k}: ["-"] atom{k}',
                  f'atom{k}: literal | "[" [expr{k} ("," _S? expr{k}){upto(7)}] "]" | "(" expr{k} ")"'
                  + (f" | ref{k}" if names else "")]
        if names:
            rules.append(f'ref{k}: ({refs}) ("." NAME | "[" expr{k} "]"){upto(3)}')
    return "\n".join([*rules, _TERMINALS]) + '_S: " "\n'
