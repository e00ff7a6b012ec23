"""Answer-level sampling policies: self-consistency with early stopping, training-free.

Self-consistency samples several replies to one prompt, reduces each to a normalized answer and takes the
majority. The policies here decide *how many* samples to draw; they look only at the answers so far (and, for
short-m@k, at the samples' lengths), so the same rule runs live on an engine (``SelfConsistency``) and on stored
samples (``replay``), where it can be scored against gold answers without spending a token.

* ``FixedN(n)``: plain self-consistency@n.
* ``ESC(window, max_samples)``: Early-Stopping Self-Consistency. Samples come a window at a time; a window whose
  answers are all equal (and parseable) ends sampling; the vote is over all samples.
* ``AdaptiveConsistency(threshold, max_samples)``: stop once the posterior probability that the leading answer
  beats the runner-up, under a Beta prior, reaches ``threshold``; computed exactly with fractions.
* ``ShortMK(m, k)``: short-m@k. ``k`` samples decode in lockstep; when the first ``m`` finish the rest are
  cancelled and the vote is over those ``m`` (ties: the shorter).

Answers are compared after a normalizer (``normalize_answer``, ``NORMALIZERS``) turned each reply into a canonical
string; ``None`` means unparseable, and an unparseable answer is never a vote.
"""

from __future__ import annotations

import abc
import json
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from math import comb
from pathlib import Path
from typing import Any

from tokenomy.kernels import Engine, SamplingParams
from tokenomy.kernels.types import Completion, PromptInput
from tokenomy.kernels.usage import Usage

__all__ = [
    "Normalizer",
    "NORMALIZERS",
    "normalize_answer",
    "answer_text",
    "normalize_number",
    "normalize_text",
    "normalize_yesno",
    "normalize_list",
    "normalize_auto",
    "majority_vote",
    "vote_counts",
    "beta_majority_probability",
    "Sample",
    "Decision",
    "StoppingRule",
    "FixedN",
    "ESC",
    "AdaptiveConsistency",
    "ShortMK",
    "short_m_at_k",
    "SelfConsistency",
    "VoteResult",
    "ReplayReport",
    "replay",
    "save_pools",
    "load_pools",
    "POOL_EXHAUSTED",
]

Normalizer = Callable[[str | None], str | None]
"""Reply text -> canonical answer, or ``None`` when the reply holds no answer of that kind."""

# -- answer normalizers --------------------------------------------------------------------------------------

_THINK_END = "</think>"
# An answer marker: `answer:`, `Final answer =`, `the answer is`, or a capital `A:` opening a line (`Q: ...\nA: ...`).
_MARKER = re.compile(r"(?i:\banswer\b\s*(?:is\b\s*:?|[:=]))|(?m:^[ \t]*A:)")
_NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|-?\$?\.\d+")
_NUMBER_ONLY = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|-?\$?\.\d+%?")
_PUNCT = string.punctuation + string.whitespace + "“”‘’«»…–—"
_YES = frozenset({"yes", "y", "true", "correct", "right", "yeah", "yep", "affirmative", "t"})
_NO = frozenset({"no", "n", "false", "incorrect", "wrong", "nope", "negative", "f"})


def _split(text: str) -> tuple[bool, str]:
    """``(marked, part)``: whether the reply has an answer marker, and the first non-empty line after the last
    marker (or of the whole reply when it has none), stripped. A reasoning block (``...</think>``) is skipped."""
    if _THINK_END in text:
        text = text.rsplit(_THINK_END, 1)[1]
    marks = list(_MARKER.finditer(text))
    last = marks[-1] if marks else None
    rest = text[last.end():] if last is not None else text
    for line in rest.splitlines():
        if line.strip():
            return last is not None, line.strip()
    return last is not None, ""


def answer_text(text: str | None) -> str | None:
    """The answer part of a reply: the first non-empty line after its last answer marker (``answer:``,
    ``Answer =``, ``the answer is``, ``A:``), else its first non-empty line; ``None`` if there is none."""
    if not text:
        return None
    return _split(text)[1] or None


def _canon_number(token: str) -> str | None:
    """``"1,234.50"`` -> ``"1234.5"``, ``"5.0"`` -> ``"5"``, ``"$-3"`` -> ``"-3"``."""
    s = token.replace(",", "").replace("$", "").rstrip("%")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _numbers(text: str) -> list[str]:
    """The numbers in ``text``, in order, canonical. A ``-`` right after a digit, letter or ``)`` is a minus
    sign of an expression (``5-3``), not part of the number."""
    out: list[str] = []
    for m in _NUMBER.finditer(text):
        token = m.group()
        if token.startswith("-") and m.start() > 0 and (text[m.start() - 1].isalnum() or text[m.start() - 1] == ")"):
            token = token[1:]
        canon = _canon_number(token)
        if canon is not None:
            out.append(canon)
    return out


def _bare_number(part: str) -> str | None:
    """The number ``part`` is, if it is only a number (with ``$``, ``%``, and punctuation or markdown around it)."""
    t = part.strip().strip(" *_`'\"()[]{}").rstrip(".!?,;:").strip()
    if _NUMBER_ONLY.fullmatch(t):
        return _canon_number(t)
    return None


