"""The plan language: parsing, errors with positions, canonical printing, ReWOO's format, validation."""

import pytest
from pydantic import create_model

from tokenomy.errors import PlanError
from tokenomy.planners import (
    PLAN_GRAMMAR,
    PlanParseError,
    PlanValidationError,
    ast,
    check_plan,
    close_plan,
    for_tools,
    parse_plan,
    print_plan,
    print_rewoo,
    validate_plan,
)

PLAN = '''hq = lookup(entity="Zarvon Motors", attribute="headquarters")
pop: int = lookup(entity=hq, attribute="population")
if pop > 1000000 and not hq.capital {
  note = llm(prompt="Summarize", text=hq)
} else {
  -> critic: "small"
}
for c in [1, 2.5, -3] {
  x = calc(expression=c * (2 - 1) - 1)
}
assert pop > 0, "population must be positive"
answer(hits[0].name)'''


class FakeTool:
    def __init__(self, name, **fields):
        self.name = name
        self.args_model = create_model(name + "Args", **fields)


TOOLS = [FakeTool("search", query=(str, ...), k=(int, 3)), FakeTool("lookup", entity=(str, ...), attribute=(str, ...)),
         FakeTool("calc", expression=(str, ...)), FakeTool("llm", prompt=(str, ...), text=(str, ""))]


def test_parse_builds_a_typed_tree_with_positions():
    plan = parse_plan(PLAN)
    kinds = [s.kind for s in plan.body]
    assert kinds == ["assign", "assign", "if", "for", "assert", "answer"]
    pop = plan.body[1]
    assert pop.type.name == "int" and pop.value.tool == "lookup" and (pop.line, pop.column) == (2, 1)
    assert pop.value.arg_dict()["entity"] == ast.Ref(name="hq", line=2, column=26)
    assert plan.body[2].orelse[0] == ast.Send(to="critic", value=ast.Literal_(value="small", line=6, column=14),
                                              line=6, column=3)
    answer = plan.body[-1].value
    assert answer.name == "hits" and answer.path[1] == "name" and answer.path[0].value == 0
    assert [c.tool for c in plan.calls()] == ["lookup", "lookup", "llm", "calc"]


def test_arithmetic_is_left_associative_with_precedence():
    plan = parse_plan("x = 1 - 2 - 3 * 4\nanswer(x)")
    e = plan.body[0].value
    assert e.op == "-" and e.left.op == "-" and e.right.op == "*"


@pytest.mark.parametrize("text,line,column", [
    ("x = = 3\nanswer(x)", 1, 5),
    ('x = search(query="a")', 1, 22),
    ("x = 3 $\nanswer(x)", 1, 7),
    ("a = 1\nb = (2\nanswer(b)", 2, 7),
    ("", 1, 1),
])
def test_parse_errors_have_line_column_and_feedback(text, line, column):
    with pytest.raises(PlanParseError) as info:
        parse_plan(text)
    err = info.value
    assert (err.line, err.column) == (line, column)
    assert isinstance(err, PlanError) and f"line {line}" in err.feedback


def test_bounded_tokens_keep_a_model_from_running_away():
    with pytest.raises(PlanParseError):
        parse_plan("x" * 40 + " = 1\nanswer(1)")  # names are at most 32 characters
    with pytest.raises(PlanParseError):
        parse_plan("# a comment\nanswer(1)")  # no comments: a model cannot escape into free text


def test_canonical_printing_round_trips():
    messy = 'pop:int=lookup(entity="a",attribute="b")\nx = (1 + 2) * -(3 - 4) / 5 % 6\n' \
            'y = not a == b or (c and d)\nz = [1, "two", true, null, 2.5]\nanswer((pop))'
    plan = parse_plan(messy)
    text = print_plan(plan)
    assert text.splitlines()[0] == 'pop: int = lookup(entity="a", attribute="b")'
    assert "answer(pop)" in text
    assert parse_plan(text).structure() == plan.structure()
    assert print_plan(parse_plan(text)) == text
    assert parse_plan(print_plan(parse_plan(PLAN))).structure() == parse_plan(PLAN).structure()


