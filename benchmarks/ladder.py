"""A seeded difficulty ladder of small reasoning tasks with exact checkers, for benchmarking tiny models.

Five families, each with levels 1..5 whose difficulty rises with the level:

* ``arithmetic``: a chain of additions and subtractions of the numbers 1..9, level L has L+1 operands
  (level 1: ``What is 3 + 4?``); the running total never goes below zero. The answer is an integer.
* ``last_letters``: concatenate the last letters of L+1 common English first names; a lowercase string.
* ``coin_flip``: a coin starts heads up and L+1 people each flip it or not; is it still heads up? ``yes``/``no``.
* ``sorting``: sort L+2 distinct integers from 1..20 ascending; the answer is written ``1, 4, 9``.
* ``carry``: add two L-digit numbers (level 1: one digit each); from level 2 on at least one column carries.

Every item is reproducible: the items of a (family, level) come from one stream,
``random.Random(f"ladder-{family}-{level}-{split}-{seed}")``, so the first k items do not depend on ``n``. The
splits (``train``, ``dev``, ``test``, ``shots``) partition each family's questions by a hash of the question,
so two splits never share a question; different seeds give different items as far as the level's space allows.
Level 1 is small: ``carry`` has 81 questions (27 in ``test``, 30 in ``dev``, 9 in ``shots``), ``arithmetic`` 126
(50, 40, 7). Within one call items are distinct; asking for more than a split holds raises ``ValueError``.

Prompts work for base and instruct models alike: :func:`few_shot_prompt` is a raw completion prompt (a one-line
instruction, ``shots`` solved examples of the same family and level from the ``shots`` split, then the question)
meant to be decoded until :data:`STOP`; :func:`chat_prompt` is the same task as chat messages. The examples of
a (family, level) are the same for every item, so all its prompts share their prefix::

    from tokenomy.benchmarks.ladder import check, few_shot_prompt, keep_levels, ladder
    items = ladder(n=20)                      # 5 families x 5 levels x 20 items, split "test"
    prompt = few_shot_prompt(items[0])        # '...Q: What is 3 + 4?\\nA:'
    check(items[0], " 7\\nQ: What is")        # True when the answer is 7

:func:`extract` pulls a family's answer out of a raw completion (first non-empty line, a leading "The answer is"
dropped), :func:`check` compares it with the gold answer exactly, and :func:`keep_levels` keeps the (family,
level) pairs where every model's accuracy lies in a band (20%..80% by default): the levels that tell models
apart.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial

from tokenomy.agents.answers import Normalizer
from tokenomy.agents.policy import Problem

__all__ = ["FAMILIES", "LEVELS", "SPLITS", "STOP", "INSTRUCTIONS", "Item", "ladder", "level_items", "problem",
           "few_shot_prompt", "chat_prompt", "extract", "check", "normalizer", "accuracy_by_level", "keep_levels"]

FAMILIES: tuple[str, ...] = ("arithmetic", "last_letters", "coin_flip", "sorting", "carry")
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
STOP: tuple[str, ...] = ("\n",)
"""Where a completion of :func:`few_shot_prompt` ends: the answer is one line."""

_BUCKETS = 16
_SPLIT_BUCKETS: dict[str, frozenset[int]] = {  # shares of each family's questions: 3/16, 2/16, 5/16, 6/16
    "train": frozenset({0, 1, 2}),
    "shots": frozenset({3, 4}),
    "dev": frozenset({5, 6, 7, 8, 9}),
    "test": frozenset({10, 11, 12, 13, 14, 15}),
}
SPLITS: tuple[str, ...] = tuple(_SPLIT_BUCKETS)

INSTRUCTIONS: dict[str, str] = {
    "arithmetic": "Compute the value of each expression.",
    "last_letters": "Join the last letters of the names into one lowercase word.",
    "coin_flip": "Say whether the coin is still heads up after the flips: yes or no.",
    "sorting": "Sort the numbers from smallest to largest.",
    "carry": "Add the two numbers.",
}
"""The one-line instruction that opens each family's prompts."""

_FORMATS: dict[str, str] = {
    "arithmetic": "a single integer",
    "last_letters": "the letters as one lowercase word",
    "coin_flip": "yes or no",
    "sorting": "the numbers separated by a comma and a space, like 1, 4, 9",
    "carry": "a single integer",
}

