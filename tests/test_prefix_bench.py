"""The prefix benchmark's arithmetic (L*, pressure replay) and a full run on the scripted double.

L* is checked against a second, naive implementation written here (no radix tree): the engine's cache and the
benchmark's limit both use ``RadixCache``, so comparing them with each other alone would check the tree against
itself.
"""

import json
import random
import subprocess
import sys

from tokenomy.benchmarks.prefix import (
    PrefixConfig,
    Record,
    agent_trace,
    format_table,
    limit_tokens,
    plot_records,
    pressure_replay,
    run_workload,
    to_json,
)
from tokenomy.kernels import ScriptedEngine


def naive_limit(steps, block_size=1):
    """L* by brute force: each prompt computes what no earlier sequence covers, the longest common prefix with any
    earlier prompt (of this step or before) or with what an earlier step decoded (prompt + generated[:-1])."""
    seen, total = [], 0
    for step in steps:
        for prompt, _ in step:
            best = 0
            for other in seen:
                n = 0
                while n < min(len(prompt), len(other)) and prompt[n] == other[n]:
                    n += 1
                best = max(best, n)
            if block_size > 1:
                best = min(best, len(prompt) - 1) // block_size * block_size
            total += len(prompt) - best
            seen.append(list(prompt))
        seen += [list(prompt) + list(gen[:-1]) for prompt, gen in step]
    return total


def test_limit_counts_distinct_prefixes_and_decoded_tokens():
    a, b = [1, 2, 3, 4], [1, 2, 3, 5, 6]
    # One step: the trie of both prompts has 6 nodes.
    assert limit_tokens([[(a, [9]), (b, [9])]]) == 6
    # Next step extends a's prompt with what it generated: those tokens' KV was computed while decoding.
    c = a + [7, 8] + [10]
    assert limit_tokens([[(a, [7, 8, 99])], [(c, [1])]]) == 4 + 1
    # Blocks of 2: reusable prefixes round down and are capped at len - 1.
    assert limit_tokens([[(a, [0])], [(a, [0])]], block_size=2) == 4 + 2


def test_limit_equals_the_naive_limit_on_random_traces():
    rng = random.Random(0)
    for _ in range(200):
        steps = []
        for _ in range(rng.randint(1, 3)):
            step = []
            for _ in range(rng.randint(1, 4)):
                prompt = [rng.randint(0, 2) for _ in range(rng.randint(1, 8))]  # a tiny alphabet: many shared prefixes
                step.append((prompt, [rng.randint(0, 2) for _ in range(rng.randint(1, 3))]))
            steps.append(step)
        for block in (1, 2, 3):
            assert limit_tokens(steps, block) == naive_limit(steps, block), (steps, block)


def test_pressure_replay_optimal_is_an_upper_bound():
    steps = agent_trace(teams=2, agents_per_team=3, rounds=4)
    for order in ("lpm", "fifo"):
        r = pressure_replay(steps, 0.25, order)
        assert 0 < r["lru_hit_tokens"] <= r["optimal_hit_tokens"]
        assert r["budget_tokens"] == int(0.25 * r["working_set_tokens"])
    full = pressure_replay(steps, 1.0)
    assert full["lru_hit_tokens"] == full["optimal_hit_tokens"]  # no pressure, no difference


def test_workloads_reach_the_limit_on_the_scripted_engine():
    cfg = PrefixConfig(shared_tokens=300, agents=4, rounds=2, pairs=4, samples=3, sample_prompt_tokens=100)
    for name in ("agents", "rewoo", "sc"):
        on, steps_on = run_workload(name, ScriptedEngine(), cfg, engine_label="scripted", cache=True)
        off, _ = run_workload(name, ScriptedEngine(prefix_cache=False), cfg, engine_label="scripted", cache=False)
        assert on.prompt_tokens == off.prompt_tokens and on.limit_tokens == off.limit_tokens
        assert off.computed_prefill_tokens == off.prompt_tokens
        limit = naive_limit(steps_on)
        assert on.limit_tokens == limit
        # The limit bounds what any cache can do: computing fewer tokens than L* would be a cache that lies.
        assert limit <= on.computed_prefill_tokens and limit / on.computed_prefill_tokens >= 0.98, (name, on)
        assert on.eta == round(limit / on.computed_prefill_tokens, 4)


