"""``tokenomy bench gpu`` on the CPU in its smoke size: every variant runs, greedy tokens agree across the fast
paths, the records carry the fields the GPU table needs, and the bench imports only what the GPU machine has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenomy.cli import main

FIELDS = {"workload", "variant", "ttft_ms", "decode_tok_s", "ideal_speedup", "achieved_speedup"}


def test_the_smoke_run_measures_every_variant_and_the_fast_paths_agree(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--smoke", "--json", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    runs = [r for r in records if r["workload"] != "kernel"]
    assert {(r["workload"], r["variant"]) for r in runs} == {
        ("shared", "plain"), ("shared", "generate"), ("shared", "batch"), ("shared", "radix"),
        ("shared", "radix+kernel"), ("single", "plain"), ("single", "generate"), ("single", "radix")}
    assert all(FIELDS <= set(r) and r["ttft_ms"] > 0 for r in runs)
    assert all(r["notes"] == [] for r in runs)  # no "greedy tokens differ from the baseline's"
    shared = {r["variant"]: r for r in runs if r["workload"] == "shared"}
    # 4 requests of 48 shared + 6 own tokens: 216 without reuse, 48 + 4 x 6 = 72 with the trie.
    assert shared["plain"]["prefilled_tokens"] == 216 and shared["radix"]["prefilled_tokens"] == 72
    assert shared["radix"]["ideal_speedup"] == 3.0 and shared["plain"]["ideal_speedup"] == 1.0
    kernel = next(r for r in records if r["workload"] == "kernel")
    assert kernel["copy_bandwidth_gb_s"] > 0 and kernel["bandwidth_gb_s"] > 0
    assert "| shared | radix+kernel |" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="runs only where there is no CUDA GPU (CI's machines)")
def test_without_a_gpu_the_full_bench_says_so(capsys):
    assert main(["bench", "gpu"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_a_chosen_set_of_variants_runs_alone_with_a_profile_and_goals(tmp_path, capsys):
    out, prof = tmp_path / "gpu.json", tmp_path / "profile.txt"
    assert main(["bench", "gpu", "--smoke", "--variants", "generate,radix+kernel", "--json", str(out), "--profile",
                 str(prof)]) == 0
    data = json.loads(out.read_text())
    runs = {(r["workload"], r["variant"]): r for r in data["records"]}
    assert set(runs) == {("shared", "generate"), ("shared", "radix+kernel"), ("single", "generate")}  # no sweep
    assert "the baseline" in runs["shared", "generate"]["notes"][0]  # plain not run: generate is the baseline
    assert runs["shared", "radix+kernel"]["achieved_speedup"] == pytest.approx(
        runs["shared", "generate"]["ttft_ms"] / runs["shared", "radix+kernel"]["ttft_ms"])
    assert [g["met"] for g in data["goals"]] and all(set(g) == {"goal", "measured", "met"} for g in data["goals"])
    text = prof.read_text()
    for section in ("== shared radix+kernel, 4 request(s), max_tokens=1", "== single radix, 1 request(s)",
                    "-- Python, by cumulative time", "_prefill_together"):
        assert section in text
    assert main(["bench", "gpu", "--smoke", "--variants", "radix,fast"]) == 2
    assert "unknown gpu variants fast" in capsys.readouterr().err


def test_records_reach_the_caller_as_they_are_measured():
    from tokenomy.benchmarks import gpu

    seen = []
    records = gpu.run_gpu_bench(gpu.GpuConfig.smoke(), variants=["plain", "radix"], workloads=["shared"],
                                on_record=lambda rs: seen.append([(r.workload, r.variant) for r in rs]))
    assert seen == [[("shared", "plain")], [("shared", "plain"), ("shared", "radix")],
                    [("shared", "plain"), ("shared", "radix"), ("kernel", "torch")]]
    assert [(r.workload, r.variant) for r in records] == seen[-1]


def test_the_goals_are_judged_from_the_records_and_missing_ones_are_not_met():
    from tokenomy.benchmarks.gpu import GpuRecord, goals

    def rec(workload, variant, batch, **kw):
        return GpuRecord(workload, variant, "llama-3-8b", "cuda:0", batch, 2048, 32, 64, **kw)

    records = [rec("shared", "generate", 32, ttft_ms=1900.0, decode_tok_s=400.0),
               rec("shared", "radix+kernel", 32, ttft_ms=100.0, decode_tok_s=4400.0, roofline_tok_s=8000.0,
                   of_roofline=0.55, distinct_prefill_ms=88.0, achieved_speedup=19.0, ideal_speedup=21.67),
               rec("single", "radix", 1, ttft_ms=60.0, decode_tok_s=150.0, roofline_tok_s=270.0, of_roofline=0.556)]
    judged = {g.split(" >=")[0].split(" within")[0]: (m, ok) for g, m, ok in goals(records)}
    assert judged["decode tok/s, batch 32, shared 2048-token prefix"] == ("4400 vs 400: 11.0x", True)
    assert judged["decode tok/s, batch 32, shared prefix"][1] is True  # 0.55 >= 0.5
    assert judged["decode tok/s, batch 1"] == ("150 of 270: 0.56", False)  # 0.556 < 0.6
    assert judged["TTFT of 32 requests sharing a 2048-token prefix"] == ("100.0 ms vs 88.0 ms: 1.14x", True)
    assert judged["TTFT speedup"][1] is True  # 19 / 21.67 = 0.88
    missing = goals(records[:1])
    assert len(missing) == 4 and not any(ok for _, _, ok in missing)
    assert all(m.startswith("missing") for _, m, _ in missing)


WRAPPER = """#!/bin/sh
# The GPU machine's python, as far as imports go: the packages on PYTHONPATH, no editable install's finder
export PYTHONPATH="$PYTHONPATH:{site}"
exec {python} "$@"
"""


@pytest.mark.timeout(900)
def test_gpu_check_runs_tokenomy_from_its_shim_where_tokenomy_is_not_installed(tmp_path):
    """.ci/gpu-check on a python that has the dependencies but not tokenomy (the GPU machine's case; here the
    interpreter this venv was made from, its site-packages on PYTHONPATH, where .pth files are not read): the
    checkout's own tokenomy/ folder must not shadow the shim, or nothing under tokenomy.kernels imports."""
    import sysconfig

    base = getattr(sys, "_base_executable", sys.executable)
    wrapper = tmp_path / "python"
    wrapper.write_text(WRAPPER.format(site=sysconfig.get_paths()["purelib"], python=base))
    wrapper.chmod(0o755)
    probe = subprocess.run([str(wrapper), "-c", "import tokenomy.kernels"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
    assert probe.returncode != 0  # tokenomy is not importable there: the shim is what the check must use
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": str(wrapper), "TEST_LIMIT": "400",
           "BENCH_LIMIT": "400", "GPU_BENCH_ARGS": "--variants radix,radix+kernel"}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(["bash", str(root / ".ci" / "gpu-check")], capture_output=True, text=True, env=env,
                         timeout=850)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    bench = (tmp_path / "out" / "bench.txt").read_text()
    assert "bench rc=0" in bench and "| shared | radix+kernel |" in bench
    tests = (tmp_path / "out" / "pytest.txt").read_text()
    assert "pytest rc=0" in tests and " passed" in tests


BLOCK = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pydantic", "langgraph", "lark", "xgrammar", "llguidance", "vllm", "matplotlib",
                                  "platformdirs", "httpx", "langchain_core"}:
            raise ImportError(f"{name} is not installed on the GPU machine")