def test_rewoo_format_has_no_e10_ambiguity():
    lines = "\n".join(f'e{i} = search(query="q{i}")' for i in range(1, 12))
    plan = parse_plan(lines + '\nlast = llm(prompt="join", text=e10)\nanswer(last)')
    nl = print_rewoo(plan)
    assert "#E11 = Search[q11]" in nl
    assert nl.splitlines()[-1] == "#E12 = Llm[join, #E10]"
    assert nl.count("Plan:") == 12


def test_validator_reports_every_problem_with_positions():
    bad = parse_plan('hq = lookup(entity="Z", attribute="hq")\npop: int = lookup(entity=hq, attribute="p", x=1)\n'
                     'hq = serch(query=3)\nif pop > 1 {\n  big = calc(expression="1")\n}\nn: int = "seven"\n'
                     'y = lookup(entity=popp)\nr = search(query=5)\nanswer(big)')
    messages = [str(i) for i in validate_plan(bad, TOOLS)]
    expected = ["line 2, column 12: lookup() has no argument 'x'", "unknown tool 'serch'; did you mean 'search'?",
                "'hq' is assigned before", "'n' is declared int but gets 'seven'",
                "'popp' is used before it is assigned; did you mean 'pop'?",
                "lookup() is missing its required argument 'attribute'", "search(query=...) wants str, got 5",
                "'big' is assigned in only one branch of the if at line 4"]
    for e in expected:
        assert any(e in m for m in messages), (e, messages)
    with pytest.raises(PlanValidationError) as info:
        check_plan(bad, TOOLS)
    assert "Write the whole plan again" in info.value.feedback and len(info.value.issues) == len(messages)


def test_validator_finds_steps_that_depend_on_each_other_in_a_cycle():
    def cycles(text):
        return [i.message for i in validate_plan(parse_plan(text), TOOLS) if "cycle" in i.message]

    # b reads a, then a is assigned again from b: as a dataflow graph a -> b -> a
    two = 'a = lookup(entity="X", attribute="y")\nb = lookup(entity=a, attribute="z")\n' \
          'a = lookup(entity=b, attribute="w")\nanswer(a)'
    assert cycles(two) == ["the steps depend on each other in a cycle: a -> b -> a"]
    assert cycles('a = lookup(entity=a, attribute="y")\nanswer(a)') == [
        "the steps depend on each other in a cycle: a -> a"]
    in_loop = ('for c in [1, 2] {\n  x = calc(expression=y)\n  y = calc(expression=x)\n}\nanswer(x)')
    (found,) = cycles(in_loop)
    assert found.endswith(("x -> y -> x", "y -> x -> y"))
    # a chain, a diamond and a loop that reads its own earlier results are not cycles
    for text in ('a = search(query="q")\nb = lookup(entity=a, attribute="p")\nanswer(b)',
                 'a = search(query="q")\nb = calc(expression=a)\nc = calc(expression=a)\n'
                 'd = calc(expression=b + c)\nanswer(d)',
                 'a = search(query="q")\nfor c in a {\n  p = lookup(entity=c, attribute="p")\n'
                 '  q = calc(expression=p)\n}\nanswer(q)'):
        assert cycles(text) == [] and validate_plan(parse_plan(text), TOOLS) == [], text
    with pytest.raises(PlanValidationError) as info:
        check_plan(parse_plan(two), TOOLS)
    assert "a -> b -> a" in info.value.feedback  # what the model is told in the repair call


def test_valid_plans_pass_and_loops_collect_results():
    plan = parse_plan('cities = search(query="rivers", k=2)\nfor c in cities {\n'
                      '  p = lookup(entity=c, attribute="p")\n}\n-> critic: p\nanswer(p)')
    assert check_plan(plan, TOOLS, roles=["critic"]) is plan
    issues = validate_plan(parse_plan("-> judge: 1\nanswer(1)"), TOOLS, roles=["critic"])
    assert "unknown role 'judge'" in str(issues[0])


