"""``UsageLimits``: a budget of tokens, calls or dollars that stops any run before the call that would break it.

A budget is checked where every model call passes, the engine (``Engine.generate_batch``, and the OpenAI engine's
asyncio and streaming paths), so it holds for strategies, teams, collaboration policies, RAG and the ``llm`` tool
alike, however they reach the model. A request takes the budgets in force where it is made (a context variable,
so threads and tasks started from there inherit them)::

    with UsageLimits(total_tokens=4000, calls=6):
        result = strategy.run(question)        # or: strategy.run(question, limits=UsageLimits(...))

Before a call, its prompt (counted with the engine's tokenizer, else o200k_base) plus the tokens of the finished
calls and of the calls in flight must fit; the call's ``max_tokens`` is lowered to what is left, and the call
holds its prompt and that many tokens until it ends (so calls running side by side cannot together break the
budget). A call that does not fit is not made: ``BudgetExceeded`` names the limit and carries what was spent
(``usage``, ``dollars``). Dollars come from a price table (``Price`` per model spec, ``"*"`` for any); cached
prompt tokens cost ``cached_input`` where given. What the finished calls computed stays where it was kept (a
strategy's checkpoint and tool journal), so a run stopped by its budget resumes with a larger one.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from tokenomy.errors import BudgetExceeded, UserError

from .types import Request, chat_messages, token_ids
from .usage import Usage

__all__ = ["UsageLimits", "Price", "active_limits", "limits_scope"]

_ACTIVE: contextvars.ContextVar[tuple[UsageLimits, ...]] = contextvars.ContextVar("tokenomy_usage_limits",
                                                                                   default=())


def active_limits() -> tuple[UsageLimits, ...]:
    """The budgets in force here (innermost last)."""
    return _ACTIVE.get()


@contextmanager
def limits_scope(limits: UsageLimits | None) -> Iterator[None]:
    """``with limits:`` when ``limits`` is given, nothing otherwise (for ``run(..., limits=None)``)."""
    if limits is None:
        yield
    else:
        with limits:
            yield


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens: ``input`` (prompt tokens computed), ``output`` (completion), ``cached_input``
    (prompt tokens read from a prefix cache; ``input`` when not given)."""

    input: float
    output: float
    cached_input: float | None = None

    def __post_init__(self) -> None:
        if min(self.input, self.output, self.cached_input if self.cached_input is not None else 0.0) < 0:
            raise UserError(f"prices must be >= 0, got {self}")

    def cost(self, prompt: int, cached: int, completion: int) -> float:
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return ((prompt - cached) * self.input + cached * cached_rate + completion * self.output) / 1e6


