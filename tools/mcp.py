"""The tools of any MCP server as plan tools, with the ``mcp`` SDK (2.x; ``pip install 'tokenomy[mcp]'``).

``McpServer`` holds one connection to a server, over stdio (a command tokenomy starts) or streamable HTTP (a URL),
open in a thread and event loop of its own: a plan's tool call comes from whatever loop its strategy runs in, and
the session stays where it was opened (an MCP session belongs to the task that entered it). ``tools()`` gives the
tools the user named, and only those: a server's tools are off until listed, as every tool with side effects is.
A tool the server marks read-only (``readOnlyHint``) is a plain tool; any other is ``side_effects=True``, so a
strategy refuses it unless its registry allows side effects.

Each tool keeps the server's name, description and input schema (the arguments are checked before the call); the
call is bounded (``timeout_s``); an error the tool reports (``isError``) is raised as the tool's error, which a
plan receives as a value; the result is the structured content where the server gives one, else its text::

    with McpServer(["mcp-server-time"], allow=["get_current_time"]) as time_server:
        result = Rewoo(engine, [*corpus_tools, *time_server.tools()]).run(question)
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from tokenomy.errors import MissingExtra, UserError

from .base import Tool, model_from_json_schema

__all__ = ["McpServer", "McpToolError"]


class McpToolError(RuntimeError):
    """An MCP tool reported an error (``isError``); the message is the tool's own text."""


def _sdk() -> Any:
    try:
        import mcp
    except ImportError as exc:
        raise MissingExtra("mcp", "mcp", what="MCP servers' tools") from exc
    return mcp


