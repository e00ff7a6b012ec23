"""Step routing that learns when the long model pays (after Arbitrage: a router trained on both models' recorded
outcomes decides, step by step, whether the long model rewrites the short model's step).

``StepRoute`` asks the long model about every step (a scoring pass over the step, or a judge call): the long
model reads every step even where the short one was right. ``LearnedStepRoute`` decides from the short model's
step alone: a logistic regression over features the short model's own decoding gives for free (its tokens'
log-probabilities, the step's length and place, how much of it is arithmetic). The long model is called only
for the steps the router sends to it, and then it writes the step.

Training data comes from the user's own questions with a checker (``collect``): along the short model's path,
every step is written by both models from the same prefix; each version is rolled out to an answer by the short
model and checked. A step is labelled **long pays** where the long model's version leads to a right answer and
the short model's does not (the advantage the router should buy). ``fit`` trains the router on those rows, with
the classes weighted to balance (long-pays steps are rare) and returns what it learnt from and what collecting
the data cost (``RouterFit``: rows, positives, training accuracy, every model's tokens and FLOPs). Untrained, the
policy sends every step to the long model (the safe side).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tokenomy.errors import UserError
from tokenomy.kernels.engine import Engine
from tokenomy.kernels.types import Completion
from tokenomy.kernels.usage import CostLedger

from .collab import PairPolicy
from .policy import Problem, _Run, first_line

__all__ = ["LearnedStepRoute", "StepOutcome", "RouterFit", "step_features", "FEATURES"]

FEATURES = ("mean_logprob", "min_logprob", "low_share", "tokens", "position", "digits", "bias")
"""What the router reads of a step the short model wrote (``step_features``)."""


def step_features(completion: Completion, index: int, max_steps: int, step_tokens: int) -> list[float]:
    """The router's inputs for a step: the mean and lowest log-probability of its tokens, the share of tokens
    below -1 (an unsure token), its length (of ``step_tokens``), its place (of ``max_steps``), the share of its
    characters that are digits or operators, and a constant. An engine that gives no log-probabilities gives 0s
    for the first three (the router then learns from the rest)."""
    lps = completion.logprobs or []
    text = completion.text
    n = len(completion.token_ids) or len(lps)
    return [sum(lps) / len(lps) if lps else 0.0, min(lps) if lps else 0.0,
            sum(lp < -1.0 for lp in lps) / len(lps) if lps else 0.0, n / max(step_tokens, 1),
            index / max(max_steps, 1), sum(ch.isdigit() or ch in "+-*/=" for ch in text) / max(len(text), 1), 1.0]


@dataclass
class StepOutcome:
    """One step of the training data: both models' versions of it and where each led."""

    question: str
    index: int
    short_step: str
    long_step: str
    features: list[float]
    short_correct: bool
    long_correct: bool

    @property
    def long_pays(self) -> bool:
        return self.long_correct and not self.short_correct


@dataclass
class RouterFit:
    """What ``LearnedStepRoute.fit`` learnt from: rows, long-pays rows, training accuracy, the threshold, and what
    collecting the rows cost (``cost``: both models' tokens and FLOPs)."""

    rows: int
    positives: int
    accuracy: float
    threshold: float
    cost: CostLedger = field(default_factory=CostLedger)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "positives": self.positives, "accuracy": round(self.accuracy, 3),
                "threshold": round(self.threshold, 3), "cost": self.cost.to_dict()}


