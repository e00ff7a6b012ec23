"""A published MCP server's tool in a plan, under a budget of tokens and calls.

    python examples/mcp_time_budget.py ["question"]

``McpServer`` starts ``mcp-server-time`` (``pip install mcp-server-time``; it needs no network) over stdio and
offers only the tool named in ``allow``; ``UsageLimits`` is checked before every model call of the run, and the
run stops with ``BudgetExceeded`` (its finished calls kept) rather than go over. The model is ``$TOKENOMY_MODEL``
or the embedded one. Needs ``pip install 'tokenomy[mcp]'``.
"""

from __future__ import annotations

import sys

from tokenomy import Engine, Rewoo, UsageLimits, load_engine
from tokenomy.planners import RunResult
from tokenomy.tools import calc
from tokenomy.tools.mcp import McpServer

QUESTION = "When it is 14:30 in Europe/Paris, what time is it in Asia/Tokyo?"


def main(question: str = QUESTION, engine: Engine | None = None) -> RunResult:
    engine = engine or load_engine()
    limits = UsageLimits(total_tokens=4000, calls=4)
    with McpServer([sys.executable, "-m", "mcp_server_time"], allow=["convert_time"]) as clock:
        result = Rewoo(engine, [*clock.tools(), calc]).run(question, limits=limits)
    print(f"plan:\n  {(result.plan or '(none)').replace(chr(10), chr(10) + '  ')}")
    print(f"answer: {result.answer}")
    print(f"spent: {limits.spent} of {limits.total_tokens} tokens and {limits.calls} calls")
    return result


if __name__ == "__main__":
    main(*(sys.argv[1:2] or [QUESTION]))
