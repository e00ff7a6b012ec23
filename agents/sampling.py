"""Samples and votes: what self-consistency draws and how the draws are counted.

Self-consistency samples several replies to one prompt, reduces each to a normalized answer (``Sample``, with a
normalizer of ``tokenomy.agents.answers``) and takes the majority (``majority_vote``); ``None`` means unparseable,
and an unparseable answer is never a vote. When to stop drawing is ``tokenomy.agents.stopping``; drawing live on an
engine is ``tokenomy.agents.consistency``; scoring a rule on stored samples is ``tokenomy.agents.replay``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from tokenomy.kernels.types import Completion

from .answers import Normalizer

__all__ = ["Sample", "majority_vote", "vote_counts"]


@dataclass
class Sample:
    """One sampled reply, its normalized answer and what it cost; a pool of these is what replay scores."""

    text: str
    answer: str | None
    """The normalized answer (``None``: unparseable, never a vote)."""
    completion_tokens: int
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_completion(cls, completion: Completion, normalizer: Normalizer, seed: int | None = None) -> Sample:
        u = completion.usage
        answer = normalizer(completion.text)
        completion_tokens = u.completion_tokens if u.completion_tokens is not None else len(completion.token_ids)
        return cls(text=completion.text, answer=answer, completion_tokens=completion_tokens,
                   prompt_tokens=u.prompt_tokens or 0, cached_prompt_tokens=u.cached_prompt_tokens or 0, seed=seed)


def vote_counts(answers: Sequence[str | None]) -> dict[str, int]:
    """Votes per answer (``None`` is no vote), most votes first, ties in the order ``majority_vote`` ranks them."""
    counts: Counter[str] = Counter()
    reached: dict[tuple[str, int], int] = {}
    for i, a in enumerate(answers):
        if a is not None:
            counts[a] += 1
            reached[(a, counts[a])] = i
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], reached[kv])))


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer, ``None`` not counted; a tie goes to the answer that reached the top count first.
    ``None`` when no answer parsed."""
    counts: Counter[str] = Counter()
    leader: str | None = None
    for a in answers:
        if a is None:
            continue
        counts[a] += 1
        if leader is None or counts[a] > counts[leader]:
            leader = a
    return leader


def _check_positive(**values: int) -> None:
    """Raise ``ValueError`` unless every value is a positive ``int`` (the counts rules, runs and replays take)."""
    for k, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")