def test_tool_specific_grammar_limits_calls_to_known_tools_and_arguments():
    import lark

    g = for_tools({"search": {"query": True, "k": False}, "lookup": ["entity", "attribute"]}, dialect="lark")
    parser = lark.Lark(g, parser="lalr")
    parser.parse('a = search(query="x")\nb = search(query="x", k=2)\nc = lookup(entity=a, attribute="y")\nanswer(c)\n')
    for bad in ('a = fetch(url="x")\nanswer(a)\n', 'a = lookup(attribute="y", entity="x")\nanswer(a)\n'):
        with pytest.raises(lark.exceptions.UnexpectedInput):
            parser.parse(bad)
    assert "call: NAME" in PLAN_GRAMMAR and "call: NAME" not in g


@pytest.mark.embedded
def test_embedded_model_writes_plans_that_parse_under_the_grammar(embedded_engine):
    from tokenomy.kernels import Grammar

    grammar = Grammar.lark(for_tools({"search": ["query"], "lookup": ["entity", "attribute"],
                                      "calc": ["expression"]}))
    system = ("You write plans. A plan calls tools, one statement per line, and ends with answer(...).\n"
              "Tools:\nsearch(query: str) -> str\nlookup(entity: str, attribute: str) -> str\n"
              "calc(expression: str) -> float")
    shots = [("How many years passed between the founding of Orvel Corp and 2020?",
              'year = lookup(entity="Orvel Corp", attribute="founded")\n'
              'diff = calc(expression="2020 - " + year)\nanswer(diff)')]
    questions = ["What is the population of the city where Zarvon Motors is headquartered?",
                 "How long is the Telvar river?", "Who is the CEO of Brisk Labs and when was it founded?"]
    for q in questions:
        msgs = [{"role": "system", "content": system}]
        for sq, sa in shots:
            msgs += [{"role": "user", "content": sq}, {"role": "assistant", "content": sa}]
        msgs.append({"role": "user", "content": q})
        c = embedded_engine.chat(msgs, max_tokens=120, grammar=grammar)
        # Under the grammar the text is always a prefix of a valid plan; one cut off at the token limit is
        # closed after its last complete statement.
        plan = parse_plan(c.text if c.finish_reason == "stop" else close_plan(c.text))
        # Every call names a real tool with its real arguments; only the use of result names can still be
        # wrong (the validator's feedback repairs those).
        issues = validate_plan(plan, TOOLS)
        assert not [i for i in issues if "tool" in i.message or "argument" in i.message], c.text


@pytest.mark.parametrize("cut", ["x = 1\nx2 = 2\nB", 'a = search(query="x")\nif a {\n  b = 1\n}\nc = lookup(ent',
                                 "", "x = 1\nanswer(", "garbage !!", "a = 1\n}\nb = 2"])
def test_close_plan_always_parses(cut):
    closed = close_plan(cut)
    plan = parse_plan(closed)
    assert plan.body[-1].kind == "answer"
    assert close_plan("a = 1\nb = a + 1\nc = (").endswith("answer(b)")


def test_decoding_grammar_bounds_the_number_of_statements():
    g = for_tools({"calc": ["expression"]}, max_statements=2)
    assert "{0,2}" in g
    import lark

    bounded = lark.Lark(for_tools({"calc": ["expression"]}, max_statements=2, dialect="lark"), parser="lalr")
    bounded.parse('a = calc(expression="1")\nb = calc(expression="2")\nanswer(b)\n')
    with pytest.raises(lark.exceptions.UnexpectedInput):
        bounded.parse('a = 1\nb = 2\nc = 3\nanswer(c)\n')
    with pytest.raises(ValueError):
        for_tools({"calc": ["expression"]}, max_statements=0)
    with pytest.raises(ValueError):
        for_tools({})


