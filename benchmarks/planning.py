"""``tokenomy bench planning``: what each planning strategy spends on the same multi-hop tasks (BENCHMARKS.md,
"planning").

Tasks come from the seeded synthetic world (``tokenomy.benchmarks.world``): chains of 1-6 lookups over fictional
entities, answered from the world's tools. Every strategy's prompt shows the same K exemplar tasks, each in the
strategy's own format.

* **oracle** mode isolates what the framework controls (prompts, number of calls, context re-sent): every
  strategy runs for real (its LangGraph graph, its parser, the tools, the executor) around an ``OracleEngine``
  that replies with the gold content in that strategy's format, and the ledger counts every token with the
  embedded model's tokenizer after its chat template (and with ``o200k_base``). Nothing is estimated.
* **live** mode runs the same tasks on a real model (the embedded one by default): plan validity, exact-match
  accuracy, tokens, calls, wall time.

T_min per task is the floor: |question| + |shortest gold program| + |answer| + |the tool output the answer is
read from| (its value, not its notes); system prompts and exemplars are paid once and amortised by the prefix
cache, so the ratio to T_min is taken over the tokens a run adds beyond the cache (prompt - cached +
completion), and the plain total (prompt + completion) is reported beside it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokenomy.agents.answers import answer_matches
from tokenomy.benchmarks import plot
from tokenomy.kernels.scripted import ScriptedEngine
from tokenomy.kernels.types import Request
from tokenomy.planners.grammar import result_index

from .world import Task, World

__all__ = ["OracleEngine", "PlanningRecord", "run_planning_bench", "oracle_reply", "t_min", "fit_growth",
           "strategy_for", "STRATEGIES", "format_report", "plot_records", "live_summary"]

STRATEGIES = ("react", "plan-execute", "rewoo-nl", "rewoo", "rewoo-parallel")


# -- the oracle ------------------------------------------------------------------------------------------------

def _content(req: Request) -> str:
    prompt = req.prompt
    if isinstance(prompt, str):
        return prompt
    return str(prompt[-1].get("content", "")) if prompt else ""  # type: ignore[union-attr]


def _known_names(text: str) -> set[str]:
    m = re.search(r"These results are known and can be used by name:\n(.*?)\nThese steps failed:", text, re.S)
    return {ln.split(" = ", 1)[0].strip() for ln in m.group(1).splitlines() if " = " in ln} if m else set()


def oracle_reply(strategy: str, task: Task, req: Request, memory: dict[str, dict[int, str]] | None = None) -> str:
    """The gold reply to one request of ``strategy`` on ``task``, in that strategy's format. ``memory`` keeps,
    per task, the result names of the codified plan last written, so that a re-plan goes on from them."""
    text = _content(req)
    agent = req.agent
    if agent == "solver":
        return task.answer
    if strategy.startswith("rewoo-nl"):
        return task.nl_plan
    if strategy.startswith("rewoo"):
        memory = {} if memory is None else memory
        before = memory.get(task.id)
        if before is None or "These results are known" not in text:
            plan, names = task.numbered()
        else:  # a re-plan: the known results keep their names, the missing steps get new ones
            known = _known_names(text)
            first = max(result_index(n) for n in before.values()) + 1
            plan, names = task.numbered({i: n for i, n in before.items() if n in known}, first)
        memory[task.id] = names
        return plan
    if strategy == "react":
        if text.rstrip().endswith("Final Answer:"):
            return task.answer
        observations = re.findall(r"^Observation: (.*)$", text, re.M)
        done = sum(1 for o in observations if not o.startswith("ERROR("))
        if done >= len(task.steps):
            return f"Thought: I know the answer\nFinal Answer: {task.answer}"
        step = task.steps[done]
        return f"Thought: {task.thought(step)}\nAction: {step.tool}[{task.text_input(step)}]"
    if strategy == "plan-execute":
        if agent == "planner":
            return "\n".join(f"{i}. {task.description(s)}" for i, s in enumerate(task.steps, 1))
        if agent == "executor":
            wanted = text.rsplit("Task: ", 1)[-1].strip()
            step = next((s for s in task.steps if task.description(s) == wanted), task.steps[0])
            return f"Action: {step.tool}[{task.text_input(step)}]"
        # the re-planner: the steps not yet done with a result, or the answer
        done_part = text.split("Done so far:\n", 1)[-1].split("\nRemaining steps:", 1)[0]
        entries = re.findall(r"^\d+\. (.*)\n   result: (.*)$", done_part, re.M)
        finished = {d for d, result in entries if not result.startswith("ERROR(")}
        rest = [task.description(s) for s in task.steps if task.description(s) not in finished]
        if not rest or "No more steps may run" in text:
            return f"Final Answer: {task.answer}"
        return "\n".join(f"{i}. {d}" for i, d in enumerate(rest, 1))
    raise ValueError(f"no oracle for strategy {strategy!r}")


class OracleEngine(ScriptedEngine):
    """A scripted engine that replies with each task's gold content in one strategy's format and counts tokens
    with a real tokenizer (see ``ScriptedEngine``). It measures the framework, never a model: its accuracy is
    100% by construction and is not reported."""

    def __init__(self, strategy: str, tasks: Sequence[Task], tokenizer: Any) -> None:
        self.tasks = list(tasks)
        self.replies: list[tuple[Request, str]] = []
        self.strategy = strategy
        self.memory: dict[str, dict[int, str]] = {}
        super().__init__(self._reply, tokenizer=tokenizer)
        self.spec = f"oracle:{strategy}"

    def _task_of(self, req: Request) -> Task:
        messages = [req.prompt] if isinstance(req.prompt, str) else [str(m.get("content", "")) for m in req.prompt]
        for text in reversed(messages):  # type: ignore[arg-type]
            for t in self.tasks:
                if t.question in text:
                    return t
        raise LookupError("the oracle found no known task in the prompt")

    def _reply(self, req: Request) -> str:
        reply = oracle_reply(self.strategy, self._task_of(req), req, self.memory)
        self.replies.append((req, reply))
        return reply


# -- the floor -------------------------------------------------------------------------------------------------

def t_min(task: Task, count: Callable[[str], int]) -> int:
    """|question| + |shortest gold program| + |answer| + |the value the answer is read from|."""
    final = next(s for s in task.steps if s.name == task.answer_name)
    shortest = min(count(task.shortest_program), count(task.program), count(task.nl_plan))
    return count(task.question) + shortest + count(task.answer) + count(final.value)


# -- running ----------------------------------------------------------------------------------------------------

@dataclass
class PlanningRecord:
    strategy: str
    hops: int
    mode: str
    tasks: int
    branches: int = 1
    obs_tokens: int = 20
    failure_rate: float = 0.0
    sweep: str = ""
    """Empty for the main table (hops); else the knob this record varies (``obs``, ``failure``, ``branches``)."""
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    uncached_tokens: int = 0
    calls: int = 0
    t_min_tokens: int = 0
    o200k_prompt_tokens: int = 0
    o200k_completion_tokens: int = 0
    o200k_total_tokens: int = 0
    t_min_o200k_tokens: int = 0
    plan_tokens: int = 0
    """Completion tokens of the first planner call (the plan as written), summed over tasks."""
    accuracy: float | None = None
    accuracy_low: float | None = None
    accuracy_high: float | None = None
    """The 95% bootstrap interval of ``accuracy`` (live runs), resampling tasks."""
    valid_plans: float | None = None
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    """Live: per task, whether the answer matched (a crashed task counts as wrong)."""

    @property
    def total_over_t_min(self) -> float:
        return self.total_tokens / self.t_min_tokens if self.t_min_tokens else math.nan

    @property
    def uncached_over_t_min(self) -> float:
        return self.uncached_tokens / self.t_min_tokens if self.t_min_tokens else math.nan

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total_over_t_min": round(self.total_over_t_min, 3),
                "uncached_over_t_min": round(self.uncached_over_t_min, 3)}


def strategy_for(name: str, model: Any, tools: list[Any], task: Task | int, exemplars: Sequence[Any], *,
                 tokens_per_step: int = 40, on_event: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """The strategy ``name`` (``rewoo-parallel``: ``rewoo`` with a concurrent executor) with token limits and
    bounds sized to ``task``'s number of steps, or to ``task`` steps where it is a number (limits cap, they are
    not spent; ``tokens_per_step`` suits subword tokenizers)."""
    from tokenomy.planners import PlanExecutor, make_strategy

    n = task if isinstance(task, int) else len(task.steps)
    budget = tokens_per_step * (n + 1)
    options: dict[str, dict[str, Any]] = {
        "react": {"max_turns": n + 3, "turn_tokens": max(96, 2 * tokens_per_step)},
        "plan-execute": {"max_steps": n + 3, "plan_tokens": budget, "answer_tokens": budget},
        "rewoo-nl": {"plan_tokens": budget}, "rewoo": {"plan_tokens": budget},
        "rewoo-parallel": {"plan_tokens": budget}}
    if name not in options:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if name.startswith("rewoo") and name != "rewoo-nl":
        options[name]["executor"] = PlanExecutor(tools, max_concurrency=8 if name == "rewoo-parallel" else 1)
    return make_strategy(name.removesuffix("-parallel"), model, tools, exemplars=exemplars, on_event=on_event,
                         **options[name])


def embedded_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from tokenomy.kernels.embedded import ensure_converted

    return AutoTokenizer.from_pretrained(str(ensure_converted()))


def _transcript(strategy: str, task: Task, events: Sequence[dict[str, Any]], answer: Any, correct: bool,
                error: str | None) -> dict[str, Any]:
    from tokenomy.events import output_text

    calls: list[dict[str, Any]] = []
    for e in events:
        if e["event"] == "model_call":
            calls.append({"agent": e.get("agent"), "output": output_text(e)})
        elif e["event"] == "tool_call":
            calls.append({"tool": e.get("gen_ai.tool.name"), "arguments": e.get("gen_ai.tool.call.arguments"),
                          "result": e.get("gen_ai.tool.call.result"), "error": e.get("error.type")})
    return {"strategy": strategy, "task": task.id, "hops": task.hops, "question": task.question, "gold": task.answer,
            "answer": answer, "correct": correct, "error": error, "calls": calls}


def run_group(strategy: str, mode: str, tasks: Sequence[Task], world: World | None, *, engine: Any, tokenizer: Any,
              exemplars: Sequence[Any], obs_tokens: int, failure_rate: float, latency_s: float,
              tokens_per_step: int = 40, make_tools: Callable[[], list[Any]] | None = None,
              transcript: Callable[[dict[str, Any]], None] | None = None) -> PlanningRecord:
    """Run ``strategy`` on ``tasks`` (all of one shape) and sum the ledger. The tools are ``world``'s, or
    ``make_tools()``'s for each task when given (the real tools over a corpus). ``transcript`` receives one
    dict per task (question, gold answer, answer, whether it matched, error, and every model and tool call), to
    read why a live answer was wrong."""
    from tokenomy.events import input_messages, output_text
    from tokenomy.kernels.tokens import TokenCounter, count_messages, count_text

    first = tasks[0]
    rec = PlanningRecord(strategy=strategy, hops=first.hops, mode=mode, tasks=len(tasks), branches=first.branches,
                         obs_tokens=obs_tokens, failure_rate=failure_rate)
    valid, judged = 0, 0
    model_count = TokenCounter(tokenizer).count_completion
    for task in tasks:
        events: list[dict[str, Any]] = []  # every model call's prompt and output, to count them with o200k too
        if make_tools is not None:
            tools = make_tools()
        elif world is not None:
            tools = world.tools(obs_tokens=obs_tokens, failure_rate=failure_rate, latency_s=latency_s)
        else:
            raise ValueError("run_group needs a world or make_tools")
        strat = strategy_for(strategy, engine, tools, task, exemplars, tokens_per_step=tokens_per_step,
                             on_event=events.append)
        start = time.perf_counter()
        try:
            result = strat.run(task.question)
        except Exception as exc:  # a strategy crash is a result too: count what is known, keep going
            rec.errors.append(f"{task.id}: {type(exc).__name__}: {exc}")
            if mode == "live":
                rec.correct.append(False)
            if transcript is not None:
                transcript(_transcript(strategy, task, events, None, False, f"{type(exc).__name__}: {exc}"))
            continue
        rec.wall_s += time.perf_counter() - start
        total = result.total
        rec.prompt_tokens += total.prompt_tokens
        rec.cached_prompt_tokens += total.cached_prompt_tokens or 0
        rec.completion_tokens += total.completion_tokens
        rec.calls += total.calls
        rec.t_min_tokens += t_min(task, model_count)
        rec.t_min_o200k_tokens += t_min(task, count_text)
        calls = [e for e in events if e["event"] == "model_call"]
        rec.o200k_prompt_tokens += sum(count_messages(input_messages(e)) for e in calls)
        rec.o200k_completion_tokens += sum(count_text(output_text(e)) for e in calls)
        plan = next((output_text(e) for e in calls if e["agent"] == "planner"), "")
        rec.plan_tokens += model_count(plan) if strategy != "react" else 0
        if mode == "live":
            rec.correct.append(answer_matches(result.answer, task.answer))
        if transcript is not None:
            transcript(_transcript(strategy, task, events, result.answer,
                                   answer_matches(result.answer, task.answer), None))
        if result.plan_valid is not None:
            judged += 1
            valid += bool(result.plan_valid)
    rec.total_tokens = rec.prompt_tokens + rec.completion_tokens
    rec.uncached_tokens = rec.total_tokens - rec.cached_prompt_tokens
    rec.o200k_total_tokens = rec.o200k_prompt_tokens + rec.o200k_completion_tokens
    rec.accuracy = round(sum(rec.correct) / len(rec.correct), 3) if mode == "live" and rec.correct else None
    if rec.accuracy is not None:
        from .graph import bootstrap_interval

        low, high = bootstrap_interval(rec.correct)
        rec.accuracy_low, rec.accuracy_high = round(low, 3), round(high, 3)
    rec.valid_plans = round(valid / judged, 3) if judged else None
    rec.wall_s = round(rec.wall_s, 3)
    return rec


def run_planning_bench(*, hops: Sequence[int] = (1, 2, 3, 4, 5, 6), tasks_per_hop: int = 5, seed: int = 0,
                       k_exemplars: int = 1, modes: Sequence[str] = ("oracle", "live"), live_hops: Sequence[int] = (),
                       live_tasks: int = 2, spec: str | None = None, strategies: Sequence[str] = STRATEGIES,
                       obs_tokens: int = 20, failure_rate: float = 0.0, latency_s: float = 0.01,
                       sweeps: bool = True, progress: Callable[[str], None] | None = None,
                       transcript: Callable[[dict[str, Any]], None] | None = None) -> list[PlanningRecord]:
    """The whole benchmark: oracle replay over ``hops`` for every strategy, the knob sweeps at 4 hops
    (observation size, failure rate, parallel branches), and live runs over ``live_hops``."""
    say = progress or (lambda _m: None)
    world = World(seed)
    tokenizer = embedded_tokenizer()
    exemplars = world.exemplars(k_exemplars, obs_tokens)
    records: list[PlanningRecord] = []

    # One engine per strategy for the whole run, as one shared worker would serve it, warmed by one task that
    # is not counted: the system prompt and exemplars are then cached, as in steady state.
    warmup = World(seed + 1).task(1)
    engines: dict[str, OracleEngine] = {}
    for name in strategies:
        engines[name] = OracleEngine(name, [warmup], tokenizer)
        strategy_for(name, engines[name], world.tools(), warmup, exemplars).run(warmup.question)

    def oracle(shapes: Sequence[tuple[int, int, int, float]], sweep: str = "") -> None:
        for h, b, obs, fail in shapes:
            # Each sweep point draws other tasks: the same questions again would find whole prompts cached.
            tasks = world.tasks(tasks_per_hop, h, b, salt=f"{sweep}-{obs}-{fail}" if sweep else "")
            for name in strategies:
                engine = engines[name]
                engine.tasks = [warmup, *tasks]
                rec = run_group(name, "oracle", tasks, world, engine=engine, tokenizer=tokenizer,
                                exemplars=exemplars, obs_tokens=obs, failure_rate=fail, latency_s=latency_s)
                rec.sweep = sweep
                records.append(rec)
            say(f"oracle: {h} hops, {b} branches, obs {obs}, failures {fail:.0%}")

    if "oracle" in modes:
        oracle([(h, 1, obs_tokens, failure_rate) for h in hops])
        if sweeps:
            oracle([(4, 1, obs, failure_rate) for obs in (20, 200, 1000)], "obs")
            oracle([(4, 1, obs_tokens, f) for f in (0.0, 0.1, 0.3)], "failure")
            oracle([(2, b, obs_tokens, failure_rate) for b in (1, 2, 3, 4)], "branches")
    if "live" in modes and live_hops:
        from tokenomy.kernels.registry import load_engine

        engine = load_engine(spec)
        for h in live_hops:
            tasks = world.tasks(live_tasks, h)
            for name in strategies:
                if name == "rewoo-parallel":
                    continue  # the same model calls as rewoo; only the tool schedule differs
                records.append(run_group(name, "live", tasks, world, engine=engine, tokenizer=tokenizer,
                                         exemplars=exemplars, obs_tokens=obs_tokens, failure_rate=failure_rate,
                                         latency_s=0.0, transcript=transcript))
                say(f"live: {h} hops, {name}")
    return records


# -- analysis and output --------------------------------------------------------------------------------------

def _fit(xs: Sequence[float], ys: Sequence[float], degree: int) -> tuple[list[float], float]:
    """Polynomial least squares (coefficients from degree 0 up) and R^2."""
    import numpy as np

    coef = np.polyfit(xs, ys, degree)
    ss_res = float(np.sum((np.asarray(ys) - np.polyval(coef, xs)) ** 2))
    ss_tot = float(np.sum((np.asarray(ys) - np.mean(ys)) ** 2)) or 1.0
    return [float(c) for c in coef[::-1]], 1 - ss_res / ss_tot


def fit_growth(points: Sequence[tuple[int, float]]) -> dict[str, float]:
    """Tokens per task against hops: the linear fit's slope, the quadratic fit's h^2 coefficient and the share
    of the tokens at the most hops that its h^2 term accounts for, and the log-log exponent k of tokens ~ h^k
    (a large constant prompt pulls k below 1 for every strategy)."""
    xs = [float(h) for h, _ in points]
    ys = [float(t) for _, t in points]
    if len(set(xs)) < 3:
        return {}
    (_, slope), r2_lin = _fit(xs, ys, 1)
    (c0, c1, quad), r2_quad = _fit(xs, ys, 2)
    (_, k), _ = _fit([math.log(x) for x in xs], [math.log(max(y, 1.0)) for y in ys], 1)
    hm = max(xs)
    share = quad * hm * hm / (c0 + c1 * hm + quad * hm * hm) if (c0 + c1 * hm + quad * hm * hm) else 0.0
    return {"linear_slope": round(slope, 2), "r2_linear": round(r2_lin, 4), "quadratic_coef": round(quad, 2),
            "r2_quadratic": round(r2_quad, 4), "exponent": round(k, 3), "quadratic_share": round(share, 3),
            "h_max": hm}


def _main(records: Sequence[PlanningRecord], mode: str) -> list[PlanningRecord]:
    return [r for r in records if r.mode == mode and not r.sweep]


def growth(records: Sequence[PlanningRecord]) -> dict[str, dict[str, float]]:
    out = {}
    main = _main(records, "oracle")
    for name in dict.fromkeys(r.strategy for r in main):
        pts = [(r.hops, r.total_tokens / r.tasks) for r in main if r.strategy == name and r.tasks]
        fit = fit_growth(pts)
        if fit:
            out[name] = fit
    return out


def live_summary(records: Sequence[PlanningRecord]) -> list[dict[str, Any]]:
    """Per strategy, its live records over all hop counts together: exact-match accuracy with a 95% bootstrap
    interval, tokens and calls per task, and (beside ``react``, on the same tasks) the paired 95% interval of its
    accuracy minus react's and react's tokens over its own."""
    from .graph import bootstrap_interval, paired_bootstrap

    by: dict[str, list[PlanningRecord]] = {}
    for r in records:
        if r.mode == "live" and r.correct:
            by.setdefault(r.strategy, []).append(r)
    rows: list[dict[str, Any]] = []
    for name, recs in by.items():
        recs = sorted(recs, key=lambda r: r.hops)
        correct = [c for r in recs for c in r.correct]
        n = len(correct)
        total = sum(r.total_tokens for r in recs)
        rows.append({"strategy": name, "tasks": n, "hops": sorted({r.hops for r in recs}),
                     "accuracy": sum(correct) / n, "ci": bootstrap_interval(correct),
                     "total_per_task": total / n, "uncached_per_task": sum(r.uncached_tokens for r in recs) / n,
                     "completion_per_task": sum(r.completion_tokens for r in recs) / n,
                     "calls_per_task": sum(r.calls for r in recs) / n, "wall_per_task": sum(r.wall_s for r in recs) / n,
                     "valid_plans": _mean_valid(recs), "crashed": sum(len(r.errors) for r in recs),
                     "correct": correct, "key": [(r.hops, len(r.correct)) for r in recs]})
    react = next((row for row in rows if row["strategy"] == "react"), None)
    for row in rows:
        if react is not None and row is not react and row["key"] == react["key"]:
            row["diff_vs_react"] = sum(row["correct"]) / row["tasks"] - react["accuracy"]
            row["diff_ci_vs_react"] = paired_bootstrap(row["correct"], react["correct"])
            row["react_tokens_over"] = react["total_per_task"] / max(row["total_per_task"], 1e-9)
    return rows


def _mean_valid(recs: Sequence[PlanningRecord]) -> float | None:
    judged = [r for r in recs if r.valid_plans is not None]
    return sum((r.valid_plans or 0.0) * r.tasks for r in judged) / sum(r.tasks for r in judged) if judged else None


def goals(records: Sequence[PlanningRecord]) -> list[tuple[str, str, bool | None]]:
    """The goals of BENCHMARKS.md "planning" against the measured records: (goal, measured, met)."""
    out: list[tuple[str, str, bool | None]] = []
    main = _main(records, "oracle")
    by = {(r.strategy, r.hops): r for r in main}
    if ("react", 4) in by and ("rewoo", 4) in by:
        react, rewoo = by[("react", 4)], by[("rewoo", 4)]
        x = react.total_tokens / max(rewoo.total_tokens, 1)
        out.append(("rewoo >= 6x fewer total tokens than react at 4 hops", f"{x:.2f}x", x >= 6))
    ratios = [by[("rewoo", h)].plan_tokens / by[("rewoo-nl", h)].plan_tokens for s, h in by
              if s == "rewoo" and ("rewoo-nl", h) in by and by[("rewoo-nl", h)].plan_tokens]
    if ratios:
        out.append(("codified plan <= 0.45x the NL plan's tokens", f"{min(ratios):.2f}-{max(ratios):.2f}x",
                    max(ratios) <= 0.45))
    tmins = [r.uncached_over_t_min for r in main if r.strategy == "rewoo"]
    if tmins:
        out.append(("rewoo <= 2.0x T_min on every hop count (tokens beyond the prefix cache)",
                    f"{min(tmins):.2f}-{max(tmins):.2f}x", max(tmins) <= 2.0))
    v = _mean_valid([r for r in records if r.mode == "live" and r.strategy == "rewoo"])
    if v is not None:
        out.append(("rewoo plans valid on the live model: 100%", f"{v:.0%}", v >= 1.0))
    calls = [r.calls / r.tasks for r in main if r.strategy == "rewoo" and r.tasks]
    if calls:
        out.append(("rewoo calls per task: 2 (1 when the answer is a tool value)",
                    f"{min(calls):.1f}-{max(calls):.1f}", max(calls) <= 2))
    summary = {row["strategy"]: row for row in live_summary(records)}
    live_rewoo = summary.get("rewoo")
    if live_rewoo and live_rewoo["tasks"] >= 30:
        lo, hi = live_rewoo["ci"]
        out.append((f"live rewoo exact match >= 70% ({live_rewoo['tasks']} tasks, hops {live_rewoo['hops']})",
                    f"{live_rewoo['accuracy']:.0%} (95% CI {lo:.0%}-{hi:.0%})", live_rewoo["accuracy"] >= 0.7))
    if live_rewoo and "diff_vs_react" in live_rewoo:
        lo, hi = live_rewoo["diff_ci_vs_react"]
        out.append(("live rewoo at least as accurate as react (paired bootstrap)",
                    f"{live_rewoo['diff_vs_react']:+.0%} (95% CI {lo:+.0%} to {hi:+.0%})",
                    live_rewoo["diff_vs_react"] >= 0))
        x = live_rewoo["react_tokens_over"]
        out.append(("live rewoo >= 6x fewer total tokens than react", f"{x:.2f}x", x >= 6))
    return out


def format_report(records: Sequence[PlanningRecord]) -> str:
    lines: list[str] = []

    def table(title: str, rows: Sequence[PlanningRecord], live: bool) -> None:
        if not rows:
            return
        lines.append(title)
        head = (f"{'hops':>4} {'strategy':<15} {'prompt':>7} {'cached':>7} {'compl':>6} {'total':>7} {'calls':>5} "
                f"{'o200k':>7} {'T_min':>6} {'tot/Tmin':>8} {'new/Tmin':>8} {'wall s':>7}")
        head += f" {'acc':>5} {'valid':>5}" if live else ""
        lines.append(head + "   (per task)")
        for r in rows:
            n = max(r.tasks, 1)
            line = (f"{r.hops:>4} {r.strategy:<15} {r.prompt_tokens / n:>7.0f} {r.cached_prompt_tokens / n:>7.0f} "
                    f"{r.completion_tokens / n:>6.0f} {r.total_tokens / n:>7.0f} {r.calls / n:>5.1f} "
                    f"{r.o200k_total_tokens / n:>7.0f} {r.t_min_tokens / n:>6.0f} {r.total_over_t_min:>8.2f} "
                    f"{r.uncached_over_t_min:>8.2f} {r.wall_s / n:>7.2f}")
            if live:
                acc = "-" if r.accuracy is None else f"{r.accuracy:.0%}"
                val = "-" if r.valid_plans is None else f"{r.valid_plans:.0%}"
                line += f" {acc:>5} {val:>5}"
            if r.errors:
                line += f"  ({len(r.errors)} crashed)"
            lines.append(line)
        lines.append("")

    main = _main(records, "oracle")
    table("oracle replay (gold content in each strategy's format; every token counted with the embedded "
          "tokenizer):", main, False)
    for key, label in (("obs", "observation size (tokens per lookup)"), ("failure", "tool failure rate"),
                       ("branches", "parallel branches of 2 hops, added up by calc (tools take 10 ms)")):
        rows = [r for r in records if r.mode == "oracle" and r.sweep == key]
        if rows:
            lines.append(f"sweep: {label}")
            for r in rows:
                n = max(r.tasks, 1)
                lines.append(f"  hops {r.hops} branches {r.branches} obs {r.obs_tokens:>4} fail {r.failure_rate:.0%} "
                             f"{r.strategy:<15} total {r.total_tokens / n:>7.0f} calls {r.calls / n:>4.1f} "
                             f"new/Tmin {r.uncached_over_t_min:>6.2f} wall {r.wall_s / n:>6.3f} s")
            lines.append("")
    table("live (the model's own plans and answers):", [r for r in records if r.mode == "live"], True)
    summary = live_summary(records)
    if summary:
        lines.append("live, all hop counts together (per task; 95% bootstrap intervals; vs react: paired, same tasks):")
        lines.append(f"{'strategy':<15} {'tasks':>5} {'exact match':>20} {'total':>7} {'new':>7} {'compl':>6} "
                     f"{'calls':>5} {'wall s':>7} {'valid':>5}  vs react")
        for row in summary:
            lo, hi = row["ci"]
            val = "-" if row["valid_plans"] is None else f"{row['valid_plans']:.0%}"
            vs = ""
            if "diff_vs_react" in row:
                dlo, dhi = row["diff_ci_vs_react"]
                vs = (f"{row['diff_vs_react']:+.0%} [{dlo:+.0%}, {dhi:+.0%}], "
                      f"{row['react_tokens_over']:.1f}x fewer tokens")
            lines.append(f"{row['strategy']:<15} {row['tasks']:>5} {row['accuracy']:>6.0%} [{lo:>4.0%}, {hi:>4.0%}] "
                         f"{row['total_per_task']:>7.0f} {row['uncached_per_task']:>7.0f} "
                         f"{row['completion_per_task']:>6.0f} {row['calls_per_task']:>5.1f} "
                         f"{row['wall_per_task']:>7.1f} {val:>5}  {vs}"
                         + (f"  ({row['crashed']} crashed)" if row["crashed"] else ""))
        lines.append("")
    g = growth(records)
    if g:
        lines.append("growth of total tokens per task with hops (oracle):")
        for name, fit in g.items():
            lines.append(f"  {name:<15} linear fit {fit['linear_slope']:>7.1f} tokens/hop (R2 {fit['r2_linear']:.3f}); "
                         f"quadratic fit h^2 coef {fit['quadratic_coef']:>6.1f} (R2 {fit['r2_quadratic']:.3f}), "
                         f"its h^2 term {fit['quadratic_share']:.0%} of the tokens at {fit['h_max']:.0f} hops")
        lines.append("")
    for goal, measured, met in goals(records):
        lines.append(f"goal: {goal}: {measured} -> {'met' if met else 'MISSED'}")
    return "\n".join(lines)


def plot_records(records: Sequence[PlanningRecord], path: str | Path) -> Path:
    """A PNG of total tokens (prompt + completion) per task against hops, one line per strategy (oracle replay,
    the main table); a strategy whose tokens equal an earlier one's (rewoo-parallel: rewoo's) is labelled so."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in _main(records, "oracle"):
        series.setdefault(r.strategy, []).append((r.hops, r.total_tokens / max(r.tasks, 1)))
    return plot.lines(series, path, title="total tokens per task (oracle replay, embedded tokenizer)",
                      xlabel="hops per task", ylabel="total tokens per task (prompt + completion)")
