"""``tokenomy bench speculative``: the long model's decoding alone against the same model with a draft proposing
its tokens (``kernels.hf_speculative``), side by side on the same prompts in one process.

Workloads, each a list of real requests:

* **planner** and **solver**: the requests tokenomy's ``rewoo`` makes on the planning world's multi-hop tasks (its
  own prompts, exemplars, token limits and the planner's grammar), recorded from a run whose replies come from
  the gold plans (``planning.OracleEngine``), so every solver prompt holds a plan's real evidence;
* **ladder**: the collaboration ladder's questions (``benchmarks.ladder``, levels 2-4 of every family), the long
  model thinking in ``bench collab``'s format (few-shot examples, then an open thinking block): the long
  reasoning a long-thought model writes.

For each request both models first read the prompt once (``max_tokens=1``, untimed), so the timed calls measure
decoding over a cached prompt (the draft's prefill of a new prompt is a cost of its own: agents' prompts share
their long prefixes, which its radix cache keeps); the two runs alternate which goes first. Greedy decoding; the
tokens of the two runs are compared (they must be identical). Reported per workload: decode tokens/s of each and
their ratio, the draft's acceptance rate, tokens per verification pass, the draft's FLOPs against the long model's,
and the FLOPs spent on rejected proposals. Ratios are the result; absolute speeds are this machine's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tokenomy.kernels.hf_speculative import Speculation
from tokenomy.kernels.types import Request, SamplingParams

__all__ = ["SpecRecord", "WORKLOADS", "workload_requests", "run_speculative_bench", "goals", "format_table"]

WORKLOADS = ("planner", "solver", "ladder")
LONG, DRAFT = "embedded:qwen2.5-coder-1.5b", "embedded:qwen2.5-coder-0.5b"
GOAL = 1.8
"""BENCHMARKS.md "collab": speculative decoding >= 1.8x the long model's decode tokens/s on the CPU, same tokens."""


@dataclass
class SpecRecord:
    workload: str
    requests: int = 0
    tokens: int = 0
    """Tokens decoded by each engine (the same tokens)."""
    plain_s: float = 0.0
    speculative_s: float = 0.0
    identical: int = 0
    """Requests whose tokens were identical in both runs."""
    speculation: Speculation = field(default_factory=Speculation)
    """What the draft did, summed over the requests."""
    long_flops: float = 0.0
    """The long model's decoding FLOPs alone (tokens x its FLOPs per token)."""
    per_request: list[dict[str, Any]] = field(default_factory=list)

    @property
    def plain_tok_s(self) -> float:
        return self.tokens / self.plain_s if self.plain_s else 0.0

    @property
    def speculative_tok_s(self) -> float:
        return self.tokens / self.speculative_s if self.speculative_s else 0.0

    @property
    def speedup(self) -> float:
        return self.plain_s / self.speculative_s if self.speculative_s else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        s = self.speculation
        out.update(speculation=s.to_dict(), plain_tok_s=round(self.plain_tok_s, 3),
                   speculative_tok_s=round(self.speculative_tok_s, 3), speedup=round(self.speedup, 3),
                   acceptance_rate=s.acceptance_rate, tokens_per_round=s.tokens_per_round,
                   draft_flops_over_long=round(s.draft_flops / self.long_flops, 3) if self.long_flops else None)
        return out