def test_reassigned_names_become_new_results():
    from tokenomy.planners import parse_plan, print_plan
    from tokenomy.planners.validate import rename_reassigned

    plan = parse_plan('x = f(a="q")\nx = g(b=x)\ny = [x, x.size]\nfor x in y {\n  z = h(c=x)\n}\nanswer(x)')
    new, renamed = rename_reassigned(plan)
    assert renamed == {"x_2": "x"}
    assert print_plan(new) == ('x = f(a="q")\nx_2 = g(b=x)\ny = [x_2, x_2.size]\nfor x in y {\n  z = h(c=x)\n}\n'
                               'answer(x_2)')
    assert rename_reassigned(parse_plan("a = f()\nanswer(a)"))[1] == {}
    assert rename_reassigned(parse_plan("a = f()\nanswer(a)"), taken=["a"])[0].body[0].target == "a_2"


def test_repeated_calls_are_merged_unless_the_tool_has_side_effects():
    from tokenomy.planners import parse_plan, print_plan
    from tokenomy.planners.validate import merge_repeated_calls, rename_reassigned

    text = 'a = f(q="x")\na = f(q="x")\nb = g(v=a)\nc = g(v=a)\nd = f(q="y")\nanswer([a, b, c, d])'
    plan, _ = rename_reassigned(parse_plan(text))
    merged, alias = merge_repeated_calls(plan, lambda tool: True)
    assert alias == {"a_2": "a", "c": "b"}
    assert print_plan(merged) == 'a = f(q="x")\nb = g(v=a)\nd = f(q="y")\nanswer([a, b, b, d])'
    kept, alias = merge_repeated_calls(plan, lambda tool: tool != "g")
    assert alias == {"a_2": "a"} and "c = g(v=a)" in print_plan(kept)


def test_positional_arguments_bind_in_the_tools_order_and_print_as_written():
    plan = parse_plan('a = lookup("Zarvon Motors", "headquarters")\nb = lookup(a, attribute="population")\n'
                      'c = lookup(attribute="mayor", a)\nanswer([b, c])')
    assert print_plan(plan).splitlines()[:3] == ['a = lookup("Zarvon Motors", "headquarters")',
                                                  'b = lookup(a, attribute="population")',
                                                  'c = lookup(attribute="mayor", a)']
    names = [[k for k, _ in s.value.bind(["entity", "attribute"])] for s in plan.body[:3]]
    assert names == [["entity", "attribute"], ["entity", "attribute"], ["attribute", "entity"]]
    assert validate_plan(plan, TOOLS) == []
    too_many = parse_plan('a = lookup("x", "y", "z")\nanswer(a)')
    twice = parse_plan('a = lookup("x", entity="y")\nanswer(a)')
    missing = parse_plan('a = lookup("x")\nanswer(a)')
    assert "got more" in validate_plan(too_many, TOOLS)[0].message
    assert "twice" in " ".join(i.message for i in validate_plan(parse_plan(
        'a = lookup(entity="x", entity="y")\nanswer(a)'), TOOLS))
    # not Python's rule here (Python rejects it): the positional one takes the parameter no keyword names
    assert [k for k, _ in twice.body[0].value.bind(["entity", "attribute"])] == ["attribute", "entity"]
    assert "missing its required argument 'attribute'" in validate_plan(missing, TOOLS)[0].message
    assert "wants" in validate_plan(parse_plan('a = search("x", "three")\nanswer(a)'), TOOLS)[0].message


def test_positional_arguments_are_shorter_than_keywords_by_tokens():
    from tokenomy.kernels.tokens import count_text

    kw = 'a = lookup(entity="Zarvon Motors", attribute="headquarters")\nanswer(a)'
    pos = 'a = lookup("Zarvon Motors", "headquarters")\nanswer(a)'
    assert count_text(pos) < count_text(kw)


