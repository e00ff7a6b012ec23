"""The plan executor: a DAG with concurrency, errors as values, timeouts, retries, loops, no string substitution."""

import asyncio

import pytest

from tokenomy.errors import UserError
from tokenomy.planners import parse_plan
from tokenomy.planners.executor import PlanExecutor, StepError


class FakeTool:
    """An async tool double: a function of its arguments, a call log, and an optional ``hold``: a coroutine
    function each call awaits first (a `Barrier`, or `forever`)."""

    def __init__(self, name, fn, hold=None):
        self.name, self.fn, self.hold, self.calls = name, fn, hold, []

    async def ainvoke(self, **kwargs):
        self.calls.append(kwargs)
        if self.hold is not None:
            await self.hold()
        return self.fn(**kwargs)


class Barrier:
    """Holds each call until ``n`` calls have been in flight at once, then lets every call through; counts the
    peak. Calls that never overlap fail after ``patience_s`` (a bound on a broken run, not a speed test)."""

    def __init__(self, n, patience_s=60.0):
        self.n, self.patience_s, self.in_flight, self.peak = n, patience_s, 0, 0
        self.open = None  # an asyncio.Event, made in the loop that runs the calls

    async def __call__(self):
        self.open = self.open or asyncio.Event()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.peak >= self.n:
            self.open.set()
        try:
            await asyncio.wait_for(self.open.wait(), self.patience_s)
        except TimeoutError:
            raise AssertionError(f"only {self.peak} calls were ever in flight at once, not {self.n}") from None
        finally:
            self.in_flight -= 1


async def forever():
    """A hanging tool's body: waits on an event that is never set (the executor's timeout cancels it)."""
    await asyncio.Event().wait()


def world(lookup_hold=None):
    facts = {("Zarvon Motors", "headquarters"): "Telmar", ("Telmar", "population"): "1,204,000",
             ("Brisk Labs", "founded"): "1987", ("Brisk Labs", "ceo"): "Ada Quill"}
    return {
        "lookup": FakeTool("lookup", lambda entity, attribute: facts.get((entity, attribute), "not found"),
                           lookup_hold),
        "search": FakeTool("search", lambda query: [{"name": f"{query} A"}, {"name": f"{query} B"}]),
        "calc": FakeTool("calc", lambda expression: sum(int(x) for x in expression.split("+"))),
    }


def test_independent_steps_run_concurrently_and_answers_flow_by_reference():
    together = Barrier(3)  # a, b and c only pass once all three are running
    tools = world(lookup_hold=together)
    plan = parse_plan('a = lookup(entity="Brisk Labs", attribute="founded")\n'
                      'b = lookup(entity="Brisk Labs", attribute="ceo")\n'
                      'c = lookup(entity="Zarvon Motors", attribute="headquarters")\n'
                      'd = lookup(entity=c, attribute="population")\n'
                      'age = 2020 - a\nanswer([b, age, d])')
    result = PlanExecutor(tools, retries=0).run(plan)
    assert result.answer == ["Ada Quill", 33, "1,204,000"], result.values
    assert together.peak == 3  # a, b, c at once; d waited for c
    assert result.ok and len(result.steps) == 4 and all(s.attempts == 1 for s in result.steps)


def test_references_are_substituted_on_the_tree_never_in_text():
    calls = []
    echo = FakeTool("echo", lambda text: calls.append(text) or text)
    lines = "\n".join(f'e{i} = echo(text="v{i}")' for i in range(1, 12))
    plan = parse_plan(lines + '\nlast = echo(text=e1 + "|" + e10 + "|" + e11)\nanswer(last)')
    result = PlanExecutor([echo]).run(plan)
    assert result.answer == "v1|v10|v11"


def test_field_access_indexing_and_loops_collect_results():
    tools = world()
    plan = parse_plan('hits = search(query="river")\nfirst = hits[0].name\n'
                      'for h in hits {\n  n = calc(expression="1 + 1")\n  label = h.name + "!"\n}\n'
                      'answer([first, n, label])')
    result = PlanExecutor(tools).run(plan)
    assert result.answer == ["river A", [2, 2], ["river A!", "river B!"]]


def test_if_takes_one_branch_and_the_other_names_are_errors():
    plan = parse_plan('x = 5\nif x > 3 {\n  big = "yes"\n} else {\n  small = "no"\n}\nanswer(big)')
    result = PlanExecutor([]).run(plan)
    assert result.answer == "yes"
    assert isinstance(result.values["small"], StepError) and result.values["small"].kind == "skipped"


