"""``RagPipeline``: retrieve -> compress -> generate, with the context tokens of every step on the record.

    from tokenomy.planners.rag import RagPipeline
    from tokenomy.tools.rag import RagStore
    store = RagStore("docs.sqlite"); store.ingest("docs/", embedder=MiniLMEmbedder(), extract=extract_triplets)
    pipe = RagPipeline(store, model="embedded", retriever="hybrid", compressor="graph", budget_tokens=200)
    answer = pipe.ask("Who founded Kelmar Works?")   # answer.text, answer.cites, answer.context.tokens
    plan_tool = pipe.as_tool()                       # `retrieve(query)` inside codified plans

Retrieval and compression are data handling (``tools.rag``); asking a model about what they found is a strategy,
so the pipeline lives here, with the other strategies, and calls its model as they do: through a ``Worker`` in
front of the engine (``tokenomy.kernels``). An agent that plans over the pipeline's tool is an ordinary
``Agent(name="retriever", role="planner", tools=("retrieve",))`` of ``tokenomy.agents``.

The compressor is where the tokens go: ``chunks`` packs whole chunks (the usual RAG baseline), ``sentences``
the sentences that share most with the question, ``triplets`` the knowledge-graph facts ranked by Personalized
PageRank, and ``graph`` (TeaRAG-style) facts first, sentences after, all within ``budget_tokens``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenomy._threads import in_daemon_thread
from tokenomy.errors import UserError
from tokenomy.kernels import Completion, Engine, SamplingParams, Worker
from tokenomy.kernels.limits import UsageLimits, limits_scope
from tokenomy.tools.rag.retrievers import GraphRetriever, Retriever, make_retriever
from tokenomy.tools.rag.store import RagStore
from tokenomy.tools.rag.types import Context, Embedder, Hit

if TYPE_CHECKING:
    from tokenomy.kernels import Usage
    from tokenomy.tools import Tool

__all__ = ["RagPipeline", "RagAnswer", "COMPRESSORS", "NO_MATCH", "NO_FIT", "RAG_SYSTEM"]

COMPRESSORS = ("chunks", "sentences", "triplets", "graph")
NO_MATCH = "no passage in the store matches the question"
NO_FIT = "the passages that match do not fit the context budget; give a larger budget"
RAG_SYSTEM = ("Answer the question from the facts below only. Reply with the answer, as short as possible, then "
              "its source in brackets, e.g. Tormos [cities.md#3]. If the facts do not give the answer, reply: "
              "not found.")
_CITE = re.compile(r"\[([^\[\]\s]+#\d+)\]")


@dataclass
class RagAnswer:
    """One answered question."""

    question: str
    text: str
    """The model's answer without its bracketed citations (``NO_MATCH`` when nothing was retrieved, ``NO_FIT``
    when what was retrieved does not fit the budget; no model call then)."""
    context: Context
    hits: list[Hit] = field(default_factory=list)
    cited: list[str] = field(default_factory=list)
    """The ``path#n`` the model cited that are in its context (a citation of anything else is dropped)."""
    usage: Usage | None = None
    """The generator's usage (``None``: no model call, e.g. nothing matched)."""

    @property
    def cites(self) -> list[str]:
        """What the answer rests on: the model's own citations, else every chunk of its context."""
        return self.cited or list(self.context.cites)

    def to_json(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.text, "cites": self.cites, "cited_by_model": self.cited,
                "context_tokens": self.context.tokens, "retrieved": [h.chunk.cite for h in self.hits],
                "usage": None if self.usage is None else self.usage.to_dict()}


