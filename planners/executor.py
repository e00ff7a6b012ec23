"""Run a plan without the model: tool calls as a DAG, control flow in tokenomy's own interpreter.

Each statement waits only for the results it reads, so independent tool calls run concurrently (asyncio).
Arguments are evaluated on the syntax tree from the values of earlier results; nothing is ever substituted into
text, and no model-written code runs in the host process: the interpreter knows literals, references with field
access and indexing, lists, arithmetic, comparisons and boolean logic, and nothing else.

Failures are values. A tool that raises, times out (per-step timeout, bounded retries) or gets bad arguments
leaves a ``StepError`` in its result; statements that read it are skipped with a ``StepError`` that names the
cause; the run always finishes, with everything that did succeed. ``assert`` failures and messages to other
roles are collected for the solver and the re-planner. After a ``for`` loop, a result assigned in its body is
the list of its per-iteration values.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenomy.errors import TokenomyError, UserError
from tokenomy.trace import in_step

from . import ast as A
from .validate import free_refs

__all__ = ["Invocable", "StepError", "StepRecord", "ExecutionResult", "PlanExecutor"]


class Invocable(Protocol):
    name: str

    async def ainvoke(self, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class StepError:
    """A failed result: what failed and why (shown to the solver and the re-planner as is)."""

    step: str
    message: str
    kind: str = "error"  # error | timeout | skipped | eval

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
    """

    def __init__(self, tools: Mapping[str, Invocable] | list[Invocable], *, timeout_s: float = 30.0,
                 retries: int = 1, max_iterations: int = 100, max_output_chars: int = 4000,
                 max_concurrency: int = 8) -> None:
        if retries < 0 or max_iterations < 1 or max_output_chars < 16 or max_concurrency < 1:
            raise UserError("PlanExecutor: retries >= 0, max_iterations >= 1, max_output_chars >= 16, "
                            "max_concurrency >= 1")
        self.tools = dict(tools) if isinstance(tools, Mapping) else {t.name: t for t in tools}
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_iterations = max_iterations
        self.max_output_chars = max_output_chars
        self.max_concurrency = max_concurrency

    def with_tools(self, tools: Mapping[str, Invocable] | list[Invocable]) -> PlanExecutor:
        """The same settings over other tools (a strategy runs each node's calls through its journal)."""
        return PlanExecutor(tools, timeout_s=self.timeout_s, retries=self.retries,
                            max_iterations=self.max_iterations, max_output_chars=self.max_output_chars,
                            max_concurrency=self.max_concurrency)

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
        await run.block(plan.body, scope, prefix="")
        for name, fut in scope.items():
            result.values[name] = fut.result()
        return result


class _Run:
    def __init__(self, ex: PlanExecutor, result: ExecutionResult, sem: asyncio.Semaphore) -> None:
        self.ex = ex
        self.result = result
        self.sem = sem

    async def block(self, stmts: list[Any], scope: dict[str, asyncio.Future[Any]], prefix: str) -> None:
        """Start every statement as a task that waits for what it reads; wait for all of them."""
        loop = asyncio.get_running_loop()
        tasks = []
        for stmt in stmts:
            for name in _assigned(stmt):
                scope.setdefault(name, loop.create_future())
            tasks.append(asyncio.ensure_future(self.stmt(stmt, scope, prefix)))
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise

    async def read(self, e: Any, scope: dict[str, asyncio.Future[Any]]) -> dict[str, Any]:
        names = sorted(free_refs(e))
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
        names = _assigned(s)
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
        names = _assigned(s)
        if not isinstance(items, StepError) and not isinstance(items, list | tuple | str):
            items = StepError(f"for@{s.line}", f"cannot loop over {type(items).__name__}", "eval")
        if not isinstance(items, StepError) and len(items) > self.ex.max_iterations:
            items = StepError(f"for@{s.line}", f"{len(items)} items exceed the limit of {self.ex.max_iterations}",
                              "eval")
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
            _resolve(scope[n], [inner[n].result() for _, inner in scopes])

    async def value(self, name: str, e: Any, scope: dict[str, asyncio.Future[Any]], prefix: str) -> Any:
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

    async def call(self, name: str, c: A.Call, env: dict[str, Any]) -> Any:
        tool = self.ex.tools.get(c.tool)
        try:
            fields = getattr(getattr(tool, "args_model", None), "model_fields", None)
            bound = c.bind(list(fields)) if fields is not None else c.args
            args = {k: _eval(v, env) for k, v in bound}
        except (ValueError, _EvalError) as exc:  # arguments that do not bind or do not evaluate
            return StepError(name, f"bad argument: {exc}", "eval")
        record = StepRecord(name=name, tool=c.tool, args=args)
        self.result.steps.append(record)
        if tool is None:
            record.value = StepError(name, f"unknown tool {c.tool!r}")
            return record.value
        start = time.perf_counter()
        for attempt in range(self.ex.retries + 1):
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
        limit = self.ex.max_output_chars
        if isinstance(value, str) and len(value) > limit:
            return value[:limit] + f" [... {len(value) - limit} more characters cut]"
        return value


