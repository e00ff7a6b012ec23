"""``tokenomy bench prefix``: how close prefix reuse comes to the physical limit.

Workloads (BENCHMARKS.md "prefix"):

* ``agents``: 8 agents share a system-and-tools prefix of 1-2k tokens, each adds its own role; 3 rounds in
  which every prompt extends the shared transcript of the previous rounds (the agents' generated token ids,
  carried forward verbatim).
* ``rewoo``: ReWOO planner/solver pairs. Planners share the system prompt and exemplars; each solver prompt
  extends its planner's prompt and plan (whose KV was computed while decoding) with evidence.
* ``sc``: self-consistency, 8 samples of one prompt.

Prompts are laid out static to dynamic and built from token ids, segment by segment, so every shared prefix is
shared exactly. The limit L* is the number of distinct token prefixes over all prompts, minus the prompt tokens
whose KV was computed while decoding in an earlier step; prefill efficiency eta = L* / tokens computed. A run that
computed nothing has no eta (``None``, shown as ``n/a``): an empty measurement is not a perfect score.
For vLLM, whose cache holds whole blocks, L*_B rounds every reusable prefix down to the block size and caps it
at the prompt length - 1.
"""

from __future__ import annotations

import gc
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tokenomy.benchmarks import plot
from tokenomy.kernels.engine import Engine
from tokenomy.kernels.radix import RadixCache
from tokenomy.kernels.types import Completion, Request, SamplingParams
from tokenomy.kernels.worker import Router, Worker

__all__ = ["PrefixConfig", "Record", "run_prefix_bench", "run_served_prefix_bench", "served_goals", "limit_tokens",
           "format_table", "pressure_records", "pressure_replay", "agent_trace", "to_json", "plot_records"]

Step = list[tuple[list[int], SamplingParams, str]]  # (prompt ids, params, agent) submitted together
RunStep = Callable[[Step], list[Completion]]


@dataclass
class PrefixConfig:
    shared_tokens: int = 1536
    agents: int = 8
    rounds: int = 3
    agent_new_tokens: int = 16
    pairs: int = 6
    plan_tokens: int = 24
    samples: int = 8
    sample_prompt_tokens: int = 512
    seed: int = 0

    @classmethod
    def quick(cls) -> PrefixConfig:
        return cls(shared_tokens=1024, rounds=3, agent_new_tokens=12, pairs=4, plan_tokens=16, samples=6,
                   sample_prompt_tokens=384)


@dataclass
class Record:
    workload: str
    engine: str
    cache: str
    prompts: int
    prompt_tokens: int
    computed_prefill_tokens: int
    limit_tokens: int
    eta: float | None
    """L* / tokens computed; ``None`` when nothing was computed (nothing was measured)."""
    hit_rate: float | None
    """Cached / prompt tokens; ``None`` when there were no prompt tokens."""
    wall_s: float
    block_size: int = 1
    speedup: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


# -- text that looks like a system prompt with tool schemas (deterministic, no model can know it) -------------

_WORDS = ("account agent answer attribute balance branch city company compute country date delta entity "
          "evidence field founder graph harbor index input lookup market merge metric name number order output "
          "owner plan price product query record region result river route schema search source step string "
          "summary table target token tool total value variable vendor year").split()


def _prose(rng: random.Random, n_words: int) -> str:
    out = []
    for i in range(n_words):
        w = rng.choice(_WORDS)
        out.append(w.capitalize() if i % 12 == 0 else w)
        if i % 12 == 11:
            out[-1] += "."
    return " ".join(out)


def _tools_prompt(rng: random.Random) -> str:
    tools = []
    for i in range(40):
        name = f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)}_{i}"
        args = {rng.choice(_WORDS): {"type": rng.choice(["string", "integer", "number"])} for _ in range(3)}
        tools.append({"name": name, "description": _prose(rng, 14),
                      "parameters": {"type": "object", "properties": args}})
    return ("You are one of several agents that solve tasks together. Use the tools below; answer tersely.\n"
            "Tools:\n" + "\n".join(json.dumps(t, sort_keys=True) for t in tools) + "\n")


