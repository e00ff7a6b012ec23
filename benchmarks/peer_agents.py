"""One framework's agent answering the planning world's questions, run by `tokenomy bench peers` in a process of
its own (``python -m tokenomy.benchmarks.peer_agents FRAMEWORK ...``): never in the benchmark's process, so a
framework that runs model-written Python (smolagents' CodeAgent) or leaks state cannot touch the others.

Each framework runs in its own native way: its own prompts, its own tool API and agent loop, its defaults, except
the sampling temperature, 0 for every framework (greedy, as tokenomy's strategies decode), so that one run says
what each framework does rather than what one sample did, and the bound on its loop, ``MAX_STEPS`` model calls for
every framework, tokenomy's ``react`` included. Every request goes to the referee's recording proxy
under a tag per task (``/r/TAG/v1``), which counts the tokens; what a framework counts itself is reported beside.

Protocol: one JSON object per line on stdin, ``{"tag": ..., "question": ...}``; one JSON object per line on the
process's original stdout, ``{"tag", "answer", "error_kind", "error", "own_usage", "tool_calls", "tool_errors",
"wall_s"}``. Whatever the frameworks print goes to stderr. ``error_kind`` is one of ``ERROR_KINDS`` or ``None``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

FRAMEWORKS = ("langgraph", "langgraph-prompted", "smolagents-tool", "smolagents-code", "dspy", "llamaindex-react",
              "llamaindex-function", "tokenomy-rewoo", "tokenomy-rewoo-nl", "tokenomy-react", "tokenomy-plan-execute")
ERROR_KINDS = ("parse", "max_steps", "tool", "timeout", "server", "crash")
API_KEY = "referee"  # the proxy and vLLM take any key; some clients refuse to start without one
MAX_HOPS = 4  # tokenomy's step and token bounds are sized for the longest task, never from a task's gold plan
MAX_STEPS = MAX_HOPS + 3
"""Every agent loop's bound, in model calls (tool-calling turns): tokenomy's ``react`` gets ``MAX_HOPS + 3`` turns
(``planning.strategy_for``), and so does each peer, in its own knob (LangGraph's recursion limit, smolagents'
``max_steps``, DSPy's ``max_iters``, LlamaIndex's ``max_iterations``; their defaults are 20 or more). With their
defaults a small model's repeated step ran each peer to the deadline: a user would set the bound, and the peers
are measured at their best."""


class Toolbox:
    """``search``, ``lookup`` and ``calc`` as plain typed Python functions with docstrings (the form every
    framework turns into its own tool schema), counting calls and errors, over the planning world
    (``Toolbox.world``) or a prose corpus (``Toolbox.prose``). A failed call returns its error as text
    (``error: ...``), as tokenomy's executor hands errors to its model: LangChain's agent would otherwise end the
    run at the first exception, where the other frameworks show it to their model."""

    def __init__(self, search_fn: Callable[[str], Any], lookup_fn: Callable[[str, str], Any],
                 calc_fn: Callable[[str], Any], *, search_by: str = "entity") -> None:
        self.calls = 0
        self.errors = 0

        def counted(fn: Callable[..., Any]) -> Callable[..., Any]:
            def run(*args: Any, **kwargs: Any) -> Any:
                self.calls += 1
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - every tool error goes back to the model as text
                    self.errors += 1
                    return f"error: {exc}"
            return run

        do_search, do_lookup, do_calc = counted(search_fn), counted(lookup_fn), counted(calc_fn)

        def search(entity: str) -> str:
            """The paragraph about an entity.

            Args:
                entity: its name.
            """
            return str(do_search(entity))

        def search_text(query: str) -> str:
            """Full-text search of the corpus: the best paragraphs as "[file#n] text", cut to the sentences with a
            word of the query.

            Args:
                query: words to look for.
            """
            return str(do_search(query))

        def lookup(entity: str, attribute: str) -> str:
            """One attribute of an entity.

            Args:
                entity: its name.
                attribute: e.g. founder, population, length.
            """
            return str(do_lookup(entity, attribute))

        def calc(expression: str) -> str:
            """Evaluate an arithmetic expression.

            Args:
                expression: e.g. "1969 - 1921".
            """
            return str(do_calc(expression))

        search_text.__name__ = search_text.__qualname__ = "search"
        self.functions = [search if search_by == "entity" else search_text, lookup, calc]

    @classmethod
    def world(cls, world: Any, obs_tokens: int) -> Toolbox:
        """The planning world's tools, returning what tokenomy's ``world.tools()`` return."""
        from .world import calc_value

        return cls(world.search_text, lambda entity, attribute: world.lookup_text(entity, attribute, obs_tokens),
                   calc_value)

    @classmethod
    def prose(cls, tools: Sequence[Any]) -> Toolbox:
        """A prose corpus's tools: what tokenomy's ``search``, ``lookup`` and ``calc`` tools (``tools``, in that
        order) return, a search's paragraphs one per line."""
        search, lookup, calc = tools

        def number(value: Any) -> Any:
            return int(value) if isinstance(value, float) and value.is_integer() else value

        return cls(lambda query: "\n".join(search.invoke(query=query)),
                   lambda entity, attribute: lookup.invoke(entity=entity, attribute=attribute),
                   lambda expression: number(calc.invoke(expression=expression)), search_by="query")


