"""The Qwen2.5-Coder embedded models, for real: their pinned parts install, join, convert and answer; bfloat16
on the CPU gives float32's greedy tokens on a test set."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import require
from tokenomy.kernels import embedded

pytestmark = [pytest.mark.embedded]


def _need(name: str) -> None:
    split = embedded.SPLIT_MODELS[name]
    if any(importlib.util.find_spec(d.replace("-", "_")) is None for d in split.distributions()):
        require(f"the embedded model {name} ({embedded.EMBEDDED_MODELS[name][2]})")


@pytest.fixture(scope="module")
def qwen05():
    _need("qwen2.5-coder-0.5b")
    from tokenomy.kernels.hf import TransformersEngine

    return TransformersEngine.embedded("qwen2.5-coder-0.5b", dtype="float32")


def test_the_0_5b_model_answers_and_uses_the_qwen_chat_template(qwen05):
    assert qwen05.spec == "embedded:qwen2.5-coder-0.5b"
    ids = qwen05.prompt_token_ids([{"role": "user", "content": "hi"}])
    assert "<|im_start|>user" in qwen05.tokenizer.decode(ids)
    out = qwen05.chat("What is 17 + 25? Answer with the number only.", max_tokens=8)
    assert "42" in out.text
    out = qwen05.chat("Velmora has 412,000 people. How many people live in Velmora? Answer with the number only.",
                      max_tokens=12)
    assert "412" in out.text


@pytest.mark.timeout(900)
def test_bfloat16_gives_float32_s_greedy_tokens_on_the_test_set(qwen05):
    from tokenomy.benchmarks.dtype import TEST_SET
    from tokenomy.kernels.hf import TransformersEngine

    bf16 = TransformersEngine.embedded("qwen2.5-coder-0.5b", dtype="bfloat16")
    try:
        import torch

        assert next(bf16.model.parameters()).dtype == torch.bfloat16
        assert next(qwen05.model.parameters()).dtype == torch.float32
        same = 0
        for q in TEST_SET:
            a = qwen05.chat(q, max_tokens=16).token_ids
            b = bf16.chat(q, max_tokens=16).token_ids
            same += a == b
    finally:
        bf16.close()
    # Measured 8 of 8 on an AVX512-BF16 machine (24 tokens each); rounding may flip a near-tie on another CPU.
    assert same >= len(TEST_SET) - 1, f"{same} of {len(TEST_SET)} prompts gave float32's greedy tokens"


@pytest.mark.timeout(900)
def test_the_1_5b_model_plans_a_lookup_and_answers():
    _need("qwen2.5-coder-1.5b")
    from tokenomy.kernels.hf import TransformersEngine
    from tokenomy.planners import make_strategy
    from tokenomy.tools import calc, example_corpus_dir, lookup_tool, search_tool
    from tokenomy.tools.builtin import CorpusIndex

    engine = TransformersEngine.embedded("qwen2.5-coder-1.5b")
    try:
        index = CorpusIndex(example_corpus_dir())
        result = make_strategy("rewoo", engine, [search_tool(index), lookup_tool(index), calc]).run(
            "What is the population of Velmora?")
    finally:
        engine.close()
    assert result.plan_valid and result.answer is not None and "412" in result.answer
