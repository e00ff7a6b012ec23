"""Run a plan without the model: tool calls as a DAG, control flow in tokenomy's own interpreter.

Each statement waits only for the results it reads, so independent tool calls run concurrently (asyncio).
Arguments are evaluated on the syntax tree from the values of earlier results; nothing is ever substituted into
text, and no model-written code runs in the host process: the interpreter knows literals, references with field
access and indexing, lists, arithmetic, comparisons and boolean logic, and nothing else.

Failures are values. A tool that raises, times out (per-step timeout, bounded retries) or gets bad arguments
leaves a ``StepError`` in its result; statements that read it are skipped with a ``StepError`` that names the
cause; the run always finishes, with everything that did succeed. A plan is bounded as a whole, not just per
loop: it may evaluate at most ``max_steps`` statements, expressions and loop iterations, run ``max_plan_s``
seconds, and build no value past the limits below (text length, list length, size and nesting, integer size,
finite floats); past a bound a step gets a ``StepError`` of kind ``"budget"`` or ``"eval"`` and what reads it is
skipped, never a traceback. ``assert`` failures and messages to other roles are collected for the solver and the
re-planner. After a ``for`` loop, a result assigned in its body is
the list of its per-iteration values.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenomy.errors import TokenomyError, UserError
from tokenomy.events import in_step

from . import ast as A

__all__ = ["Invocable", "StepError", "StepRecord", "ExecutionResult", "PlanExecutor"]


class Invocable(Protocol):
    name: str

    async def ainvoke(self, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class StepError:
    """A failed result: what failed and why (shown to the solver and the re-planner as is)."""

    step: str
    message: str
    kind: str = "error"  # error | timeout | skipped | eval | budget

    def __str__(self) -> str:
        return f"ERROR({self.step}: {self.message})"


@dataclass
class StepRecord:
    name: str
    tool: str
    args: dict[str, Any]
    value: Any = None
    attempts: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not isinstance(self.value, StepError)


@dataclass
class ExecutionResult:
    answer: Any = None
    values: dict[str, Any] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    failed_asserts: list[str] = field(default_factory=list)
    messages: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def errors(self) -> list[StepError]:
        return [v for v in self.values.values() if isinstance(v, StepError)]

    @property
    def ok(self) -> bool:
        return not self.errors and not self.failed_asserts and not isinstance(self.answer, StepError)


class _EvalError(Exception):
    pass


class PlanExecutor:
    """Runs plans against ``tools`` (a mapping or iterable of objects with ``name`` and ``async ainvoke``).

    Args:
        timeout_s: per tool call.
        retries: extra attempts after a timeout or a failure at run time (not after bad arguments).
        max_iterations: the most items a ``for`` loop may run over.
        max_output_chars: longer text results are cut to this size (with a marker), so one huge tool output
            cannot flood the solver's prompt.
        max_concurrency: tool calls in flight at once.
        max_steps: the most statements and expressions one run of a plan evaluates, loop bodies counted once per
            iteration (nested loops multiply; this bounds their product).
        max_plan_s: the wall time of one run of a plan, tool calls included; what has not finished by then gets
            a ``"budget"`` error.
    """

    def __init__(self, tools: Mapping[str, Invocable] | list[Invocable], *, timeout_s: float = 30.0,
                 retries: int = 1, max_iterations: int = 100, max_output_chars: int = 4000,
                 max_concurrency: int = 8, max_steps: int = 10_000, max_plan_s: float = 600.0) -> None:
        if (retries < 0 or max_iterations < 1 or max_output_chars < 16 or max_concurrency < 1 or max_steps < 1
                or not max_plan_s > 0):
            raise UserError("PlanExecutor: retries >= 0, max_iterations >= 1, max_output_chars >= 16, "
                            "max_concurrency >= 1, max_steps >= 1, max_plan_s > 0")
        self.tools = dict(tools) if isinstance(tools, Mapping) else {t.name: t for t in tools}
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_iterations = max_iterations
        self.max_output_chars = max_output_chars
        self.max_concurrency = max_concurrency
        self.max_steps = max_steps
        self.max_plan_s = max_plan_s

    def with_tools(self, tools: Mapping[str, Invocable] | list[Invocable]) -> PlanExecutor:
        """The same settings over other tools (a strategy runs each node's calls through its journal)."""
        return PlanExecutor(tools, timeout_s=self.timeout_s, retries=self.retries,
                            max_iterations=self.max_iterations, max_output_chars=self.max_output_chars,
                            max_concurrency=self.max_concurrency, max_steps=self.max_steps,
                            max_plan_s=self.max_plan_s)

    def run(self, plan: A.Plan, known: Mapping[str, Any] | None = None) -> ExecutionResult:
        """Run ``plan`` to the end (from synchronous code). Under a running event loop (a notebook, an async
        app, a test driving a browser) the plan runs on a thread of its own, with the caller's context."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(plan, known))
        ctx = contextvars.copy_context()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenomy-plan") as pool:
            return pool.submit(ctx.run, asyncio.run, self.arun(plan, known)).result()

    async def arun(self, plan: A.Plan, known: Mapping[str, Any] | None = None) -> ExecutionResult:
        """Run ``plan``; ``known`` are results it may read without computing them (a re-plan of only the
        failed part reads the results that succeeded)."""
        result = ExecutionResult()
        run = _Run(self, result, asyncio.Semaphore(self.max_concurrency))
        loop = asyncio.get_running_loop()
        scope: dict[str, asyncio.Future[Any]] = {}
        for name, value in (known or {}).items():
            scope[name] = loop.create_future()
            scope[name].set_result(value)
        try:
            await asyncio.wait_for(run.block(plan.body, scope, prefix=""), self.max_plan_s)
        except asyncio.TimeoutError:
            run.out_of_time = True
        late = StepError("plan", f"the plan ran past its time budget of {self.max_plan_s:g} s", "budget")
        for name, fut in scope.items():
            result.values[name] = (fut.result() if fut.done() and not fut.cancelled()
                                  else StepError(name, late.message, "budget"))
        if run.out_of_time and result.answer is None:
            result.answer = late
        return result


class _Run:
    def __init__(self, ex: PlanExecutor, result: ExecutionResult, sem: asyncio.Semaphore) -> None:
        self.ex = ex
        self.result = result
        self.sem = sem
        self.steps = 0  # statements and expressions evaluated so far, over the whole plan
        self.out_of_time = False

    async def block(self, stmts: list[Any], scope: dict[str, asyncio.Future[Any]], prefix: str) -> None:
        """Start every statement as a task that waits for what it reads; wait for all of them."""
        loop = asyncio.get_running_loop()
        tasks = []
        for stmt in stmts:
            for name in A.assigned(stmt):
                scope.setdefault(name, loop.create_future())
            tasks.append(asyncio.ensure_future(self.stmt(stmt, scope, prefix)))
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise

    async def read(self, e: Any, scope: dict[str, asyncio.Future[Any]]) -> dict[str, Any]:
        names = sorted(A.free_refs(e))
        missing = [n for n in names if n not in scope]
        if missing:
            raise _EvalError(f"no result named {missing[0]!r}")
        return {n: await scope[n] for n in names}

    async def stmt(self, s: Any, scope: dict[str, asyncio.Future[Any]], prefix: str) -> None:
        if isinstance(s, A.Assign):
            value = await self.value(s.target, s.value, scope, prefix)
            _resolve(scope[s.target], value)
        elif isinstance(s, A.CallStmt):
            await self.value(f"{prefix}{s.call.tool}@{s.line}", s.call, scope, prefix)
        elif isinstance(s, A.Answer):
            self.result.answer = await self.value("answer", s.value, scope, prefix)
        elif isinstance(s, A.Assert):
            ok = await self.value(f"assert@{s.line}", s.cond, scope, prefix)
            if isinstance(ok, StepError) or not ok:
                why = ok.message if isinstance(ok, StepError) else "condition is false"
                self.result.failed_asserts.append(f"line {s.line}: {s.message or 'assertion failed'} ({why})")
        elif isinstance(s, A.Send):
            self.result.messages.append((s.to, await self.value(f"send@{s.line}", s.value, scope, prefix)))
        elif isinstance(s, A.If):
            await self.if_(s, scope, prefix)
        elif isinstance(s, A.For):
            await self.for_(s, scope, prefix)

    async def if_(self, s: A.If, scope: dict[str, asyncio.Future[Any]], prefix: str) -> None:
        cond = await self.value(f"if@{s.line}", s.cond, scope, prefix)
        names = A.assigned(s)
        if isinstance(cond, StepError):
            for n in names:
                _resolve(scope[n], StepError(n, f"skipped: the if at line {s.line} failed: {cond.message}",
                                             "skipped"))
            return
        inner: dict[str, asyncio.Future[Any]] = dict(scope)
        for n in names:
            inner.pop(n, None)
        await self.block(s.body if cond else s.orelse, inner, prefix)
        for n in names:
            fut = inner.get(n)
            _resolve(scope[n], fut.result() if fut is not None and fut.done() else
                     StepError(n, f"not assigned: the if at line {s.line} took the other branch", "skipped"))

    async def for_(self, s: A.For, scope: dict[str, asyncio.Future[Any]], prefix: str) -> None:
        items = await self.value(f"for@{s.line}", s.iter, scope, prefix)
        names = A.assigned(s)
        if not isinstance(items, StepError) and not isinstance(items, list | tuple | str):
            items = StepError(f"for@{s.line}", f"cannot loop over {type(items).__name__}", "eval")
        if not isinstance(items, StepError) and len(items) > self.ex.max_iterations:
            items = StepError(f"for@{s.line}", f"{len(items)} items exceed the limit of {self.ex.max_iterations}",
                              "eval")
        if not isinstance(items, StepError):
            self.steps += len(items)  # each iteration counts, before any starts: nested loops cannot fan out
            if self.steps > self.ex.max_steps:
                items = StepError(f"for@{s.line}", f"the plan ran past its budget of {self.ex.max_steps} steps",
                                  "budget")
        if isinstance(items, StepError):
            for n in names:
                _resolve(scope[n], StepError(n, f"skipped: {items.message}", "skipped"))
            return
        loop = asyncio.get_running_loop()
        scopes = []
        for i, item in enumerate(items):
            inner = {k: v for k, v in scope.items() if k not in names}
            fut: asyncio.Future[Any] = loop.create_future()
            fut.set_result(item)
            inner[s.var] = fut
            scopes.append((i, inner))
        await asyncio.gather(*(self.block(s.body, inner, f"{prefix}{s.var}[{i}].") for i, inner in scopes))
        for n in names:
            try:
                _resolve(scope[n], _plan_list([inner[n].result() for _, inner in scopes]))
            except _EvalError as exc:
                _resolve(scope[n], StepError(n, str(exc), "eval"))

    async def value(self, name: str, e: Any, scope: dict[str, asyncio.Future[Any]], prefix: str) -> Any:
        self.steps += 1
        if self.steps > self.ex.max_steps:
            return StepError(name, f"the plan ran past its budget of {self.ex.max_steps} steps", "budget")
        try:
            env = await self.read(e, scope)
        except _EvalError as exc:
            return StepError(name, str(exc), "eval")
        failed = [v for v in env.values() if isinstance(v, StepError)]
        if failed:
            return StepError(name, f"skipped: it needs {failed[0].step!r}, which failed ({failed[0].message})",
                             "skipped")
        if isinstance(e, A.Call):
            return await self.call(prefix + name, e, env)
        try:
            return _eval(e, env)
        except _EvalError as exc:
            return StepError(name, str(exc), "eval")
        except RecursionError:  # the parser bounds nesting; a hand-built Plan may not
            return StepError(name, "the expression is nested too deeply", "eval")

    async def call(self, name: str, c: A.Call, env: dict[str, Any]) -> Any:
        tool = self.ex.tools.get(c.tool)
        try:
            fields = getattr(getattr(tool, "args_model", None), "model_fields", None)
            bound = c.bind(list(fields)) if fields is not None else c.args
            args = {k: _eval(v, env) for k, v in bound}
        except (ValueError, _EvalError) as exc:  # arguments that do not bind or do not evaluate
            return StepError(name, f"bad argument: {exc}", "eval")
        except RecursionError:
            return StepError(name, "bad argument: the expression is nested too deeply", "eval")
        record = StepRecord(name=name, tool=c.tool, args=args)
        self.result.steps.append(record)
        if tool is None:
            record.value = StepError(name, f"unknown tool {c.tool!r}")
            return record.value
        start = time.perf_counter()
        # A tool with side effects runs at most once: a retry after it failed (or timed out) part-way through
        # could write twice.
        tries = 1 if getattr(tool, "side_effects", False) else self.ex.retries + 1
        for attempt in range(tries):
            record.attempts = attempt + 1
            try:
                async with self.sem:
                    with in_step(name):  # the tool's trace event names the step it ran for
                        value = await asyncio.wait_for(tool.ainvoke(**args), self.ex.timeout_s)
                record.value = self.clip(value)
                break
            except asyncio.TimeoutError:
                record.value = StepError(name, f"{c.tool} timed out after {self.ex.timeout_s} s", "timeout")
            except UserError as exc:  # bad arguments: retrying would fail the same way
                record.value = StepError(name, f"{c.tool} rejected its arguments: {exc}")
                break
            except (TokenomyError, Exception) as exc:
                record.value = StepError(name, f"{c.tool} failed: {type(exc).__name__}: {exc}")
        record.seconds = time.perf_counter() - start
        return record.value

    def clip(self, value: Any) -> Any:
        return clip_value(value, self.ex.max_output_chars)


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


# The largest values a plan may build (its tools' results are clipped on their own: max_output_chars).
MAX_TEXT = 1_000_000  # characters of one text value
MAX_ITEMS = 100_000  # items of one list
MAX_INT_BITS = 4096  # about 1,233 decimal digits
MAX_NESTING = 32  # lists in lists
_MAX_DIGITS = 400  # a number read from text (Python refuses int() of more than 4,300 digits with a ValueError)


def _bounded(v: Any) -> Any:
    """``v`` if it is within the limits above, else an ``_EvalError`` saying which."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        if v.bit_length() > MAX_INT_BITS:
            raise _EvalError(f"the number has more than {MAX_INT_BITS} bits")
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise _EvalError(f"the result is not a finite number ({v})")
    elif isinstance(v, str):
        if len(v) > MAX_TEXT:
            raise _EvalError(f"the text is longer than {MAX_TEXT:,} characters")
    return v


class PlanList(list):  # type: ignore[type-arg]
    """A list a plan built, knowing its size as text and how deeply it nests without walking it again: a plan
    that nests a list in itself over and over (``e2 = [e1, e1, e1]``, ...) would otherwise build, in a few
    steps, a value whose text (in the journal, in the solver's prompt) is exponentially long."""

    __slots__ = ("text_size", "depth")
    text_size: int
    depth: int


def _plan_list(items: list[Any]) -> PlanList:
    """``items`` as a ``PlanList``, or an ``_EvalError`` past ``MAX_ITEMS``, ``MAX_TEXT`` or ``MAX_NESTING``."""
    if len(items) > MAX_ITEMS:
        raise _EvalError(f"the list has more than {MAX_ITEMS:,} items")
    size, depth = 2, 1
    for x in items:
        if isinstance(x, PlanList):
            size, depth = size + x.text_size + 2, max(depth, x.depth + 1)
        else:
            size += text_len(x, MAX_TEXT) + 2
            if isinstance(x, list | tuple | Mapping):
                depth = max(depth, _depth(x, MAX_NESTING) + 1)
        if size > MAX_TEXT:
            raise _EvalError(f"the list is longer than {MAX_TEXT:,} characters as text")
        if depth > MAX_NESTING:
            raise _EvalError(f"the list nests more than {MAX_NESTING} levels deep")
    out = PlanList(items)
    out.text_size, out.depth = size, depth
    return out


def _depth(v: Any, limit: int) -> int:
    """How deeply ``v`` nests lists and mappings (the count stops past ``limit``)."""
    deepest, stack = 0, [(v, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, PlanList):
            d += x.depth - 1
        elif isinstance(x, list | tuple | Mapping):
            stack.extend((c, d + 1) for c in (x.values() if isinstance(x, Mapping) else x)
                         if isinstance(c, list | tuple | Mapping))
        else:
            continue
        deepest = max(deepest, d)
        if deepest > limit:
            break
    return deepest


def _eval(e: Any, env: dict[str, Any]) -> Any:
    if isinstance(e, A.Literal_):
        return e.value
    if isinstance(e, A.Ref):
        value = env[e.name]
        for step in e.path:
            value = _get(value, step if isinstance(step, str) else _eval(step, env), e.name)
        return value
    if isinstance(e, A.ListExpr):
        return _plan_list([_eval(x, env) for x in e.items])
    if isinstance(e, A.Not):
        return not _eval(e.operand, env)
    if isinstance(e, A.Neg):
        v = _eval(e.operand, env)
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise _EvalError(f"cannot negate {_preview(v)}")
        return -v
    if isinstance(e, A.BoolOp):
        values = (_eval(v, env) for v in e.values)
        return all(values) if e.op == "and" else any(values)
    if isinstance(e, A.BinOp):
        return _bounded(_binop(e.op, _eval(e.left, env), _eval(e.right, env)))
    raise _EvalError(f"cannot evaluate {type(e).__name__}")


def _get(value: Any, key: Any, name: str) -> Any:
    try:
        if isinstance(value, Mapping):
            return value[key]
        if isinstance(value, list | tuple | str) and isinstance(key, int):
            return value[key]
        if isinstance(key, str) and not key.startswith("_") and hasattr(value, "model_fields"):
            return getattr(value, key)  # a pydantic result: declared fields only, never dunders
    except (KeyError, IndexError, TypeError) as exc:  # TypeError: a list as a key
        raise _EvalError(f"{name} has no {_preview(key)}") from exc
    raise _EvalError(f"{name} has no {_preview(key)} ({type(value).__name__})")


def _binop(op: str, a: Any, b: Any) -> Any:
    try:
        if op == "+":
            if isinstance(a, str) or isinstance(b, str):  # "2020 - " + year: text concatenation
                if text_len(a, MAX_TEXT) + text_len(b, MAX_TEXT) > MAX_TEXT:  # before building it
                    raise _EvalError(f"the text is longer than {MAX_TEXT:,} characters")
                return f"{a}{b}"
            if isinstance(a, list | tuple) and isinstance(b, list | tuple):
                return _plan_list([*a, *b])
            return a + b
        if op in ("-", "*", "/", "%"):
            if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b)):
                a, b = _number(a), _number(b)
            if op == "-":
                return a - b
            if op == "*":
                return a * b
            if op == "/":
                return a / b
            return a % b
        ops = {"==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b, "<=": lambda: a <= b,
               ">": lambda: a > b, ">=": lambda: a >= b}
        return ops[op]()
    except ZeroDivisionError as exc:
        raise _EvalError("division by zero") from exc
    except OverflowError as exc:  # a huge integer divided into a float
        raise _EvalError(f"the result is too large ({exc})") from exc
    except TypeError as exc:
        raise _EvalError(f"cannot compute {_preview(a)} {op} {_preview(b)}") from exc