def workload_requests(workload: str, n: int, tokenizer: Any, *, seed: int = 0) -> list[Request]:
    """``n`` requests of ``workload``: rewoo's planner or solver calls on ``n`` planning-world tasks (1-4 hops, in
    turn), or ``n`` ladder questions (every family, levels 2-4) to solve step by step."""
    if workload == "ladder":
        from tokenomy.agents.policy import Format

        from .ladder import FAMILIES, level_items, problem

        fmt = Format()
        items = [level_items(FAMILIES[i % len(FAMILIES)], 2 + i % 3, n=1 + i // 15, seed=seed)[-1]
                 for i in range(n)]
        # The long model thinking, as ``bench collab``'s long-think control and the pair policies ask it.
        return [Request(prompt=fmt.reasoning(problem(item)), params=SamplingParams(max_tokens=96,
                                                                                   stop=fmt.think_stops),
                        agent="long") for item in items]
    if workload not in ("planner", "solver"):
        raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    from .planning import OracleEngine, strategy_for
    from .world import World

    world = World(seed)
    tasks = [world.task(1 + i % 4) for i in range(n)]
    exemplars = world.exemplars(1)
    oracle = OracleEngine("rewoo", tasks, tokenizer)
    for task in tasks:
        strategy_for("rewoo", oracle, world.tools(), task, exemplars).run(task.question)
    return [req for req, _ in oracle.replies if req.agent == workload][:n]


def _greedy(req: Request, max_tokens: int | None = None) -> Request:
    params = SamplingParams(max_tokens=max_tokens or req.params.max_tokens, stop=req.params.stop,
                            min_tokens=min(req.params.min_tokens, max_tokens or req.params.max_tokens))
    return Request(prompt=req.prompt, params=params, grammar=req.grammar, agent=req.agent)


def run_speculative_bench(*, long_spec: str = LONG, draft_spec: str = DRAFT, n: int = 8,
                          workloads: Sequence[str] = WORKLOADS, draft_k: int = 4, seed: int = 0,
                          progress: Callable[[str], None] = lambda _m: None) -> list[SpecRecord]:
    """Every workload's requests decoded by ``long_spec`` alone and with ``draft_spec`` drafting."""
    from tokenomy.kernels.hf import TransformersEngine
    from tokenomy.kernels.registry import load_engine

    plain = load_engine(long_spec)
    draft = load_engine(draft_spec)
    if not isinstance(plain, TransformersEngine) or not isinstance(draft, TransformersEngine):
        raise ValueError("speculative decoding runs in the transformers engine: use embedded:<name> or hf:<dir>")
    # As the spec form <long>+draft=<draft> builds it: the draft in int8 on a CPU.
    fast = TransformersEngine(plain.model, plain.tokenizer, draft=draft, draft_k=draft_k, draft_int8=True,
                              spec=f"{long_spec}+draft={draft_spec}")
    fast.cache = plain.cache  # one radix cache of the long model's KV, as one engine keeps: both find the prompt
    progress(f"{long_spec} alone and with {draft_spec} drafting ({draft.flops_per_token / plain.flops_per_token:.2f}"
             f" of its FLOPs per token)")
    records = []
    for workload in workloads:
        rec = SpecRecord(workload)
        for i, req in enumerate(workload_requests(workload, n, plain.tokenizer, seed=seed)):
            req = _greedy(req)
            for engine in (plain, draft):  # each model reads the prompt once, untimed: the timed calls decode
                engine.generate_batch([_greedy(req, 1)])
            order = (plain, fast) if i % 2 == 0 else (fast, plain)
            out: dict[str, Any] = {}
            for engine in order:
                start = time.perf_counter()
                (c,) = engine.generate_batch([req])
                out["fast" if engine is fast else "plain"] = (c, time.perf_counter() - start)
            (a, ta), (b, tb) = out["plain"], out["fast"]
            s = b.speculation
            rec.requests += 1
            rec.tokens += len(a.token_ids)
            rec.plain_s += ta
            rec.speculative_s += tb
            rec.identical += a.token_ids == b.token_ids
            rec.speculation = rec.speculation + s
            rec.long_flops += len(a.token_ids) * plain.flops_per_token
            rec.per_request.append({"tokens": len(a.token_ids), "plain_s": round(ta, 3),
                                    "speculative_s": round(tb, 3), "identical": a.token_ids == b.token_ids,
                                    "grammar": req.grammar is not None, **s.to_dict()})
            progress(f"{workload} {i + 1}/{n}: {len(a.token_ids)} tokens, {ta:.1f}s alone, {tb:.1f}s with the "
                     f"draft, {s.accepted}/{s.proposed} kept{'' if a.token_ids == b.token_ids else ', DIFFERENT'}")
        records.append(rec)
    return records


def goals(records: Sequence[SpecRecord]) -> list[tuple[str, str, bool]]:
    tokens = sum(r.tokens for r in records)
    plain = sum(r.plain_s for r in records)
    fast = sum(r.speculative_s for r in records)
    same = sum(r.identical for r in records)
    n = sum(r.requests for r in records)
    speed = plain / fast if fast else 0.0
    return [(f"speculative decoding >= {GOAL}x the long model's decode tokens/s (all workloads)",
             f"{speed:.2f}x ({tokens / fast if fast else 0:.2f} vs {tokens / plain if plain else 0:.2f} tok/s)",
             speed >= GOAL),
            ("identical greedy tokens", f"{same} of {n} requests", same == n)]


def format_table(records: Sequence[SpecRecord]) -> str:
    rows = [("workload", "requests", "tokens", "alone tok/s", "draft tok/s", "speedup", "accepted", "tok/pass",
             "draft FLOPs", "wasted FLOPs", "identical")]
    for r in records:
        s = r.speculation
        rows.append((r.workload, str(r.requests), str(r.tokens), f"{r.plain_tok_s:.2f}", f"{r.speculative_tok_s:.2f}",
                     f"{r.speedup:.2f}x", f"{(s.acceptance_rate or 0):.0%}", f"{(s.tokens_per_round or 0):.2f}",
                     f"{s.draft_flops / r.long_flops:.0%}" if r.long_flops else "-",
                     f"{s.wasted_flops / r.long_flops:.0%}" if r.long_flops else "-", f"{r.identical}/{r.requests}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                   strict=True)))
                     for row in rows)