sys.meta_path.insert(0, Block())
from tokenomy.cli import main
sys.exit(main(["bench", "gpu", "--smoke"]))
"""


def test_the_gpu_bench_needs_only_what_the_gpu_machine_has():
    """The GPU machine has torch, transformers, triton, numpy, networkx and tiktoken, and not pydantic, langgraph,
    vLLM or matplotlib (ENVIRONMENT.md)."""
    out = subprocess.run([sys.executable, "-c", BLOCK], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| single | radix |" in out.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by .ci/gpu-check on the GPU machine)")
@pytest.mark.parametrize("shared_prefix", [True, False])
def test_on_a_gpu_a_batch_decodes_from_a_cuda_graph_with_the_plain_path_s_tokens(shared_prefix):
    """float32 on CUDA (the Triton kernels in IEEE precision): the batch's steps replay a captured CUDA graph, a
    batch that mostly finished is captured again smaller, and greedy tokens equal one request at a time's."""
    from tokenomy.kernels import batch
    from tokenomy.kernels.hf import TransformersEngine
    from tokenomy.kernels.types import Request, SamplingParams

    small = {"num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 8,
             "num_key_value_heads": 2, "vocab_size": 2048}
    plain = TransformersEngine.dummy("qwen2.5-1.5b", overrides=small, dtype="float32", prefix_cache=False,
                                     batch=False)
    fast = TransformersEngine(plain.model, plain.tokenizer, batch=True, shared_prefix=shared_prefix)
    assert fast.cuda_graphs and fast.shared_prefix is shared_prefix
    prefix = [(7 * i) % 2000 + 3 for i in range(300)]
    prompts = [prefix + [(11 * i + j) % 2000 + 3 for j in range(1 + i)] for i in range(8)]
    params = [SamplingParams(max_tokens=n) for n in (4, 4, 4, 4, 4, 24, 24, 17)]
    want = [plain.generate(p, sp).token_ids for p, sp in zip(prompts, params, strict=True)]
    before = dict(batch.STEPS)
    got = fast.generate_batch([Request(prompt=p, params=sp) for p, sp in zip(prompts, params, strict=True)])
    assert [c.token_ids for c in got] == want
    assert batch.STEPS["captured"] - before["captured"] == 2  # 8 rows, then the 3 left
    assert batch.STEPS["graph"] - before["graph"] >= 23 and batch.STEPS["eager"] == before["eager"]