def test_hand_counted_limit_of_a_tiny_workload():
    # Three agents, one step: "ab c", "ab d", "x"; then "ab c" decoded "ef", and the next prompt extends it.
    a, b, c, d, e, f, x, y = range(8)
    step1 = [([a, b, c], [e, f]), ([a, b, d], [e]), ([x], [y])]
    step2 = [([a, b, c, e, y], [y])]
    # step 1: 3 + 1 (a, b shared) + 1 = 5; step 2: a, b, c, e were computed (e while decoding) -> 1
    assert limit_tokens([step1, step2]) == naive_limit([step1, step2]) == 6


def test_nothing_computed_has_no_eta():
    rec, steps = run_workload("sc", ScriptedEngine(), PrefixConfig(samples=0), engine_label="scripted", cache=True)
    assert steps == [[]] and rec.prompts == 0 and rec.computed_prefill_tokens == 0
    assert rec.eta is None and rec.hit_rate is None  # not 1.0: nothing was measured
    row = format_table([rec]).splitlines()[2]
    assert row.split()[7:9] == ["n/a", "n/a"]
    assert to_json([rec])[0]["eta"] is None
    empty = pressure_replay([[]], 0.25)
    assert empty["lru_hit_tokens"] == empty["optimal_hit_tokens"] == 0 and empty["lru_vs_optimal"] is None


def test_plot_and_table_cope_with_a_record_without_eta(tmp_path):
    recs = [Record("sc", "scripted", "on", 0, 0, 0, 0, None, None, 0.0),
            Record("sc", "scripted", "off", 2, 10, 10, 6, 0.6, 0.0, 0.1)]
    text = format_table(recs)
    assert "n/a" in text and "0.600" in text
    assert plot_records(recs, tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_writes_json(tmp_path):
    out = tmp_path / "prefix.json"
    proc = subprocess.run([sys.executable, "-m", "tokenomy.cli", "bench", "prefix", "--quick", "--model",
                           "scripted", "--no-vllm", "--json", str(out), "--plot", str(tmp_path / "prefix.png")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "prefix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads(out.read_text())
    records = written["records"]
    assert written["dtypes"] == []  # the scripted engine has no dtypes
    keys = {"workload", "engine", "cache", "prompt_tokens", "computed_prefill_tokens", "limit_tokens", "eta",
            "wall_s"}
    assert all(keys <= set(r) for r in records)
    assert {(r["workload"], r["cache"]) for r in records} >= {("agents", "on"), ("agents", "off"), ("rewoo", "on"),
                                                              ("sc", "off")}
    assert "eta" in proc.stdout and "scheduler overhead" in proc.stdout


def test_dtype_speed_side_by_side_on_a_model_directory(tmp_path, tiny_tokenizer):
    """`bench prefix --dtypes`: one model in two dtypes, speeds and greedy agreement against the first."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.conftest import make_tiny_config
    from tokenomy.benchmarks.dtype import TEST_SET, format_dtype_table, run_dtype_bench

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(make_tiny_config(len(tiny_tokenizer))).save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    logged = []
    recs = run_dtype_bench(f"hf:{tmp_path / 'm'}", ("float32", "bfloat16"), prompt_tokens=24, new_tokens=4,
                           check_tokens=4, repeats=1, log=logged.append)
    assert [r.dtype for r in recs] == ["float32", "bfloat16"] and len(logged) == 2
    assert all(r.prefill_tok_s > 0 and r.decode_tok_s > 0 and r.prompt_tokens == 24 and r.threads >= 1 for r in recs)
    assert recs[0].agreement is None and 0 <= recs[1].agreement <= 1 and 0 <= recs[1].agreed_prefix <= 1
    assert all(len(r.greedy) == len(TEST_SET) for r in recs)
    table = format_dtype_table(recs)
    assert "bfloat16" in table and "greedy = float32" in table
    assert "greedy" not in recs[1].to_json()
