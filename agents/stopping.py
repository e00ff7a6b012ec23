"""Stopping rules for self-consistency: how many samples to draw, training-free.

The rules look only at the answers so far (and, for short-m@k, at the samples' lengths), so the same rule runs
live on an engine (``tokenomy.agents.consistency.SelfConsistency``) and on stored samples
(``tokenomy.agents.replay.replay``), where it can be scored against gold answers without spending a token.

* ``FixedN(n)``: plain self-consistency@n.
* ``ESC(window, max_samples)``: Early-Stopping Self-Consistency. Samples come a window at a time; a window whose
  answers are all equal (and parseable) ends sampling; the vote is over all samples.
* ``AdaptiveConsistency(threshold, max_samples)``: stop once the posterior probability that the leading answer
  beats the runner-up, under a Beta prior, reaches ``threshold``; computed exactly with fractions.
* ``ShortMK(m, k)``: short-m@k. ``k`` samples decode in lockstep; when the first ``m`` finish the rest are
  cancelled and the vote is over those ``m`` (ties: the shorter).
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from math import comb

from .sampling import Sample, _check_positive, majority_vote

__all__ = [
    "POOL_EXHAUSTED",
    "Decision",
    "StoppingRule",
    "FixedN",
    "ESC",
    "AdaptiveConsistency",
    "beta_majority_probability",
    "ShortMK",
    "short_m_at_k",
]

POOL_EXHAUSTED = "pool exhausted"
"""``Decision.stopped`` when the samples ran out before the rule stopped."""


@dataclass
class Decision:
    """What a rule made of a sequence of samples."""

    answer: str | None
    used: list[Sample]
    """The samples the rule drew before it stopped (a prefix, or for short-m@k the m that finished first)."""
    completion_tokens: int
    """Completion tokens charged for the decision (for short-m@k, the lockstep cost of all k)."""
    stopped: str
    """Why it stopped (``POOL_EXHAUSTED`` if it did not)."""

    @property
    def exhausted(self) -> bool:
        return self.stopped == POOL_EXHAUSTED


class StoppingRule(abc.ABC):
    """When to stop sampling, from the answers so far (``None``: unparseable, never a vote). Rules are pure."""

    max_samples: int
    lockstep: bool = False
    """Whether the rule's samples decode in lockstep and its cost is ``Decision.completion_tokens`` rather than
    the sum of the samples drawn (short-m@k)."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """A short name for reports, such as ``esc(w=5)``."""

    @abc.abstractmethod
    def should_stop(self, answers: Sequence[str | None]) -> bool:
        """Whether to stop after these answers (always true at ``max_samples``)."""

    def reason(self, answers: Sequence[str | None]) -> str:
        """Why the rule stops after ``answers``."""
        return "max samples"

    def vote(self, answers: Sequence[str | None]) -> str | None:
        """The answer of the samples: majority, ties to the answer that reached the top count first."""
        return majority_vote(answers)

    def next_chunk(self, drawn: int, batch: int) -> int:
        """How many samples to request next, having drawn ``drawn``, with batches of ``batch``."""
        return max(0, min(batch, self.max_samples - drawn))

    def apply(self, samples: Sequence[Sample]) -> Decision:
        """Feed the samples' answers one by one until ``should_stop``, then vote over those drawn."""
        answers: list[str | None] = []
        for s in samples:
            answers.append(s.answer)
            if self.should_stop(answers):
                used = list(samples[: len(answers)])
                return Decision(self.vote(answers), used, sum(u.completion_tokens for u in used), self.reason(answers))
        return Decision(self.vote(answers), list(samples), sum(s.completion_tokens for s in samples), POOL_EXHAUSTED)


@dataclass(frozen=True)
class FixedN(StoppingRule):
    """Self-consistency@n: always ``n`` samples."""

    n: int
    max_samples: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        _check_positive(n=self.n)
        object.__setattr__(self, "max_samples", self.n)

    @property
    def name(self) -> str:
        return f"fixed(n={self.n})"

    def should_stop(self, answers: Sequence[str | None]) -> bool:
        return len(answers) >= self.n


@dataclass(frozen=True)
class ESC(StoppingRule):
    """Early-Stopping Self-Consistency: sample ``window`` at a time; stop after a window whose answers are all
    equal and parseable, or at ``max_samples``; the vote is over all samples. It only stops at window boundaries
    (and at ``max_samples``, which need not be one)."""

    window: int = 5
    max_samples: int = 40

    def __post_init__(self) -> None:
        _check_positive(window=self.window, max_samples=self.max_samples)

    @property
    def name(self) -> str:
        return f"esc(w={self.window})" if self.max_samples == 40 else f"esc(w={self.window},max={self.max_samples})"

    def _unanimous(self, answers: Sequence[str | None]) -> bool:
        n = len(answers)
        if n == 0 or n % self.window:
            return False
        last = answers[n - self.window:]
        return last[0] is not None and all(a == last[0] for a in last)

    def should_stop(self, answers: Sequence[str | None]) -> bool:
        return len(answers) >= self.max_samples or self._unanimous(answers)

    def reason(self, answers: Sequence[str | None]) -> str:
        return "unanimous window" if self._unanimous(answers) else "max samples"

    def next_chunk(self, drawn: int, batch: int) -> int:
        """The rest of the current window (``batch`` is ignored: a window is the batch)."""
        return max(0, min(self.window - drawn % self.window, self.max_samples - drawn))


def _exact(x: float | Fraction) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(str(x))


