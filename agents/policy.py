"""The base of every reasoning policy: one question in, one answer out, every model call counted per model.

A policy holds one engine per role (``long`` and ``short`` for the collaboration policies of ``agents.collab``;
``model`` for the budget policies of ``agents.budget``) and works at the text level, so the two models may use
different tokenizers. It checks at construction that each engine has the capabilities it needs
(``CapabilityError`` otherwise, never a failure mid-run) and records each call's usage in a ``CostLedger``
(prefill, cached, decode and discarded tokens, FLOPs) per role.

A policy's prompts are raw text built from a ``Problem`` (a question and an optional context: instructions,
few-shot examples), so they work with base models as with instruction-tuned ones::

    {context}Q: {question}
    A:                                  <- direct answer
    {context}Q: {question}
    <think>                             <- reasoning, closed by </think>, then "A:" and the answer

``PolicyEngine`` wraps a policy as an ``Engine``: any agent (a graph's solver or worker, a strategy's solver) can
use a long/short pair as its model.
"""

from __future__ import annotations

import abc
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tokenomy.errors import UserError
from tokenomy.kernels.engine import Engine
from tokenomy.kernels.limits import UsageLimits, limits_scope
from tokenomy.kernels.registry import as_engine
from tokenomy.kernels.types import Capabilities, Completion, PromptInput, Request, SamplingParams, chat_messages
from tokenomy.kernels.usage import CostLedger, Usage

from .answers import Normalizer

__all__ = ["Problem", "Format", "Step", "PolicyResult", "Policy", "PolicyEngine", "first_line"]


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


@dataclass(frozen=True)
class Problem:
    """One question for a policy.

    Args:
        question: the question.
        context: text put before every prompt (instructions, few-shot examples ending with a blank line).
        stop: where a direct answer ends.
        normalizer: how this question's answers are compared (policies that vote or check agreement use it
            before their own).
    """

    question: str
    context: str = ""
    stop: tuple[str, ...] = ("\n",)
    normalizer: Normalizer | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise UserError("a Problem needs a non-empty question")


@dataclass(frozen=True)
class Format:
    """The text a policy writes around the models' output."""

    think_open: str = "<think>\n"
    think_close: str = "\n</think>\n"
    answer: str = "A:"
    question: str = "Q: "

    def direct(self, p: Problem) -> str:
        return f"{p.context}{self.question}{p.question}\n{self.answer}"

    def head(self, p: Problem) -> str:
        return f"{p.context}{self.question}{p.question}\n"

    def reasoning(self, p: Problem, so_far: str = "") -> str:
        """The prompt of a reasoning model that has written ``so_far`` of its thinking."""
        return f"{self.head(p)}{self.think_open}{so_far}"

    def after_thinking(self, p: Problem, thinking: str) -> str:
        """The prompt that asks for the answer once ``thinking`` is written (inside the thinking block)."""
        return f"{self.head(p)}{self.think_open}{thinking.strip()}{self.think_close}{self.answer}"

    @property
    def close_tag(self) -> str:
        return self.think_close.strip()

    @property
    def think_stops(self) -> tuple[str, ...]:
        """Where thinking ends: the closing tag, or a new question (a small model that continues its few-shot
        examples instead of thinking)."""
        return (self.close_tag, "\n" + self.question.strip())


@dataclass
class Step:
    """One model call of a policy, for the trace."""

    role: str
    kind: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    accepted: bool = True


