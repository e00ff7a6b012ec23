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
supporting-fact recall with <= 40% of its context tokens. For each retriever and compressor the report gives
the smallest budget that reaches the reference's recall and the tokens it spends there.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokenomy import plot
from tokenomy.tools.rag.types import Context, Embedder, Hit

from .world import Task, World, slug

__all__ = ["RagRecord", "run_rag_bench", "format_rag_report", "support_recall", "BUDGETS", "plot_records"]

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
    return re.search(rf"(?<!\w){re.escape(value.lower())}(?!\w)", line.lower()) is not None


def support_recall(context: str, facts: Sequence[tuple[str, str]]) -> float:
    """The share of ``facts`` ((entity, value) pairs) that ``context`` states (see the module docstring)."""
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
    found = 0
    for entity, value in facts:
        stem = slug(entity)
        found += any(_has(line, value) and (_has(line, entity) or src == stem) for src, line in lines)
    return found / len(facts)


def _facts(task: Task) -> list[tuple[str, str]]:
    return [(s.subject, s.value) for s in task.steps if s.tool == "lookup"]


def _questions(world: World, per_hops: int, hops: Sequence[int]) -> list[Task]:
    return [t for h in hops for t in world.tasks(per_hops, h, salt="rag")]


def run_rag_bench(*, quick: bool = False, seed: int = 0, questions: int = 0, budgets: Sequence[int] | None = None,
                  embedder: Embedder | None = None, workdir: str | Path | None = None,
                  progress: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run the benchmark; returns ``{"records", "reference", "goal", "ingest"}`` (see ``format_rag_report``).

    Args:
        quick: a small world and few questions.
        seed: the world's seed.
        questions: questions per hop count (1, 2 and 3 hops); default 20 (quick: 4).
        budgets: the token budgets of the compressors.
        embedder: sentence embeddings (default: all-MiniLM-L6-v2).
        workdir: where the corpus and the store go (default: a temporary directory).
    """
    from tokenomy.tools.rag.graph import extract_triplets
    from tokenomy.tools.rag.store import RagStore

    say = progress or (lambda _: None)
    budgets = tuple(budgets or (BUDGETS[:4] if quick else BUDGETS))
    if embedder is None:
        from tokenomy.tools.rag.embed import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    world = World(seed, per_type=10 if quick else 30)
    tasks = _questions(world, questions or (4 if quick else 20), (1, 2, 3))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(workdir) if workdir else Path(tmp)
        corpus = world.write_corpus(base / "corpus")
        t0 = time.perf_counter()
        with RagStore(base / "store.sqlite") as store:
            stats = store.ingest(corpus, embedder=embedder, extract=extract_triplets)
            counts = store.stats()
            ingest = {"docs": counts["docs"], "chunks": counts["chunks"], "triplets": counts["triplets"],
                      "seconds": round(time.perf_counter() - t0, 2), "skipped": len(stats.skipped)}
            say(f"[rag] ingested {ingest['docs']} documents, {ingest['chunks']} chunks, {ingest['triplets']} "
                f"triplets in {ingest['seconds']} s")
            records = _measure(store, embedder, tasks, budgets, say)
    reference = next(r for r in records if r.retriever == "bm25" and r.budget_tokens is None
                     and r.k == REFERENCE_K)
    return {"records": records, "reference": reference, "goal": _goal(records, reference), "ingest": ingest,
            "questions": len(tasks)}


def _measure(store: Any, embedder: Embedder, tasks: list[Task], budgets: Sequence[int], say: Callable[[str], None]
             ) -> list[RagRecord]:
    from tokenomy.tools.rag.compress import compress_chunks
    from tokenomy.tools.rag.pipeline import RagPipeline

    records: list[RagRecord] = []

    def record(retriever: str, compressor: str, budget: int | None, k: int, contexts: list[Context]) -> None:
        recalls = [support_recall(c.text, _facts(t)) for c, t in zip(contexts, tasks, strict=True)]
        by_hops: dict[str, list[float]] = {}
        for r, t in zip(recalls, tasks, strict=True):
            by_hops.setdefault(str(t.hops), []).append(r)
        rec = RagRecord(retriever, compressor, budget, k, sum(c.tokens for c in contexts) / len(tasks),
                        sum(recalls) / len(tasks),
                        sum(_has(c.text, t.answer) for c, t in zip(contexts, tasks, strict=True)) / len(tasks),
                        len(tasks), {h: sum(v) / len(v) for h, v in sorted(by_hops.items())})
        records.append(rec)
        say(f"[rag] {retriever:6} {compressor:9} budget {budget or '-':>5} k {k:2}: {rec.context_tokens:7.1f} tokens, "
            f"support {rec.support_recall:.2f}, answer {rec.answer_recall:.2f}")

    # The reference curve: BM25 top-k whole chunks, no budget.
    bm25 = RagPipeline(store, retriever="bm25", compressor="chunks", k=max(10, REFERENCE_K), embedder=embedder)
    deep = [bm25.retrieve(t.question) for t in tasks]
    for k in sorted({1, 2, 3, REFERENCE_K, 10}):
        record("bm25", "chunks", None, k, [compress_chunks(h[:k], 10**9) for h in deep])
    for retriever in ("bm25", "dense", "hybrid", "graph"):
        pipes = {c: RagPipeline(store, retriever=retriever, compressor=c, k=REFERENCE_K, embedder=embedder)
                 for c in ("chunks", "sentences", "triplets", "graph")}
        hits: list[list[Hit]] = [pipes["chunks"].retrieve(t.question) for t in tasks]
        for compressor, pipe in pipes.items():
            if compressor == "triplets" and retriever != "graph":
                continue  # the triplet compressor reads the knowledge graph, not the hits: measured once
            for budget in budgets:
                pipe.budget_tokens = budget
                record(retriever, compressor, budget, REFERENCE_K,
                       [pipe.context(t.question, h) for t, h in zip(tasks, hits, strict=True)])
    return records


def _goal(records: list[RagRecord], reference: RagRecord) -> dict[str, Any]:
    """For each retriever and compressor: the smallest budget whose recall reaches the reference's."""
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
    return {"goal": f"equal supporting-fact recall with <= 40% of the context tokens of BM25 top-{REFERENCE_K} "
                    "chunks",
            "reference": {"support_recall": reference.support_recall, "context_tokens": reference.context_tokens},
            "reaching": best, "best": None if winner is None else {"config": winner[0], **winner[1]},
            "met": winner is not None and winner[1]["ratio"] is not None and winner[1]["ratio"] <= 0.40}


def format_rag_report(result: dict[str, Any]) -> str:
    ref: RagRecord = result["reference"]
    lines = [f"{result['questions']} questions (1-3 hops), corpus: {result['ingest']['docs']} documents, "
             f"{result['ingest']['chunks']} chunks, {result['ingest']['triplets']} triplets",
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
