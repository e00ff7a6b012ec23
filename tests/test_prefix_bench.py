"""The prefix benchmark's arithmetic (L*, pressure replay) and a full run on the scripted double."""

import json
import subprocess
import sys

from tokenomy.benchmarks.prefix import PrefixConfig, agent_trace, limit_tokens, pressure_replay, run_workload
from tokenomy.kernels import ScriptedEngine


def test_limit_counts_distinct_prefixes_and_decoded_tokens():
    a, b = [1, 2, 3, 4], [1, 2, 3, 5, 6]
    # One step: the trie of both prompts has 6 nodes.
    assert limit_tokens([[(a, [9]), (b, [9])]]) == 6
    # Next step extends a's prompt with what it generated: those tokens' KV was computed while decoding.
    c = a + [7, 8] + [10]
    assert limit_tokens([[(a, [7, 8, 99])], [(c, [1])]]) == 4 + 1
    # Blocks of 2: reusable prefixes round down and are capped at len - 1.
    assert limit_tokens([[(a, [0])], [(a, [0])]], block_size=2) == 4 + 2


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
        on, _ = run_workload(name, ScriptedEngine(), cfg, engine_label="scripted", cache=True)
        off, _ = run_workload(name, ScriptedEngine(prefix_cache=False), cfg, engine_label="scripted", cache=False)
        assert on.prompt_tokens == off.prompt_tokens and on.limit_tokens == off.limit_tokens
        assert off.computed_prefill_tokens == off.prompt_tokens
        assert on.eta >= 0.98, (name, on)


def test_cli_bench_writes_json(tmp_path):
    out = tmp_path / "prefix.json"
    proc = subprocess.run([sys.executable, "-m", "tokenomy.cli", "bench", "prefix", "--quick", "--model",
                           "scripted", "--no-vllm", "--json", str(out), "--plot", str(tmp_path / "prefix.png")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "prefix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = json.loads(out.read_text())
    keys = {"workload", "engine", "cache", "prompt_tokens", "computed_prefill_tokens", "limit_tokens", "eta",
            "wall_s"}
    assert all(keys <= set(r) for r in records)
    assert {(r["workload"], r["cache"]) for r in records} >= {("agents", "on"), ("agents", "off"), ("rewoo", "on"),
                                                              ("sc", "off")}
    assert "eta" in proc.stdout and "scheduler overhead" in proc.stdout