@dataclass
class PolicyResult:
    """What a policy answered and what it cost."""

    text: str
    """The answer as the model wrote it (its first line)."""
    answer: str | None
    """The normalized answer (``text`` itself without a normalizer; ``None`` if it could not be read)."""
    ledger: CostLedger
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What happened that a reader should know (a fallback, a cap, a turn limit)."""
    escalated: bool = False
    """Whether the long (or more expensive) path was taken."""

    @property
    def usage(self) -> Usage:
        return self.ledger.usage

    @property
    def tokens(self) -> int:
        return self.ledger.tokens

    @property
    def flops(self) -> float | None:
        return self.ledger.flops

    def calls(self, role: str | None = None) -> int:
        return sum(1 for s in self.steps if role is None or s.role == role)


class _Run:
    """The state of one ``Policy.run`` (a policy object may serve several threads)."""

    def __init__(self, policy: Policy, problem: Problem) -> None:
        self.policy, self.problem = policy, problem
        self.ledger = CostLedger()
        self.steps: list[Step] = []
        self.notes: list[str] = []
        self.escalated = False

    def call(self, role: str, prompt: PromptInput, *, kind: str, max_tokens: int, stop: Sequence[str] = (),
             temperature: float = 0.0, seed: int | None = None, logprobs: bool = False,
             min_tokens: int = 0) -> Completion:
        engine = self.policy.engines[role]
        params = SamplingParams(max_tokens=max(1, max_tokens), temperature=temperature, seed=seed,
                                stop=tuple(stop), logprobs=logprobs, min_tokens=min(min_tokens, max(1, max_tokens)))
        c = engine.generate(prompt, params, agent=f"{self.policy.name}:{role}", tags=(kind,))
        self.ledger.add(role, c.usage, flops_per_token=engine.flops_per_token)
        self.steps.append(Step(role, kind, c.text, c.usage.prompt_tokens or 0, c.usage.completion_tokens or 0))
        return c

    def score(self, role: str, prompt: PromptInput, continuation: str, *, kind: str) -> float:
        engine = self.policy.engines[role]
        s = engine.score(prompt, continuation, agent=f"{self.policy.name}:{role}", tags=(kind,))
        self.ledger.add(role, s.usage, flops_per_token=engine.flops_per_token)
        self.steps.append(Step(role, kind, f"{s.mean_logprob:.3f}", s.usage.prompt_tokens or 0, 0))
        return s.mean_logprob

    def discard(self, role: str, completion: Completion) -> None:
        """The tokens of ``completion`` were thrown away (they stay counted as spent)."""
        self.ledger.discard(role, completion.usage.completion_tokens or 0)
        for s in reversed(self.steps):
            if s.role == role and s.text == completion.text:
                s.accepted = False
                break


class Policy(abc.ABC):
    """A reasoning policy over one engine per role. Subclasses set ``name``, ``roles``, ``needs`` and implement
    ``_solve``.

    Args:
        engines: one engine per role.
        normalizer: turns an answer text into a comparable answer (default: the first line, stripped).
        fmt: the text around the models' output.
    """

    name: ClassVar[str] = "policy"
    roles: ClassVar[tuple[str, ...]] = ("model",)
    needs: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    """The capabilities each role's engine must have."""

    def __init__(self, engines: Mapping[str, Engine], *, normalizer: Normalizer | None = None,
                 fmt: Format | None = None) -> None:
        missing = [r for r in self.roles if r not in engines]
        if missing:
            raise UserError(f"{self.name} needs an engine for {', '.join(missing)}")
        self.engines = {role: as_engine(e) for role, e in engines.items()}  # a LangChain chat model works too
        for role in self.roles:
            self.engines[role].require(self.needs_for(role), who=f"{self.name} ({role} model)")
        self.normalizer = normalizer
        self.fmt = fmt or Format()

    def needs_for(self, role: str) -> tuple[str, ...]:
        return tuple(self.needs.get(role, ()))

    def run(self, problem: Problem | str, *, limits: UsageLimits | None = None) -> PolicyResult:
        """Answer ``problem``; every call is counted, whatever happens. ``limits``: a budget checked before every
        model call (``BudgetExceeded`` stops the policy)."""
        if isinstance(problem, str):
            problem = Problem(problem)
        run = _Run(self, problem)
        with limits_scope(limits):
            text = first_line(self._solve(run, problem))
        norm = problem.normalizer or self.normalizer
        answer = norm(text) if norm is not None else (text or None)
        return PolicyResult(text, answer, run.ledger, run.steps, run.notes, run.escalated)

    @abc.abstractmethod
    def _solve(self, run: _Run, p: Problem) -> str:
        """Return the answer text."""

    # -- shared moves ---------------------------------------------------------------------------------------------

    def _direct(self, run: _Run, role: str, p: Problem, max_tokens: int = 24, kind: str = "answer",
                **kw: Any) -> Completion:
        return run.call(role, self.fmt.direct(p), kind=kind, max_tokens=max_tokens, stop=p.stop, **kw)

    def _think(self, run: _Run, role: str, p: Problem, budget: int, so_far: str = "",
               kind: str = "think", **kw: Any) -> Completion:
        return run.call(role, self.fmt.reasoning(p, so_far), kind=kind, max_tokens=budget,
                        stop=self.fmt.think_stops, **kw)

    def _answer_after(self, run: _Run, role: str, p: Problem, thinking: str, max_tokens: int = 24,
                      **kw: Any) -> Completion:
        return run.call(role, self.fmt.after_thinking(p, thinking), kind="answer", max_tokens=max_tokens,
                        stop=p.stop, **kw)

    def as_engine(self) -> PolicyEngine:
        return PolicyEngine(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{r}={e.spec!r}' for r, e in self.engines.items())})"


class PolicyEngine(Engine):
    """A policy as an ``Engine``: each request's last user message is the question, the system message (if any)
    the context; the reply is the policy's answer, its usage the sum over every model the policy called."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.policy = policy
        self.spec = f"policy:{policy.name}"
        self.capabilities = Capabilities(batching=False, stop_strings=False)
        self.results: list[PolicyResult] = []
        """Each request's full result (per-model costs and steps), in order."""
        self._results_lock = threading.Lock()

    def _run_batch(self, requests: list[Request]) -> list[Completion | BaseException]:
        return self._run_each(requests, self._one)

    def _one(self, req: Request) -> Completion:
        problem = _problem(req.prompt)
        result = self.policy.run(problem)
        with self._results_lock:
            self.results.append(result)
        u = result.usage
        usage = Usage(prompt_tokens=u.prompt_tokens, cached_prompt_tokens=u.cached_prompt_tokens,
                      completion_tokens=u.completion_tokens, calls=1)
        return Completion(text=result.text, token_ids=[], finish_reason="stop", usage=usage,
                          request_id=req.request_id, engine=self.spec)


def _problem(prompt: PromptInput) -> Problem:
    messages = chat_messages(prompt)
    if messages is None:
        if not isinstance(prompt, str):
            raise UserError("a policy engine takes text or chat messages, not token ids")
        return Problem(prompt)
    users = [str(m.get("content", "")) for m in messages if m.get("role") == "user"]
    if not users:
        raise UserError("a policy engine needs a user message")
    system = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "system").strip()
    earlier = "\n".join(users[:-1]).strip()
    context = "\n".join(x for x in (system, earlier) if x)
    question = re.sub(r"^\s*(question|q)\s*:\s*", "", users[-1], flags=re.IGNORECASE)  # Format adds its own
    return Problem(question, context=f"{context}\n" if context else "")