def _number(v: Any) -> float | int:
    """Numbers in tool text ("1,204 km") are read as numbers for arithmetic."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        m = _NUMBER.search(v)
        if m:
            text = m.group(0).replace(",", "")
            if len(text) > _MAX_DIGITS:
                raise _EvalError(f"a number of more than {_MAX_DIGITS} digits")
            return _bounded(float(text) if "." in text else int(text))
    raise _EvalError(f"{_preview(v)} is not a number")


_NUMBER = re.compile(r"-?\d[\d,]*(\.\d+)?")


def text_len(v: Any, limit: int) -> int:
    """About how long ``v`` is as text, without writing it out: the count stops once it passes ``limit`` (a list
    may hold the same long text a hundred thousand times)."""
    total = 0
    stack = [v]
    while stack and total <= limit:
        x = stack.pop()
        if isinstance(x, PlanList):
            total += x.text_size
        elif isinstance(x, str):
            total += len(x) + (0 if x is v else 4)  # quotes inside a list
        elif isinstance(x, list | tuple):
            total += 2 + 2 * len(x)
            stack.extend(x)
        elif isinstance(x, Mapping):
            total += 2 + 4 * len(x)
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, int | float | bool) or x is None:
            total += 24 if not isinstance(x, int) or x.bit_length() < 64 else x.bit_length() // 3 + 1
        else:
            total += len(str(x)[: limit + 1])
    return total


def clip_value(value: Any, limit: int) -> Any:
    """A tool's result cut to about ``limit`` characters as text, keeping its shape: a text is cut with a marker,
    a list keeps the items that fit (then a marker item), a mapping the entries that fit; anything else past the
    limit, or nested past ``MAX_NESTING``, becomes its cut text. Values within the limit come back as they are."""
    if text_len(value, limit) <= limit and _depth(value, MAX_NESTING) <= MAX_NESTING:
        return value
    return _clip(value, limit, MAX_NESTING)


def _clip(value: Any, limit: int, depth: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f" [... {len(value) - limit} more characters cut]"
    if depth > 0 and isinstance(value, list | tuple):
        out: list[Any] = []
        left = limit
        for i, x in enumerate(value):
            if left <= 0:
                out.append(f"[... {len(value) - i} more items cut]")
                break
            item = _clip(x, left, depth - 1)
            out.append(item)
            left -= text_len(item, left) + 2
        return out
    if depth > 0 and isinstance(value, Mapping):
        kept: dict[Any, Any] = {}
        left = limit
        for i, (k, x) in enumerate(value.items()):
            if left <= 0:
                kept["..."] = f"{len(value) - i} more entries cut"
                break
            key = _clip(k, 200, 0) if isinstance(k, str) else k
            kept[key] = _clip(x, left, depth - 1)
            left -= text_len(key, left) + text_len(kept[key], left) + 4
        return kept
    if text_len(value, limit) <= limit and _depth(value, 0) == 0:
        return value
    text = _flat_text(value)
    return text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit} more characters cut]"


def _flat_text(value: Any) -> str:
    """``str(value)``, or a note where the value nests too deeply for ``repr``."""
    try:
        return str(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply to show>"


def _preview(v: Any) -> str:
    """``repr(v)`` for a message, cut to about 80 characters (and never written out when ``v`` is large)."""
    if isinstance(v, str):
        return repr(v[:80]) + ("..." if len(v) > 80 else "")
    if text_len(v, 1000) > 1000:
        return f"<a {type(v).__name__} too large to show>"
    text = repr(v)
    return text[:80] + ("..." if len(text) > 80 else "")