@lru_cache(maxsize=4096)
def beta_majority_probability(a: int, b: int) -> Fraction:
    """P(X > 1/2) for X ~ Beta(a + 1, b + 1), exactly: the posterior probability, under a uniform prior, that
    the answer seen ``a`` times is more likely than the one seen ``b`` times.

    For integer parameters the Beta CDF is a binomial tail: P(X <= x) = P(Binomial(a + b + 1, x) >= a + 1),
    so P(X > 1/2) = P(Binomial(n, 1/2) <= a) = sum_{j=0}^{a} C(n, j) / 2^n with n = a + b + 1 (equivalently, by
    symmetry, P(Binomial(n, 1/2) >= b + 1)). ``a=5, b=0`` gives 63/64.
    """
    if a < 0 or b < 0:
        raise ValueError(f"counts must be >= 0, got a={a}, b={b}")
    n = a + b + 1
    return Fraction(sum(comb(n, j) for j in range(a + 1)), 2**n)


@lru_cache(maxsize=16384)
def _reaches(a: int, b: int, threshold: float | Fraction) -> bool:
    """``beta_majority_probability(a, b) >= threshold``, the threshold read exactly (0.95 is 19/20)."""
    return beta_majority_probability(a, b) >= _exact(threshold)


@dataclass(frozen=True)
class AdaptiveConsistency(StoppingRule):
    """Adaptive-Consistency with the Beta criterion: with ``a`` and ``b`` the counts of the two most frequent
    answers, stop when P(p > 1/2) >= ``threshold`` for p ~ Beta(a + 1, b + 1) (``beta_majority_probability``,
    exact), once ``min_samples`` are drawn, or at ``max_samples``. With unanimous answers and threshold 0.95 that
    is 4 samples (1 - 1/32); unparseable answers never count."""

    threshold: float = 0.95
    max_samples: int = 40
    min_samples: int = 1

    def __post_init__(self) -> None:
        _check_positive(max_samples=self.max_samples, min_samples=self.min_samples)
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.min_samples > self.max_samples:
            raise ValueError(f"min_samples ({self.min_samples}) > max_samples ({self.max_samples})")

    @property
    def name(self) -> str:
        base = f"adaptive(t={self.threshold:g}"
        return base + (")" if self.max_samples == 40 else f",max={self.max_samples})")

    @staticmethod
    def top_two(answers: Sequence[str | None]) -> tuple[int, int]:
        """The counts of the two most frequent parseable answers (0 where there is none)."""
        counts = Counter(a for a in answers if a is not None).most_common(2) + [("", 0), ("", 0)]
        return counts[0][1], counts[1][1]

    def probability(self, answers: Sequence[str | None]) -> Fraction:
        """P(the leading answer is the majority), exactly."""
        return beta_majority_probability(*self.top_two(answers))

    def _confident(self, answers: Sequence[str | None]) -> bool:
        return len(answers) >= self.min_samples and _reaches(*self.top_two(answers), self.threshold)

    def should_stop(self, answers: Sequence[str | None]) -> bool:
        return len(answers) >= self.max_samples or self._confident(answers)

    def reason(self, answers: Sequence[str | None]) -> str:
        return "confident" if self._confident(answers) else "max samples"


def short_m_at_k(samples: Sequence[Sample], m: int) -> tuple[str | None, list[Sample], int]:
    """short-m@k over ``k = len(samples)`` samples decoded in parallel, in lockstep (one token each per step).

    Decoding stops when the ``m``-th sample finishes; the others are cancelled. The answer is the majority over
    those ``m`` (unparseable ones never vote); a tie goes to the answer that reached the top count first in
    finishing order, that is to the shorter. Samples of equal length finish in their given order.

    Token accounting (completion tokens only; prompts are counted separately): with L_1 <= ... <= L_k the
    completion lengths, when the ``m``-th finishes every unfinished sample has decoded L_m tokens, so the cost is
    ``L_1 + ... + L_m + (k - m) * L_m``.

    Returns:
        ``(answer, used_samples, completion_tokens)``, ``used_samples`` in finishing order.
    """
    k = len(samples)
    if not 1 <= m <= k:
        raise ValueError(f"short-m@k needs 1 <= m <= k, got m={m}, k={k}")
    order = sorted(range(k), key=lambda i: (samples[i].completion_tokens, i))
    used = [samples[i] for i in order[:m]]
    tokens = sum(s.completion_tokens for s in used) + (k - m) * used[-1].completion_tokens
    return majority_vote([s.answer for s in used]), used, tokens


@dataclass(frozen=True)
class ShortMK(StoppingRule):
    """short-m@k: ``k`` samples in lockstep, stop when the first ``m`` finish, vote over those (ties: the
    shorter). It needs the samples' lengths, so it decides in ``apply`` (``short_m_at_k`` over the first ``k``
    samples) rather than answer by answer; ``should_stop`` only says whether all ``k`` are drawn."""

    m: int
    k: int
    max_samples: int = field(init=False, repr=False, default=0)
    lockstep = True

    def __post_init__(self) -> None:
        _check_positive(m=self.m, k=self.k)
        if self.m > self.k:
            raise ValueError(f"short-m@k needs m <= k, got m={self.m}, k={self.k}")
        object.__setattr__(self, "max_samples", self.k)

    @property
    def name(self) -> str:
        return f"short-{self.m}@{self.k}"

    def should_stop(self, answers: Sequence[str | None]) -> bool:
        return len(answers) >= self.k

    def reason(self, answers: Sequence[str | None]) -> str:
        return "first m finished"

    def next_chunk(self, drawn: int, batch: int) -> int:
        """All ``k`` at once (they decode together)."""
        return max(0, self.k - drawn)

    def apply(self, samples: Sequence[Sample]) -> Decision:
        if len(samples) < self.k:
            raise ValueError(f"{self.name} needs {self.k} samples, got {len(samples)}")
        answer, used, tokens = short_m_at_k(samples[: self.k], self.m)
        return Decision(answer, used, tokens, "first m finished")