class LearnedStepRoute(PairPolicy):
    """Arbitrage-style step routing with a learned router; see the module docstring.

    Args:
        threshold: a step goes to the long model when the router's probability that the long model pays is at
            least this (``fit(long_rate=...)`` sets it for a share of steps instead).
        max_steps: the most reasoning steps; then the answer is asked.
        step_tokens: the most tokens of one step.
    """

    name = "learned-step-route"
    needs: ClassVar[dict[str, tuple[str, ...]]] = {"short": ("logprobs", "stop_strings"), "long": ("stop_strings",)}

    def __init__(self, long: Engine, short: Engine, *, threshold: float = 0.5, max_steps: int = 4,
                 step_tokens: int = 24, answer_tokens: int = 16, **kw: Any) -> None:
        super().__init__(long, short, **kw)
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"threshold must be a probability in [0, 1], got {threshold}")
        self.threshold, self.max_steps = threshold, max_steps
        self.step_tokens, self.answer_tokens = step_tokens, answer_tokens
        self.weights: Any = None
        self.mean: Any = None
        self.scale: Any = None

    # -- routing ---------------------------------------------------------------------------------------------

    def pays(self, features: Sequence[float]) -> float:
        """The router's probability that the long model's version of this step leads where the short one's does
        not (1.0 untrained: every step to the long model)."""
        if self.weights is None:
            return 1.0
        import numpy as np

        x = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        z = float(x @ self.weights)
        return float(1.0 / (1.0 + np.exp(-z)))

    def _step(self, run: _Run, p: Problem, thinking: str, index: int) -> tuple[Completion, list[float]]:
        c = run.call("short", self.fmt.reasoning(p, thinking), kind="step", max_tokens=self.step_tokens,
                     stop=("\n", self.fmt.close_tag), logprobs=True)
        return c, step_features(c, index, self.max_steps, self.step_tokens)

    def _long_step(self, run: _Run, p: Problem, thinking: str) -> str:
        return run.call("long", self.fmt.reasoning(p, thinking), kind="step", max_tokens=self.step_tokens,
                        stop=("\n", self.fmt.close_tag)).text.strip()

    def _solve(self, run: _Run, p: Problem) -> str:
        thinking = ""
        routed = 0
        for i in range(self.max_steps):
            draft, features = self._step(run, p, thinking, i)
            step = draft.text.strip()
            if not step:  # the short model closed its thinking
                break
            if self.pays(features) >= self.threshold:
                run.discard("short", draft)
                run.escalated = True
                routed += 1
                step = self._long_step(run, p, thinking)
                if not step:
                    break
            thinking += step + "\n"
        run.notes.append(f"{routed} step(s) to the long model")
        return self._answer_after(run, "short", p, thinking, self.answer_tokens).text

    # -- learning ----------------------------------------------------------------------------------------------

    def _rollout(self, run: _Run, p: Problem, thinking: str, steps: int) -> str:
        """The short model goes on from ``thinking`` for up to ``steps`` more steps, then answers."""
        if steps > 0:
            more = self._think(run, "short", p, steps * self.step_tokens, so_far=thinking, kind="rollout").text
            thinking = thinking + more.strip() + "\n"
        return first_line(self._answer_after(run, "short", p, thinking, self.answer_tokens).text)

    def collect(self, problems: Sequence[Problem], checks: Sequence[Callable[[str], bool]]) -> tuple[
            list[StepOutcome], CostLedger]:
        """The training rows of ``problems`` (``checks[i]`` says whether an answer to problem ``i`` is right):
        along the short model's path, each step written by both models and each rolled out to a checked answer.
        Returns the rows and what they cost."""
        if len(problems) != len(checks):
            raise UserError("collect needs one check per problem")
        cost = CostLedger()
        rows: list[StepOutcome] = []
        for p, ok in zip(problems, checks, strict=True):
            run = _Run(self, p)
            thinking = ""
            for i in range(self.max_steps):
                draft, features = self._step(run, p, thinking, i)
                short_step = draft.text.strip()
                if not short_step:
                    break
                long_step = self._long_step(run, p, thinking)
                left = self.max_steps - i - 1
                short_ok = ok(self._rollout(run, p, thinking + short_step + "\n", left))
                long_ok = ok(self._rollout(run, p, thinking + long_step + "\n", left)) if long_step else False
                rows.append(StepOutcome(p.question, i, short_step, long_step, features, short_ok, long_ok))
                thinking += short_step + "\n"
            cost.merge(run.ledger)
        return rows, cost

    def fit(self, rows: Sequence[StepOutcome], *, long_rate: float | None = None, steps: int = 400,
            lr: float = 0.5, l2: float = 1e-2, cost: CostLedger | None = None) -> RouterFit:
        """Train the router on ``rows`` (from ``collect``). ``long_rate``: set the threshold so that this share of
        the training steps goes to the long model (else the threshold is kept). ``cost``: what collecting the
        rows cost, reported back."""
        import numpy as np

        if not rows:
            raise UserError("fit needs at least one training row (collect some with collect())")
        if long_rate is not None and not 0.0 <= long_rate <= 1.0:
            raise UserError(f"long_rate must be in [0, 1], got {long_rate}")
        x = np.asarray([r.features for r in rows], dtype=np.float64)
        y = np.asarray([r.long_pays for r in rows], dtype=np.float64)
        self.mean = x.mean(0)
        self.mean[-1] = 0.0  # the bias column stays 1
        self.scale = x.std(0) + 1e-6
        self.scale[-1] = 1.0
        xs = (x - self.mean) / self.scale
        pos = y.sum()
        # Balanced classes: each class weighs half, however rare long-pays steps are.
        weight = np.where(y > 0, 0.5 / max(pos, 1.0), 0.5 / max(len(y) - pos, 1.0))
        w = np.zeros(x.shape[1])
        for _ in range(steps):
            prob = 1.0 / (1.0 + np.exp(-(xs @ w)))
            w -= lr * (xs.T @ (weight * (prob - y)) + l2 * w)
        self.weights = w
        prob = np.asarray([self.pays(r.features) for r in rows])  # as the policy will compute it, to the bit
        if long_rate is not None:
            self.threshold = 1.0 + 1e-9 if long_rate == 0 else float(np.quantile(prob, 1.0 - long_rate))
        accuracy = float(((prob >= self.threshold) == (y > 0)).mean())
        return RouterFit(len(rows), int(pos), accuracy, self.threshold, cost or CostLedger())