def test_decoding_grammar_allows_labels_only_where_position_binds_the_same():
    import lark

    g = for_tools({"search": {"query": True, "k": False}, "lookup": ["entity", "attribute"],
                   "opt": {"a": False, "b": True}}, dialect="lark")
    parser = lark.Lark(g, parser="lalr")
    parser.parse('a = lookup("X", "y")\nb = lookup(entity=a, "z")\nc = search("q", k=2)\nd: int = opt(b=1)\n'
                 'answer(d)\n')
    for bad in ('d = opt(1)\nanswer(d)\n',  # b follows an optional argument: by name only
                'c = search("q", 2)\nanswer(c)\n',  # optional arguments by name only
                'x: The = 1\nanswer(x)\n'):  # type names are the known ones
        with pytest.raises(lark.exceptions.UnexpectedInput):
            parser.parse(bad)
    for ok in ('a = lookup("X", "y")\nanswer(a)\n', 'x: list[int] = [1]\nanswer(x)\n'):
        parse_plan(ok)
        parser.parse(ok)


def test_unknown_type_names_are_validation_errors():
    issues = validate_plan(parse_plan('x: lookupError[city] = 1\nanswer(x)'), TOOLS)
    assert any("unknown type 'lookupError'" in i.message for i in issues)
    assert any("unknown type 'city'" in i.message for i in issues)
    assert validate_plan(parse_plan('x: dict[str, int] = search("q")\nanswer(x)'), TOOLS) == []


def test_numbered_grammar_reads_only_results_assigned_before():
    import lark

    from tokenomy.planners.grammar import numbered_for_tools

    spec = {"search": {"query": True, "k": False}, "lookup": ["entity", "attribute"], "calc": ["expression"]}
    parser = lark.Lark(numbered_for_tools(spec, max_statements=4, dialect="lark"), parser="earley")
    good = ['e1 = lookup("X", "y")\ne2 = lookup(e1, attribute="z")\ne3 = calc(e1 + " + " + e2)\nanswer(e3)\n',
            "answer(1)", 'e1 = search("q", k=2)\ne2 = e1[0].name\nanswer(-e2 * 3 > 2 and e1 or [e1, (e2)])\n']
    for text in good:
        parser.parse(text)
        assert validate_plan(parse_plan(text), TOOLS) == []  # accepted -> parses and validates
    bad = ['e1 = lookup(e2, "y")\nanswer(e1)',  # read before assigned
           'e2 = lookup("X", "y")\nanswer(e2)',  # out of order
           'e1 = lookup(X, "y")\nanswer(e1)',  # an unquoted entity is an undefined name
           "e1 = 1\nanswer(e5)",
           "e1 = 1\ne2 = 1\ne3 = 1\ne4 = 1\ne5 = 1\nanswer(e5)",  # more than max_statements
           'founder = lookup("X", "y")\nanswer(founder)',
           'e1  = lookup("X", "y")\nanswer(e1)', 'e1 = lookup("X",\t"y")\nanswer(e1)',  # one space, no tabs
           'e1 = lookup("X", "y")\n\n\nanswer(e1)']
    bounded = numbered_for_tools(spec, max_statements=4)  # the decoding dialect bounds what can repeat
    assert "%ignore" not in bounded and "{0,4}" in bounded and "{0,7}" in bounded
    for text in bad:
        with pytest.raises(lark.exceptions.UnexpectedInput):
            parser.parse(text)
    # a re-plan reads the known results and numbers on after every name taken so far
    replan = lark.Lark(numbered_for_tools(spec, known=["e1", "e3"], taken=["e1", "e2", "e3"], dialect="lark"),
                       parser="earley")
    replan.parse('e4 = lookup(e3, "q")\nanswer([e4, e1])')
    for text in ('e2 = lookup(e3, "q")\nanswer(e2)', 'e4 = lookup(e2, "q")\nanswer(e4)'):
        with pytest.raises(lark.exceptions.UnexpectedInput):
            replan.parse(text)