ARITH_MAX = 9
SORT_MAX = 20
NAMES: tuple[str, ...] = (
    "Ann", "Bob", "Carl", "Dana", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Kate", "Liam", "Mary",
    "Nick", "Olivia", "Paul", "Rose", "Sam", "Tom", "Uma", "Victor", "Wendy", "Alex", "Ben", "Chloe", "David",
    "Ella", "Fred", "George", "Helen", "Ivan", "James", "Julia", "Kevin", "Laura", "Mark", "Nora", "Oscar",
    "Peter", "Ruth", "Sarah", "Steve", "Tina", "Walter", "Amy", "Brian", "Claire", "Daniel", "Eric", "Joy",
    "Lucy", "Max", "Ralph", "Ruby", "Zoe", "Hugh", "Carol", "Philip",
)
"""Common English first names (one word each, distinct last letters well mixed)."""


@dataclass(frozen=True)
class Item:
    """One ladder question.

    Attributes:
        family: one of :data:`FAMILIES`.
        level: the difficulty, 1 (easiest) and up.
        index: the item's position in its (family, level) stream.
        question: the question, one line.
        answer: the canonical gold answer (what :func:`extract` returns for a right completion).
    """

    family: str
    level: int
    index: int
    question: str
    answer: str

    @property
    def id(self) -> str:
        """``<family>-<level>-<index>``, e.g. ``arithmetic-3-17``."""
        return f"{self.family}-{self.level}-{self.index}"


# --- generators: (rng, level) -> (question, answer) ---------------------------------------------------------------


def _arithmetic(rng: random.Random, level: int) -> tuple[str, str]:
    total = rng.randint(1, ARITH_MAX)
    parts = [str(total)]
    for _ in range(level):
        if total >= 1 and rng.random() < 0.5:
            x = rng.randint(1, min(ARITH_MAX, total))
            total -= x
            parts += ["-", str(x)]
        else:
            x = rng.randint(1, ARITH_MAX)
            total += x
            parts += ["+", str(x)]
    return f"What is {' '.join(parts)}?", str(total)


def _last_letters(rng: random.Random, level: int) -> tuple[str, str]:
    names = rng.sample(NAMES, level + 1)
    return (f'Take the last letters of the names in "{" ".join(names)}" and concatenate them.',
            "".join(n[-1] for n in names).lower())


def _coin_flip(rng: random.Random, level: int) -> tuple[str, str]:
    names = rng.sample(NAMES, level + 1)
    flips = [rng.random() < 0.5 for _ in names]
    sentences = [f"{n} flips the coin." if f else f"{n} does not flip the coin." for n, f in zip(names, flips,
                                                                                                  strict=True)]
    question = " ".join(["A coin is heads up.", *sentences, "Is the coin still heads up?"])
    return question, "yes" if sum(flips) % 2 == 0 else "no"


def _sorting(rng: random.Random, level: int) -> tuple[str, str]:
    numbers = rng.sample(range(1, max(SORT_MAX, level + 2) + 1), level + 2)
    while numbers == sorted(numbers):  # never already sorted: copying the question must not pass
        rng.shuffle(numbers)
    return (f"Sort these numbers in ascending order: {', '.join(map(str, numbers))}",
            ", ".join(map(str, sorted(numbers))))


def _carries(a: int, b: int) -> bool:
    while a or b:
        if a % 10 + b % 10 >= 10:
            return True
        a, b = a // 10, b // 10
    return False


def _carry(rng: random.Random, level: int) -> tuple[str, str]:
    low, high = 10 ** (level - 1), 10**level - 1
    while True:
        a, b = rng.randint(low, high), rng.randint(low, high)
        if level == 1 or _carries(a, b):
            return f"What is {a} + {b}?", str(a + b)


_GENERATORS: dict[str, Callable[[random.Random, int], tuple[str, str]]] = {
    "arithmetic": _arithmetic,
    "last_letters": _last_letters,
    "coin_flip": _coin_flip,
    "sorting": _sorting,
    "carry": _carry,
}


