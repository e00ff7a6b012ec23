"""CPU speed of one model in several dtypes, side by side in one run (part of ``tokenomy bench prefix``).

For each dtype the same model is loaded (prefix cache off, so every prompt is read in full) and measured on the
same prompts:

* **prefill**: prompt tokens read per second (a request with ``max_tokens=1``);
* **decode**: tokens generated per second after the first (the same prompt, ``min_tokens = max_tokens = N``,
  less the prefill time);
* **agreement**: on a fixed test set of short chat prompts, the share whose greedy tokens (the first
  ``check_tokens``) equal float32's, and the mean share of tokens before the first difference.

Times are wall-clock on this machine with the thread count the engine picked (``kernels.cpu``); ratios between
dtypes are the result, as both run in the same process minutes apart.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DtypeRecord", "TEST_SET", "run_dtype_bench", "format_dtype_table"]

TEST_SET = (
    "What is 17 + 25? Answer with the number only.",
    "Name the capital of France in one word.",
    "Write a Python function that returns the square of x.",
    "List three primary colours, separated by commas.",
    "Translate 'good morning' into German.",
    "What comes after Tuesday?",
    "Velmora has 412,000 people and Ostra has 98,000. How many more people live in Velmora?",
    "Give the plural of 'mouse'.",
)


@dataclass
class DtypeRecord:
    spec: str
    dtype: str
    threads: int
    prompt_tokens: int
    prefill_tok_s: float
    new_tokens: int
    decode_tok_s: float
    load_s: float
    agreement: float | None = None
    """Share of the test prompts whose greedy tokens equal float32's (None for float32 itself)."""
    agreed_prefix: float | None = None
    """Mean share of the greedy tokens before the first difference from float32's."""
    greedy: list[list[int]] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("greedy")
        return d


def _best(run: Callable[[], float], repeats: int) -> float:
    return min(run() for _ in range(repeats))


def run_dtype_bench(spec: str = "embedded", dtypes: Sequence[str] = ("float32", "bfloat16"), *,
                    prompt_tokens: int = 355, new_tokens: int = 32, check_tokens: int = 24, repeats: int = 2,
                    log: Callable[[str], None] = print) -> list[DtypeRecord]:
    """Measure ``spec`` in each of ``dtypes`` (the first is the reference for agreement)."""
    records: list[DtypeRecord] = []
    for dtype in dtypes:
        rec = _measure(spec, dtype, prompt_tokens, new_tokens, check_tokens, repeats)
        gc.collect()
        if records:
            ref = records[0].greedy
            rec.agreement = round(sum(a == b for a, b in zip(ref, rec.greedy, strict=True)) / len(ref), 3)
            rec.agreed_prefix = round(sum(_common(a, b) / max(len(a), 1) for a, b in zip(ref, rec.greedy,
                                                                                        strict=True)) / len(ref), 3)
        log(f"  {dtype:9s} prefill {rec.prefill_tok_s:7.1f} tok/s  decode {rec.decode_tok_s:6.2f} tok/s")
        records.append(rec)
    return records


def _measure(spec: str, dtype: str, prompt_tokens: int, new_tokens: int, check_tokens: int,
             repeats: int) -> DtypeRecord:
    from tokenomy.kernels import cpu
    from tokenomy.kernels.registry import load_engine

    from .prefix import _Text

    t0 = time.perf_counter()
    engine = load_engine(spec, dtype=dtype, prefix_cache=False)
    load_s = time.perf_counter() - t0
    try:
        prompt = _Text(engine, seed=0).exact(prompt_tokens)

        def timed(max_tokens: int) -> float:
            t = time.perf_counter()
            engine.generate(prompt, max_tokens=max_tokens, min_tokens=max_tokens)
            return time.perf_counter() - t

        timed(2)  # warm-up: first-call allocations are not the model's speed
        prefill_s = _best(lambda: timed(1), repeats)
        full_s = _best(lambda: timed(new_tokens), repeats)
        greedy = [engine.chat([{"role": "user", "content": q}], max_tokens=check_tokens).token_ids for q in TEST_SET]
        return DtypeRecord(spec, dtype, cpu.configure_threads(), len(prompt), round(len(prompt) / prefill_s, 1),
                           new_tokens, round((new_tokens - 1) / max(full_s - prefill_s, 1e-9), 2), round(load_s, 1),
                           greedy=greedy)
    finally:
        engine.close()


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def format_dtype_table(records: Sequence[DtypeRecord]) -> str:
    if not records:
        return ""
    ref = records[0]
    lines = [f"CPU speed by dtype ({ref.spec}, {ref.threads} thread(s), prompt {ref.prompt_tokens} tokens, "
             f"{ref.new_tokens} new; same process, side by side):",
             f"{'dtype':<10} {'prefill tok/s':>13} {'decode tok/s':>12} {'vs ' + ref.dtype:>16} "
             f"{'greedy = ' + ref.dtype:>17} {'agreed prefix':>13} {'load s':>6}"]
    for r in records:
        vs = f"{r.prefill_tok_s / ref.prefill_tok_s:.2f}x / {r.decode_tok_s / ref.decode_tok_s:.2f}x"
        agree = "-" if r.agreement is None else f"{r.agreement:.0%} of {len(TEST_SET)}"
        prefix = "-" if r.agreed_prefix is None else f"{r.agreed_prefix:.0%}"
        lines.append(f"{r.dtype:<10} {r.prefill_tok_s:>13.1f} {r.decode_tok_s:>12.2f} {vs:>16} {agree:>17} "
                     f"{prefix:>13} {r.load_s:>6.1f}")
    return "\n".join(lines)