def _assigned(s: Any) -> list[str]:
    """Names a statement defines in its enclosing scope."""
    if isinstance(s, A.Assign):
        return [s.target]
    if isinstance(s, A.If):
        return sorted({n for b in (s.body, s.orelse) for st in b for n in _assigned(st)})
    if isinstance(s, A.For):
        return sorted({n for st in s.body for n in _assigned(st)})
    return []


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


_MAX_TEXT = 1_000_000


def _eval(e: Any, env: dict[str, Any]) -> Any:
    if isinstance(e, A.Literal_):
        return e.value
    if isinstance(e, A.Ref):
        value = env[e.name]
        for step in e.path:
            value = _get(value, step if isinstance(step, str) else _eval(step, env), e.name)
        return value
    if isinstance(e, A.ListExpr):
        return [_eval(x, env) for x in e.items]
    if isinstance(e, A.Not):
        return not _eval(e.operand, env)
    if isinstance(e, A.Neg):
        v = _eval(e.operand, env)
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise _EvalError(f"cannot negate {v!r}")
        return -v
    if isinstance(e, A.BoolOp):
        values = (_eval(v, env) for v in e.values)
        return all(values) if e.op == "and" else any(values)
    if isinstance(e, A.BinOp):
        return _binop(e.op, _eval(e.left, env), _eval(e.right, env))
    raise _EvalError(f"cannot evaluate {type(e).__name__}")


def _get(value: Any, key: Any, name: str) -> Any:
    try:
        if isinstance(value, Mapping):
            return value[key]
        if isinstance(value, list | tuple | str) and isinstance(key, int):
            return value[key]
        if isinstance(key, str) and not key.startswith("_") and hasattr(value, "model_fields"):
            return getattr(value, key)  # a pydantic result: declared fields only, never dunders
    except (KeyError, IndexError) as exc:
        raise _EvalError(f"{name} has no {key!r}") from exc
    raise _EvalError(f"{name} has no {key!r} ({type(value).__name__})")


def _binop(op: str, a: Any, b: Any) -> Any:
    try:
        if op == "+":
            if isinstance(a, str) or isinstance(b, str):  # "2020 - " + year: text concatenation
                out = f"{a}{b}"
                if len(out) > _MAX_TEXT:
                    raise _EvalError("text too long")
                return out
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
    except TypeError as exc:
        raise _EvalError(f"cannot compute {a!r} {op} {b!r}") from exc


def _number(v: Any) -> float | int:
    """Numbers in tool text ("1,204 km") are read as numbers for arithmetic."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        import re

        m = re.search(r"-?\d[\d,]*(\.\d+)?", v)
        if m:
            text = m.group(0).replace(",", "")
            return float(text) if "." in text else int(text)
    raise _EvalError(f"{v!r} is not a number")