@dataclass
class Setting:
    """Where the questions are asked: a fresh ``Toolbox`` per task, tokenomy's own tools over the same data, and
    tokenomy's worked exemplars."""

    toolbox: Callable[[], Toolbox]
    tools: Callable[[], list[Any]]
    exemplars: list[Any]
    close: Callable[[], None] = lambda: None
    """Release what the setting holds open (a prose corpus's index)."""

    @classmethod
    def world(cls, seed: int, obs_tokens: int) -> Setting:
        from .world import World

        world = World(seed)
        return cls(lambda: Toolbox.world(world, obs_tokens), lambda: world.tools(obs_tokens=obs_tokens),
                   world.exemplars(1, obs_tokens))

    @classmethod
    def prose(cls, corpus: str, questions: str) -> Setting:
        from .prose import prose_setting

        ps = prose_setting(corpus, questions)
        return cls(lambda: Toolbox.prose(ps.tools), lambda: list(ps.tools), ps.exemplars, ps.index.close)


# -- the frameworks ---------------------------------------------------------------------------------------------


LANGGRAPH_SYSTEM = "Use the tools to answer the question. When you have the answer, reply with the answer only."
"""``langgraph-prompted``'s system prompt. LangGraph's prebuilt agent has none of its own (every other peer's loop
tells the model how to finish): without one the 1.5B model wandered on after the answer in the first sitting (more
tool calls, then an empty reply). One line a LangGraph user would write; not tuned on the tasks."""


def run_langgraph(question: str, url: str, model: str, box: Toolbox, *, system: str | None = None
                  ) -> tuple[Any, dict[str, Any] | None]:
    """LangChain's ``create_agent`` (LangGraph's prebuilt tool-calling agent loop) over ``ChatOpenAI``; with
    ``system``, that system prompt (``langgraph-prompted``)."""
    from langchain.agents import create_agent
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    llm = ChatOpenAI(model=model, base_url=url, api_key=SecretStr(API_KEY), temperature=0)
    agent = create_agent(llm, tools=box.functions, system_prompt=system) if system else create_agent(
        llm, tools=box.functions)
    # LangGraph counts each node it runs: a model call and its tools are two steps.
    state = agent.invoke({"messages": [{"role": "user", "content": question}]}, {"recursion_limit": 2 * MAX_STEPS})
    messages = state["messages"]
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
    for m in messages:
        meta = getattr(m, "usage_metadata", None) or {}
        usage["prompt_tokens"] += meta.get("input_tokens", 0)
        usage["completion_tokens"] += meta.get("output_tokens", 0)
        usage["cached_tokens"] += (meta.get("input_token_details") or {}).get("cache_read", 0) or 0
    return messages[-1].content, usage


