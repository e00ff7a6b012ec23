"""The plan language's grammar: the single source of truth for the parser and for constrained decoding.

A plan is typed pseudocode, one statement per line::

    hq = lookup(entity="Zarvon Motors", attribute="headquarters")
    pop: int = lookup(entity=hq, attribute="population")
    if pop > 1000000 {
      -> critic: "large city"
    }
    assert pop > 0, "population must be positive"
    answer(pop)

Statements: assignments (optionally typed), tool calls with keyword arguments, ``if``/``else`` and ``for`` blocks
in braces, ``assert cond, "feedback"``, messages to a role (``-> role: value``) and one final ``answer(...)``.
Expressions: literals, references with field access and indexing (``city.name``, ``hits[0]``), lists,
arithmetic, comparisons and ``and``/``or``/``not``. No comments and bounded names, strings and numbers: a small
model under constrained decoding cannot wander off into free text or an endless token.

The grammar is Lark. ``lark`` parses it (LALR, with line and column in errors); llguidance constrains decoding
with it. For decoding, ``for_tools`` specialises the ``call`` rule to the registered tools and their argument
names, so even a 135M model can only write calls that exist; the specialised language is a subset of this one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

__all__ = ["PLAN_GRAMMAR", "for_tools"]

PLAN_GRAMMAR = r"""
start: _NL* (stmt _NL+)* answer_stmt _NL?

?stmt: assign | call_stmt | if_stmt | for_stmt | assert_stmt | send_stmt

assign: NAME [":" type] "=" value
?value: call | expr
call_stmt: call
call: NAME "(" [kwarg ("," kwarg)*] ")"
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
literal: STRING | NUMBER | TRUE | FALSE | NULL

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
%ignore /[ \t]+/
"""

_GENERIC_CALL = 'call: NAME "(" [kwarg ("," kwarg)*] ")"'


_TOP = "start: _NL* (stmt _NL+)* answer_stmt _NL?"
_BLOCK = 'block: "{" _NL+ (stmt _NL+)* "}"'


def for_tools(tools: Mapping[str, Sequence[str]] | Mapping[str, Mapping[str, bool]], *,
              max_statements: int = 12, dialect: str = "llguidance") -> str:
    """The decoding grammar: calls limited to ``tools`` (name -> argument names, all required, or name ->
    {argument: required}; optional arguments may be left out, order follows the signature), and at most
    ``max_statements`` statements before ``answer(...)`` (and in each block), so a model that starts repeating
    itself is led to the answer instead of to the token limit. ``dialect`` is ``"llguidance"`` (``{m,n}``
    repetition, for decoding) or ``"lark"`` (``~ m..n``, for the lark library). Every plan it accepts parses
    with ``PLAN_GRAMMAR``."""
    if dialect not in ("llguidance", "lark"):
        raise ValueError(f"dialect must be 'llguidance' or 'lark', got {dialect!r}")
    if max_statements < 1:
        raise ValueError(f"max_statements must be >= 1, got {max_statements}")
    if not tools:
        raise ValueError("for_tools needs at least one tool")
    alternatives = []
    for name in sorted(tools):
        spec = tools[name]
        args = {a: True for a in spec} if not isinstance(spec, Mapping) else dict(spec)
        args = dict(sorted(args.items(), key=lambda kv: not kv[1]))  # required first (stable)
        parts = []
        for i, (arg, required) in enumerate(args.items()):
            sep = '"," ' if i else ""
            piece = f'{sep}"{arg}" "=" expr'
            parts.append(piece if required else f"[{piece}]")
        body = " ".join(parts)
        alternatives.append(f'{json.dumps(name)} "(" {body} ")"')
    bound = f"{{0,{max_statements}}}" if dialect == "llguidance" else f" ~ 0..{max_statements}"
    grammar = (PLAN_GRAMMAR.replace(_GENERIC_CALL, "call: " + "\n    | ".join(alternatives))
               .replace(_TOP, f"start: _NL* (stmt _NL+){bound} answer_stmt _NL?")
               .replace(_BLOCK, f'block: "{{" _NL+ (stmt _NL+){bound} "}}"'))
    assert _GENERIC_CALL not in grammar and _TOP not in grammar and _BLOCK not in grammar
    return grammar