def test_number_results_renames_in_order():
    from tokenomy.planners.validate import number_results

    plan, names = number_results(parse_plan('hq = lookup("Z", "headquarters")\npop = lookup(hq, "population")\n'
                                            "answer(pop)"))
    assert print_plan(plan) == 'e1 = lookup("Z", "headquarters")\ne2 = lookup(e1, "population")\nanswer(e2)'
    assert names == {"e1": "hq", "e2": "pop"}


@pytest.mark.embedded
def test_embedded_model_plans_under_the_numbered_grammar_always_validate(embedded_engine):
    from tokenomy.kernels import Grammar
    from tokenomy.planners.grammar import numbered_for_tools

    grammar = Grammar.lark(numbered_for_tools({"search": ["query"], "lookup": ["entity", "attribute"],
                                               "calc": ["expression"]}, max_statements=6))
    system = ("You write plans. e1 = tool(...) keeps a result as e1, the next as e2; answer(...) ends the plan.\n"
              "Tools:\nsearch(query: str) -> str\nlookup(entity: str, attribute: str) -> str\n"
              "calc(expression: str) -> float")
    shot = ("How many years passed between the founding of Orvel Corp and 2020?",
            'e1 = lookup("Orvel Corp", "founded")\ne2 = calc("2020 - " + e1)\nanswer(e2)')
    questions = ["What is the population of the city where Zarvon Motors is headquartered?",
                 "How long is the Telvar river?", "Who is the CEO of Brisk Labs and when was it founded?",
                 "What is the sum of the lengths of the rivers Orrin and Telvar?"]
    for q in questions:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": shot[0]},
                {"role": "assistant", "content": shot[1]}, {"role": "user", "content": q}]
        c = embedded_engine.chat(msgs, max_tokens=120, grammar=grammar)
        plan = parse_plan(c.text if c.finish_reason == "stop" else close_plan(c.text))
        assert validate_plan(plan, TOOLS) == [], c.text


def test_random_weights_under_the_numbered_grammar_write_plans_that_validate(tiny_engine_factory, tiny_tokenizer):
    """No skill at all, and still every complete plan parses and reads only names it assigned before."""
    from tokenomy.kernels import Grammar, SamplingParams
    from tokenomy.planners.grammar import numbered_for_tools

    grammar = Grammar.lark(numbered_for_tools({"lookup": ["entity", "attribute"], "calc": ["expression"]},
                                              max_statements=3))
    done = 0
    for seed in range(4):
        engine = tiny_engine_factory(seed=seed)
        prompt = tiny_tokenizer("plan:", add_special_tokens=False)["input_ids"]
        c = engine.generate(prompt, SamplingParams(max_tokens=200, temperature=1.0, seed=seed), grammar=grammar)
        text = c.text if c.finish_reason == "stop" else close_plan(c.text)
        assert validate_plan(parse_plan(text), TOOLS) == [], c.text
        done += c.finish_reason == "stop"
    assert done >= 1


def test_typed_arguments_take_literals_of_their_type_or_references():
    import lark

    from tokenomy.planners.grammar import numbered_for_tools

    spec = {"search": {"query": (True, "any"), "k": (False, "int")}, "flag": {"on": (True, "bool")}}
    generic = lark.Lark(for_tools(spec, dialect="lark"), parser="lalr")
    numbered = lark.Lark(numbered_for_tools(spec, dialect="lark"), parser="earley")
    generic.parse('a = search(query="q", k=2)\nb = search(query=a, k=a)\nc = flag(on=true)\nanswer(c)\n')
    numbered.parse('e1 = search(query="q", k=-2)\ne2 = search(e1, k=e1)\ne3 = flag(false)\nanswer(e3)\n')
    for parser, bad in ((generic, 'a = search(query="q", k="Island")\nanswer(a)\n'),
                        (generic, 'a = flag(on="yes")\nanswer(a)\n'),
                        (numbered, 'e1 = search(query="q", k="Island")\nanswer(e1)\n'),
                        (numbered, 'e1 = search(query="q", k=e1)\nanswer(e1)\n')):
        with pytest.raises(lark.exceptions.UnexpectedInput):
            parser.parse(bad)
