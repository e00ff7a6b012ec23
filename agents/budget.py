"""Difficulty and budget policies: spend by difficulty, training-free (or trained on the user's own traces).

=====================  ===================================================================================
policy                 what it does
=====================  ===================================================================================
``EntropyRouter``      the short model answers; if its mean surprisal (-log p per token) is above a threshold
                       the long model answers instead. ``calibrate`` sets the threshold for an escalation rate.
``ProbeRouter``        DiffAdapt-style: a small probe (logistic regression) on the short model's hidden state
                       of the question picks a tier (easy / normal / hard), each a fixed setting; ``fit`` trains
                       it on the user's own traces.
``TaleBudget``         TALE-EP: the model first estimates the tokens it needs, then reasons under that budget
                       (the estimator's tokens are counted, which TALE's release does not do).
``PlanAndBudget``      Plan-and-Budget: the question is split into sub-questions whose budgets follow a
                       schedule (constant, linear, polynomial, cosine, exponential); every call is counted.
``BudgetForcing``      s1: an early stop gets "Wait" appended and goes on (``min_tokens``) up to the budget;
                       at the budget the thinking is closed and the answer forced.
``ThinkingCap``        thinking capped at ``cap`` tokens, then the answer forced (in the engine where it can,
                       else by ``max_tokens`` and the closing tag).
=====================  ===================================================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from tokenomy.errors import UserError
from tokenomy.kernels.engine import Engine
from tokenomy.kernels.usage import Usage

from .answers import Normalizer
from .collab import PairPolicy
from .policy import Format, Policy, Problem, _Run

__all__ = ["EntropyRouter", "ProbeRouter", "Tier", "TaleBudget", "PlanAndBudget", "BudgetForcing", "ThinkingCap",
           "allocate", "SCHEDULES", "surprisal"]

SCHEDULES = ("constant", "linear", "polynomial", "cosine", "exponential")


def surprisal(logprobs: Sequence[float] | None) -> float:
    """Mean -log p of the generated tokens (a cheap stand-in for the output's entropy)."""
    return -sum(logprobs) / len(logprobs) if logprobs else 0.0


class EntropyRouter(PairPolicy):
    """Answer with the short model; hand the question to the long model when the short one is unsure.

    Args:
        threshold: escalate when the short answer's mean surprisal exceeds this.
        think: the long model's thinking budget (0: it answers directly).
    """

    name = "entropy-router"
    needs: ClassVar[Mapping[str, tuple[str, ...]]] = {"short": ("logprobs",)}

    def __init__(self, long: Engine, short: Engine, *, threshold: float = 1.0, think: int = 0,
                 answer_tokens: int = 24, **kw: Any) -> None:
        super().__init__(long, short, **kw)
        self.threshold, self.think, self.answer_tokens = threshold, think, answer_tokens

    def uncertainty(self, problem: Problem) -> float:
        """The short model's surprisal on ``problem`` (one uncounted call; for calibration)."""
        c = self.short.generate(self.fmt.direct(problem), max_tokens=self.answer_tokens, stop=problem.stop,
                                logprobs=True)
        return surprisal(c.logprobs)

    def calibrate(self, problems: Sequence[Problem], rate: float) -> float:
        """Set the threshold so that a fraction ``rate`` of ``problems`` escalates; returns it."""
        if not problems or not 0 <= rate <= 1:
            raise UserError("calibrate needs problems and a rate in [0, 1]")
        values = sorted(self.uncertainty(p) for p in problems)
        k = min(len(values) - 1, max(0, math.ceil(len(values) * (1 - rate)) - 1))
        self.threshold = values[k] if rate < 1 else -math.inf
        return self.threshold

    def _solve(self, run: _Run, p: Problem) -> str:
        c = self._direct(run, "short", p, self.answer_tokens, logprobs=True)
        u = surprisal(c.logprobs)
        if u <= self.threshold and c.text.strip():
            return c.text
        run.discard("short", c)
        run.escalated = True
        run.notes.append(f"short answer's surprisal {u:.2f} > {self.threshold:.2f}: the long model answers")
        if not self.think:
            return self._direct(run, "long", p, self.answer_tokens).text
        thought = self._think(run, "long", p, self.think).text
        return self._answer_after(run, "long", p, thought, self.answer_tokens).text


@dataclass(frozen=True)
class Tier:
    """One difficulty tier's fixed setting: which model, and how many thinking tokens (0: direct)."""

    name: str
    role: str
    think: int = 0


DEFAULT_TIERS = (Tier("easy", "short"), Tier("normal", "short", 64), Tier("hard", "long", 128))


class ProbeRouter(PairPolicy):
    """DiffAdapt-style routing: a logistic-regression probe on the short model's last hidden state of the
    question picks a tier. Train it with ``fit`` on the user's own traces (questions and the cheapest tier that
    answered each right); untrained, every question takes the last (safest) tier."""

    name = "probe-router"
    needs: ClassVar[Mapping[str, tuple[str, ...]]] = {"short": ("hidden_states",)}

    def __init__(self, long: Engine, short: Engine, *, tiers: Sequence[Tier] = DEFAULT_TIERS,
                 answer_tokens: int = 24, l2: float = 1e-2, **kw: Any) -> None:
        super().__init__(long, short, **kw)
        if not tiers or any(t.role not in self.roles for t in tiers):
            raise UserError(f"ProbeRouter tiers must name roles among {self.roles}")
        self.tiers, self.answer_tokens, self.l2 = list(tiers), answer_tokens, l2
        self.weights: Any = None  # (features + 1, tiers) once fit
        self.mean: Any = None
        self.scale: Any = None

    def features(self, problem: Problem) -> list[float]:
        return self.short.embed(self.fmt.direct(problem))

    def fit(self, problems: Sequence[Problem], labels: Sequence[int], *, steps: int = 300, lr: float = 0.5) -> float:
        """Train the probe on ``problems`` labelled with tier indices; returns the training accuracy."""
        import numpy as np

        if len(problems) != len(labels) or not problems:
            raise UserError("fit needs as many labels as problems, and at least one")
        if any(not 0 <= y < len(self.tiers) for y in labels):
            raise UserError(f"labels must be tier indices in [0, {len(self.tiers)})")
        x = np.asarray([self.features(p) for p in problems], dtype=np.float64)
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-6
        x = np.hstack([(x - self.mean) / self.scale, np.ones((len(x), 1))])
        y = np.eye(len(self.tiers))[np.asarray(labels)]
        w = np.zeros((x.shape[1], len(self.tiers)))
        for _ in range(steps):
            z = x @ w
            prob = np.exp(z - z.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            w -= lr * (x.T @ (prob - y) / len(x) + self.l2 * w)
        self.weights = w
        return float(((x @ w).argmax(1) == np.asarray(labels)).mean())

    def tier_of(self, problem: Problem) -> Tier:
        if self.weights is None:
            return self.tiers[-1]
        import numpy as np

        x = (np.asarray(self.features(problem)) - self.mean) / self.scale
        return self.tiers[int((np.append(x, 1.0) @ self.weights).argmax())]

    def _solve(self, run: _Run, p: Problem) -> str:
        tier = self.tier_of(p)
        # The probe reads a prompt the short model prefills anyway: count it as one prefill of the direct prompt.
        emb_tokens = len(self.short.prompt_token_ids(self.fmt.direct(p)) or [])
        run.ledger.add("short", Usage(prompt_tokens=emb_tokens, calls=1), flops_per_token=self.short.flops_per_token)
        run.notes.append(f"tier {tier.name}")
        run.escalated = tier.role == "long"
        if not tier.think:
            return self._direct(run, tier.role, p, self.answer_tokens).text
        thought = self._think(run, tier.role, p, tier.think).text
        return self._answer_after(run, tier.role, p, thought, self.answer_tokens).text


class _Single(Policy):
    roles: ClassVar[tuple[str, ...]] = ("model",)

    def __init__(self, model: Engine, *, normalizer: Normalizer | None = None, fmt: Format | None = None) -> None:
        super().__init__({"model": model}, normalizer=normalizer, fmt=fmt)


class TaleBudget(_Single):
    """TALE-EP: estimate the budget (one call, counted), then reason within it.

    Args:
        low, high: the budget is clamped to [low, high].
        enforce: also cap the reasoning's ``max_tokens`` at the budget (TALE only asks in the prompt).
    """

    name = "tale"
    ESTIMATE = "How many words does a brief solution need? Reply with a number in double brackets, like [[20]].\n"

    def __init__(self, model: Engine, *, low: int = 8, high: int = 256, enforce: bool = True,
                 answer_tokens: int = 24, **kw: Any) -> None:
        super().__init__(model, **kw)
        self.low, self.high, self.enforce, self.answer_tokens = low, high, enforce, answer_tokens

    def estimate(self, run: _Run, p: Problem) -> int:
        text = run.call("model", f"{self.fmt.head(p)}{self.ESTIMATE}Budget: [[", kind="estimate", max_tokens=8,
                        stop=("]]", "\n")).text
        m = re.search(r"\d+", text)
        if m is None:
            run.notes.append(f"no budget in the estimate {text!r}: using {self.high}")
            return self.high
        return max(self.low, min(self.high, int(m.group())))

    def _solve(self, run: _Run, p: Problem) -> str:
        budget = self.estimate(run, p)
        run.notes.append(f"budget {budget}")
        so_far = f"Think step by step and use less than {budget} tokens.\n"
        thought = self._think(run, "model", p, budget if self.enforce else self.high, so_far=so_far)
        return self._answer_after(run, "model", p, so_far + thought.text, self.answer_tokens).text


def allocate(total: int, k: int, schedule: str = "constant", *, minimum: int = 1) -> list[int]:
    """Split ``total`` tokens over ``k`` sub-questions, front-loaded by ``schedule`` (Plan-and-Budget's five:
    constant, linear, polynomial, cosine, exponential). The parts sum to ``total`` (each at least ``minimum``
    where ``total`` allows)."""
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if k < 1 or total < 0:
        raise UserError("allocate needs k >= 1 and total >= 0")
    weight = {
        "constant": lambda i: 1.0,
        "linear": lambda i: float(k - i),
        "polynomial": lambda i: float(k - i) ** 2,
        "cosine": lambda i: 0.5 * (1 + math.cos(math.pi * i / k)),
        "exponential": lambda i: 0.5 ** i,
    }[schedule]
    w = [weight(i) for i in range(k)]
    floor = min(minimum, total // k)
    rest = total - floor * k
    raw = [rest * x / sum(w) for x in w]
    parts = [floor + int(r) for r in raw]
    for i in sorted(range(k), key=lambda i: raw[i] - int(raw[i]), reverse=True)[: total - sum(parts)]:
        parts[i] += 1
    return parts


class PlanAndBudget(_Single):
    """Plan-and-Budget: split the question into 2-5 sub-questions (one call), give each a share of ``budget``
    by ``schedule``, answer them in order (each capped at its share), then answer the question. The difficulty
    level is never read from a label (the released code reads the dataset's)."""

    name = "plan-and-budget"
    PLAN = "Split the question into 2 to 5 short sub-questions, one per line, starting with '- '.\n"

    def __init__(self, model: Engine, *, budget: int = 128, schedule: str = "cosine", max_parts: int = 5,
                 answer_tokens: int = 24, **kw: Any) -> None:
        allocate(budget, 1, schedule)  # checks the schedule now
        super().__init__(model, **kw)
        self.budget, self.schedule, self.max_parts, self.answer_tokens = budget, schedule, max_parts, answer_tokens

    def _solve(self, run: _Run, p: Problem) -> str:
        plan = run.call("model", f"{self.fmt.head(p)}{self.PLAN}", kind="plan", max_tokens=64, stop=("\n\n",)).text
        parts = [ln.strip()[2:].strip() for ln in plan.splitlines() if ln.strip().startswith("- ")][: self.max_parts]
        parts = [x for x in parts if x]
        if not parts:
            run.notes.append("no sub-questions: the question is one part")
            parts = [p.question]
        shares = allocate(self.budget, len(parts), self.schedule)
        run.notes.append(f"{len(parts)} parts, budgets {shares}")
        thinking = ""
        for sub, share in zip(parts, shares, strict=True):
            if share < 1:
                continue
            lead = f"{sub} (in at most {share} words)\n"
            out = self._think(run, "model", p, share, so_far=thinking + lead, kind="part").text.strip()
            thinking += lead + out + "\n"
        return self._answer_after(run, "model", p, thinking, self.answer_tokens).text


class ThinkingCap(_Single):
    """Think at most ``cap`` tokens, then close the thinking and force the answer."""

    name = "thinking-cap"

    def __init__(self, model: Engine, *, cap: int = 64, answer_tokens: int = 24, **kw: Any) -> None:
        if cap < 1:
            raise UserError("ThinkingCap needs cap >= 1")
        super().__init__(model, **kw)
        self.cap, self.answer_tokens = cap, answer_tokens

    def _solve(self, run: _Run, p: Problem) -> str:
        thought = self._think(run, "model", p, self.cap)
        if thought.finish_reason == "length":
            run.notes.append(f"thinking cap ({self.cap}) reached: answer forced")
        return self._answer_after(run, "model", p, thought.text, self.answer_tokens).text


class BudgetForcing(_Single):
    """s1's budget forcing: think up to ``budget`` tokens; a model that stops before ``min_think`` tokens gets
    "Wait" appended and must go on (``min_tokens=1``), at most ``max_waits`` times; at the budget the thinking is
    closed and the answer forced."""

    name = "budget-forcing"
    needs: ClassVar[Mapping[str, tuple[str, ...]]] = {"model": ("min_tokens",)}

    def __init__(self, model: Engine, *, budget: int = 128, min_think: int = 32, max_waits: int = 2,
                 wait: str = "Wait", answer_tokens: int = 24, **kw: Any) -> None:
        super().__init__(model, **kw)
        self.budget, self.min_think, self.max_waits = budget, min_think, max_waits
        self.wait, self.answer_tokens = wait, answer_tokens

    def _solve(self, run: _Run, p: Problem) -> str:
        thinking, used, waits = "", 0, 0
        while used < self.budget:
            c = self._think(run, "model", p, self.budget - used, so_far=thinking, min_tokens=1 if waits else 0)
            thinking += c.text
            used += c.usage.completion_tokens or 0
            if c.finish_reason == "length" or used >= self.min_think or waits >= self.max_waits:
                break
            waits += 1
            thinking += f" {self.wait},"
        if used >= self.budget:
            run.notes.append(f"budget ({self.budget}) reached: answer forced")
        if waits:
            run.notes.append(f"{waits} x {self.wait!r}")
        return self._answer_after(run, "model", p, thinking, self.answer_tokens).text