def _smolagents(kind: str, question: str, url: str, model: str, box: Toolbox) -> tuple[Any, dict[str, Any] | None]:
    from smolagents import CodeAgent, OpenAIServerModel, ToolCallingAgent
    from smolagents import tool as smol_tool

    llm = OpenAIServerModel(model_id=model, api_base=url, api_key=API_KEY, temperature=0)
    tools = [smol_tool(fn) for fn in box.functions]
    agent = (CodeAgent if kind == "code" else ToolCallingAgent)(tools=tools, model=llm, max_steps=MAX_STEPS)
    answer = agent.run(question)
    counts = agent.monitor.get_total_token_counts()
    usage = {"prompt_tokens": counts.input_tokens, "completion_tokens": counts.output_tokens}
    errors = [type(getattr(step, "error", None)).__name__ for step in agent.memory.steps
              if getattr(step, "error", None) is not None]
    if "AgentMaxStepsError" in errors:
        raise _Outcome("max_steps", f"max steps reached ({len(agent.memory.steps)} steps)", answer, usage)
    return answer, usage


def run_dspy(question: str, url: str, model: str, box: Toolbox) -> tuple[Any, dict[str, Any] | None]:
    """DSPy's ``ReAct`` module, its ``LM`` on the server (DSPy's response cache off: every call reaches it)."""
    import dspy

    lm = dspy.LM(f"openai/{model}", api_base=url, api_key=API_KEY, temperature=0, cache=False)
    with dspy.context(lm=lm, track_usage=True):
        react = dspy.ReAct("question -> answer", tools=box.functions, max_iters=MAX_STEPS)
        pred = react(question=question)
    usage: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0}
    for per_lm in (pred.get_lm_usage() or {}).values():
        usage["prompt_tokens"] += per_lm.get("prompt_tokens", 0) or 0
        usage["completion_tokens"] += per_lm.get("completion_tokens", 0) or 0
    return pred.answer, usage


def _llamaindex(kind: str, question: str, url: str, model: str, box: Toolbox) -> tuple[Any, dict[str, Any] | None]:
    from llama_index.core.agent.workflow import FunctionAgent, ReActAgent
    from llama_index.core.tools import FunctionTool
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model=model, api_base=url, api_key=API_KEY, temperature=0, is_chat_model=True,
                     is_function_calling_model=True, context_window=8192)
    tools = [FunctionTool.from_defaults(fn) for fn in box.functions]
    agent = (FunctionAgent if kind == "function" else ReActAgent)(tools=tools, llm=llm)

    async def go() -> Any:
        return await agent.run(user_msg=question, max_iterations=MAX_STEPS)

    result = asyncio.run(go())
    response = getattr(result, "response", result)
    return getattr(response, "content", None) or str(response), None


def run_tokenomy(strategy: str, question: str, url: str, model: str, box: Toolbox, setting: Setting
                 ) -> tuple[Any, dict[str, Any] | None]:
    """tokenomy's strategy through the ``openai:`` engine, its bounds sized for ``MAX_HOPS`` steps as
    ``bench planning`` sizes them for a task's steps."""
    from tokenomy.kernels.registry import load_engine

    from .planning import strategy_for

    engine = load_engine(f"openai:{model}@{url}")

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "tool_call":
            box.calls += 1
            box.errors += bool(event.get("error.type"))

    try:
        result = strategy_for(strategy, engine, setting.tools(), MAX_HOPS, setting.exemplars, on_event=on_event
                              ).run(question)
    finally:
        engine.close()
    t = result.total
    return result.answer, {"prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
                           "cached_tokens": t.cached_prompt_tokens}