def _clean(part: str) -> str | None:
    t = " ".join(part.casefold().split()).strip(_PUNCT)
    return t or None


def normalize_number(text: str | None) -> str | None:
    """A numeric answer. After an answer marker: the first number of the answer line (after its last ``=``, so
    ``Answer: 2+3 = 5`` gives ``5``); without a marker: the last number of the reply. Commas, ``$`` and ``%`` go;
    ``5.0`` -> ``5``; a leading ``-`` stays. ``None`` if there is no number."""
    if not text:
        return None
    marked, part = _split(text)
    if marked:
        found = _numbers(part.rsplit("=", 1)[-1]) or _numbers(part)
        return found[0] if found else None
    body = text.rsplit(_THINK_END, 1)[-1]
    found = _numbers(body)
    return found[-1] if found else None


def normalize_text(text: str | None) -> str | None:
    """A free-text answer: the answer part, case-folded, whitespace collapsed, quotes and punctuation stripped at
    both ends (``'**"Paris."**'`` -> ``paris``)."""
    if not text:
        return None
    return _clean(_split(text)[1])


def normalize_yesno(text: str | None) -> str | None:
    """A polar answer: ``yes`` or ``no`` from the first word of the answer part (yes/true/correct/... or
    no/false/wrong/...), else from the only polarity its words show; ``None`` if neither or both."""
    if not text:
        return None
    words = [w.strip(_PUNCT) for w in _split(text)[1].casefold().split()]
    words = [w for w in words if w]
    if not words:
        return None
    if words[0] in _YES:
        return "yes"
    if words[0] in _NO:
        return "no"
    yes, no = any(w in _YES for w in words), any(w in _NO for w in words)
    if yes != no:
        return "yes" if yes else "no"
    return None


def normalize_list(text: str | None) -> str | None:
    """A list answer: items split on commas or semicolons (else on whitespace), each normalized as a number if
    it is one, else as text (a leading ``and``/``or`` dropped), kept in order and joined with ``,``:
    ``[A, b, and C.]`` -> ``a,b,c``; ``1 2.0 3`` -> ``1,2,3``."""
    if not text:
        return None
    part = _split(text)[1].strip(_PUNCT)
    pieces = re.split(r"[,;]", part) if re.search(r"[,;]", part) else part.split()
    items: list[str] = []
    for piece in pieces:
        item = re.sub(r"^(?:and|or)\s+", "", piece.strip(), flags=re.IGNORECASE)
        canon = _bare_number(item) or _clean(item)
        if canon:
            items.append(canon)
    return ",".join(items) or None


def normalize_auto(text: str | None) -> str | None:
    """A number if the answer part is just a number, else free text."""
    if not text:
        return None
    part = _split(text)[1]
    return _bare_number(part) or _clean(part)


NORMALIZERS: dict[str, Normalizer] = {
    "auto": normalize_auto,
    "number": normalize_number,
    "text": normalize_text,
    "yesno": normalize_yesno,
    "list": normalize_list,
}
"""The answer normalizers by kind."""


def _normalizer(kind: str | Normalizer) -> Normalizer:
    if callable(kind):
        return kind
    try:
        return NORMALIZERS[kind]
    except KeyError:
        raise ValueError(f"unknown answer kind {kind!r}; known: {', '.join(NORMALIZERS)}") from None


def normalize_answer(text: str | None, kind: str = "auto") -> str | None:
    """The canonical answer in a reply, as ``kind`` reads it (``auto``, ``number``, ``text``, ``yesno``,
    ``list``), or ``None`` if it holds none. Never raises on the text; an unknown ``kind`` is a ``ValueError``."""
    fn = _normalizer(kind)
    try:
        return fn(text)
    except Exception:  # a normalizer bug must not sink a vote: the answer is unparseable
        return None


# -- votes -----------------------------------------------------------------------------------------------------


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


# -- samples ---------------------------------------------------------------------------------------------------


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


def save_pools(path: str | Path, pools: Sequence[Sequence[Sample]]) -> None:
    """Write sample pools (one list per item) as JSON."""
    Path(path).write_text(json.dumps([[s.to_dict() for s in pool] for pool in pools], ensure_ascii=False))


def load_pools(path: str | Path) -> list[list[Sample]]:
    """Read sample pools written by ``save_pools``."""
    return [[Sample.from_dict(d) for d in pool] for pool in json.loads(Path(path).read_text())]


# -- stopping rules ----------------------------------------------------------------------------------------------

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


def _check_positive(**values: int) -> None:
    for k, v in values.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")


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


# -- live ----------------------------------------------------------------------------------------------------------


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
        normalizer: an answer kind of ``NORMALIZERS`` or a function ``text -> answer | None``.
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
        self.normalize = _normalizer(normalizer)
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


# -- replay -----------------------------------------------------------------------------------------------------


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
    norm = _normalizer(normalizer) if normalizer is not None else None
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