class McpServer:
    """One MCP server's connection. Give ``command`` (a list, or a string split like a shell would) to start a
    server over stdio, or ``url`` for streamable HTTP.

    Args:
        allow: the names of the tools to use; ``tools()`` gives only these (``list_tools()`` shows them all).
        env, cwd: the stdio server's environment (added to a minimal one: ``PATH``, ``HOME``, ...) and directory.
        timeout_s: seconds one tool call may take.
        connect_timeout_s: seconds to start the server and finish MCP's handshake.
        stderr: where a stdio server's own messages go (a path; default: nowhere).
    """

    def __init__(self, command: str | Sequence[str] | None = None, *, url: str | None = None,
                 allow: Iterable[str] = (), env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 timeout_s: float = 30.0, connect_timeout_s: float = 30.0, stderr: str | Path | None = None) -> None:
        if (command is None) == (url is None):
            raise UserError("McpServer needs a command (stdio) or a url (streamable HTTP), not both")
        if url is not None and not url.startswith(("http://", "https://")):
            raise UserError(f"an MCP server's url must start with http:// or https://, got {url!r}")
        self.command = shlex.split(command) if isinstance(command, str) else list(command or [])
        if command is not None and not self.command:
            raise UserError("the MCP server's command is empty")
        self.url = url
        self.allow = list(dict.fromkeys(allow))
        self.env, self.cwd, self.stderr = env, cwd, stderr
        if not timeout_s > 0 or not connect_timeout_s > 0:
            raise UserError("timeout_s and connect_timeout_s must be > 0")
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.name = url or " ".join(self.command)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: Any = None
        self._closing: asyncio.Event | None = None
        self._holder: Future[None] | None = None
        self._listed: list[Any] | None = None

    # -- life cycle ---------------------------------------------------------------------------------------------

    def start(self) -> McpServer:
        """Start the server (stdio) or connect (HTTP) and finish the handshake, within ``connect_timeout_s``."""
        if self._session is not None:
            return self
        _sdk()
        loop = self._loop = asyncio.new_event_loop()
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=loop.run_forever, name=f"tokenomy-mcp-{self.name[:40]}", daemon=True)
        self._thread.start()
        self._holder = asyncio.run_coroutine_threadsafe(self._hold(ready), loop)
        try:
            ready.result(self.connect_timeout_s)
        except TimeoutError:
            self.close()
            raise UserError(f"MCP server {self.name!r} did not finish its handshake in {self.connect_timeout_s:g} s"
                            ) from None
        except Exception as exc:
            self.close()
            raise UserError(f"MCP server {self.name!r} could not be started: {_reason(exc)}") from exc
        return self

    async def _hold(self, ready: Future[None]) -> None:
        """Open the transport and the session, then wait for ``close``: all in this one task, as the SDK's
        context managers require."""
        from contextlib import AsyncExitStack

        from mcp import ClientSession

        self._closing = asyncio.Event()
        try:
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport(stack))
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                self._session = session
                ready.set_result(None)
                await self._closing.wait()
        except BaseException as exc:  # noqa: BLE001 - handed to start(), or dropped after close
            if not ready.done():
                ready.set_exception(exc)
        finally:
            self._session = None

    def _transport(self, stack: Any) -> Any:
        if self.url is not None:
            from mcp.client.streamable_http import streamable_http_client

            return streamable_http_client(self.url)
        from mcp import StdioServerParameters
        from mcp.client.stdio import get_default_environment, stdio_client

        params = StdioServerParameters(command=self.command[0], args=self.command[1:],
                                       env={**get_default_environment(), **(self.env or {})},
                                       cwd=str(self.cwd) if self.cwd else None)
        errlog = stack.enter_context(open(self.stderr or os.devnull, "a", encoding="utf-8"))
        return stdio_client(params, errlog=errlog)

    def close(self) -> None:
        """End the session and stop the server (stdio) or disconnect (HTTP)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._closing is not None:
            loop.call_soon_threadsafe(self._closing.set)
        if self._session is None and self._holder is not None:  # still starting: stop it where it is
            self._holder.cancel()
        if self._thread is not None:
            deadline = 10.0

            def stop_when_idle() -> None:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                if pending:
                    loop.call_later(0.05, stop_when_idle)
                else:
                    loop.stop()

            loop.call_soon_threadsafe(stop_when_idle)
            self._thread.join(deadline)
            if self._thread.is_alive():  # a server that will not stop: leave its thread, a daemon
                loop.call_soon_threadsafe(loop.stop)
        self._thread = None

    def __enter__(self) -> McpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls --------------------------------------------------------------------------------------------------

    def _run(self, coro: Any, timeout: float) -> Any:
        """Run ``coro`` on the connection's loop from a thread that is not it."""
        self.start()
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise UserError(f"MCP server {self.name!r} did not answer in {timeout:g} s") from None

    def list_tools(self) -> list[Any]:
        """Every tool the server offers (the SDK's ``Tool``: name, description, input_schema, annotations)."""
        if self._listed is None:
            async def all_tools() -> list[Any]:
                tools, cursor = [], None
                while True:
                    from mcp import types

                    page = await self._session.list_tools(
                        params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
                    tools += page.tools
                    cursor = page.next_cursor
                    if not cursor:
                        return tools

            self._listed = self._run(all_tools(), self.connect_timeout_s)
        return list(self._listed)

    def tools(self) -> list[Tool]:
        """The tools named in ``allow``, as tokenomy tools. Naming none, or one the server does not offer, is a
        ``UserError`` that lists what it offers."""
        offered = {t.name: t for t in self.list_tools()}
        names = ", ".join(sorted(offered)) or "none"
        if not self.allow:
            raise UserError(f"MCP server {self.name!r}: its tools are off until you name them: "
                            f"McpServer(..., allow=[...]) from: {names}")
        missing = [n for n in self.allow if n not in offered]
        if missing:
            raise UserError(f"MCP server {self.name!r} has no tool {', '.join(missing)}; it offers: {names}")
        return [self._tool(offered[n]) for n in self.allow]

    def _tool(self, spec: Any) -> Tool:
        name = re.sub(r"\W", "_", spec.name)
        if not name or name[0].isdigit():
            name = f"_{name}"
        args_model = model_from_json_schema(dict(spec.input_schema or {}), name)
        read_only = bool(getattr(spec.annotations, "read_only_hint", False)) if spec.annotations else False
        server, remote, timeout = self, spec.name, self.timeout_s

        async def call(**kwargs: Any) -> Any:
            server.start()
            assert server._loop is not None
            arguments = {k: v for k, v in kwargs.items() if v is not None}
            fut = asyncio.run_coroutine_threadsafe(
                server._session.call_tool(remote, arguments, read_timeout_seconds=timeout), server._loop)
            try:
                result = await asyncio.wrap_future(fut)
            except asyncio.CancelledError:
                fut.cancel()
                raise
            return _result_value(result)

        return Tool(name, spec.description or spec.title or name, args_model, call, side_effects=not read_only,
                    timeout_s=timeout)


def _result_value(result: Any) -> Any:
    """A call's value: its structured content (a lone ``result`` unwrapped), else its text parts joined; an
    error result raises ``McpToolError`` with the tool's text."""
    texts = [c.text for c in (getattr(result, "content", None) or []) if getattr(c, "type", "") == "text"]
    if getattr(result, "is_error", False):
        raise McpToolError("; ".join(texts) or "the tool reported an error without a message")
    structured = getattr(result, "structured_content", None)
    if isinstance(structured, dict):
        return structured["result"] if set(structured) == {"result"} else structured
    if not texts:
        return None
    return texts[0] if len(texts) == 1 else "\n".join(texts)


def _reason(exc: BaseException) -> str:
    """The innermost message of ``exc`` (anyio wraps failures in exception groups)."""
    while getattr(exc, "exceptions", None):
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return f"{type(exc).__name__}: {exc}"
