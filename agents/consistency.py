"""Self-consistency live on an engine: sample under a stopping rule, then vote.

``SelfConsistency(engine, rule)`` draws samples a chunk at a time until the rule (``tokenomy.agents.stopping``)
stops, reduces each reply with a normalizer (``tokenomy.agents.answers``) and votes; ``VoteResult`` holds the
answer, the samples, the votes and what was charged. ``SelfConsistency.sample`` draws a fixed pool to store and
score later (``tokenomy.agents.replay``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tokenomy.kernels import Engine, SamplingParams
from tokenomy.kernels.types import Completion, PromptInput
from tokenomy.kernels.usage import Usage

from .answers import Normalizer, normalizer_for
from .sampling import Sample, _check_positive, vote_counts
from .stopping import Decision, StoppingRule

__all__ = ["SelfConsistency", "VoteResult"]


@dataclass
class VoteResult:
    """The outcome of one live self-consistency run."""

    answer: str | None
    samples: list[Sample]
    """The samples the vote used (for short-m@k, the m that finished first, in finishing order)."""
    votes: dict[str, int]
    usage: Usage
    """What was charged: every generated sample's usage, except that under short-m@k completion tokens follow
    the lockstep accounting of ``short_m_at_k``."""
    stopped: str
    """Why sampling stopped: ``unanimous window``, ``confident``, ``max samples`` or ``first m finished``."""
    generated_tokens: int = 0
    """Completion tokens the engine actually generated, over every sample drawn."""
    discarded: list[Sample] = field(default_factory=list)
    """Samples generated but not in the vote: those past the stopping point of a batch, or short-m@k's
    unfinished ones."""

    @property
    def n_samples(self) -> int:
        return len(self.samples)

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens charged (unknown counts as 0)."""
        return (self.usage.prompt_tokens or 0) + (self.usage.completion_tokens or 0)

    @property
    def discarded_tokens(self) -> int:
        """Completion tokens generated that did not go into the vote."""
        return self.generated_tokens - sum(s.completion_tokens for s in self.samples)


class SelfConsistency:
    """Self-consistency on an engine under a stopping rule.

    Sample ``i`` of a run is decoded with seed ``seed + i``, so a run is reproducible and a longer run extends a
    shorter one. Samples are requested through ``generate_batch`` a chunk at a time (ESC: a window; short-m@k:
    all k; otherwise ``batch``, default 1), so batching engines gain. A chunk can overshoot a rule that stops in
    the middle of it: the vote then uses the samples up to the stopping point and the rest are ``discarded``
    (their tokens were spent and are in ``usage``).

    Args:
        engine: any ``Engine``.
        rule: the ``StoppingRule``.
        normalizer: an answer kind (``answers.NORMALIZERS``) or a function ``text -> answer | None``.
        temperature, top_p, max_tokens, stop: the sampling parameters of every sample.
        seed: the seed of the first sample; ``None`` leaves seeds to the engine.
        batch: samples per ``generate_batch`` call for rules that stop sample by sample.
        agent, tags: recorded with each request.
    """

    def __init__(self, engine: Engine, rule: StoppingRule, *, normalizer: str | Normalizer = "auto",
                 temperature: float = 0.7, top_p: float = 0.95, max_tokens: int = 128, stop: Sequence[str] = (),
                 seed: int | None = 0, batch: int | None = None, agent: str | None = None,
                 tags: Sequence[str] = ()) -> None:
        if batch is not None:
            _check_positive(batch=batch)
        self.engine = engine
        self.rule = rule
        self.normalize = normalizer_for(normalizer)
        self.params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                     stop=tuple(stop), seed=seed)
        self.seed = seed
        self.batch = batch or 1
        self.agent = agent
        self.tags = tuple(tags)

    def _params(self, i: int) -> SamplingParams:
        seed = None if self.seed is None else self.seed + i
        return SamplingParams(max_tokens=self.params.max_tokens, temperature=self.params.temperature,
                              top_p=self.params.top_p, stop=self.params.stop, seed=seed)

    def _generate(self, prompt: PromptInput, start: int, count: int) -> tuple[list[Sample], Usage]:
        reqs = [self.engine.make_request(prompt, self._params(i), agent=self.agent, tags=self.tags)
                for i in range(start, start + count)]
        completions = self.engine.generate_batch(reqs)
        samples: list[Sample] = []
        usage = Usage()
        for req, c in zip(reqs, completions, strict=True):
            assert isinstance(c, Completion)  # generate_batch raised otherwise
            samples.append(Sample.from_completion(c, self.normalize, req.params.seed))
            usage = usage + c.usage
        return samples, usage

    def sample(self, prompt: PromptInput, n: int) -> list[Sample]:
        """``n`` samples with seeds ``seed .. seed + n - 1`` (a pool to store and ``replay``), ``batch`` at a time."""
        pool: list[Sample] = []
        while len(pool) < n:
            more, _ = self._generate(prompt, len(pool), min(self.batch, n - len(pool)))
            pool.extend(more)
        return pool

    def run(self, prompt: PromptInput) -> VoteResult:
        """Sample until the rule stops, then vote."""
        rule = self.rule
        drawn: list[Sample] = []
        usage = Usage()
        decision: Decision | None = None
        while decision is None or decision.exhausted:
            count = rule.next_chunk(len(drawn), self.batch)
            if count <= 0:  # at max_samples
                break
            more, spent = self._generate(prompt, len(drawn), count)
            drawn.extend(more)
            usage = usage + spent
            decision = rule.apply(drawn)
        if decision is None:
            decision = rule.apply(drawn)
        stopped = "max samples" if decision.exhausted else decision.stopped
        generated = sum(s.completion_tokens for s in drawn)
        if rule.lockstep:
            usage = Usage(prompt_tokens=usage.prompt_tokens, cached_prompt_tokens=usage.cached_prompt_tokens,
                          completion_tokens=decision.completion_tokens, calls=usage.calls,
                          unknown_fields=usage.unknown_fields)
        used_ids = {id(s) for s in decision.used}
        return VoteResult(answer=decision.answer, samples=decision.used,
                          votes=vote_counts([s.answer for s in decision.used]), usage=usage, stopped=stopped,
                          generated_tokens=generated, discarded=[s for s in drawn if id(s) not in used_ids])

