"""``tokenomy bench gpu`` on the CPU in its smoke size: every variant runs, greedy tokens agree across the fast
paths, the records carry the fields the GPU table needs, and the bench imports only what the GPU machine has."""

from __future__ import annotations

import json
import subprocess
import sys

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
        ("shared", "plain"), ("shared", "batch"), ("shared", "radix"), ("shared", "radix+kernel"),
        ("single", "plain"), ("single", "radix")}
    assert all(FIELDS <= set(r) and r["ttft_ms"] > 0 for r in runs)
    assert all(r["notes"] == [] for r in runs)  # no "greedy tokens differ from the plain variant's"
    shared = {r["variant"]: r for r in runs if r["workload"] == "shared"}
    # 4 requests of 48 shared + 6 own tokens: 216 without reuse, 48 + 4 x 6 = 72 with the trie.
    assert shared["plain"]["prefilled_tokens"] == 216 and shared["radix"]["prefilled_tokens"] == 72
    assert shared["radix"]["ideal_speedup"] == 3.0 and shared["plain"]["ideal_speedup"] == 1.0
    kernel = next(r for r in records if r["workload"] == "kernel")
    assert kernel["copy_bandwidth_gb_s"] > 0 and kernel["bandwidth_gb_s"] > 0
    assert "| shared | radix+kernel |" in capsys.readouterr().out


def test_without_a_gpu_the_full_bench_says_so(capsys):
    if torch.cuda.is_available():
        return
    assert main(["bench", "gpu"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


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