class RagPipeline:
    """Retrieve, compress, generate.

    Args:
        store: a ``RagStore`` or the path of one.
        model: an engine, a shared ``Worker`` in front of one, or a model spec, for ``ask`` (``None``: retrieval and
            context only).
        embedder: the store's embedder, for ``dense``/``hybrid`` and for sentence scoring; ``None``: the
            all-MiniLM-L6-v2 embedder when the store has its vectors.
        retriever: ``bm25``, ``dense``, ``hybrid`` or ``graph``, or a ``Retriever``.
        compressor: ``chunks``, ``sentences``, ``triplets`` or ``graph`` (see the module docstring).
        budget_tokens: the most context tokens (o200k_base) handed to the model.
        k: chunks retrieved per question.
        max_answer_tokens: the most tokens of an answer.
    """

    def __init__(self, store: RagStore | str | Path, *, model: Engine | Worker | str | None = None,
                 embedder: Embedder | None = None, retriever: str | Retriever = "hybrid", compressor: str = "graph",
                 budget_tokens: int = 256, k: int = 5, max_answer_tokens: int = 48) -> None:
        if compressor not in COMPRESSORS:
            raise UserError(f"unknown compressor {compressor!r}; choose one of {', '.join(COMPRESSORS)}")
        if budget_tokens < 1 or k < 1:
            raise UserError(f"budget_tokens and k must be >= 1 (got {budget_tokens} and {k})")
        self.store = store if isinstance(store, RagStore) else RagStore(store)
        if embedder is None and self.store.embedder_name:
            from tokenomy.tools.rag.embed import MiniLMEmbedder

            if self.store.embedder_name == MiniLMEmbedder.name:
                embedder = MiniLMEmbedder()
        self.embedder = embedder
        self.retriever = retriever if not isinstance(retriever, str) else make_retriever(retriever, self.store,
                                                                                          embedder)
        self.compressor, self.budget_tokens, self.k = compressor, budget_tokens, k
        self._graph = self.retriever if isinstance(self.retriever, GraphRetriever) else None
        if isinstance(model, str):
            from tokenomy.kernels import load_engine

            model = load_engine(model)
        self.worker: Worker | None = (model if isinstance(model, Worker) or model is None else Worker(model))
        """Where ``ask`` sends its one model call, as the strategies do (``None``: no model)."""
        self.max_answer_tokens = max_answer_tokens
        self.calls = 0
        self.context_tokens = 0
        """Context tokens handed out so far (``context`` calls, the tool's included)."""

    # -- the steps -----------------------------------------------------------------------------------------

    def retrieve(self, question: str) -> list[Hit]:
        return self.retriever.retrieve(question, self.k)

    def context(self, question: str, hits: list[Hit] | None = None) -> Context:
        """The compressed context for ``question`` (``hits``: already retrieved ones)."""
        from tokenomy.tools.rag.compress import compress_chunks, compress_hybrid, compress_sentences, compress_triplets

        hits = self.retrieve(question) if hits is None else hits
        if self.compressor == "chunks":
            ctx = compress_chunks(hits, self.budget_tokens)
        elif self.compressor == "sentences":
            ctx = compress_sentences(question, hits, self.budget_tokens, embedder=self.embedder)
        else:
            graph = self._graph or GraphRetriever(self.store)
            self._graph = graph
            ranked = graph.triplets(question)
            if self.compressor == "triplets":
                ctx = compress_triplets(ranked, self.budget_tokens, cite=self._cite)
            else:
                ctx = compress_hybrid(question, ranked, hits, self.budget_tokens, cite=self._cite)
        self.calls += 1
        self.context_tokens += ctx.tokens
        return ctx

    def _cite(self, chunk_id: int) -> str:
        return self.store.chunk(chunk_id).cite

    def ask(self, question: str, *, limits: UsageLimits | None = None) -> RagAnswer:
        """Answer ``question`` from the store with one model call (none when nothing matches); ``limits``: a
        budget checked before that call."""
        ready = self._prepare(question)
        if isinstance(ready, RagAnswer):
            return ready
        hits, ctx, messages = ready
        assert self.worker is not None
        with limits_scope(limits):
            c = self.worker.generate(messages, SamplingParams(max_tokens=self.max_answer_tokens), agent="rag",
                                     tags=("rag",))
        return self._finish(question, ctx, hits, c)

    async def arun(self, question: str, *, limits: UsageLimits | None = None) -> RagAnswer:
        """``ask`` for asyncio callers (retrieval and the call in a thread; the event loop stays free)."""
        return await in_daemon_thread(self.ask, (question,), {"limits": limits}, name="tokenomy-rag")

    async def astream(self, question: str, *, limits: UsageLimits | None = None) -> AsyncIterator[str | RagAnswer]:
        """The answer's text as the model decodes it (``str`` pieces), then the whole ``RagAnswer``."""
        ready = await in_daemon_thread(self._prepare, (question,), name="tokenomy-rag")
        if isinstance(ready, RagAnswer):
            yield ready.text
            yield ready
            return
        hits, ctx, messages = ready
        assert self.worker is not None
        completion = None
        with limits_scope(limits):
            async for chunk in self.worker.engine.astream(messages, SamplingParams(max_tokens=self.max_answer_tokens),
                                                          agent="rag", tags=("rag",)):
                if chunk.delta:
                    yield chunk.delta
                completion = chunk.completion or completion
        assert completion is not None
        self.worker.ledger.record(completion.usage, "rag", ("rag",))
        yield self._finish(question, ctx, hits, completion)

    def _prepare(self, question: str) -> RagAnswer | tuple[list[Hit], Context, list[dict[str, str]]]:
        """Retrieval and the context: the messages of the model call, or the answer when none is needed."""
        if not question.strip():
            raise UserError("the question is empty")
        if self.worker is None:
            raise UserError("this pipeline has no model: give RagPipeline(model=...) to answer questions")
        hits = self.retrieve(question)
        ctx = self.context(question, hits)
        if not ctx.text.strip():
            return RagAnswer(question, NO_FIT if hits else NO_MATCH, ctx, hits)
        return hits, ctx, [{"role": "system", "content": RAG_SYSTEM},
                           {"role": "user", "content": f"Facts:\n{ctx.text}\n\nQuestion: {question}"}]

    def _finish(self, question: str, ctx: Context, hits: list[Hit], c: Completion) -> RagAnswer:
        raw = c.text.strip().split("\n")[0].strip()
        allowed = set(ctx.cites)
        cited = [m for m in dict.fromkeys(_CITE.findall(raw)) if m in allowed]
        text = _CITE.sub("", raw).strip() or raw
        return RagAnswer(question, text, ctx, hits, cited, c.usage)

    # -- as parts of bigger workflows ----------------------------------------------------------------------

    def as_tool(self, name: str = "retrieve") -> Tool:
        """A tool ``name(query) -> str`` for codified plans: the compressed context for ``query`` (or ``NO_MATCH``,
        or ``NO_FIT``), each fact tagged with its source."""
        from tokenomy.tools import tool

        def retrieve(query: str) -> str:
            """Facts from the document store about the query, each with its source [file#n].

            Args:
                query: what to look for, e.g. "founder of Kelmar Works".
            """
            hits = self.retrieve(query)
            return self.context(query, hits).text or (NO_FIT if hits else NO_MATCH)

        retrieve.__name__ = name
        return tool(retrieve)
