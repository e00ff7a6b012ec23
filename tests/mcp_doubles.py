"""A TEST DOUBLE MCP server written with the ``mcp`` SDK (2.x): ``python tests/mcp_doubles.py`` serves it over stdio,
``--http PORT`` over streamable HTTP on 127.0.0.1. Tools: ``add`` (read-only), ``shout`` (read-only, text),
``fail`` (reports an error), ``slow`` (sleeps), ``write_note`` (not read-only: a side effect)."""

from __future__ import annotations

import argparse
import asyncio

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("tokenomy-test-double")
READ_ONLY = ToolAnnotations(read_only_hint=True)
NOTES: list[str] = []


@server.tool(annotations=READ_ONLY)
def add(a: int, b: int) -> int:
    """Adds two whole numbers."""
    return a + b


@server.tool(annotations=READ_ONLY, structured_output=False)
def shout(text: str, times: int = 1) -> str:
    """The text in capitals, repeated."""
    return " ".join([text.upper()] * times)


@server.tool(annotations=READ_ONLY)
def fail(why: str) -> str:
    """Always fails, saying why."""
    raise ToolError(f"refused: {why}")


@server.tool(annotations=READ_ONLY)
async def slow(seconds: float) -> str:
    """Sleeps, then says so."""
    await asyncio.sleep(seconds)
    return "woke"


@server.tool()
def write_note(text: str) -> int:
    """Keeps a note; the number of notes kept."""
    NOTES.append(text)
    return len(NOTES)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", type=int, default=None, metavar="PORT")
    args = ap.parse_args()
    if args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        server.run("stdio")
