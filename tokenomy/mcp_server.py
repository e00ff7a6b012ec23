"""``tokenomy mcp``: tokenomy as an MCP server (the ``mcp`` SDK, 2.x), so an MCP client (an IDE, an agent host,
another framework) can ask it questions.

Two tools, both read-only: ``run(question, strategy)`` answers with a strategy over a corpus's ``search``,
``lookup`` and ``calc`` tools (as ``tokenomy run`` does), and ``rag_ask(question)`` answers from a RAG store (as
``tokenomy rag ask`` does); each returns its answer with the tokens it spent (per agent and in all). The model is
loaded on the first call, so the server answers MCP's handshake at once. Over stdio by default (the client starts
``tokenomy mcp``); ``--http PORT`` serves streamable HTTP on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from pathlib import Path
from typing import Any

from tokenomy.errors import MissingExtra, TokenomyError, UserError

__all__ = ["build_server", "cmd_mcp", "add_parser"]


class _Service:
    """What the tools share: the engine (loaded once, on first use), the corpus tools and the RAG store path."""

    def __init__(self, model: str | None, corpus: str | None, store: str | None, strategy: str) -> None:
        from tokenomy.planners import STRATEGIES
        from tokenomy.tools import example_corpus_dir

        if strategy not in STRATEGIES:
            raise UserError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        self.model, self.strategy = model, strategy
        self.corpus = Path(corpus) if corpus else example_corpus_dir()
        if not self.corpus.is_dir():
            raise UserError(f"corpus {self.corpus} is not a directory (give --corpus DIR with .md or .txt files)")
        self.store = store
        self._engine: Any = None
        self._tools: list[Any] | None = None
        self._lock = threading.Lock()

    def engine(self) -> Any:
        with self._lock:
            if self._engine is None:
                from tokenomy.kernels import default_spec, load_engine

                self._engine = load_engine(self.model or default_spec())
            return self._engine

    def tools(self) -> list[Any]:
        with self._lock:
            if self._tools is None:
                from tokenomy.tools import calc, lookup_tool, search_tool
                from tokenomy.tools.builtin import CorpusIndex

                index = CorpusIndex(self.corpus)
                index.refresh()
                self._tools = [search_tool(index), lookup_tool(index), calc]
            return self._tools

    def run(self, question: str, strategy: str | None) -> dict[str, Any]:
        from tokenomy.kernels import Usage
        from tokenomy.planners import make_strategy
        from tokenomy.planners.state import to_state

        result = make_strategy(strategy or self.strategy, self.engine(), self.tools()).run(question)
        return {"answer": to_state(result.answer), "strategy": result.strategy, "plan": result.plan,
                "notes": result.notes, "thread_id": result.thread_id,
                "usage": {agent: u.to_dict() for agent, u in sorted(result.usage.items())},
                "total": Usage.sum(result.usage.values()).to_dict(), "model": self.engine().spec}

    def rag_ask(self, question: str) -> dict[str, Any]:
        from tokenomy.planners.rag import RagPipeline
        from tokenomy.rag_cli import default_store_path
        from tokenomy.tools.rag.store import RagStore

        path = Path(self.store) if self.store else default_store_path()
        if not path.exists():
            raise UserError(f"no RAG store at {path}: run `tokenomy rag ingest DIR --store {path}` first")
        with RagStore(path) as store:
            retriever = "hybrid" if store.embedder_name else "bm25"
            answer = RagPipeline(store, model=self.engine(), retriever=retriever).ask(question)
        out = answer.to_json()
        out["model"] = self.engine().spec
        return out


def build_server(*, model: str | None = None, corpus: str | None = None, store: str | None = None,
                 strategy: str = "rewoo") -> Any:
    """The MCP server (an ``MCPServer``) with the ``run`` and ``rag_ask`` tools."""
    try:
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
        from mcp.types import ToolAnnotations
    except ImportError as exc:
        raise MissingExtra("mcp", "mcp", what="tokenomy mcp") from exc
    service = _Service(model, corpus, store, strategy)
    server = MCPServer("tokenomy", instructions="Answers questions for few tokens: `run` plans over a corpus's "
                                                "tools, `rag_ask` answers from a RAG store; each says what it "
                                                "spent.")
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    async def answer(fn: Any, *args: Any) -> dict[str, Any]:
        """``fn(*args)`` off the server's loop; tokenomy's own errors (a missing store, a spent budget, a bad
        strategy) reach the client with their message, as anticipated failures."""
        try:
            return await asyncio.to_thread(fn, *args)  # type: ignore[no-any-return]
        except TokenomyError as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from exc

    @server.tool(annotations=read_only)
    async def run(question: str, strategy: str = "") -> dict[str, Any]:
        """Answer a question with a tokenomy strategy (rewoo, rewoo-nl, react, plan-execute) over the corpus's
        search, lookup and calc tools; the answer, the plan and the tokens spent per agent."""
        return await answer(service.run, question, strategy or None)

    @server.tool(annotations=read_only)
    async def rag_ask(question: str) -> dict[str, Any]:
        """Answer a question from the RAG store with one model call; the answer, its sources and the tokens."""
        return await answer(service.rag_ask, question)

    return server


def add_parser(sub: Any) -> None:
    p = sub.add_parser("mcp", help="serve tokenomy's run and rag_ask as MCP tools (stdio, or --http PORT)")
    p.add_argument("--model", default=None, help="model spec (default: $TOKENOMY_MODEL or 'embedded')")
    p.add_argument("--corpus", default=None, help="run's corpus: a directory of .md/.txt (default: the example)")
    p.add_argument("--store", default=None, help="rag_ask's store (default: the one `tokenomy rag` uses)")
    p.add_argument("--strategy", default="rewoo", help="run's default strategy")
    p.add_argument("--http", type=int, default=None, metavar="PORT", help="serve streamable HTTP on this port")
    p.add_argument("--host", default="127.0.0.1", help="with --http: the address to listen on")
    p.set_defaults(fn=cmd_mcp)


def cmd_mcp(args: argparse.Namespace) -> int:
    server = build_server(model=args.model, corpus=args.corpus, store=args.store, strategy=args.strategy)
    if args.http:
        server.run("streamable-http", host=args.host, port=args.http)
    else:
        server.run("stdio")
    return 0
