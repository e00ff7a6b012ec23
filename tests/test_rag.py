"""RAG retrievers, the pipeline (as itself, as a plan tool), ``tokenomy rag`` and ``bench rag``."""

from __future__ import annotations

import json

import pytest

from tokenomy.benchmarks.rag import format_rag_report, run_rag_bench, support_recall
from tokenomy.benchmarks.world import World
from tokenomy.cli import main
from tokenomy.errors import UserError
from tokenomy.kernels import ScriptedEngine
from tokenomy.kernels.tokens import count_text
from tokenomy.planners import Rewoo
from tokenomy.planners.rag import NO_MATCH, RagPipeline
from tokenomy.tools.rag import (
    BM25Retriever,
    DenseRetriever,
    GraphRetriever,
    HybridRetriever,
    RagStore,
    make_retriever,
)
from tokenomy.tools.rag.graph import extract_triplets

from .rag_doubles import HashEmbedder


@pytest.fixture(scope="module")
def world_store(tmp_path_factory):
    base = tmp_path_factory.mktemp("rag")
    world = World(seed=3, per_type=8)
    corpus = world.write_corpus(base / "corpus")
    store = RagStore(base / "store.sqlite")
    store.ingest(corpus, embedder=HashEmbedder(), extract=extract_triplets)
    yield world, store
    store.close()


def _entity_file(name):
    import re

    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".md"


def test_each_retriever_finds_the_entity_of_a_one_hop_question(world_store):
    world, store = world_store
    task = world.tasks(1, hops=1, salt="t")[0]
    want = _entity_file(task.steps[0].subject)
    emb = HashEmbedder()
    # (dense alone is checked with the real embedder below: a hashed bag of 64 buckets is no semantic model)
    for r in (BM25Retriever(store), HybridRetriever([BM25Retriever(store), DenseRetriever(store, emb, min_score=0.0)]),
              GraphRetriever(store)):
        hits = r.retrieve(task.question, 3)
        assert hits and [h.rank for h in hits] == list(range(len(hits))), r.name
        assert want in [h.chunk.path for h in hits], (r.name, [h.chunk.path for h in hits])
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False)), r.name


def test_graph_retriever_follows_the_chain_that_bm25_cannot_see(world_store):
    world, store = world_store
    task = world.tasks(1, hops=3, salt="chain")[0]
    files = {_entity_file(s.subject) for s in task.steps}
    graph_paths = {h.chunk.path for h in GraphRetriever(store).retrieve(task.question, 5)}
    assert files <= graph_paths  # every hop's paragraph, though only the first entity is named


def test_hybrid_fuses_by_reciprocal_rank():
    class Fixed:
        def __init__(self, name, ids):
            self.name, self.ids = name, ids

        def retrieve(self, question, k=5):
            from tokenomy.tools.rag import Chunk, Hit

            return [Hit(Chunk(i, f"d{i}.md", 1, f"text {i}"), 1.0 / (r + 1), r) for r, i in enumerate(self.ids[:k])]

    fused = HybridRetriever([Fixed("a", [1, 2, 3]), Fixed("b", [3, 2, 9])], c=60).retrieve("q", 3)
    # 2 and 3 are in both lists; 3 ranks 1st and 3rd (1/61 + 1/63) above 2 ranking 2nd twice (2/62).
    assert [h.chunk.id for h in fused] == [3, 2, 1]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 63)


def test_dense_retriever_refuses_another_embedder_and_drops_unrelated(world_store):
    _, store = world_store
    with pytest.raises(UserError, match="made by 'hash-bow'"):
        DenseRetriever(store, HashEmbedder(name="other"))
    assert DenseRetriever(store, HashEmbedder(), min_score=0.99).retrieve("zzqx vvkw", 5) == []
    with pytest.raises(UserError, match="needs an embedder"):
        make_retriever("hybrid", store)
    with pytest.raises(UserError, match="unknown retriever"):
        make_retriever("magic", store)


