"""Compressors: fill a token budget with the retrieved knowledge that matters most, and count it exactly.

Handing a model whole chunks is what makes RAG expensive: the answer to a multi-hop question needs a few facts,
not five paragraphs. Each compressor here ranks units (chunks, sentences or triplets), keeps the best ones that
fit ``budget_tokens`` (o200k_base, counted on the final text, so ``Context.tokens`` is exact and never over the
budget), and says which chunks it drew on (``path#n``) so an answer can cite them:

* :func:`compress_chunks`: whole chunks in rank order while they fit (the baseline);
* :func:`compress_sentences`: the sentences that share most with the question, grouped by chunk;
* :func:`compress_triplets`: facts from the knowledge graph, one line per subject (TeaRAG's compression);
* :func:`compress_hybrid`: facts first, then sentences that state something the facts do not.

A budget of 0, or one smaller than every unit, gives an empty context, not an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import numpy as np

from tokenomy.kernels.tokens import count_text
from tokenomy.tools.builtin.chunking import STOPWORDS, sentences

from .extract import main_subject
from .types import Context, Embedder, Hit, Triplet

__all__ = ["fill_budget", "compress_chunks", "compress_sentences", "compress_triplets", "compress_hybrid",
           "render_triplets"]

U = TypeVar("U")
Render = Callable[[Sequence[U]], tuple[str, list[str]]]
_PATIENCE = 64  # units that did not fit in a row before the search gives up
_BARE = frozenset("is a an was for by in of to at on with from into through than as".split())


def _fill(units: Iterable[U], budget_tokens: int, render: Render[U], piece: Callable[[U], str],
          skip: bool) -> tuple[Context, list[U]]:
    kept: list[U] = []
    best = Context(text="", tokens=0)
    if budget_tokens <= 0:
        return best, kept
    misses = 0
    for unit in units:
        text, cites = render([*kept, unit])
        tokens = count_text(text)
        if tokens <= budget_tokens:
            kept.append(unit)
            best = Context(text=text, tokens=tokens, cites=list(dict.fromkeys(cites)),
                           pieces=[piece(u) for u in kept])
            misses = 0
            if tokens == budget_tokens:
                break
        elif not skip:
            break
        else:
            misses += 1
            if misses >= _PATIENCE:
                break
    return best, kept


def fill_budget(units: Iterable[U], budget_tokens: int, *, render: Render[U], piece: Callable[[U], str] = str,
                skip: bool = True) -> Context:
    """Keep units, best first, while the rendered text fits the budget.

    Args:
        units: the candidates, best first.
        budget_tokens: the most o200k_base tokens the context may have.
        render: the kept units -> ``(text, cites)``; it may group or reorder them (the text is counted whole, so
            separators and tags are paid for).
        piece: how one kept unit is listed in ``Context.pieces``.
        skip: when a unit does not fit, try the next ones (``True``) or stop (``False``).

    Returns:
        The context of the kept units: ``tokens == count_text(text) <= budget_tokens``; empty when nothing fits.
    """
    return _fill(units, budget_tokens, render, piece, skip)[0]


def compress_chunks(hits: Sequence[Hit], budget_tokens: int) -> Context:
    """Whole chunks in rank order, each as ``[path#n] text``, while they fit (the baseline).

    Args:
        hits: the retrieved chunks.
        budget_tokens: the most tokens the context may have.
    """
    def render(kept: Sequence[Hit]) -> tuple[str, list[str]]:
        return "\n\n".join(f"[{h.chunk.cite}] {h.chunk.text.strip()}" for h in kept), [h.chunk.cite for h in kept]

    ordered = sorted(hits, key=lambda h: h.rank)
    return fill_budget(ordered, budget_tokens, render=render, piece=lambda h: h.chunk.text.strip(), skip=False)


def _stems(text: str) -> set[str]:
    out = set()
    for w in re.findall(r"\w+", text.lower()):
        if w not in STOPWORDS:
            for suffix in ("ies", "ing", "ed", "es", "s", "e"):
                if w.endswith(suffix) and len(w) - len(suffix) >= 3:
                    w = w[: len(w) - len(suffix)]
                    break
            out.add(w)
    return out


def _resolve(sentence: str, main: str) -> str:
    """``It``/``Its``/``He``/``She``/``His``/``Her`` opening a sentence replaced by the chunk's main subject, so a
    sentence kept without its chunk's first one still says whom it is about."""
    if not main or sentence.lower().startswith(main.lower()):
        return sentence
    m = re.match(r"(Its|His|Her|It|He|She)\b", sentence)
    if not m:
        return sentence
    owner = main + ("'" if main.endswith("s") else "'s")
    return (owner if m.group(1) in ("Its", "His", "Her") else main) + sentence[m.end():]


def compress_sentences(question: str, hits: Sequence[Hit], budget_tokens: int, *, embedder: Embedder | None = None,
                       exclude: Iterable[str] = (), rank_weight: float = 0.3) -> Context:
    """The retrieved chunks' sentences that matter most to ``question``, grouped by chunk.

    A sentence scores the share of the question's words (crudely stemmed, stopwords left out) it uses, plus its
    cosine similarity to the question when ``embedder`` is given, plus ``rank_weight / (1 + rank)`` of its
    chunk. The best are kept while they fit; the text lists them by chunk (in rank order), each group opened by
    its ``[path#n]`` tag (counted in the tokens), sentences in their original order. A pronoun opening a
    sentence is replaced by the chunk's main subject (its heading or first name).

    Args:
        question: the question.
        hits: the retrieved chunks.
        budget_tokens: the most tokens the context may have.
        embedder: optional sentence embedder for a semantic score.
        exclude: sentences to leave out (as the chunk states them), e.g. those the facts already give.
        rank_weight: how much a chunk's retrieval rank counts.
    """
    skip = set(exclude)
    ordered = sorted(hits, key=lambda h: h.rank)
    units: list[tuple[int, int, str, str]] = []  # (group, position, text, cite)
    seen: set[str] = set()
    for g, hit in enumerate(ordered):
        main = main_subject(hit.chunk.text, hit.chunk.heading)
        for j, sent in enumerate(sentences(hit.chunk.text)):
            text = _resolve(sent, main)
            if sent in skip or text in seen:
                continue
            seen.add(text)
            units.append((g, j, text, hit.chunk.cite))
    if not units or budget_tokens <= 0:
        return Context(text="", tokens=0)
    q = _stems(question)
    scores = np.array([len(q & _stems(u[2])) / max(1, len(q)) + rank_weight / (1 + ordered[u[0]].rank)
                       for u in units], dtype=np.float64)
    if embedder is not None:
        vecs = embedder.encode([question, *(u[2] for u in units)])
        scores += vecs[1:] @ vecs[0]
    best = [units[i] for i in sorted(range(len(units)), key=lambda i: (-scores[i], units[i][0], units[i][1]))]

    def render(kept: Sequence[tuple[int, int, str, str]]) -> tuple[str, list[str]]:
        groups: dict[int, list[tuple[int, int, str, str]]] = {}
        for u in sorted(kept):
            groups.setdefault(u[0], []).append(u)
        lines = [f"[{us[0][3]}] " + " ".join(u[2] for u in us) for _, us in sorted(groups.items())]
        return "\n".join(lines), [us[0][3] for _, us in sorted(groups.items())]

    return fill_budget(best, budget_tokens, render=render, piece=lambda u: u[2])


def _fact(relation: str, obj: str) -> str:
    """``founder=Ana Velor``; a relation that reads as a verb phrase runs on: ``works for Kelmar Works``."""
    last = relation.rsplit(" ", 1)[-1]
    return f"{relation} {obj}" if relation in _BARE or last in _BARE else f"{relation}={obj}"


def render_triplets(triplets: Sequence[Triplet]) -> str:
    """Triplets as compact lines, one per subject in order of first appearance:
    ``Kelmar Works: founder=Ana Velor; founded=1921``."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for t in triplets:
        groups.setdefault(t.subject.lower(), (t.subject, []))[1].append(_fact(t.relation, t.object))
    return "\n".join(f"{name}: {'; '.join(facts)}" for name, facts in groups.values())


def _triplets(ranked: Iterable[tuple[Triplet, float] | Triplet]) -> list[Triplet]:
    out: dict[tuple[str, str, str], Triplet] = {}
    for item in ranked:
        t = item[0] if isinstance(item, tuple) else item
        out.setdefault((t.subject.lower(), t.relation, t.object.lower()), t)
    return list(out.values())


def _fill_triplets(ranked: Iterable[tuple[Triplet, float] | Triplet], budget_tokens: int,
                   cite: Callable[[int], str] | None) -> tuple[Context, list[Triplet]]:
    name = cite or (lambda cid: str(cid))

    def render(kept: Sequence[Triplet]) -> tuple[str, list[str]]:
        order: dict[str, list[Triplet]] = {}
        for t in kept:
            order.setdefault(t.subject.lower(), []).append(t)
        return render_triplets(kept), [name(t.chunk_id) for ts in order.values() for t in ts]

    return _fill(_triplets(ranked), budget_tokens, render, lambda t: f"{t.subject}: {_fact(t.relation, t.object)}",
                 True)


def compress_triplets(ranked_triplets: Iterable[tuple[Triplet, float] | Triplet], budget_tokens: int,
                      cite: Callable[[int], str] | None = None) -> Context:
    """Knowledge-graph facts, best first, while they fit, rendered by :func:`render_triplets`.

    Args:
        ranked_triplets: ``(triplet, score)`` pairs (as :func:`~.graph.rank_triplets` gives) or triplets, best
            first; repeats are dropped.
        budget_tokens: the most tokens the context may have.
        cite: chunk id -> ``path#n`` for ``Context.cites`` (the chunk id itself when not given).
    """
    return _fill_triplets(ranked_triplets, budget_tokens, cite)[0]


def compress_hybrid(question: str, ranked_triplets: Sequence[tuple[Triplet, float] | Triplet], hits: Sequence[Hit],
                    budget_tokens: int, cite: Callable[[int], str] | None = None, *,
                    embedder: Embedder | None = None, triplet_share: float = 0.6) -> Context:
    """Facts first (up to ``triplet_share`` of the budget), then the best sentences in the rest of it.

    A sentence all of whose triplets were kept as facts is left out: it would say the same thing twice.

    Args:
        question: the question.
        ranked_triplets: ranked triplets, as for :func:`compress_triplets`.
        hits: the retrieved chunks, as for :func:`compress_sentences`.
        budget_tokens: the most tokens the whole context may have.
        cite: chunk id -> ``path#n``.
        embedder: optional, for the sentence scores.
        triplet_share: the most of the budget the facts may take.
    """
    if budget_tokens <= 0:
        return Context(text="", tokens=0)
    triplets = _triplets(ranked_triplets)
    facts, kept = _fill_triplets(triplets, int(budget_tokens * max(0.0, min(1.0, triplet_share))), cite)
    said = {id(t) for t in kept}
    stated: dict[str, bool] = {}
    for t in triplets:
        stated[t.sentence] = stated.get(t.sentence, True) and id(t) in said
    done = [s for s, all_kept in stated.items() if all_kept]
    room = budget_tokens - facts.tokens - (1 if facts.text else 0)
    while True:
        rest = compress_sentences(question, hits, room, embedder=embedder, exclude=done)
        text = "\n".join(t for t in (facts.text, rest.text) if t)
        tokens = count_text(text)
        if tokens <= budget_tokens or not rest.text:
            break
        room -= tokens - budget_tokens
    if not rest.text:
        return facts
    return Context(text=text, tokens=tokens, cites=list(dict.fromkeys([*facts.cites, *rest.cites])),
                   pieces=[*facts.pieces, *rest.pieces])
