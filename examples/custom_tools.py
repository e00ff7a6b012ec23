"""Your own tools in a plan: a plain function, an async function and a LangChain tool, side by side.

    python examples/custom_tools.py ["question"]

``@tool`` reads a function's type hints and docstring into an argument model and a description; an ``async def``
runs concurrently with other steps of the plan; ``from_langchain`` wraps any LangChain ``BaseTool`` (this part
needs ``pip install 'tokenomy[langchain]'``). The model is ``$TOKENOMY_MODEL`` or the embedded one.
"""

from __future__ import annotations

import asyncio
import sys

from tokenomy import Engine, Rewoo, load_engine, tool
from tokenomy.errors import MissingExtra
from tokenomy.planners import RunResult

HARBOURS = {"pellhaven": {"berths": 14, "depth_m": 11.5}, "velmora": {"berths": 3, "depth_m": 4.0}}


@tool
def harbour(town: str) -> dict:
    """Facts about a town's harbour: number of berths and water depth in metres.

    Args:
        town: the town, e.g. "Pellhaven".
    """
    return HARBOURS.get(town.strip().lower(), {"berths": 0, "depth_m": 0.0})


@tool
async def tide(town: str, hour: int = 12) -> float:
    """The forecast tide height in metres at a town's harbour for an hour of today.

    Args:
        town: the town, e.g. "Pellhaven".
        hour: the hour of the day, 0 to 23.
    """
    await asyncio.sleep(0.05)  # a network call would go here
    return round(1.2 + 0.8 * ((hour % 12) / 12), 2)


def langchain_tools() -> list:
    try:
        from langchain_core.tools import tool as lc_tool
    except ImportError as exc:
        raise MissingExtra("langchain-core", "langchain", "the LangChain tool of this example") from exc

    from tokenomy.tools import from_langchain

    @lc_tool
    def draught_ok(depth_m: float, draught_m: float) -> bool:
        """Whether a ship with the given draught fits in water of the given depth (with 1 m to spare)."""
        return depth_m >= draught_m + 1.0

    return [from_langchain(draught_ok)]


def main(question: str = "Can a ship with a draught of 9 metres berth at Pellhaven?",
         engine: Engine | None = None) -> RunResult:
    engine = engine or load_engine()
    tools = [harbour, tide, *langchain_tools()]
    for t in tools:
        print(f"tool {t.signature()}")
    result = Rewoo(engine, tools).run(question)

    print("plan:\n  " + result.plan.replace("\n", "\n  "))
    print(f"answer: {result.answer}")
    for agent, usage in sorted(result.usage.items()):
        print(f"  {agent:8s} {usage}")
    print(f"  {'total':8s} {result.total}")
    return result


if __name__ == "__main__":
    main(*sys.argv[1:2])