class UsageLimits:
    """A budget: at most ``total_tokens`` (prompt plus completion), ``calls`` model calls and ``dollars`` (priced
    with ``prices``, a ``Price`` per engine spec or ``"*"``). A context manager; one budget may cover several
    runs (its spending adds up), and budgets nest (every one in force is checked)."""

    def __init__(self, *, total_tokens: int | None = None, calls: int | None = None, dollars: float | None = None,
                 prices: Mapping[str, Price] | None = None) -> None:
        for name, value in (("total_tokens", total_tokens), ("calls", calls), ("dollars", dollars)):
            if value is not None and value < 0:
                raise UserError(f"UsageLimits.{name} must be >= 0, got {value}")
        if dollars is not None and not prices:
            raise UserError("a dollar budget needs prices: UsageLimits(dollars=..., prices={'*': Price(...)})")
        self.total_tokens, self.calls, self.dollars = total_tokens, calls, dollars
        self.prices = dict(prices or {})
        self.spent = Usage()
        self.dollars_spent = 0.0
        self._held_tokens = self._held_calls = 0
        self._held_dollars = 0.0
        self._lock = threading.Lock()

    def __enter__(self) -> UsageLimits:
        _ACTIVE.set((*_ACTIVE.get(), self))
        return self

    def __exit__(self, *exc: object) -> None:
        # This context's stack less its innermost entry of this budget (no reset token: one budget may be entered
        # in several threads or tasks at once, each with its own context).
        stack = _ACTIVE.get()
        at = max((i for i, x in enumerate(stack) if x is self), default=None)
        if at is not None:
            _ACTIVE.set(stack[:at] + stack[at + 1:])

    def __repr__(self) -> str:
        parts = [f"{k}={v}" for k, v in (("total_tokens", self.total_tokens), ("calls", self.calls),
                                         ("dollars", self.dollars)) if v is not None]
        return f"UsageLimits({', '.join(parts)}; spent {self.spent}, ${self.dollars_spent:.6f})"

    def price_of(self, spec: str) -> Price | None:
        return self.prices.get(spec) or self.prices.get("*")

    # -- the engine's side --------------------------------------------------------------------------------

    def admit(self, req: Request, engine: Any) -> None:
        """Hold room for ``req`` or raise ``BudgetExceeded``; ``req``'s ``max_tokens`` is lowered to what is
        left. Every admitted request must be settled (``settle_all``)."""
        prompt = prompt_tokens(req, engine)
        price = self.price_of(engine.spec)
        if self.dollars is not None and price is None:
            raise UserError(f"no price for {engine.spec!r} in the dollar budget's table; give one, or '*'")
        with self._lock:
            spent_tokens = self.spent.total_tokens or 0
            if self.calls is not None and self.spent.calls + self._held_calls >= self.calls:
                raise self._exceeded("calls", self.spent.calls + self._held_calls + 1, self.calls)
            max_tokens = req.params.max_tokens
            if self.total_tokens is not None:
                left = self.total_tokens - spent_tokens - self._held_tokens - prompt
                if left < 1:
                    raise self._exceeded("tokens (spent, in flight and this call's prompt)",
                                         spent_tokens + self._held_tokens + prompt + 1, self.total_tokens)
                max_tokens = min(max_tokens, left)
            cost = 0.0
            if self.dollars is not None and price is not None:
                cost = price.cost(prompt, 0, max_tokens)
                if self.dollars_spent + self._held_dollars + cost > self.dollars:
                    raise self._exceeded("dollars (spent, in flight and this call at most)",
                                         self.dollars_spent + self._held_dollars + cost, self.dollars)
            self._held_calls += 1
            self._held_tokens += prompt + max_tokens
            self._held_dollars += cost
        if max_tokens < req.params.max_tokens:
            req.params = replace(req.params, max_tokens=max_tokens, min_tokens=min(req.params.min_tokens, max_tokens))
        req.held.append((self, prompt + max_tokens, cost))

    def settle(self, held_tokens: int, held_dollars: float, usage: Usage | None, spec: str) -> None:
        """Release what an admitted call held and count what it spent (``usage``; ``None``: nothing, it
        failed before the model ran)."""
        with self._lock:
            self._held_calls -= 1
            self._held_tokens -= held_tokens
            self._held_dollars -= held_dollars
            if usage is not None:
                self.spent = self.spent + usage
                price = self.price_of(spec)
                if price is not None:
                    self.dollars_spent += price.cost(usage.prompt_tokens or 0, usage.cached_prompt_tokens or 0,
                                                     usage.completion_tokens or 0)

    def _exceeded(self, what: str, needed: float, limit: float) -> BudgetExceeded:
        return BudgetExceeded(what, needed, limit, usage=self.spent, dollars=self.dollars_spent)


def prompt_tokens(req: Request, engine: Any) -> int:
    """``req``'s prompt tokens: the engine's own count where it has one, else o200k_base's."""
    ids = engine.prompt_token_ids(req.prompt)
    if ids is not None:
        return len(ids)
    given = token_ids(req.prompt)
    if given is not None:
        return len(given)
    from .tokens import count_messages, count_text

    messages = chat_messages(req.prompt)
    if messages is not None:
        return count_messages(messages)
    return count_text(str(req.prompt))


def admit_all(req: Request, engine: Any) -> None:
    """Admit ``req`` by every budget in force where it was made (``req.limits``); on a refusal, what the earlier
    budgets held is released and ``BudgetExceeded`` raised."""
    for limits in req.limits:
        try:
            limits.admit(req, engine)
        except BaseException:
            settle_all(req, None, engine.spec)
            raise


class Spent:
    """What a budgeted call spent (``budgeted``): the block sets ``usage`` once the call has its completion."""

    usage: Usage | None = None


@contextmanager
def budgeted(req: Request, engine: Any) -> Iterator[Spent]:
    """One call made outside ``generate_batch`` (asyncio, a stream, a scoring pass) within the budgets in force:
    ``req`` is admitted on entry (``BudgetExceeded`` if one refuses), and settled on exit with what the block put
    in ``spent.usage`` (nothing, where it failed first)."""
    admit_all(req, engine)
    spent = Spent()
    try:
        yield spent
    finally:
        settle_all(req, spent.usage, engine.spec)


def settle_all(req: Request, usage: Usage | None, spec: str) -> None:
    """Release what ``req`` held in each budget and count ``usage`` (``None``: it spent nothing)."""
    held, req.held = list(req.held), []
    for limits, tokens, dollars in held:
        limits.settle(tokens, dollars, usage, spec)