def test_a_failing_tool_is_a_value_and_its_dependents_are_skipped():
    def boom(entity, attribute):
        raise RuntimeError("database is down")

    bad = FakeTool("lookup", boom)
    good = FakeTool("search", lambda query: "fine")
    plan = parse_plan('a = lookup(entity="x", attribute="y")\nb = search(query="z")\nc = a + "!"\nanswer([b, c])')
    result = PlanExecutor([bad, good], retries=2).run(plan)
    assert result.values["b"] == "fine"
    err = result.values["a"]
    assert isinstance(err, StepError) and "database is down" in err.message
    assert len(bad.calls) == 3  # bounded retries
    assert isinstance(result.values["c"], StepError) and "needs 'a'" in result.values["c"].message
    assert isinstance(result.answer, StepError) and not result.ok


def test_a_hanging_tool_times_out_and_the_run_finishes():
    hang = FakeTool("lookup", lambda **kw: "late", hold=forever)
    fast = FakeTool("search", lambda query: "quick")
    plan = parse_plan('a = lookup(entity="x", attribute="y")\nb = search(query="z")\nanswer(b)')
    result = PlanExecutor([hang, fast], timeout_s=0.2, retries=1).run(plan)  # finishes although `a` never returns
    assert result.answer == "quick" and result.values["a"].kind == "timeout"
    assert result.steps[0].attempts == 2


def test_bad_arguments_are_not_retried():
    class Strict(FakeTool):
        async def ainvoke(self, **kwargs):
            self.calls.append(kwargs)
            raise UserError("entity must be a string")

    strict = Strict("lookup", None)
    result = PlanExecutor([strict], retries=3).run(parse_plan('a = lookup(entity=1, attribute="y")\nanswer(a)'))
    assert len(strict.calls) == 1 and "rejected its arguments" in result.values["a"].message


def test_huge_output_is_cut_and_asserts_and_messages_are_collected():
    big = FakeTool("search", lambda query: "x" * 100_000)
    plan = parse_plan('t = search(query="q")\nassert 1 > 2, "one is not above two"\n-> critic: "check t"\nanswer(t)')
    result = PlanExecutor([big], max_output_chars=100).run(plan)
    assert len(result.answer) < 200 and "more characters cut" in result.answer
    assert result.failed_asserts == ["line 2: one is not above two (condition is false)"]
    assert result.messages == [("critic", "check t")]


def test_evaluation_errors_are_values():
    plan = parse_plan('a = 1 / 0\nl = [1, 2]\nb = l[5]\nc = x.y\nd = "n" - 1\nanswer(1)')
    result = PlanExecutor([]).run(plan)
    assert "division by zero" in result.values["a"].message
    assert "l has no 5" in result.values["b"].message
    assert "no result named 'x'" in result.values["c"].message
    assert "not a number" in result.values["d"].message
    assert result.answer == 1


def test_loops_are_bounded():
    plan = parse_plan("for i in [1, 2, 3] {\n  y = i * 2\n}\nanswer(y)")
    assert "3 items exceed the limit of 2" in PlanExecutor([], max_iterations=2).run(plan).answer.message
    assert PlanExecutor([]).run(plan).answer == [2, 4, 6]


def test_numbers_inside_tool_text_are_usable_in_arithmetic():
    plan = parse_plan('p = "1,204,000 people"\nanswer(p / 1000)')
    assert PlanExecutor([]).run(plan).answer == 1204.0


def test_executor_config_is_validated():
    with pytest.raises(UserError):
        PlanExecutor([], retries=-1)


def test_known_results_are_read_not_recomputed():
    tools = world()
    plan = parse_plan('d = lookup(entity=c, attribute="population")\nanswer(d)')
    result = PlanExecutor(tools).run(plan, known={"c": "Telmar"})
    assert result.answer == "1,204,000" and result.values["c"] == "Telmar"
    assert tools["lookup"].calls == [{"entity": "Telmar", "attribute": "population"}]


def test_positional_arguments_bind_to_the_tools_parameters():
    from tokenomy.tools import tool

    @tool
    def lookup(entity: str, attribute: str) -> str:
        """Look up an attribute."""
        return f"{attribute} of {entity}"

    plan = parse_plan('a = lookup("Telmar", "mayor")\nb = lookup(a, attribute="born")\nanswer(b)')
    result = PlanExecutor([lookup]).run(plan)
    assert result.answer == "born of mayor of Telmar"
    bad = PlanExecutor([lookup]).run(parse_plan('a = lookup("x", "y", "z")\nanswer(a)'))
    assert isinstance(bad.values["a"], StepError) and "got more" in bad.values["a"].message


def test_run_works_under_a_running_event_loop_and_keeps_the_callers_context():
    """A notebook or an async app calls the synchronous ``run`` with a loop already running in its thread."""
    from tokenomy.events import in_node, trace_context

    seen = []

    class Probe:
        name = "probe"

        async def ainvoke(self, **kwargs):
            seen.append(trace_context())
            return "ok"

    async def main():
        with in_node("execute"):
            return PlanExecutor({"probe": Probe()}).run(parse_plan("a = probe()\nanswer(a)"))

    result = asyncio.run(main())
    assert result.answer == "ok" and seen == [{"node": "execute", "step": "a"}]
