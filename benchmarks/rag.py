"""``tokenomy bench rag``: how few context tokens hold the facts a question needs.

The corpus is the planning benchmark's synthetic world (one Markdown file per entity, distractors with
look-alike names included), so no model can answer from memory and every question's supporting facts are
known: the lookups of its gold program. Each question is retrieved once (single shot, from the question's text
alone) by every retriever, its hits are compressed by every compressor at every token budget, and the context
is scored without any model:

* supporting-fact recall: the share of the gold program's facts (entity, attribute, value) that the context
  states: a line holding the value and naming the entity, or holding the value under the entity's own
  ``[file#n]`` tag (a sentence such as "Its mayor is X" is evidence only beside its source);
* answer recall: the share of questions whose answer string is in the context;
* context tokens (o200k_base), counted on the exact text a model would read.

The reference is BM25 top-k whole chunks (the usual RAG baseline). The goal (BENCHMARKS.md "rag"): equal
supporting-fact recall with <= 40% of its context tokens (<= 25% on prose). For each retriever and compressor the
report gives the smallest budget that reaches the reference's recall and the tokens it spends there.

``--corpus DIR --questions FILE`` runs the same measures on a hand-written prose corpus whose questions mark
their supporting facts (``benchmarks.rag_prose``); there a fact also counts as stated when the context holds its
support text. ``--extract rules|model|both`` picks the triplet extractor.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokenomy.benchmarks import plot
from tokenomy.errors import UserError
from tokenomy.tools.rag.types import Context, Embedder, Hit

from .rag_prose import Fact, Question, load_questions, normalize
from .world import Task, World, slug

if TYPE_CHECKING:
    from tokenomy.tools.rag.store import Extractor

__all__ = ["RagRecord", "run_rag_bench", "format_rag_report", "support_recall", "BUDGETS", "plot_records",
           "EXTRACTORS"]

BUDGETS = (16, 32, 64, 128, 256)
REFERENCE_K = 5
_TAG = re.compile(r"^\s*\[([^\[\]\s]+)#\d+\]\s*")


@dataclass
class RagRecord:
    retriever: str
    compressor: str
    budget_tokens: int | None
    """``None``: no budget (the reference's whole chunks)."""
    k: int
    context_tokens: float
    """Mean over the questions."""
    support_recall: float
    answer_recall: float
    questions: int
    by_hops: dict[str, float] = field(default_factory=dict)
    """Supporting-fact recall per hop count."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _has(line: str, value: str) -> bool:
    """``value`` occurs in ``line`` as whole words (thousands separators aside: ``12,900`` states ``12900``)."""
    return bool(value) and re.search(rf"(?<!\w){re.escape(normalize(value))}(?!\w)", normalize(line)) is not None


def support_recall(context: str, facts: Sequence[tuple[str, str] | Fact]) -> float:
    """The share of ``facts`` that ``context`` states (see the module docstring).

    A fact is ``(entity, value)`` or a :class:`~.rag_prose.Fact`, which also counts as stated when the context
    holds its support text (normalized: case, spacing and thousands separators aside).
    """
    if not facts:
        return 1.0
    source = ""
    lines = []
    for line in context.splitlines():
        m = _TAG.match(line)
        if m:
            source = m.group(1).rsplit("/", 1)[-1].removesuffix(".md")
            line = line[m.end():]
        lines.append((source, line))
    whole = normalize(context)
    found = 0
    for fact in facts:
        f = fact if isinstance(fact, Fact) else Fact(*fact)
        stem = slug(f.entity) if f.entity else None
        found += bool(f.support and normalize(f.support) in whole) or any(
            f.entity and _has(line, f.value) and (_has(line, f.entity) or src == stem) for src, line in lines)
    return found / len(facts)


def _world_questions(world: World, per_hops: int, hops: Sequence[int]) -> list[Question]:
    tasks: list[Task] = [t for h in hops for t in world.tasks(per_hops, h, salt="rag")]
    return [Question(t.question, t.answer, t.hops, [Fact(s.subject, s.value) for s in t.steps if s.tool == "lookup"])
            for t in tasks]


EXTRACTORS = ("rules", "model", "both")


class _Memo:
    """The embedder with a memory: every compressor and budget scores the same sentences, each encoded once."""

    def __init__(self, embedder: Embedder) -> None:
        self.inner, self.name, self.dim = embedder, embedder.name, embedder.dim
        self._seen: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self._seen]
        if new:
            self._seen.update(zip(new, self.inner.encode(new), strict=True))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._seen[t] for t in texts])


def run_rag_bench(*, quick: bool = False, seed: int = 0, questions: int = 0, budgets: Sequence[int] | None = None,
                  embedder: Embedder | None = None, workdir: str | Path | None = None,
                  corpus: str | Path | None = None, questions_file: str | Path | None = None,
                  extract: str | Extractor = "rules", model: Any = None,
                  progress: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run the benchmark; returns ``{"records", "reference", "goal", "ingest"}`` (see ``format_rag_report``).

    Args:
        quick: a small world and few questions.
        seed: the world's seed.
        questions: questions per hop count (1, 2 and 3 hops); default 20 (quick: 4). With ``corpus``: the first
            ``questions`` of the file (0: all).
        budgets: the token budgets of the compressors.
        embedder: sentence embeddings (default: all-MiniLM-L6-v2).
        workdir: where the corpus and the store go (default: a temporary directory).
        corpus: a directory of prose to use instead of the synthetic world; needs ``questions_file`` (see
            ``benchmarks.rag_prose``).
        questions_file: the corpus's questions, one JSON object per line.
        extract: ``rules``, ``model`` or ``both`` (see ``planners.rag_extract.make_extractor``), or an
            extractor callable.
        model: the engine or spec of the ``model`` extractor (default: ``default_spec()``).
    """
    from tokenomy.planners.rag_extract import make_extractor
    from tokenomy.tools.rag.store import RagStore

    say = progress or (lambda _: None)
    budgets = tuple(budgets or (BUDGETS[:4] if quick else BUDGETS))
    if (corpus is None) != (questions_file is None):
        raise UserError("bench rag on a corpus needs both --corpus DIR and --questions FILE")
    if embedder is None:
        from tokenomy.tools.rag.embed import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    embedder = _Memo(embedder)
    if corpus is not None and questions_file is not None:
        qs = load_questions(questions_file, corpus)
        qs = qs[:questions] if questions else qs
    else:
        world = World(seed, per_type=10 if quick else 30)
        qs = _world_questions(world, questions or (4 if quick else 20), (1, 2, 3))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(workdir) if workdir else Path(tmp)
        source = Path(corpus) if corpus is not None else world.write_corpus(base / "corpus")
        t0 = time.perf_counter()
        with RagStore(base / "store.sqlite") as store:
            extractor = make_extractor(extract, model, cache=store.path) if isinstance(extract, str) else extract
            stats = store.ingest(source, embedder=embedder, extract=extractor)
            counts = store.stats()
            ingest = {"docs": counts["docs"], "chunks": counts["chunks"], "triplets": counts["triplets"],
                      "seconds": round(time.perf_counter() - t0, 2), "skipped": len(stats.skipped),
                      "extract": extract if isinstance(extract, str) else getattr(extract, "__name__", "custom"),
                      "extract_usage": None if stats.extract_usage is None else stats.extract_usage.to_dict(),
                      "corpus": "world" if corpus is None else str(corpus)}
            say(f"[rag] ingested {ingest['docs']} documents, {ingest['chunks']} chunks, {ingest['triplets']} "
                f"triplets in {ingest['seconds']} s")
            records = _measure(store, embedder, qs, budgets, say)
    reference = next(r for r in records if r.retriever == "bm25" and r.budget_tokens is None
                     and r.k == REFERENCE_K)
    return {"records": records, "reference": reference, "goal": _goal(records, reference, corpus is not None),
            "ingest": ingest, "questions": len(qs)}


def _measure(store: Any, embedder: Embedder, qs: list[Question], budgets: Sequence[int], say: Callable[[str], None]
             ) -> list[RagRecord]:
    from tokenomy.planners.rag import RagPipeline
    from tokenomy.tools.rag.compress import compress_chunks

    records: list[RagRecord] = []

    def record(retriever: str, compressor: str, budget: int | None, k: int, contexts: list[Context]) -> None:
        recalls = [support_recall(c.text, q.facts) for c, q in zip(contexts, qs, strict=True)]
        by_hops: dict[str, list[float]] = {}
        for r, q in zip(recalls, qs, strict=True):
            by_hops.setdefault(str(q.hops), []).append(r)
        rec = RagRecord(retriever, compressor, budget, k, sum(c.tokens for c in contexts) / len(qs),
                        sum(recalls) / len(qs),
                        sum(_has(c.text, q.answer) for c, q in zip(contexts, qs, strict=True)) / len(qs),
                        len(qs), {h: sum(v) / len(v) for h, v in sorted(by_hops.items())})
        records.append(rec)
        say(f"[rag] {retriever:6} {compressor:9} budget {budget or '-':>5} k {k:2}: {rec.context_tokens:7.1f} tokens, "
            f"support {rec.support_recall:.2f}, answer {rec.answer_recall:.2f}")

    # The reference curve: BM25 top-k whole chunks, no budget.
    bm25 = RagPipeline(store, retriever="bm25", compressor="chunks", k=max(10, REFERENCE_K), embedder=embedder)
    deep = [bm25.retrieve(q.question) for q in qs]
    for k in sorted({1, 2, 3, REFERENCE_K, 10}):
        record("bm25", "chunks", None, k, [compress_chunks(h[:k], 10**9) for h in deep])
    for retriever in ("bm25", "dense", "hybrid", "graph"):
        pipes = {c: RagPipeline(store, retriever=retriever, compressor=c, k=REFERENCE_K, embedder=embedder)
                 for c in ("chunks", "sentences", "triplets", "graph")}
        hits: list[list[Hit]] = [pipes["chunks"].retrieve(q.question) for q in qs]
        for compressor, pipe in pipes.items():
            if compressor == "triplets" and retriever != "graph":
                continue  # the triplet compressor reads the knowledge graph, not the hits: measured once
            for budget in budgets:
                pipe.budget_tokens = budget
                record(retriever, compressor, budget, REFERENCE_K,
                       [pipe.context(q.question, h) for q, h in zip(qs, hits, strict=True)])
    return records


def _goal(records: list[RagRecord], reference: RagRecord, prose: bool = False) -> dict[str, Any]:
    """For each retriever and compressor: the smallest budget whose recall reaches the reference's (the goal's
    share of the reference's tokens: 40% on the templated world, 25% on prose, BENCHMARKS.md "rag")."""
    share = 0.25 if prose else 0.40
    best: dict[str, Any] = {}
    for r in records:
        if r.budget_tokens is None or r.support_recall < reference.support_recall:
            continue
        key = f"{r.retriever}+{r.compressor}"
        if key not in best or r.budget_tokens < best[key]["budget_tokens"]:
            best[key] = {"budget_tokens": r.budget_tokens, "context_tokens": r.context_tokens,
                         "support_recall": r.support_recall,
                         "ratio": r.context_tokens / reference.context_tokens if reference.context_tokens else None}
    winner = min(best.items(), key=lambda kv: kv[1]["context_tokens"], default=None)
    return {"goal": f"equal supporting-fact recall with <= {share:.0%} of the context tokens of BM25 "
                    f"top-{REFERENCE_K} chunks",
            "reference": {"support_recall": reference.support_recall, "context_tokens": reference.context_tokens},
            "reaching": best, "best": None if winner is None else {"config": winner[0], **winner[1]},
            "met": winner is not None and winner[1]["ratio"] is not None and winner[1]["ratio"] <= share}


def format_rag_report(result: dict[str, Any]) -> str:
    ref: RagRecord = result["reference"]
    ing = result["ingest"]
    lines = [f"{result['questions']} questions (1-3 hops), corpus {ing.get('corpus', 'world')}: {ing['docs']} "
             f"documents, {ing['chunks']} chunks, {ing['triplets']} triplets ({ing.get('extract', 'rules')} "
             "extractor)",
             "", "| retriever | compressor | budget | k | context tokens | support recall | answer recall | "
                 "support by hops |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["records"]:
        hops = " ".join(f"{h}:{v:.2f}" for h, v in r.by_hops.items())
        lines.append(f"| {r.retriever} | {r.compressor} | {r.budget_tokens or '-'} | {r.k} | "
                     f"{r.context_tokens:.1f} | {r.support_recall:.2f} | {r.answer_recall:.2f} | {hops} |")
    g = result["goal"]
    lines += ["", f"reference: BM25 top-{REFERENCE_K} chunks: support recall {ref.support_recall:.2f} at "
                  f"{ref.context_tokens:.1f} tokens", "reaching the reference's recall (smallest budget):"]
    for key, v in sorted(g["reaching"].items(), key=lambda kv: kv[1]["context_tokens"]):
        lines.append(f"  {key:18} budget {v['budget_tokens']:>4}: {v['context_tokens']:.1f} tokens "
                     f"({v['ratio']:.0%} of the reference), recall {v['support_recall']:.2f}")
    if not g["reaching"]:
        lines.append("  none at the budgets measured")
    lines.append(f"goal: {g['goal']}: {'met' if g['met'] else 'missed'}")
    return "\n".join(lines)


def plot_records(records: Sequence[RagRecord], path: str | Path) -> Path:
    """A PNG of supporting-fact recall against context tokens (log scale): the reference's BM25 top-k whole
    chunks over k, and one line per retriever and compressor over the token budgets. ``records``: the
    ``"records"`` of what ``run_rag_bench`` returns."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        name = f"{r.retriever} top-k chunks (reference)" if r.budget_tokens is None else f"{r.retriever}+{r.compressor}"
        series.setdefault(name, []).append((r.context_tokens, r.support_recall))
    return plot.lines(series, path, title="rag: supporting-fact recall against context tokens",
                      xlabel="context tokens per question (o200k_base)", ylabel="supporting-fact recall", logx=True)