class _Outcome(Exception):
    """A run that ended with an answer and a failure kind (smolagents answers after its step limit)."""

    def __init__(self, kind: str, message: str, answer: Any, usage: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.kind, self.answer, self.usage = kind, answer, usage


def error_kind(exc: BaseException) -> str:
    """The failure kind of an exception a framework raised, by its type's name (no framework imported)."""
    names = {c.__name__ for c in type(exc).__mro__}
    text = str(exc).lower()
    if isinstance(exc, _Outcome):
        return exc.kind
    if names & {"GraphRecursionError", "AgentMaxStepsError"} or "max iterations" in text or "max_iters" in text:
        return "max_steps"
    if names & {"AgentParsingError", "OutputParserException", "AdapterParseError", "JSONDecodeError",
                "ValidationError"} or "pars" in text:
        return "parse"
    if names & {"AgentToolCallError", "AgentToolExecutionError", "ToolException"}:
        return "tool"
    if names & {"APITimeoutError", "Timeout", "TimeoutError", "ReadTimeout"}:
        return "timeout"
    if names & {"APIConnectionError", "APIStatusError", "BadRequestError", "InternalServerError", "ConnectError",
                "ServiceUnavailableError", "EngineError"}:
        return "server"
    return "crash"


def answer_one(framework: str, question: str, url: str, model: str, setting: Setting) -> dict[str, Any]:
    box = setting.toolbox()
    start = time.perf_counter()
    answer: Any = None
    usage: dict[str, Any] | None = None
    kind = message = None
    try:
        if framework == "langgraph":
            answer, usage = run_langgraph(question, url, model, box)
        elif framework == "langgraph-prompted":
            answer, usage = run_langgraph(question, url, model, box, system=LANGGRAPH_SYSTEM)
        elif framework.startswith("smolagents-"):
            answer, usage = _smolagents(framework.removeprefix("smolagents-"), question, url, model, box)
        elif framework == "dspy":
            answer, usage = run_dspy(question, url, model, box)
        elif framework.startswith("llamaindex-"):
            answer, usage = _llamaindex(framework.removeprefix("llamaindex-"), question, url, model, box)
        elif framework.startswith("tokenomy-"):
            answer, usage = run_tokenomy(framework.removeprefix("tokenomy-"), question, url, model, box, setting)
        else:
            raise ValueError(f"unknown framework {framework!r}; choose from {', '.join(FRAMEWORKS)}")
    except _Outcome as out:
        answer, usage, kind, message = out.answer, out.usage, out.kind, str(out)
    except Exception as exc:  # a framework's failure is a result: its kind and message go back
        kind, message = error_kind(exc), f"{type(exc).__name__}: {exc}"[:500]
        traceback.print_exc(file=sys.stderr)
    return {"answer": None if answer is None else str(answer)[:2000], "error_kind": kind, "error": message,
            "own_usage": usage, "tool_calls": box.calls, "tool_errors": box.errors,
            "wall_s": round(time.perf_counter() - start, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenomy.benchmarks.peer_agents")
    parser.add_argument("framework", choices=FRAMEWORKS)
    parser.add_argument("--proxy", required=True, help="the referee proxy's root URL, http://127.0.0.1:PORT")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--obs-tokens", type=int, default=20)
    parser.add_argument("--corpus", default=None, help="a prose corpus directory (with --questions) instead of "
                        "the planning world")
    parser.add_argument("--questions", default=None, help="the corpus's questions file (JSON lines)")
    args = parser.parse_args(argv)
    if (args.corpus is None) != (args.questions is None):
        parser.error("--corpus and --questions go together")
    # The protocol has the original stdout to itself: frameworks that print (smolagents' panels) print to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    setting = (Setting.prose(args.corpus, args.questions) if args.corpus
               else Setting.world(args.seed, args.obs_tokens))
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            job = json.loads(line)
            url = f"{args.proxy.rstrip('/')}/r/{job['tag']}/v1"
            result = answer_one(args.framework, job["question"], url, args.model, setting)
            out.write(json.dumps({"tag": job["tag"], **result}) + "\n")
    finally:
        setting.close()  # the input closed: the index file is left whole, without its -wal and -shm
    return 0


if __name__ == "__main__":
    sys.exit(main())