@pytest.mark.parametrize("compressor", ["chunks", "sentences", "triplets", "graph"])
def test_context_stays_in_budget_and_counts_exactly(world_store, compressor):
    world, store = world_store
    pipe = RagPipeline(store, retriever="bm25", compressor=compressor, budget_tokens=60, embedder=HashEmbedder())
    for task in world.tasks(3, hops=2, salt="budget"):
        ctx = pipe.context(task.question)
        assert ctx.tokens == count_text(ctx.text) <= 60
        assert all("#" in c for c in ctx.cites)
    assert pipe.calls == 3 and pipe.context_tokens > 0


def test_support_recall_needs_the_entity_or_its_own_source():
    facts = [("Kelmar Works", "1921"), ("Ana Velor", "Tormos")]
    assert support_recall("Kelmar Works: founded=1921; founder=Ana Velor", facts) == 0.5
    assert support_recall("[kelmar-works.md#1] It was founded in 1921.\n[x.md#1] Its birthplace is Tormos.",
                          facts) == 0.5  # "Tormos" is not under Ana Velor's file
    assert support_recall("[ana-velor.md#1] The birthplace is Tormos. Founded 1921.", facts) == 0.5


def test_ask_answers_with_citations_from_its_context(world_store):
    world, store = world_store
    task = world.tasks(1, hops=1, salt="ask")[0]
    path = _entity_file(task.steps[0].subject)
    seen = []

    def reply(req):
        seen.append(req.prompt[-1]["content"])
        assert req.agent == "rag" and "rag" in req.tags  # one call through a Worker, as the strategies make theirs
        return f"{task.answer} [{path}#1] [elsewhere.md#4]"

    pipe = RagPipeline(store, model=ScriptedEngine(reply), retriever="bm25", compressor="graph", budget_tokens=80)
    answer = pipe.ask(task.question)
    assert answer.text == task.answer
    assert answer.cited == [f"{path}#1"]  # a citation outside the context is dropped
    assert answer.usage is not None and answer.usage.calls == 1
    assert seen and task.question in seen[0] and answer.context.text in seen[0]
    assert answer.to_json()["context_tokens"] == answer.context.tokens


def test_no_match_spends_no_model_call(world_store):
    _, store = world_store
    engine = ScriptedEngine(lambda req: "should not be asked")
    answer = RagPipeline(store, model=engine, retriever="bm25", compressor="chunks").ask("Qu'est-ce que zzqx?")
    assert answer.text == NO_MATCH and answer.usage is None and engine.requests == []
    with pytest.raises(UserError, match="question is empty"):
        RagPipeline(store, model=engine, retriever="bm25").ask("  ")
    with pytest.raises(UserError, match="no model"):
        RagPipeline(store, retriever="bm25").ask("who?")
    with pytest.raises(UserError, match="unknown compressor"):
        RagPipeline(store, retriever="bm25", compressor="zip")


def test_pipeline_as_a_tool_inside_a_codified_plan(world_store):
    world, store = world_store
    task = world.tasks(1, hops=1, salt="tool")[0]
    pipe = RagPipeline(store, retriever="bm25", compressor="graph", budget_tokens=60)
    retrieve = pipe.as_tool()
    assert retrieve.name == "retrieve"
    plan = f'facts = retrieve(query="{task.steps[0].subject} {task.steps[0].attribute}")\nanswer(facts)'
    engine = ScriptedEngine(lambda req: plan if req.agent == "planner" else task.answer)
    result = Rewoo(engine, [retrieve]).run(task.question)
    assert task.answer in str(result.values["facts"]) and pipe.calls == 1