class _Text:
    """Builds prompt segments of exact token lengths with the engine's tokenizer."""

    def __init__(self, engine: Engine, seed: int) -> None:
        self.engine = engine
        self.rng = random.Random(seed)

    def ids(self, text: str) -> list[int]:
        ids = self.engine.prompt_token_ids(text)
        assert ids is not None
        return list(ids)

    def exact(self, n_tokens: int, head: str = "") -> list[int]:
        text = head
        while len(self.ids(text)) < n_tokens:
            text += _prose(self.rng, 200) + "\n"
        return self.ids(text)[:n_tokens]


# -- workloads ----------------------------------------------------------------------------------------------

def workload_agents(run: RunStep, text: _Text, cfg: PrefixConfig) -> None:
    shared = text.exact(cfg.shared_tokens, _tools_prompt(text.rng))
    roles = [text.ids(f"\nYou are agent {i}, the {text.rng.choice(_WORDS)} specialist. Your turn:") for i in
             range(cfg.agents)]
    transcript: list[int] = []
    params = SamplingParams(max_tokens=cfg.agent_new_tokens, temperature=0.0)
    for r in range(cfg.rounds):
        step = [(shared + transcript + roles[i], params, f"agent{i}") for i in range(cfg.agents)]
        outs = run(step)
        for i, c in enumerate(outs):
            transcript += text.ids(f"\n[round {r} agent {i}] ") + c.token_ids


