"""Answers: reading a reply's answer, and comparing answers.

Two jobs, one module:

* Reply normalizers turn a model's raw reply into a canonical answer string, or ``None`` when it holds no answer
  of that kind: ``normalize_number``, ``normalize_text``, ``normalize_yesno``, ``normalize_list`` and
  ``normalize_auto``, by kind in ``NORMALIZERS`` (``normalize_answer(text, kind)``). They find the answer part
  (after an answer marker, else the first line) themselves. Votes over samples compare these.
* ``canonical`` and ``answer_matches`` compare an answer that is already extracted (a value an agent, a graph or a
  plan returned) with another or with a gold answer: case, thousands separators, ``.0``, tool annotations
  (``[file.md#2]`` sources and ``[notes: ...]``) and outer punctuation aside; a numeric gold answer matches an
  answer whose only number it is, and a gold answer that is one capitalized name an answer whose only name it is
  (numbers and names the question holds aside).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "Normalizer",
    "NORMALIZERS",
    "normalizer_for",
    "normalize_answer",
    "answer_text",
    "normalize_number",
    "normalize_text",
    "normalize_yesno",
    "normalize_list",
    "normalize_auto",
    "canonical",
    "answer_matches",
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


def normalizer_for(kind: str | Normalizer) -> Normalizer:
    """The normalizer of an answer kind of ``NORMALIZERS``; a function is its own normalizer. An unknown kind is a
    ``ValueError``."""
    if callable(kind):
        return kind
    try:
        return NORMALIZERS[kind]
    except KeyError:
        raise ValueError(f"unknown answer kind {kind!r}; known: {', '.join(NORMALIZERS)}") from None


def normalize_answer(text: str | None, kind: str = "auto") -> str | None:
    """The canonical answer in a reply, as ``kind`` reads it (``auto``, ``number``, ``text``, ``yesno``,
    ``list``), or ``None`` if it holds none. Never raises on the text; an unknown ``kind`` is a ``ValueError``."""
    fn = normalizer_for(kind)
    try:
        return fn(text)
    except Exception:  # a normalizer bug must not sink a vote: the answer is unparseable
        return None


# -- comparing extracted answers -------------------------------------------------------------------------------

_NOTES = re.compile(r"\s*\[notes:[^\]]*\]")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def canonical(answer: Any) -> str:
    """An extracted answer as answers are compared: ``[notes: ...]`` and ``[file#n]`` sources removed, lower case,
    commas (thousands separators) removed, ``.0`` dropped after a digit, outer spaces, quotes and ``.!`` trimmed:
    ``' 1,250 [notes: archive] '`` -> ``'1250'``."""
    from tokenomy.tools.builtin.chunking import SOURCE  # here, so that importing the agents imports no tools

    t = _NOTES.sub("", str(answer)).strip().strip("\"'").strip()
    t = SOURCE.sub("", t).lower().replace(",", "")
    t = re.sub(r"(\d)\.0\b", r"\1", t)
    return t.strip(" .!\"'")


# A run of capitalized words ("Petra Lunde"); a possessive "'s" is not part of it.
_NAME_RUN = re.compile(r"\b[A-Z][A-Za-z]+(?:-[A-Z][A-Za-z]+)*\b(?:[ \t]+[A-Z][A-Za-z]+(?:-[A-Z][A-Za-z]+)*\b)*")
# Capitalized words that are not names: a sentence's first word, pronouns, and the words an agent opens its
# answer with. A run loses them at either end ("The Ambrel River" -> "Ambrel River").
_NOT_NAMES = frozenset("""
    a an the this that these those there here it its he his him she her they their them we our you your i my me
    in on at of from by for to with as and or but so thus therefore hence then also yes no not
    answer final result based according after before using since because if when where who whom whose which what
    how why is was are were be been has have had do does did
    """.split())


_NON_WORD = re.compile(r"[^\w\s-]")


def _names(text: str) -> list[str]:
    """The capitalized name runs of ``text``, with non-name words (``_NOT_NAMES``) dropped from either end:
    ``"The mayor of Brannock is Petra Lunde."`` -> ``["Brannock", "Petra Lunde"]``."""
    out: list[str] = []
    for run in _NAME_RUN.findall(text):
        words = run.split()
        while words and words[0].lower() in _NOT_NAMES:
            words.pop(0)
        while words and words[-1].lower() in _NOT_NAMES:
            words.pop()
        if words:
            out.append(" ".join(words))
    return out


def _names_match(answer: str, gold: str, question: str | None) -> bool:
    """The name rule of ``answer_matches``: ``gold`` is one name (one capitalized run, as ``_names`` reads it),
    the question does not hold it, and the answer's names, less those the question holds, are exactly it."""
    g = gold.strip().strip(_PUNCT)
    if _names(g) != [g]:
        return False
    g = canonical(g)
    asked = " " + " ".join(_NON_WORD.sub(" ", canonical(question)).split()) + " " if question is not None else ""
    if f" {g} " in asked:
        return False  # "Is Velmora larger than Brannock?": naming it proves nothing
    from tokenomy.tools.builtin.chunking import SOURCE  # as in ``canonical``

    plain = SOURCE.sub(" ", _NOTES.sub(" ", answer))
    said = {canonical(n) for n in _names(plain)}
    return {n for n in said if f" {n} " not in asked} == {g}


def answer_matches(answer: Any, gold: str, question: str | None = None) -> bool:
    """Whether ``answer`` is the gold answer: equal after ``canonical``, or (for a numeric gold answer) the answer's
    only number is it (``"The population is 181334."``), or (for a gold answer that is one capitalized name) the
    answer's only name is it (``"Petra Lunde is the mayor."``). With the ``question``, numbers and names the answer
    repeats from it do not count (``"The price of Urthudav 41 is 611."`` answers a question about Urthudav 41 with
    611; ``"Petra Lunde is the mayor of Brannock."`` answers "Who is the mayor of Brannock?"), and a name the
    question holds is matched only exactly. ``None`` never matches."""
    if answer is None:
        return False
    a, g = canonical(answer), canonical(gold)
    if a == g:
        return True
    if _NUM.fullmatch(g):
        nums = set(_NUM.findall(a))
        if question is not None and len(nums) > 1:
            nums -= set(_NUM.findall(canonical(question))) - {g}
        return nums == {g}
    return _names_match(str(answer), str(gold), question)
