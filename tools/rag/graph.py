"""A triplet knowledge graph over a corpus, ranked with Personalized PageRank (TeaRAG's fact compression).

Whole chunks cost a model hundreds of tokens for the one or two facts a multi-hop question needs. Here the
triplets of :mod:`.extract` form a graph of entities, and Personalized PageRank seeded with the entities a
question names spreads relevance along the relations, weighted towards the relations the question asks about;
walks that answer the question's relation words in order ("the population of the birthplace of the founder of
X": founder, then birthplace, then population) put the facts of the chain first even though only X appears in
the question.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import networkx as nx
import numpy as np

from tokenomy.tools.builtin.chunking import STOPWORDS, sentences, words

from .extract import extract_triplets, main_subject
from .types import Triplet

__all__ = ["extract_triplets", "sentences", "main_subject", "KnowledgeGraph", "seed_entities",
           "personalized_pagerank", "rank_triplets"]

# Extra question words that point at a relation (beyond the relation's own words).
_ALIASES = {"born": ("birth", "year"), "birthplace": ("birth", "born"), "works for": ("employer", "work"),
            "founder": ("=founded", "=found"), "founded": ("year",), "maker": ("made", "make", "manufacturer"),
            "released": ("year",), "population": ("people", "inhabitants", "residents", "live"),
            "length": ("long", "longer"), "height": ("high", "tall", "higher", "taller"), "width": ("wide",),
            "depth": ("deep",), "employees": ("workers", "staff", "employ"), "located in": ("lies", "lie", "situated"),
            "is a": ("type", "kind")}
_LITERAL = "\x1f"  # separates a value node's subject from its value in node ids


def _key(name: str) -> str:
    return " ".join(name.lower().split())


def _is_entity(name: str) -> bool:
    return bool(name[:1].isupper())


class KnowledgeGraph:
    """Entities linked by the triplets that relate them, plus weaker association edges.

    Nodes are entities, merged case-insensitively (``display`` keeps the first spelling seen). A value that is
    not a name (a number, a lowercase phrase) is a leaf node of its own subject, so that two companies founded in
    the same year are not linked through ``1921``. Edges are undirected (relevance flows both ways along a
    relation) and carry ``weight`` and ``triplets`` (indices into ``self.triplets``):

    * a stated relation adds ``relation_weight``;
    * entities named in the same chunk are linked with ``cooccurrence_weight`` (at most 30 per chunk);
    * with ``chunk_embeddings``, two chunks whose cosine similarity reaches ``similarity_threshold`` link their
      main entities (each chunk's first subject) with ``similarity_weight`` times the similarity.

    Args:
        triplets: the corpus's triplets.
        chunk_embeddings: optional chunk id -> unit-norm vector, for the similarity edges.
        relation_weight, cooccurrence_weight, similarity_weight: the edge weights above.
        similarity_threshold: the cosine similarity from which two chunks are linked.
    """

    def __init__(self, triplets: Sequence[Triplet], *, chunk_embeddings: Mapping[int, np.ndarray] | None = None,
                 relation_weight: float = 1.0, cooccurrence_weight: float = 0.3, similarity_weight: float = 0.2,
                 similarity_threshold: float = 0.8) -> None:
        self.graph = nx.Graph()
        self.triplets: list[Triplet] = list(triplets)
        self.ends: list[tuple[str, str]] = []
        """The node ids of each triplet's subject and object."""
        self.incident: dict[str, list[int]] = {}
        """node id -> the triplets it is an end of."""
        by_chunk: dict[int, list[str]] = {}
        for i, t in enumerate(self.triplets):
            s = self._node(t.subject, "entity")
            o = self._node(t.object, "entity") if _is_entity(t.object) else self._node(t.object, "value", s)
            self.ends.append((s, o))
            self.incident.setdefault(s, []).append(i)
            self.incident.setdefault(o, []).append(i)
            self._link(s, o, relation_weight, i)
            chunk = by_chunk.setdefault(t.chunk_id, [])
            chunk.extend(n for n in (s, o) if self.graph.nodes[n]["kind"] == "entity" and n not in chunk)
        for ents in by_chunk.values():
            ents = ents[:30]
            for a in range(len(ents)):
                for b in range(a + 1, len(ents)):
                    self._link(ents[a], ents[b], cooccurrence_weight)
        if chunk_embeddings:
            ids = [c for c in by_chunk if c in chunk_embeddings]
            if len(ids) > 1:
                mat = np.stack([np.asarray(chunk_embeddings[c], dtype=np.float32) for c in ids])
                sims = mat @ mat.T
                for a, b in zip(*np.nonzero(np.triu(sims, 1) >= similarity_threshold), strict=True):
                    ma, mb = by_chunk[ids[a]][:1], by_chunk[ids[b]][:1]
                    if ma and mb and ma != mb:
                        self._link(ma[0], mb[0], similarity_weight * float(sims[a, b]))

    def _node(self, name: str, kind: str, owner: str = "") -> str:
        node = f"{owner}{_LITERAL}{_key(name)}" if kind == "value" else _key(name)
        if node not in self.graph:
            self.graph.add_node(node, display=name, kind=kind)
        return node

    def _link(self, a: str, b: str, weight: float, triplet: int | None = None) -> None:
        if a == b:
            return
        if self.graph.has_edge(a, b):
            self.graph[a][b]["weight"] += weight
        else:
            self.graph.add_edge(a, b, weight=weight, triplets=[])
        if triplet is not None:
            self.graph[a][b]["triplets"].append(triplet)

    def display(self, node: str) -> str:
        """How a node's entity is written (its first spelling in the corpus)."""
        return str(self.graph.nodes[node]["display"])

    def entities(self) -> list[str]:
        """The node ids of named entities (value leaves left out)."""
        return [n for n, kind in self.graph.nodes(data="kind") if kind == "entity"]

    def __len__(self) -> int:
        return self.graph.number_of_nodes()


def _stem(word: str) -> str:
    """A crude stem: ``founded``/``founding`` -> ``found``, ``employees`` -> ``employe``; ``founder`` stays."""
    for suffix, repl in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", ""), ("e", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: len(word) - len(suffix)] + repl
    return word


def seed_entities(question: str, graph: KnowledgeGraph) -> dict[str, float]:
    """The graph's entities that ``question`` mentions, as a personalization vector (node id -> weight).

    Whole names found in the question (case-insensitively, longest first) weigh 1. A question word left over
    that is part of other names gives them a lower weight, shared among all the names that contain it (so a
    common word such as ``River`` or ``Works`` adds little).

    Args:
        question: the question.
        graph: the knowledge graph.

    Returns:
        node id -> weight (``{}`` when the question names nothing of the graph).
    """
    return _mentions(question, graph)[0]


def _mentions(question: str, graph: KnowledgeGraph) -> tuple[dict[str, float], str, list[tuple[int, int, str]]]:
    """The seeds of a question, the question (lowercase) with the whole names it mentions blanked out, and
    where those names are: ``(start, end, node)`` in text order."""
    q = " ".join(str(question).lower().split())
    qset = set(words(q))
    seeds: dict[str, float] = {}
    taken: list[tuple[int, int, str]] = []
    names = [n for n in graph.entities() if set(words(n)) <= qset]
    for node in sorted(names, key=len, reverse=True):
        for m in re.finditer(rf"(?<!\w){re.escape(node)}(?!\w)", q):
            if not any(a <= m.start() and m.end() <= b for a, b, _ in taken):
                seeds[node] = 1.0
                taken.append((m.start(), m.end(), node))
    taken.sort()
    left = q
    for a, b, _ in sorted(taken, reverse=True):
        left = left[:a] + " " + left[b:]
    rest = {w for w in words(left) if w not in STOPWORDS and len(w) > 2}
    if rest:
        holders: dict[str, list[str]] = {}
        for node in graph.entities():
            for w in set(words(node)) & rest:
                holders.setdefault(w, []).append(node)
        for nodes in holders.values():
            for node in nodes:
                if seeds.get(node, 0.0) < 1.0:
                    seeds[node] = seeds.get(node, 0.0) + 0.3 / len(nodes)
    return seeds, left, taken


def _scopes(question: str, spans: Sequence[tuple[int, int, str]]) -> list[tuple[str, list[tuple[int, str]]]]:
    """Each named entity with the question words about it, as ``(order, stem)``: the words between the previous
    name and its own, nearest first (``the C of the B of the A of X`` asks A, then B, then C), then for the last
    name the words after it ("where was the founder of X born?"). "the A of X and the B of Y" asks A of X and B
    of Y."""
    out: list[tuple[str, list[tuple[int, str]]]] = []
    last = 0
    for k, (start, end, node) in enumerate(spans):
        before = [_stem(w) for w in re.findall(r"\w+", question[last:start]) if w not in STOPWORDS]
        after = [_stem(w) for w in re.findall(r"\w+", question[end:]) if w not in STOPWORDS]
        asked = list(enumerate(reversed(before)))
        if k == len(spans) - 1:
            asked += [(len(before) + n, w) for n, w in enumerate(after)]
        out.append((node, asked))
        last = end
    return out


def personalized_pagerank(graph: KnowledgeGraph | nx.Graph, seeds: Mapping[str, float], alpha: float = 0.85,
                          *, edge_weight: Callable[[Any, Any, dict[str, Any]], float] | None = None,
                          tol: float = 1e-10, max_iter: int = 200) -> dict[Any, float]:
    """PageRank restarted at ``seeds`` over the weighted edges: how close each node is to what was asked.

    The power iteration of ``networkx.pagerank`` (same semantics: dangling nodes jump to the seeds), done with
    numpy so that it needs no scipy.

    Args:
        graph: a :class:`KnowledgeGraph` or a networkx graph with ``weight`` on its edges.
        seeds: node -> weight (normalised here); nodes not in the graph are ignored.
        alpha: the damping factor (the chance of following an edge rather than restarting).
        edge_weight: ``(u, v, data) -> weight`` to use instead of ``data["weight"]`` (a query-aware weighting).

    Returns:
        node -> score, summing to 1; ``{}`` when no seed is in the graph.
    """
    g = graph.graph if isinstance(graph, KnowledgeGraph) else graph
    nodes = list(g.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    p = np.zeros(len(nodes))
    for node, w in seeds.items():
        if node in index and w > 0:
            p[index[node]] += w
    if not p.sum():
        return {}
    p /= p.sum()
    src, dst, wts = [], [], []
    directed = g.is_directed()
    for a, b, data in g.edges(data=True):
        w = edge_weight(a, b, data) if edge_weight else data.get("weight", 1.0)
        pairs = [(index[a], index[b])] if directed else [(index[a], index[b]), (index[b], index[a])]
        for i, j in pairs:
            src.append(i)
            dst.append(j)
            wts.append(float(w))
    s_arr, d_arr, w_arr = np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64), np.array(wts)
    out = np.bincount(s_arr, weights=w_arr, minlength=len(nodes)) if len(s_arr) else np.zeros(len(nodes))
    dangling = out == 0
    share = np.divide(w_arr, out[s_arr], out=np.zeros_like(w_arr), where=out[s_arr] > 0) if len(s_arr) else w_arr
    x = p.copy()
    for _ in range(max_iter):
        flow = np.bincount(d_arr, weights=x[s_arr] * share, minlength=len(nodes)) if len(s_arr) else 0.0
        new = alpha * (flow + x[dangling].sum() * p) + (1 - alpha) * p
        done = np.abs(new - x).sum() < len(nodes) * tol
        x = new
        if done:
            break
    x /= x.sum()
    return {n: float(x[i]) for i, n in enumerate(nodes)}


def _covers(relation: str, asked: Collection[tuple[str, str]]) -> frozenset[str]:
    """The stems of the question words (``(word, stem)`` pairs) that point at ``relation``: its own words'
    stems, or its aliases (``=word``: that exact word only; "founded" asks for a founder, "founding" does not)."""
    own = {_stem(w) for w in words(relation) if w not in STOPWORDS} or {_stem(w) for w in words(relation)}
    aliases = _ALIASES.get(relation, ())
    return frozenset(stem for word, stem in asked if stem in own
                     or any(word == a[1:] if a.startswith("=") else stem == _stem(a) for a in aliases))


def _relation_match(relation: str, asked: Collection[tuple[str, str]]) -> float:
    """The share of a relation's words that the question uses (0.5 for an alias only)."""
    own = {_stem(w) for w in words(relation) if w not in STOPWORDS} or {_stem(w) for w in words(relation)}
    if not own:
        return 0.0
    hit = len(own & {stem for _, stem in asked}) / len(own)
    return max(hit, 0.5 if _covers(relation, asked) else 0.0)


def _paths(graph: KnowledgeGraph, starts: Sequence[tuple[str, list[tuple[int, str]]]],
           cover: Mapping[str, frozenset[str]], *, depth: int = 6, branch: int = 8, backward: float = 0.6,
           disorder: float = 0.3, step_cost: float = 0.25, max_steps: int = 20000) -> dict[int, float]:
    """Walks from the named entities along triplets that each answer question words not yet answered:
    triplet -> how far the best walk through it falls short of its start's best walk (0 for the best).

    A step is worth the words it answers, each times ``disorder`` when the question asks it before a word already
    answered (``the population of the birthplace of the founder of X`` is walked founder, birthplace,
    population), times ``backward`` when the step goes from object to subject, less ``step_cost``. At most
    ``max_steps`` steps are tried from each start.
    """
    best: dict[int, float] = {}
    budget = [0]

    def walk(asked: list[tuple[int, str]], node: str, done: frozenset[int], last: int, value: float,
             path: list[int], seen: set[str], mine: dict[int, float]) -> None:
        steps = []
        for i in graph.incident.get(node, ()):
            want = cover[graph.triplets[i].relation]
            s, o = graph.ends[i]
            other = o if s == node else s
            if not want or other in seen:
                continue
            gain, used, top = 0.0, [], last
            for w in want:
                free = [n for n, (order, stem) in enumerate(asked) if stem == w and n not in done]
                ahead = [n for n in free if asked[n][0] > last]
                if ahead:
                    used.append(ahead[0])
                    gain += 1.0
                    top = max(top, asked[ahead[0]][0])
                elif free:
                    used.append(free[0])
                    gain += disorder
            if used:
                gain = gain * (1.0 if s == node else backward) - step_cost
                steps.append((gain, i, other, done | frozenset(used), top))
        steps.sort(key=lambda st: -st[0])
        for gain, i, other, now_done, top in steps[:branch]:
            budget[0] -= 1
            if budget[0] < 0:
                return
            now = value + gain
            for j in [*path, i]:
                mine[j] = max(mine.get(j, -math.inf), now)
            if len(path) + 1 < depth:
                walk(asked, other, now_done, top, now, [*path, i], seen | {other}, mine)

    for start, asked in starts:  # each named entity's walks are measured against its own best walk
        mine: dict[int, float] = {}
        budget[0] = max_steps
        walk(asked, start, frozenset(), -1, 0.0, [], {start}, mine)
        top = max(mine.values(), default=0.0)
        for j, v in mine.items():
            best[j] = max(best.get(j, -math.inf), v - top)
    return best


def rank_triplets(graph: KnowledgeGraph, question: str, k: int | None = None, *, alpha: float = 0.85,
                  relation_boost: float = 4.0, floor: float = 0.2,
                  path_bonus: float = 2.0) -> list[tuple[Triplet, float]]:
    """The graph's triplets, most relevant to ``question`` first.

    Three signals, in order of weight:

    * relation paths: walks from the entities the question names along triplets whose relations answer
      question words not answered yet (see ``_paths``); a triplet on the walk from its start that answers most
      question words gets ``path_bonus``, one on a walk worth ``d`` words less ``path_bonus * exp(-d)``;
    * query-aware Personalized PageRank, seeded by :func:`seed_entities`: an edge whose triplets' relations the
      question uses ("founder", "population") weighs ``1 + relation_boost * m`` times more (``m``: the share of
      the relation's words in the question), so relevance flows along the chain a multi-hop question walks;
    * a triplet's PageRank part is that of its two ends times ``floor + m``: facts of asked relations first.

    When the question names no entity of the graph, triplets are scored by the question words their text shares.

    Args:
        graph: the knowledge graph.
        question: the question.
        k: keep this many (all when ``None``).
        alpha: PageRank's damping factor.
        relation_boost: how much more an edge of an asked relation carries.
        floor: the factor of a triplet whose relation the question does not use.
        path_bonus: the bonus of the triplets of the best relation path.

    Returns:
        ``(triplet, score)`` pairs, best first; triplets scoring 0 are left out.
    """
    seeds, left, spans = _mentions(question, graph)
    asked = {(w, _stem(w)) for w in re.findall(r"\w+", left) if w not in STOPWORDS}
    match: dict[str, float] = {}
    cover: dict[str, frozenset[str]] = {}
    for t in graph.triplets:
        if t.relation not in match:
            match[t.relation] = _relation_match(t.relation, asked)
            cover[t.relation] = _covers(t.relation, asked)

    def weight(_a: Any, _b: Any, data: dict[str, Any]) -> float:
        best = max((match[graph.triplets[i].relation] for i in data["triplets"]), default=0.0)
        return float(data["weight"]) * (1.0 + relation_boost * best)

    ppr = personalized_pagerank(graph, seeds, alpha, edge_weight=weight)
    paths = _paths(graph, _scopes(" ".join(question.lower().split()), spans), cover)
    scored: list[tuple[Triplet, float]] = []
    for i, (t, (s, o)) in enumerate(zip(graph.triplets, graph.ends, strict=True)):
        m = match[t.relation]
        if ppr:
            score = (ppr.get(s, 0.0) + ppr.get(o, 0.0)) * (floor + m)
            score += path_bonus * math.exp(paths[i]) if i in paths else 0.0
        else:
            text = words(f"{t.subject} {t.relation} {t.object}")
            stems = {stem for _, stem in asked}
            score = len({_stem(w) for w in text} & stems) / (1 + len(stems)) + 0.1 * m
        if score > 0:
            scored.append((t, score))
    scored.sort(key=lambda ts: -ts[1])
    return scored if k is None else scored[:max(0, k)]
