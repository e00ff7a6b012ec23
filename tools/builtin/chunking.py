"""Text handling for corpus search: paragraphs, safe FTS5 queries, sentences, bounded output.

Corpus text is data: it is split, matched and cut here, never interpreted.
"""

from __future__ import annotations

import re

__all__ = ["paragraphs", "title_of", "fts_query", "phrase_query", "words", "sentences", "sentence_spans",
           "same_word", "clip", "strip_source", "SOURCE", "STOPWORDS"]

MAX_QUERY_TERMS = 32
_WORD = re.compile(r"\w+")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
# A candidate cut: after ., !, ? or … (and closing quotes or brackets) and the space that follows, or at a line break.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+|\n[ \t]*")
_SENTENCE_START = re.compile(r"[\"'“‘(\[]?[A-Z0-9\u00c0-\u00de]")
_ABBREVIATION = re.compile(r"(?:^|\s)(?:[A-Z]|No|(?i:mr|mrs|ms|dr|prof|st|sr|jr|mt|ft|vs|etc|approx|e\.g|i\.e|cf|fig|"
                           r"inc|ltd|co|corp|u\.s|u\.k))\.$")
_LIST_ITEM = re.compile(r"(?:[-*+|]|\d+[.)])[ \t]")
_LIST_MARKER = re.compile(r"^(?:[-*+]|\d+[.)])[ \t]+")
SOURCE = re.compile(r"\s*\[[^\[\]]*#\d+\]")
"""The source ``lookup`` writes after a value: ``"12,900 [port-arlen.md#2]"``."""
# Words so common that they only add noise to an OR query (kept when a query has nothing else).
STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have how in is it its of on or that the their there "
    "this to was were what when where which who whom whose why will with".split()
)


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs; a block of Markdown headings joins the paragraph below it."""
    blocks = [b.strip() for b in _BLANK_LINE.split(text.replace("\r\n", "\n")) if b.strip()]
    out: list[str] = []
    pending = ""
    for block in blocks:
        if all(line.lstrip().startswith("#") for line in block.splitlines()):
            pending = f"{pending}\n{block}".strip()
            continue
        out.append(f"{pending}\n{block}" if pending else block)
        pending = ""
    if pending:
        out.append(pending)
    return out


def title_of(text: str, fallback: str) -> str:
    """The first Markdown heading of ``text``, else ``fallback`` (a file stem) with ``-``/``_`` as spaces."""
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            if heading:
                return heading
    return re.sub(r"[-_]+", " ", fallback).strip()


def words(text: str) -> list[str]:
    """The distinct lowercase words of ``text``, in order."""
    return list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))


def fts_query(text: str) -> str | None:
    """A safe FTS5 query for free text: its words, each quoted, OR'ed together (``None`` if it has no words).

    Raw text is never passed to ``MATCH``: FTS5 syntax (quotes, ``-``, ``:``, ``*``, ``AND``...) would raise or
    change the meaning. A quoted string holds only word characters here, so it cannot break out.
    """
    terms = words(text)
    content = [t for t in terms if t not in STOPWORDS] or terms
    return " OR ".join(f'"{t}"' for t in content[:MAX_QUERY_TERMS]) or None


def phrase_query(text: str) -> str | None:
    """A safe FTS5 phrase for ``text`` (its words in order, quoted together)."""
    terms = _WORD.findall(text.lower())
    return f'"{" ".join(terms[:MAX_QUERY_TERMS])}"' if terms else None


def same_word(a: str, b: str) -> bool:
    """Whether two lowercase words are one word in another form (a crude stemmer: "founded" ~ "founding",
    "population" ~ "populations"; words of up to five letters must match exactly)."""
    if a == b:
        return True
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n >= 5 and n >= min(len(a), len(b)) - 3


def sentence_spans(text: str) -> list[tuple[str, str]]:
    """The sentences of ``text`` as written (inner whitespace kept), each with the separator before it: ``""``
    for the first, ``"\\n"`` where the cut was at a line break, else ``" "``.

    The one sentence splitter of tokenomy (``sentences`` reads through it). A sentence ends after ``.``, ``!``,
    ``?`` or ``…`` (and closing quotes or brackets) where a capital, a digit or an opening quote follows, but not
    after an initial or an abbreviation such as ``Dr.`` or ``Inc.``; and before a list item or table row that
    starts a line.
    """
    out: list[tuple[str, str]] = []
    start, sep = 0, ""
    for m in _SENTENCE_END.finditer(text):
        gap = m.group()
        ends = gap[0] != "\n" and _SENTENCE_START.match(text, m.end()) and not (
            gap[0] == "." and _ABBREVIATION.search(text, max(0, m.start() - 8), m.start() + 1))
        if ends or ("\n" in gap and _LIST_ITEM.match(text, m.end())):
            piece = text[start:m.end()].strip()
            if piece:
                out.append((sep, piece))
                sep = "\n" if "\n" in gap else " "
            start = m.end()
    if text[start:].strip():
        out.append((sep, text[start:].strip()))
    return out


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` as they read (cut as ``sentence_spans`` cuts): Markdown heading lines left out (a
    heading also ends the sentence before it), list markers dropped, whitespace collapsed."""
    out: list[str] = []
    block: list[str] = []
    for line in [*str(text).splitlines(), "#"]:  # the "#" sentinel flushes the last block
        if not line.lstrip().startswith("#"):
            block.append(line)
            continue
        for _, sentence in sentence_spans("\n".join(block)):
            sentence = " ".join(_LIST_MARKER.sub("", sentence).split())
            if sentence:
                out.append(sentence)
        block = []
    return out


def strip_source(text: str) -> str:
    """``text`` without the ``[file#n]`` sources that ``lookup`` adds (so a result can be passed on whole)."""
    return SOURCE.sub("", text).strip().strip("\"'").strip()


def clip(text: str, limit: int) -> str:
    """``text`` with whitespace collapsed, cut to at most ``limit`` characters (ending in ``…`` when cut)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 1)]
    space = cut.rfind(" ")
    if space > limit * 0.6:
        cut = cut[:space]
    return cut + "…"
