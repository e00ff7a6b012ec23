"""Scoring a stopping rule on stored samples, without an engine.

A pool is the samples of one item (``SelfConsistency.sample`` draws one); ``save_pools`` and ``load_pools`` store
pools as JSON, and ``replay(rule, pools, gold)`` runs the rule over seeded shuffles of each pool and reports the
samples and tokens it spent, its accuracy against gold answers and its agreement with the whole pool's majority.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .answers import Normalizer, normalizer_for
from .sampling import Sample, _check_positive, majority_vote
from .stopping import StoppingRule

__all__ = ["ReplayReport", "replay", "save_pools", "load_pools"]


def save_pools(path: str | Path, pools: Sequence[Sequence[Sample]]) -> None:
    """Write sample pools (one list per item) as JSON."""
    Path(path).write_text(json.dumps([[s.to_dict() for s in pool] for pool in pools], ensure_ascii=False))


def load_pools(path: str | Path) -> list[list[Sample]]:
    """Read sample pools written by ``save_pools``."""
    return [[Sample.from_dict(d) for d in pool] for pool in json.loads(Path(path).read_text())]


@dataclass
class ReplayReport:
    """A stopping rule scored on stored samples, averaged over items and shuffles."""

    rule: str
    mean_samples: float
    """Samples drawn per item (for short-m@k, the k started, not the m voted)."""
    mean_tokens: float
    """Completion tokens charged per item (short-m@k: lockstep accounting)."""
    accuracy: float | None
    """Share of runs whose answer equals the gold answer (``None`` without gold)."""
    agreement: float
    """Share of runs whose answer equals the majority vote of the item's whole pool."""
    per_item_samples: list[float]
    per_item_tokens: list[float] = field(default_factory=list)
    shuffles: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        acc = "-" if self.accuracy is None else f"{self.accuracy:.3f}"
        return (f"{self.rule}: samples={self.mean_samples:.2f} tokens={self.mean_tokens:.1f} "
                f"accuracy={acc} agreement={self.agreement:.3f}")


def replay(rule: StoppingRule, pools: Sequence[Sequence[Sample]], gold: Sequence[str | None] | None = None,
           shuffles: int = 50, seed: int = 0, *, normalizer: str | Normalizer | None = None) -> ReplayReport:
    """Score ``rule`` on stored sample pools, one per item, without an engine.

    For each item and each of ``shuffles`` seeded permutations of its pool, the rule draws samples in that order
    until it stops (or the pool runs out) and votes (``StoppingRule.apply``; short-m@k takes the first k of the
    permutation). The permutations depend only on ``seed`` and the pools' sizes, so rules replayed with the same
    seed see the same orders.

    Args:
        rule: the stopping rule.
        pools: the samples of each item (answers already normalized).
        gold: the gold answer of each item; compared with the voted answers as given, or after ``normalizer``.
        shuffles: permutations per item.
        seed: the seed of the permutations.
        normalizer: an answer kind or function applied to ``gold`` first.
    """
    _check_positive(shuffles=shuffles)
    if gold is not None and len(gold) != len(pools):
        raise ValueError(f"{len(gold)} gold answers for {len(pools)} pools")
    if not pools:
        raise ValueError("replay needs at least one pool")
    norm = normalizer_for(normalizer) if normalizer is not None else None
    rng = random.Random(seed)
    per_samples: list[float] = []
    per_tokens: list[float] = []
    correct = agree = runs = 0
    for item, pool in enumerate(pools):
        if not pool:
            raise ValueError(f"pool {item} is empty")
        full = majority_vote([s.answer for s in pool])
        target = None
        if gold is not None:
            target = norm(gold[item]) if norm is not None else gold[item]
        n_sum = t_sum = 0
        for _ in range(shuffles):
            order = list(pool)
            rng.shuffle(order)
            decision = rule.apply(order)
            drawn = rule.max_samples if rule.lockstep else len(decision.used)
            n_sum += drawn
            t_sum += decision.completion_tokens
            runs += 1
            agree += decision.answer == full
            correct += target is not None and decision.answer == target
        per_samples.append(n_sum / shuffles)
        per_tokens.append(t_sum / shuffles)
    return ReplayReport(
        rule=rule.name,
        mean_samples=sum(per_samples) / len(per_samples),
        mean_tokens=sum(per_tokens) / len(per_tokens),
        accuracy=correct / runs if gold is not None else None,
        agreement=agree / runs,
        per_item_samples=per_samples,
        per_item_tokens=per_tokens,
        shuffles=shuffles,
    )