def _bucket(family: str, question: str) -> int:
    digest = hashlib.sha256(f"{family}\x00{question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _BUCKETS


def _validate(family: str, level: int) -> None:
    if family not in _GENERATORS:
        raise ValueError(f"unknown ladder family {family!r}; expected one of {FAMILIES}")
    if level < 1:
        raise ValueError(f"ladder levels start at 1, got {level}")


@lru_cache(maxsize=512)
def _stream(family: str, level: int, n: int, seed: int, split: str) -> tuple[Item, ...]:
    _validate(family, level)
    if split not in _SPLIT_BUCKETS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    buckets = _SPLIT_BUCKETS[split]
    rng = random.Random(f"ladder-{family}-{level}-{split}-{seed}")
    make = _GENERATORS[family]
    out: list[Item] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 1000 + 200 * n:
            raise ValueError(f"{family} level {level} has only about {len(out)} distinct questions in split "
                             f"{split!r}; asked for {n}")
        question, answer = make(rng, level)
        if question in seen or _bucket(family, question) not in buckets:
            continue
        seen.add(question)
        out.append(Item(family, level, len(out), question, answer))
    return tuple(out)


def level_items(family: str, level: int, n: int = 20, seed: int = 0, split: str = "test") -> list[Item]:
    """The first ``n`` distinct items of one (family, level) in a split.

    Args:
        family: one of :data:`FAMILIES`.
        level: 1 and up.
        n: how many items.
        seed: which stream; the first k items of a stream do not depend on ``n``.
        split: one of :data:`SPLITS`; splits never share a question.

    Raises:
        ValueError: an unknown family or split, a level below 1, or more items than the level's space holds.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return list(_stream(family, level, n, seed, split))


def ladder(families: Iterable[str] = FAMILIES, levels: Iterable[int] = LEVELS, n: int = 20, seed: int = 0,
           split: str = "test") -> list[Item]:
    """``n`` items per (family, level), family by family, then level by level.

    Args:
        families: family names (default: all of :data:`FAMILIES`).
        levels: the levels of each family (default 1..5).
        n: items per (family, level).
        seed: the seed of every stream.
        split: one of :data:`SPLITS`.

    Returns:
        The items; ``Item.index`` counts within each (family, level).
    """
    levels = tuple(levels)
    return [it for family in families for level in levels for it in level_items(family, level, n, seed, split)]


# --- prompts ------------------------------------------------------------------------------------------------------


def _shots(item: Item, shots: int, seed: int) -> list[Item]:
    """``shots`` solved examples of the item's family and level from the ``shots`` split, never the item."""
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    pool = _stream(item.family, item.level, shots + 1, seed, "shots")
    return [ex for ex in pool if ex.question != item.question][:shots]


def few_shot_prompt(item: Item, shots: int = 3, *, seed: int = 0) -> str:
    """A raw-text completion prompt for base and instruct models alike; decode it until :data:`STOP`.

    The family's one-line instruction, a blank line, ``shots`` solved examples (``Q: ...\\nA: <answer>\\n\\n``)
    of the same family and level, then ``Q: <question>\\nA:``. The examples depend only on (family, level,
    ``seed``), so the prompts of a level share everything but the last question.

    Args:
        item: the question to ask.
        shots: how many solved examples (0 for none).
        seed: the seed of the ``shots`` split's stream.
    """
    examples = "".join(f"Q: {ex.question}\nA: {ex.answer}\n\n" for ex in _shots(item, shots, seed))
    return f"{INSTRUCTIONS[item.family]}\n\n{examples}Q: {item.question}\nA:"


def problem(item: Item, shots: int = 3, *, seed: int = 0) -> Problem:
    """The item as a policy's ``Problem``: its direct prompt (``Format().direct``) is ``few_shot_prompt``."""
    examples = "".join(f"Q: {ex.question}\nA: {ex.answer}\n\n" for ex in _shots(item, shots, seed))
    return Problem(item.question, context=f"{INSTRUCTIONS[item.family]}\n\n{examples}", stop=STOP,
                   normalizer=normalizer(item.family))


def chat_prompt(item: Item, shots: int = 0, *, seed: int = 0) -> list[dict[str, str]]:
    """The item as chat messages: a system message asking for the answer only, then the question.

    Args:
        item: the question to ask.
        shots: solved examples to put first, as earlier user/assistant turns (0 for none).
        seed: the seed of the ``shots`` split's stream.
    """
    system = (f"{INSTRUCTIONS[item.family]} Reply with the answer only, on one line, with no explanation: "
              f"{_FORMATS[item.family]}.")
    messages = [{"role": "system", "content": system}]
    for ex in _shots(item, shots, seed):
        messages += [{"role": "user", "content": ex.question}, {"role": "assistant", "content": ex.answer}]
    messages.append({"role": "user", "content": item.question})
    return messages


# --- checking -----------------------------------------------------------------------------------------------------

_PREFIX = re.compile(r"^[\s*_`]*(?:a\s*:|(?:so\s*,?\s*)?(?:the\s+)?(?:final\s+)?answer\b\s*(?:is\b)?\s*[:=]?)[\s*_`:]*",
                     re.I)
_NUMBER = re.compile(r"(?<![\d.])-?\d+(?:,\d{3})*(?:\.\d+)?")
_INT = re.compile(r"(?<!\d)-?\d+")
_WORD = re.compile(r"[A-Za-z]+")
_SPELLED = re.compile(r"^[\s\"'`*]*([A-Za-z](?:[\s,\-]+[A-Za-z])+)(?![A-Za-z])")
_COIN = re.compile(r"\b(yes|no|heads|tails)\b", re.I)
_COIN_MAP = {"yes": "yes", "heads": "yes", "no": "no", "tails": "no"}


def _line(text: str) -> str:
    """The first non-empty line, a leading ``A:`` or "The answer is" dropped."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    return _PREFIX.sub("", line, count=1)


def _integer(line: str) -> str | None:
    if "=" in line:  # "3 + 4 = 7": the result follows the last "="
        after = line.rsplit("=", 1)[1]
        if _NUMBER.search(after):
            line = after
    m = _NUMBER.search(line)
    if m is None:
        return None
    number = m.group().replace(",", "")
    whole, _, frac = number.partition(".")
    if frac.strip("0"):
        return number  # 7.5 is not an integer: it matches no gold answer
    return str(int(whole))


def _letters(line: str) -> str | None:
    spelled = _SPELLED.match(line)  # "n k" or "n, k": letter by letter
    if spelled:
        return "".join(_WORD.findall(spelled.group(1))).lower()
    m = _WORD.search(line)
    return m.group().lower() if m else None


def _coin(line: str) -> str | None:
    m = _COIN.search(line)
    return _COIN_MAP[m.group(1).lower()] if m else None


def _sorted_list(line: str) -> str | None:
    numbers = _INT.findall(line)
    return ", ".join(str(int(x)) for x in numbers) if numbers else None


_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "arithmetic": _integer,
    "last_letters": _letters,
    "coin_flip": _coin,
    "sorting": _sorted_list,
    "carry": _integer,
}


def extract(item_or_family: Item | str, text: str | None) -> str | None:
    """A family's answer in a model's raw completion, in canonical form, or None when there is none.

    Only the first non-empty line counts (a leading ``A:`` or "The answer is" is dropped): ``arithmetic`` and
    ``carry`` take the first integer (after the last ``=`` when there is one; ``1,234`` reads 1234, ``7.5`` stays
    a non-integer), ``last_letters`` the first alphabetic token lowercased (or letters spelled out one by one,
    ``n k``), ``coin_flip`` the first of yes/no/heads/tails as ``yes``/``no``, ``sorting`` every integer,
    re-joined as ``1, 4, 9``.

    Args:
        item_or_family: an item or a family name.
        text: the completion (None gives None).
    """
    family = item_or_family.family if isinstance(item_or_family, Item) else item_or_family
    if family not in _EXTRACTORS:
        raise ValueError(f"unknown ladder family {family!r}; expected one of {FAMILIES}")
    if text is None:
        return None
    return _EXTRACTORS[family](_line(text))


def check(item: Item, text: str | None) -> bool:
    """Whether the completion's extracted answer equals the item's gold answer exactly."""
    return extract(item, text) == item.answer


def normalizer(family: str) -> Normalizer:
    """The extractor of a family as a one-argument function (for voting over samples: equal answers are equal
    strings, unreadable ones are None)."""
    if family not in _EXTRACTORS:
        raise ValueError(f"unknown ladder family {family!r}; expected one of {FAMILIES}")
    return partial(extract, family)


# --- selecting levels ---------------------------------------------------------------------------------------------


def accuracy_by_level(items: Sequence[Item], completions: Sequence[str | None]) -> dict[tuple[str, int], float]:
    """The share of right completions per (family, level), in the order the pairs first appear.

    Args:
        items: the questions.
        completions: one completion per item (None counts as wrong).
    """
    if len(items) != len(completions):
        raise ValueError(f"{len(items)} items but {len(completions)} completions")
    right: dict[tuple[str, int], list[bool]] = {}
    for it, text in zip(items, completions, strict=True):
        right.setdefault((it.family, it.level), []).append(check(it, text))
    return {key: sum(v) / len(v) for key, v in right.items()}


def keep_levels(scores: Mapping[tuple[str, int], Mapping[str, float]], lo: float = 0.2, hi: float = 0.8,
                models: Iterable[str] | None = None) -> list[tuple[str, int]]:
    """The (family, level) pairs where every model's accuracy lies in ``[lo, hi]``, in the order of ``scores``.

    Args:
        scores: accuracy per (family, level), per model name.
        lo: the lowest accuracy kept.
        hi: the highest accuracy kept.
        models: the models that must be in the band (None: every model scored at that pair). A pair that lacks
            a score for one of them, or has no scores at all, is not kept.
    """
    wanted = None if models is None else tuple(models)
    kept: list[tuple[str, int]] = []
    for key, by_model in scores.items():
        names = tuple(by_model) if wanted is None else wanted
        if names and all(m in by_model and lo <= by_model[m] <= hi for m in names):
            kept.append(key)
    return kept