def workload_rewoo(run: RunStep, text: _Text, cfg: PrefixConfig) -> None:
    # Two task families (their own tools and exemplars), so several replicas can share the load.
    systems = [text.exact(cfg.shared_tokens // 2, f"Task family {f}. Plan the tool calls that answer the question.\n")
               for f in range(2)]
    questions = [text.ids(f"\nQuestion {j}: " + _prose(text.rng, 18) + "?\nPlan:") for j in range(cfg.pairs)]
    plan_params = SamplingParams(max_tokens=cfg.plan_tokens, temperature=0.0)
    planners = [systems[j % 2] + q for j, q in enumerate(questions)]
    plans = run([(p, plan_params, f"planner{j}") for j, p in enumerate(planners)])
    solver_params = SamplingParams(max_tokens=8, temperature=0.0)
    solvers = [planners[j] + plans[j].token_ids + text.ids("\nEvidence: " + _prose(text.rng, 40) + "\nAnswer:")
               for j in range(cfg.pairs)]
    run([(s, solver_params, f"solver{j}") for j, s in enumerate(solvers)])


def workload_sc(run: RunStep, text: _Text, cfg: PrefixConfig) -> None:
    prompt = text.exact(cfg.sample_prompt_tokens, "Solve step by step, then give the answer.\n")
    run([(prompt, SamplingParams(max_tokens=8, temperature=0.8, seed=s), f"sample{s}")
         for s in range(cfg.samples)])


WORKLOADS: dict[str, Callable[[RunStep, _Text, PrefixConfig], None]] = {
    "agents": workload_agents, "rewoo": workload_rewoo, "sc": workload_sc}


# -- the limit ----------------------------------------------------------------------------------------------

def limit_tokens(steps: list[list[tuple[list[int], list[int]]]], block_size: int = 1) -> int:
    """L* (or L*_B for ``block_size > 1``) for steps of ``(prompt ids, generated ids)`` run in order.

    Within a step the requests run together, so one computes a shared prefix and the others reuse it; what a
    step decoded (prompt + generated[:-1]) is reusable from the next step on.
    """
    trie = RadixCache(1 << 62, bytes_per_token=1)
    total = 0
    for step in steps:
        for prompt, _ in step:
            reusable = trie.insert(prompt)
            if block_size > 1:
                reusable = min(reusable, len(prompt) - 1) // block_size * block_size
            total += len(prompt) - reusable
        for prompt, gen in step:
            trie.insert(prompt + gen[:-1])
    return total


# -- memory pressure: LRU against offline-optimal eviction ----------------------------------------------------

def agent_trace(seed: int = 0, teams: int = 3, agents_per_team: int = 4, rounds: int = 6, system: int = 300,
                role: int = 40, reply: int = 40) -> list[list[tuple[list[int], list[int]]]]:
    """A synthetic multi-agent token trace: teams share a system prompt, each agent extends its own history
    with the reply it generated. Token ids only (cache policies do not need a model)."""
    rng = random.Random(seed)
    fresh = iter(range(1000, 1 << 30))
    systems = [[next(fresh) for _ in range(system)] for _ in range(teams)]
    history = {(t, a): systems[t] + [next(fresh) for _ in range(role)]
               for t in range(teams) for a in range(agents_per_team)}
    steps = []
    for _ in range(rounds):
        step = []
        for key in rng.sample(sorted(history), len(history)):
            prompt = history[key] + [next(fresh) for _ in range(8)]  # the new turn
            gen = [next(fresh) for _ in range(reply)]
            step.append((prompt, gen))
            history[key] = prompt + gen
        steps.append(step)
    return steps


def pressure_replay(steps: list[list[tuple[list[int], list[int]]]], fraction: float = 0.25,
                    order: str = "lpm") -> dict[str, Any]:
    """Replay a trace through a token-level radix cache holding ``fraction`` of the working set.

    Compares LRU (what the engine does) with Belady's offline rule (evict the leaf whose next use is farthest
    in the future), both with the same request order (``lpm``: the worker's longest-prefix-first order within
    each step; ``fifo``: as submitted).
    """
    working = RadixCache(1 << 62, bytes_per_token=1)
    for step in steps:
        for p, g in step:
            working.insert(p + g[:-1])
    budget = int(fraction * working.cached_tokens)

    def ordered(cache: RadixCache) -> list[tuple[list[int], list[int]]]:
        seq = []
        for step in steps:
            if order == "lpm":
                step = sorted(step, key=lambda pg: (-cache.peek(pg[0]), pg[0]))
            seq.extend(step)
        return seq

    def replay(policy: str) -> int:
        cache = RadixCache(budget, bytes_per_token=1)
        seq = ordered(RadixCache(1 << 62, bytes_per_token=1))  # a fixed order for both policies
        clock = {"now": 0}
        if policy == "optimal":
            def next_use(node: Any) -> float:
                path = cache.path_tokens(node)
                depth = len(path) - len(node.tokens) + 1  # touching the node's first token counts as a use
                for j in range(clock["now"] + 1, len(seq)):
                    if tuple(seq[j][0][:depth]) == path[:depth]:
                        return -j
                return float("-inf")
            cache.eviction_priority = next_use
        hits = 0
        for i, (p, g) in enumerate(seq):
            clock["now"] = i
            hits += cache.match(p).length
            cache.insert(p + g[:-1])
        return hits

    lru, opt = replay("lru"), replay("optimal")
    prompt_tokens = sum(len(p) for step in steps for p, _ in step)
    return {"working_set_tokens": working.cached_tokens, "budget_tokens": budget, "prompt_tokens": prompt_tokens,
            "lru_hit_tokens": lru, "optimal_hit_tokens": opt,
            "lru_vs_optimal": _ratio(lru, opt), "order": order}


# -- running ------------------------------------------------------------------------------------------------

def run_workload(name: str, engine: Engine, cfg: PrefixConfig, *, engine_label: str, cache: bool,
                 block_size: int = 1, replicas: list[Engine] | None = None,
                 tokenizer_engine: Engine | None = None) -> tuple[Record, list[Any]]:
    """Run one workload through a ``Worker`` on ``engine`` (or a ``Router`` over ``replicas``); prompts are built
    with ``tokenizer_engine``'s tokenizer where ``engine`` has none here (a server)."""
    text = _Text(tokenizer_engine or engine, cfg.seed)
    steps: list[list[tuple[list[int], list[int]]]] = []
    completions: list[Completion] = []
    workers = [Worker(e) for e in (replicas or [engine])]
    backend: Worker | Router = Router(workers, cache_threshold=0.3) if replicas else workers[0]
    wall = 0.0

    def run(step: Step) -> list[Completion]:
        nonlocal wall
        reqs = [Request(prompt=ids, params=p, agent=a, tags=(name,)) for ids, p, a in step]
        t0 = time.perf_counter()
        outs = backend.map(reqs)
        wall += time.perf_counter() - t0
        for o in outs:
            if not isinstance(o, Completion):
                raise o
        done = [o for o in outs if isinstance(o, Completion)]
        steps.append([(ids, c.token_ids) for (ids, _, _), c in zip(step, done, strict=True)])
        completions.extend(done)
        return done

    try:
        WORKLOADS[name](run, text, cfg)
    finally:
        for w in workers:
            w.close()
    prompt_tokens = sum(c.usage.prompt_tokens or 0 for c in completions)
    cached = sum(c.usage.cached_prompt_tokens or 0 for c in completions)
    computed = prompt_tokens - cached
    limit = limit_tokens(steps, block_size)
    scheduler_s = sum(w.scheduler_s for w in workers)
    notes: dict[str, Any] = {"scheduler_s": round(scheduler_s, 4),
                             "scheduler_share": round(scheduler_s / wall, 4) if wall else 0.0}
    if isinstance(backend, Router):
        notes["routed"] = list(backend.routed)
    record = Record(workload=name, engine=engine_label, cache="on" if cache else "off", prompts=len(completions),
                    prompt_tokens=prompt_tokens, computed_prefill_tokens=computed, limit_tokens=limit,
                    eta=_ratio(limit, computed), hit_rate=_ratio(cached, prompt_tokens),
                    wall_s=round(wall, 3), block_size=block_size, notes=notes)
    return record, steps


def _ratio(part: int, whole: int) -> float | None:
    """``part / whole`` to 4 places; ``None`` when ``whole`` is 0 (nothing measured: no score, least of all 1)."""
    return round(part / whole, 4) if whole else None


def _shown(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


Build = Callable[[], list[Engine]]  # one engine, or several replicas behind the router


def _embedded_engines(spec: str, replicas: int) -> list[tuple[str, bool, Build]]:
    from tokenomy.kernels.hf import TransformersEngine
    from tokenomy.kernels.registry import load_engine

    def single(on: bool) -> Build:
        return lambda: [load_engine(spec, prefix_cache=on)]

    out: list[tuple[str, bool, Build]] = [(spec, on, single(on)) for on in (True, False)]
    if replicas > 1:
        def build() -> list[Engine]:
            first = load_engine(spec)
            if not isinstance(first, TransformersEngine):
                return [first] + [load_engine(spec) for _ in range(replicas - 1)]
            # Replicas share the weights (read-only) but each has its own prefix cache, as separate servers would.
            return [first] + [TransformersEngine(first.model, first.tokenizer, spec=first.spec)
                              for _ in range(replicas - 1)]
        out.append((f"{spec} x{replicas} router", True, build))
    return out


def _vllm_engines(model_dir: str) -> list[tuple[str, bool, Build]]:
    from tokenomy.kernels.vllm_engine import VLLMEngine

    def build(on: bool) -> Build:
        return lambda: [VLLMEngine(model_dir, enable_prefix_caching=on, block_size=32)]

    return [("vllm", on, build(on)) for on in (True, False)]


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def run_prefix_bench(*, quick: bool = False, spec: str = "embedded", workloads: list[str] | None = None,
                     with_vllm: bool | None = None, replicas: int = 2,
                     log: Callable[[str], None] = print) -> list[Record]:
    """Run every workload on every engine, cache on and off; returns one record per combination."""
    cfg = PrefixConfig.quick() if quick else PrefixConfig()
    names = workloads or list(WORKLOADS)
    engines = _embedded_engines(spec, replicas)
    if with_vllm is None:
        with_vllm = vllm_available()
    if with_vllm:
        from tokenomy.kernels.embedded import ensure_converted

        engines += _vllm_engines(str(ensure_converted()))
    records: list[Record] = []
    for label, on, build in engines:
        built = build()
        engine = built[0]
        block = getattr(engine, "block_size", 1) if on else 1
        try:
            for name in names:
                if len(built) > 1 and name != "rewoo":
                    continue  # the router is measured on the many-pairs workload
                rec, _ = run_workload(name, engine, cfg, engine_label=label, cache=on, block_size=block,
                                      replicas=built if len(built) > 1 else None)
                log(f"  {name:7s} {label:9s} cache={rec.cache:3s} eta={_shown(rec.eta)} wall={rec.wall_s:.1f}s")
                records.append(rec)
        finally:
            for e in built:
                e.close()
            del engine, built
            gc.collect()
    records += pressure_records()
    by_key = {(r.workload, r.engine, r.cache): r for r in records}
    for r in records:
        off = by_key.get((r.workload, r.engine, "off"))
        if r.cache == "on" and off is not None and r.wall_s > 0:
            r.speedup = round(off.wall_s / r.wall_s, 2)
    return records


SERVED_WORKLOADS = ("agents", "rewoo")
SERVED_BLOCK = 32


def run_served_prefix_bench(*, quick: bool = False, spec: str = "embedded:qwen2.5-coder-0.5b",
                            workloads: list[str] | None = None, replicas: int = 2,
                            policies: tuple[str, ...] = ("cache_aware", "round_robin"),
                            log: Callable[[str], None] = print) -> list[Record]:
    """The workloads through real ``vllm serve`` processes: one replica alone (its own URL), then ``replicas``
    replicas behind ``vllm-router`` with each of ``policies`` (``tokenomy serve``'s deployment), every request
    through the ``openai:`` engine, cached tokens as the servers report them. Each deployment starts fresh (empty
    caches) and is stopped before the next."""
    from transformers import AutoTokenizer

    from tokenomy.kernels.openai_engine import OpenAIEngine
    from tokenomy.kernels.scripted import ScriptedEngine
    from tokenomy.kernels.serving import Deployment, model_dir_of

    cfg = PrefixConfig.quick() if quick else PrefixConfig()
    model_dir, served = model_dir_of(spec)
    tokens = ScriptedEngine(tokenizer=AutoTokenizer.from_pretrained(str(model_dir)))
    setups: list[tuple[str, dict[str, Any]]] = [("served x1", {"replicas": 1, "router": False})]
    setups += [(f"served x{replicas} {p}", {"replicas": replicas, "policy": p}) for p in policies]
    records: list[Record] = []
    for label, options in setups:
        log(f"  starting {label} ({served})")
        with Deployment(model_dir, served_name=served, extra_args=("--block-size", str(SERVED_BLOCK)),
                        **options) as deployment:
            engine = OpenAIEngine(served, deployment.base_url)
            try:
                for k, name in enumerate(workloads or SERVED_WORKLOADS):
                    before = [s.requests_finished() for s in deployment.servers]
                    # Each workload its own text (seed): one server keeps the earlier workload's prefixes, which
                    # a workload of the same seed would find and count beyond its own limit.
                    rec, _ = run_workload(name, engine, replace(cfg, seed=cfg.seed + k), engine_label=label,
                                          cache=True, block_size=SERVED_BLOCK, tokenizer_engine=tokens)
                    # How the router spread the workload: each replica's finished requests, from its metrics.
                    split = [s.requests_finished() - b for s, b in zip(deployment.servers, before, strict=True)]
                    rec.notes["requests_per_replica"] = split
                    log(f"  {name:7s} {label:24s} eta_B={_shown(rec.eta)} hit={_shown(rec.hit_rate)} "
                        f"requests={'/'.join(map(str, split))} wall={rec.wall_s:.1f}s")
                    records.append(rec)
            finally:
                engine.close()
    return records


def served_goals(records: list[Record]) -> list[tuple[str, str, bool]]:
    """BENCHMARKS.md / issue 25: eta_B through the router with N replicas within 5% of one replica's, per
    workload (the cache-aware policy)."""
    out = []
    for name in sorted({r.workload for r in records}):
        one = next((r for r in records if r.workload == name and r.engine == "served x1"), None)
        routed = next((r for r in records if r.workload == name and r.engine.endswith("cache_aware")), None)
        if one is None or routed is None or one.eta is None or routed.eta is None:
            continue
        ratio = routed.eta / one.eta
        out.append((f"{name}: eta_B through the router within 5% of one replica's",
                    f"{routed.eta:.3f} vs {one.eta:.3f} ({ratio:.1%})", ratio >= 0.95))
    return out


def pressure_records(fraction: float = 0.25) -> list[Record]:
    """The radix cache's LRU under memory pressure against Belady's offline rule, on the agent trace.

    Reported as records whose limit is what Belady's rule computes with the same memory, so ``eta`` reads as
    "efficiency against the best eviction"; ``notes`` has the hit-token ratio the goal is stated in.
    """
    out = []
    steps = agent_trace()
    for order in ("lpm", "fifo"):
        r = pressure_replay(steps, fraction, order)
        computed = r["prompt_tokens"] - r["lru_hit_tokens"]
        limit = r["prompt_tokens"] - r["optimal_hit_tokens"]
        out.append(Record(workload=f"pressure{int(fraction * 100)}", engine=f"radix-lru replay ({order})",
                          cache="on", prompts=sum(len(s) for s in steps), prompt_tokens=r["prompt_tokens"],
                          computed_prefill_tokens=computed, limit_tokens=limit,
                          eta=_ratio(limit, computed), hit_rate=_ratio(r["lru_hit_tokens"], r["prompt_tokens"]),
                          wall_s=0.0, notes=r))
    return out


def format_table(records: list[Record]) -> str:
    head = ("workload", "engine", "cache", "prompts", "prompt_tok", "computed", "L*", "eta", "hit_rate",
            "wall_s", "on/off")
    rows = [head]
    for r in records:
        rows.append((r.workload, r.engine + (f" (B={r.block_size})" if r.block_size > 1 else ""), r.cache,
                     str(r.prompts), str(r.prompt_tokens), str(r.computed_prefill_tokens), str(r.limit_tokens),
                     _shown(r.eta), _shown(r.hit_rate), f"{r.wall_s:.2f}",
                     f"{r.speedup:.2f}x" if r.speedup is not None else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    for r in records:
        if "lru_vs_optimal" in r.notes:
            n = r.notes
            lines.append(f"{r.workload} {r.engine}: cache {n['budget_tokens']} of {n['working_set_tokens']} tokens; "
                         f"LRU hits {n['lru_hit_tokens']} vs offline-optimal {n['optimal_hit_tokens']} "
                         f"= {_shown(n['lru_vs_optimal'], 2)}")
    sched = [r.notes["scheduler_share"] for r in records if "scheduler_share" in r.notes]
    if sched:
        lines.append(f"scheduler overhead: at most {100 * max(sched):.2f}% of wall time")
    return "\n".join(lines)


def to_json(records: list[Record]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]


def plot_records(records: list[Record], path: str | Path) -> Path:
    """A PNG of each record's prefill efficiency eta (L* / tokens computed; 1 is the limit) beside its cache hit
    rate, one pair of bars per (workload, engine, cache); a value a record does not have (nothing measured) has no
    bar."""
    rows = [(f"{r.workload} | {r.engine}{f' (B={r.block_size})' if r.block_size > 1 else ''} | cache {r.cache}",
             {k: v for k, v in (("eta = L* / computed", r.eta), ("hit rate", r.hit_rate)) if v is not None})
            for r in records]
    return plot.bars(rows, path, title="prefix: prefill efficiency against the limit L*",
                     ylabel="share (eta 1.0 = at the limit)", stacked=False)
