"""Training a pruning policy with REINFORCE over a user's task set.

Each iteration takes ``batch`` tasks and runs ``rollouts`` sampled masks of each through the real runtime
(``GraphTeam``); a run's reward is ``correct - lam * tokens / 1000`` (tokens: prompt plus completion, from the
engines' usage). The baseline is the mean reward of the task's rollouts (``group``, GRPO style; needs
``rollouts >= 2``) or a moving average (``ema``). The loss is ``-(reward - baseline) * log p(mask)`` plus the
policy's own penalty. ``prune_every`` closes the lowest-scoring ``prune_rate`` of open edges every so many
iterations (AgentPrune's schedule). The tokens spent training are counted apart from any evaluation's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tokenomy.agents.answers import answer_matches
from tokenomy.errors import TokenomyError
from tokenomy.kernels import Usage

from .graph import AgentGraph, Mask
from .policy import EdgePolicy, effective_items, mask_f1
from .runtime import GraphResult, GraphTeam

__all__ = ["TeamTask", "TrainConfig", "TrainReport", "IterationRecord", "train_policy", "evaluate", "EvalReport"]


@dataclass(frozen=True)
class TeamTask:
    """A question and its gold answer."""

    question: str
    answer: str


@dataclass
class TrainConfig:
    iterations: int = 50
    batch: int = 4
    rollouts: int = 4
    lam: float = 0.1
    """Reward lost per 1,000 tokens."""
    lr: float | None = None
    """Adam's learning rate (default: the policy's, 0.1 for free logits, 0.03 for the GNN)."""
    baseline: str = "group"
    ema: float = 0.9
    entropy: float = 0.0
    """Weight of an entropy bonus on the sampled decisions (keeps a policy with shared weights exploring)."""
    normalize: bool = True
    """Divide advantages by their standard deviation over the iteration."""
    prune_every: int = 0
    prune_rate: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.baseline not in ("group", "ema"):
            raise ValueError(f"baseline must be group or ema, got {self.baseline!r}")
        if self.baseline == "group" and self.rollouts < 2:
            raise ValueError("a group baseline needs rollouts >= 2 (or use baseline='ema')")
        if self.iterations < 1 or self.batch < 1 or self.rollouts < 1:
            raise ValueError("iterations, batch and rollouts must be >= 1")


@dataclass
class IterationRecord:
    iteration: int
    reward: float
    accuracy: float
    tokens: float
    f1: float | None
    kept: int
    """Agents, edges and rounds the deterministic mask runs (for the first task of the batch)."""


@dataclass
class TrainReport:
    history: list[IterationRecord] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    """Every token spent by training runs (apart from evaluation)."""
    runs: int = 0
    failed_runs: int = 0
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return (self.usage.prompt_tokens or 0) + (self.usage.completion_tokens or 0)

    def first_iteration_at(self, f1: float) -> int | None:
        """The first iteration (1-based) whose deterministic mask reached ``f1`` and stayed there."""
        hit = None
        for r in self.history:
            if r.f1 is not None and r.f1 >= f1:
                hit = hit or r.iteration
            else:
                hit = None
        return hit

    def to_json(self) -> dict[str, Any]:
        return {"history": [vars(r) for r in self.history], "usage": self.usage.to_dict(), "runs": self.runs,
                "failed_runs": self.failed_runs, "seconds": round(self.seconds, 2)}


def _threshold_f1(policy: EdgePolicy, graph: AgentGraph, questions: Sequence[str], oracle: Mask) -> float:
    scores = [mask_f1(graph, policy.mask_for(graph, q), oracle) for q in questions]
    return sum(scores) / len(scores)


def train_policy(policy: EdgePolicy, team: GraphTeam, tasks: Sequence[TeamTask], config: TrainConfig | None = None,
                 *, oracle: Mask | None = None, check: Callable[[Any, str], bool] = answer_matches,
                 on_iteration: Callable[[IterationRecord], None] | None = None) -> TrainReport:
    """Train ``policy`` on ``tasks`` by running ``team`` (whose graph the policy was made for).

    A run that fails (an engine error, an exceeded budget) scores 0 and training goes on.
    ``oracle``: a known-best mask, to record the F1 of the deterministic mask every iteration.
    """
    cfg = config or TrainConfig()
    if not tasks:
        raise ValueError("training needs at least one task")
    graph = team.graph
    policy.check(graph)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr or policy.default_lr) if params else None
    gen = torch.Generator().manual_seed(cfg.seed)
    report = TrainReport()
    baseline = 0.0
    start = time.perf_counter()
    probe = [t.question for t in tasks[: min(len(tasks), 8)]]
    for it in range(cfg.iterations):
        batch = [tasks[(it * cfg.batch + i) % len(tasks)] for i in range(cfg.batch)]
        terms: list[tuple[float, torch.Tensor, torch.Tensor]] = []  # (advantage, log p, entropy)
        rewards_all: list[float] = []
        correct_all: list[float] = []
        tokens_all: list[float] = []
        for task in batch:
            logps, ents, rewards = [], [], []
            for _ in range(cfg.rollouts):
                real = policy.realize(graph, task.question, mode="sample", generator=gen)
                ok, tokens = 0.0, 0
                try:
                    result: GraphResult = team.run(task.question, mask=real.mask)
                    report.usage = report.usage + result.total
                    tokens = result.tokens
                    ok = float(check(result.answer, task.answer))
                except TokenomyError:
                    report.failed_runs += 1
                report.runs += 1
                r = ok - cfg.lam * tokens / 1000
                logps.append(real.log_prob)
                ents.append(real.entropy)
                rewards.append(r)
                correct_all.append(ok)
                tokens_all.append(tokens)
            rewards_all += rewards
            if cfg.baseline == "group":
                b = sum(rewards) / len(rewards)
                terms += [(r - b, lp, h) for r, lp, h in zip(rewards, logps, ents, strict=True)]
            else:
                for r, lp, h in zip(rewards, logps, ents, strict=True):
                    terms.append((r - baseline, lp, h))
                    baseline = cfg.ema * baseline + (1 - cfg.ema) * r
        if opt is not None:
            opt.zero_grad()
            adv = torch.tensor([a for a, _, _ in terms])
            if cfg.normalize and len(terms) > 1:
                adv = adv / (adv.std() + 1e-6)
            logp = torch.stack([lp for _, lp, _ in terms])
            ent = torch.stack([h for _, _, h in terms])
            loss = -(adv * logp).mean() - cfg.entropy * ent.mean() + policy.penalty()
            if loss.requires_grad:
                loss.backward()
                opt.step()
        if cfg.prune_every and (it + 1) % cfg.prune_every == 0:
            policy.prune(cfg.prune_rate, probe)
        f1 = _threshold_f1(policy, graph, probe, oracle) if oracle is not None else None
        kept = len(effective_items(graph, policy.mask_for(graph, batch[0].question)))
        rec = IterationRecord(it + 1, sum(rewards_all) / len(rewards_all), sum(correct_all) / len(correct_all),
                              sum(tokens_all) / len(tokens_all), f1, kept)
        report.history.append(rec)
        if on_iteration is not None:
            on_iteration(rec)
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class EvalReport:
    """A graph (or a policy) evaluated on tasks: accuracy and mean tokens per question."""

    topology: str
    correct: list[bool]
    tokens: list[int]
    calls: list[int]
    usage: Usage

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0

    @property
    def mean_tokens(self) -> float:
        return sum(self.tokens) / len(self.tokens) if self.tokens else 0.0

    @property
    def mean_calls(self) -> float:
        return sum(self.calls) / len(self.calls) if self.calls else 0.0


def evaluate(team: GraphTeam, tasks: Sequence[TeamTask], topology: str = "", *,
             check: Callable[[Any, str], bool] = answer_matches) -> EvalReport:
    """Run every task once on ``team`` (its policy's deterministic masks, if it has one)."""
    rep = EvalReport(topology or team.graph.name, [], [], [], Usage())
    for t in tasks:
        try:
            res = team.run(t.question)
        except TokenomyError:
            rep.correct.append(False)
            rep.tokens.append(0)
            rep.calls.append(0)
            continue
        rep.usage = rep.usage + res.total
        rep.correct.append(check(res.answer, t.answer))
        rep.tokens.append(res.tokens)
        rep.calls.append(res.total.calls)
    return rep
