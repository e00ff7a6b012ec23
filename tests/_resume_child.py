"""A run in its own process, for the kill-and-resume tests: ``python _resume_child.py STRATEGY DB THREAD LOG MODE``.

MODE ``run`` starts the run, whose ``slow`` tool hangs (after writing ``slow-hang`` to LOG and to stdout, where
the test waits for it) until the test kills the process; MODE ``resume`` goes on from the checkpoint, with a
``slow`` tool that returns. Every model call and tool call appends a line to LOG, so the test can count what ran
twice. The last line printed is the result.
"""

import asyncio
import json
import os
import sys

from pydantic import create_model

from tokenomy.kernels import ScriptedEngine
from tokenomy.planners import make_strategy

strategy_name, db, thread, log, mode = sys.argv[1:6]


def note(line: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (line + "\n").encode())
    os.close(fd)


class LoggedTool:
    def __init__(self, name, fn, **fields):
        self.name, self.fn = name, fn
        self.args_model = create_model(name + "Args", **fields)

    async def ainvoke(self, **kwargs):
        return await self.fn(**kwargs)


async def lookup(entity, attribute):
    note("tool lookup")
    return f"{entity}-{attribute}-value"


async def slow(query):
    if mode == "run":
        note("slow-hang")
        print("slow-hang", flush=True)
        await asyncio.Event().wait()  # never set: the test kills this process here
    note("tool slow")
    return f"slow result for {query}"


def reply(req) -> str:
    last = req.prompt[-1]["content"]
    note(f"model {req.agent}")
    if strategy_name == "rewoo":
        if req.agent == "planner":
            return 'a = lookup(entity="A", attribute="x")\nb = slow(query=a)\nanswer([a, b])'
        return "the answer"
    if strategy_name == "rewoo-nl":
        if req.agent == "planner":
            return "Plan: get a\n#E1 = lookup[A, x]\nPlan: slow it\n#E2 = slow[#E1]"
        return "the answer"
    if strategy_name == "react":
        n = last.count("Observation:")
        return ["Thought: a first\nAction: lookup[A, x]", "Thought: now slow\nAction: slow[v]",
                "Thought: done\nFinal Answer: the answer"][n]
    if strategy_name == "plan-execute":
        if req.agent == "planner":
            return "1. get a\n2. slow it"
        if req.agent == "executor":
            return "Action: lookup[A, x]" if last.endswith("Task: get a") else "Action: slow[v]"
        return "1. slow it" if last.count("result:") == 1 else "Final Answer: the answer"
    raise AssertionError(strategy_name)


tools = [LoggedTool("lookup", lookup, entity=(str, ...), attribute=(str, ...)),
         LoggedTool("slow", slow, query=(str, ...))]
strategy = make_strategy(strategy_name, ScriptedEngine(reply), tools)
if mode == "run":
    result = strategy.run("what is it?", thread_id=thread, checkpoints=db)
else:
    result = strategy.resume(thread, db)
print(json.dumps({"answer": result.answer, "calls": result.total.calls, "agents": sorted(result.usage)}))
