"""The plan tree's queries (``planners.ast``): statements, calls, references and assignments, on parsed plans."""

from tokenomy.planners import ast as A
from tokenomy.planners import parse_plan, print_plan

NESTED = '''hits = search(query="rivers")
for h in hits {
  len = lookup(entity=h.name, attribute="length")
  if len > limit[0] {
    long = lookup(entity=h.name, attribute="source")
    log(text=long)
  } else {
    short: str = "no"
  }
}
assert hits != [], "no hits"
-> critic: hits[k + 1].name
answer([len, long])'''


def test_statements_walk_into_blocks_in_source_order_with_their_blocks():
    plan = parse_plan(NESTED)
    walked = [(s.kind, s.line, [b.line for b in blocks]) for s, blocks in A.scoped_statements(plan)]
    assert walked == [("assign", 1, []), ("for", 2, []), ("assign", 3, [2]), ("if", 4, [2]), ("assign", 5, [2, 4]),
                      ("call_stmt", 6, [2, 4]), ("assign", 8, [2, 4]), ("assert", 11, []), ("send", 12, []),
                      ("answer", 13, [])]
    assert [s.line for s in A.statements(plan)] == [s.line for s, _ in A.scoped_statements(plan)]
    loop = plan.body[1]
    assert [s.line for s in A.statements(loop.body)] == [3, 4, 5, 6, 8]  # a block's statements only


def test_calls_are_every_tool_call_in_source_order():
    plan = parse_plan(NESTED)
    assert [(c.tool, c.line) for c in A.calls(plan)] == [("search", 1), ("lookup", 3), ("lookup", 5), ("log", 6)]
    assert plan.calls() == A.calls(plan)
    assert [c.tool for c in A.calls(plan.body[1].body[1].orelse)] == []


def test_free_refs_are_the_names_an_expression_reads_index_expressions_included():
    plan = parse_plan(NESTED)
    by_line = {s.line: s for s in A.statements(plan)}
    assert A.free_refs(A.evaluated(by_line[12])) == {"hits", "k"}  # not the field name
    assert A.free_refs(A.evaluated(by_line[4])) == {"len", "limit"}
    assert A.free_refs(A.evaluated(by_line[3])) == {"h"}  # a call: its arguments' references
    assert A.free_refs(A.evaluated(by_line[13])) == {"len", "long"}
    assert A.free_refs(A.evaluated(by_line[8])) == set()  # a literal
    assert A.free_refs(A.evaluated(by_line[11])) == {"hits"}
    assert A.free_refs(parse_plan("answer(not -x or [y, z * 2] == w)").body[0].value) == {"w", "x", "y", "z"}


def test_evaluated_is_what_a_statement_computes_itself_not_its_blocks():
    plan = parse_plan(NESTED)
    kinds = {s.line: A.evaluated(s) for s in A.statements(plan)}
    assert isinstance(kinds[1], A.Call) and isinstance(kinds[6], A.Call) and kinds[6].tool == "log"
    assert isinstance(kinds[2], A.Ref) and kinds[2].name == "hits"  # the for's iterable
    assert isinstance(kinds[4], A.BinOp) and isinstance(kinds[11], A.BinOp)  # conditions


def test_assigned_are_the_names_a_statement_defines_in_its_scope():
    plan = parse_plan(NESTED)
    hits, loop, check, send, answer = plan.body
    assert A.assigned(hits) == ["hits"]
    assert A.assigned(loop) == ["len", "long", "short"]  # nested blocks too, sorted; not the loop variable
    assert A.assigned(loop.body[1]) == ["long", "short"]  # both branches of the if
    assert A.assigned(check) == A.assigned(send) == A.assigned(answer) == []


def test_nodes_and_children_cover_the_whole_tree_in_source_order():
    plan = parse_plan('x: list[dict[str, int]] = f(a=[1, y[i]], b=-z)\nanswer(x)')
    assign = plan.body[0]
    assert [n.kind for n in A.children(assign)] == ["type", "call"]
    assert [n.name for n in A.nodes(assign.type) if isinstance(n, A.TypeRef)] == ["list", "dict", "str", "int"]
    kinds = [n.kind for n in A.nodes(plan)]
    assert kinds == ["assign", "type", "type", "type", "type", "call", "list", "literal", "ref", "ref", "neg", "ref",
                     "answer", "ref"]
    assert list(A.nodes(None)) == []


def test_rename_refs_renames_reads_but_not_a_loop_variable():
    plan = parse_plan(NESTED)
    renamed = A.rename_refs(plan.body, {"hits": "e1", "h": "outer", "long": "e9"})
    assert print_plan(A.Plan(body=renamed)).splitlines() == [
        'hits = search(query="rivers")',  # a target is not a reference
        "for h in e1 {",
        '  len = lookup(entity=h.name, attribute="length")',  # the loop variable hides the outer h
        "  if len > limit[0] {",
        '    long = lookup(entity=h.name, attribute="source")',
        "    log(text=e9)",
        "  } else {",
        '    short: str = "no"',
        "  }",
        "}",
        'assert e1 != [], "no hits"',
        "-> critic: e1[k + 1].name",
        "answer([len, e9])",
    ]
    assert A.rename_refs(plan.body, {"nothing": "x"}) == plan.body
    assert renamed[0] is plan.body[0] and A.rename_refs(plan.body, {}) is plan.body  # no references: not copied