def test_cli_ingest_and_ask(tmp_path, capsys):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "a.md").write_text("# Orvel\n\nOrvel is a town of 8200 people. Its mayor is Ana Toll.\n")
    (corpus / "b.bin").write_bytes(b"\x00\x01")  # not a supported suffix: ignored
    (corpus / "c.txt").write_text("")  # empty: skipped with a reason
    db = tmp_path / "s.sqlite"
    assert main(["rag", "ingest", str(corpus), "--store", str(db), "--no-vectors"]) == 0
    out = capsys.readouterr().out
    assert "1 added" in out and "skipped c.txt" in out and "1 chunks" in out
    assert main(["rag", "ask", "Who is the mayor of Orvel?", "--store", str(db), "--model", "scripted",
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["cites"] == ["a.md#1"] and got["retrieved"] == ["a.md#1"] and got["context_tokens"] > 0
    assert got["usage"]["calls"] == 1 and got["answer"]
    assert main(["rag", "ask", "who?", "--store", str(tmp_path / "none.sqlite")]) == 1
    assert "rag ingest" in capsys.readouterr().err


def test_bench_rag_quick_end_to_end(tmp_path):
    result = run_rag_bench(quick=True, questions=2, budgets=(32, 128), embedder=HashEmbedder(), progress=None)
    recs = result["records"]
    assert {r.retriever for r in recs} == {"bm25", "dense", "hybrid", "graph"}
    assert result["reference"].k == 5 and result["reference"].budget_tokens is None
    for r in recs:
        assert 0 <= r.support_recall <= 1 and 0 <= r.answer_recall <= 1
        if r.budget_tokens is not None:
            assert r.context_tokens <= r.budget_tokens
    assert [r.context_tokens for r in recs if r.budget_tokens is None] == sorted(
        r.context_tokens for r in recs if r.budget_tokens is None)  # more chunks, more tokens
    report = format_rag_report(result)
    assert "BM25 top-5" in report and "goal:" in report
    json.dumps([r.to_json() for r in recs])
    assert {"retriever", "budget_tokens", "context_tokens", "support_recall", "answer_recall"} <= set(
        recs[0].to_json())


@pytest.mark.embedded
def test_rag_ask_on_the_real_models(tmp_path):
    from tokenomy.kernels import shared_engine
    from tokenomy.tools.rag.embed import MiniLMEmbedder

    world = World(seed=5, per_type=6)
    store = RagStore(tmp_path / "s.sqlite")
    store.ingest(world.write_corpus(tmp_path / "c"), embedder=MiniLMEmbedder(), extract=extract_triplets)
    task = world.tasks(1, hops=1, salt="real")[0]
    pipe = RagPipeline(store, model=shared_engine("embedded"), retriever="hybrid", compressor="graph",
                       budget_tokens=64)
    want = _entity_file(task.steps[0].subject)
    assert want in [h.chunk.path for h in DenseRetriever(store, MiniLMEmbedder()).retrieve(task.question, 3)]
    answer = pipe.ask(task.question)
    assert answer.usage is not None and answer.usage.prompt_tokens > answer.context.tokens
    assert answer.cites and answer.context.tokens <= 64 and answer.text
    store.close()


def test_model_extractor_keeps_only_grounded_facts(tmp_path, capsys):
    from tokenomy.planners.rag_extract import ModelExtractor, parse_triplet_lines

    text = "Orvel is a town of 8200 people. Its mayor is Ana Toll."
    reply = ("Orvel | population | 8200\n- Orvel | mayor | Ana Toll\nOrvel | mayor | Bob Invented\n"
             "just chatter\nOrvel | | x\nOrvel | mayor | Ana Toll")
    assert parse_triplet_lines(reply, text) == [("Orvel", "population", "8200", "Orvel is a town of 8200 people."),
                                                ("Orvel", "mayor", "Ana Toll", "Its mayor is Ana Toll.")]
    engine = ScriptedEngine(lambda req: reply)
    ex = ModelExtractor(engine)
    assert len(ex(text)) == 2 and ex("  ") == [] and ex.usage.calls == 1
    assert engine.requests[0].agent == "extractor"
    corpus = tmp_path / "d"
    corpus.mkdir()
    (corpus / "o.md").write_text(f"# Orvel\n\n{text}\n")
    db = tmp_path / "s.sqlite"
    assert main(["rag", "ingest", str(corpus), "--store", str(db), "--no-vectors", "--extractor", "model",
                 "--model", "scripted"]) == 0
    assert "extraction: 1 model calls" in capsys.readouterr().out
