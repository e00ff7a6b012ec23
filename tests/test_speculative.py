"""Speculative decoding in the transformers engine (``kernels.hf_speculative``): the long model's own tokens, with
a draft model's help, whatever the draft proposes; sampling by the rejection rule; counted."""

from __future__ import annotations

import pytest

from tokenomy.errors import UnknownModelSpec, UserError
from tokenomy.kernels.types import Grammar, Request, SamplingParams

SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 272}  # the byte tokenizer has 263 tokens
PROMPTS = ["hello world, this is", "the quick brown fox", "abc", "hello world, that was"]


def _engine(seed: int, **options):
    from tokenomy.kernels.hf import TransformersEngine

    return TransformersEngine.dummy("qwen2.5-1.5b", overrides=SMALL, dtype="float32", seed=seed, batch=False,
                                    **options)


@pytest.fixture(scope="module")
def plain():
    return _engine(0)


def _speculative(plain, draft_seed: int, **options):
    from tokenomy.kernels.hf import TransformersEngine

    return TransformersEngine(plain.model, plain.tokenizer, batch=False, draft=_engine(draft_seed), **options)


@pytest.mark.parametrize("draft_seed", [0, 1, 2])
def test_greedy_tokens_are_the_long_model_s_own_whatever_the_draft(plain, draft_seed):
    """Seed 0 drafts with the long model's own weights (every proposal kept), 1 and 2 with other weights."""
    spec = _speculative(plain, draft_seed)
    params = SamplingParams(max_tokens=48)
    for prompt in PROMPTS:
        want = plain.generate(prompt, params)
        got = spec.generate(prompt, params)
        assert got.token_ids == want.token_ids and got.text == want.text
        assert got.finish_reason == want.finish_reason
        assert got.usage.completion_tokens == want.usage.completion_tokens
        s = got.speculation
        assert s.rounds >= 1 and 0 <= s.accepted <= s.proposed
        # every token after the first is a kept proposal, the long model's own (one per round), or decoded alone
        assert s.accepted + s.rounds + s.plain_steps == len(got.token_ids) - 1
    total = spec.speculation
    assert total.proposed > 0
    if draft_seed == 0:
        assert total.acceptance_rate == 1.0 and total.wasted_flops == 0.0
        assert spec._tune.alpha == 1.0  # every proposal kept, as measured


def test_stop_strings_min_tokens_and_logprobs_match_plain_decoding(plain):
    spec = _speculative(plain, 1)
    first = plain.generate("the quick brown fox", SamplingParams(max_tokens=30)).text
    stop = first[12:14]
    assert stop
    for params in (SamplingParams(max_tokens=30, stop=(stop,)), SamplingParams(max_tokens=30, min_tokens=20),
                   SamplingParams(max_tokens=20, logprobs=True)):
        want = plain.generate("the quick brown fox", params)
        got = spec.generate("the quick brown fox", params)
        assert (got.token_ids, got.text, got.finish_reason) == (want.token_ids, want.text, want.finish_reason)
        if params.logprobs:
            assert got.logprobs == pytest.approx(want.logprobs, abs=1e-3)


def test_a_grammar_constrains_the_draft_s_proposals_and_the_result(plain):
    spec = _speculative(plain, 0)
    grammar = Grammar.regex(r"[a-e]{3,12}\.")
    want = plain.generate("letters:", SamplingParams(max_tokens=20), grammar=grammar)
    got = spec.generate("letters:", SamplingParams(max_tokens=20), grammar=grammar)
    assert got.token_ids == want.token_ids and got.text == want.text
    assert got.speculation.acceptance_rate == 1.0  # the same weights, masked the same: every proposal kept


def test_the_radix_caches_keep_what_speculation_computed(plain):
    spec = _speculative(plain, 1)
    params = SamplingParams(max_tokens=24)
    first = spec.generate("hello world, this is", params)
    again = spec.generate("hello world, this is" + first.text[:6], params)
    assert again.usage.cached_prompt_tokens > len(first.prompt_token_ids)  # the long model's generated KV too
    assert spec.draft.cache.peek(again.prompt_token_ids) > len(first.prompt_token_ids)
    # what was cached is right: the continuation is the one plain decoding gives
    assert again.token_ids == plain.generate("hello world, this is" + first.text[:6], params).token_ids


def test_streaming_hands_out_the_same_text(plain):
    spec = _speculative(plain, 2)
    pieces: list[str] = []
    req = Request(prompt="the quick brown fox", params=SamplingParams(max_tokens=30), on_text=pieces.append)
    (got,) = spec.generate_batch([req])
    assert "".join(pieces) == got.text == plain.generate("the quick brown fox", SamplingParams(max_tokens=30)).text


def test_the_rejection_rule_gives_the_long_model_s_distribution():
    import torch

    from tokenomy.kernels.hf_decoding import _rejection_sample

    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    q = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.4])
    n = 20000
    counts = torch.zeros(5)
    for _ in range(n):
        x = int(torch.multinomial(q, 1, generator=gen))
        counts[_rejection_sample(torch, p, q, x, gen)] += 1
    assert torch.allclose(counts / n, p, atol=0.015), (counts / n).tolist()
    # a proposal the long model would never make is never kept
    assert all(_rejection_sample(torch, torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0]), 0, gen) == 1
               for _ in range(50))


def test_sampling_with_a_seed_is_reproducible_and_counted(plain):
    spec = _speculative(plain, 0)
    params = SamplingParams(max_tokens=30, temperature=0.8, top_k=50, seed=7)
    a = spec.generate("abc", params)
    b = _speculative(plain, 0).generate("abc", params)
    assert a.token_ids == b.token_ids and len(a.token_ids) == a.usage.completion_tokens
    # the same weights draft: p == q, so every proposal is kept
    assert a.speculation.acceptance_rate == 1.0


def test_a_draft_that_tokenizes_differently_or_is_the_model_itself_is_refused(plain):
    from tokenomy.kernels.hf import TransformersEngine

    with pytest.raises(UserError, match="another model"):
        TransformersEngine(plain.model, plain.tokenizer, draft=plain)
    other = TransformersEngine.dummy("qwen2.5-1.5b", overrides=SMALL, dtype="float32")
    other.tokenizer.add_tokens(["<extra>"])
    with pytest.raises(UserError, match="tokenize differently"):
        TransformersEngine(plain.model, plain.tokenizer, draft=other)
    with pytest.raises(UserError, match="draft_k"):
        TransformersEngine(plain.model, plain.tokenizer, draft=_engine(1), draft_k=0)


def test_the_draft_spec_form():
    from tokenomy.kernels.registry import parse_spec, split_draft

    spec = "embedded:qwen2.5-coder-1.5b+draft=embedded:qwen2.5-coder-0.5b"
    assert parse_spec(spec) == ("embedded", "qwen2.5-coder-1.5b")
    assert split_draft(spec) == ("embedded:qwen2.5-coder-1.5b", "embedded:qwen2.5-coder-0.5b")
    for bad in ("openai:m@http://x+draft=embedded", "embedded+draft=scripted", "embedded+draft=",
                "embedded+draft=embedded+draft=embedded"):
        with pytest.raises(UnknownModelSpec):
            parse_spec(bad)


def test_the_bench_compares_both_ways_on_the_real_prompts(tmp_path, capsys):
    """``tokenomy bench speculative`` on two small random models saved as ``hf:`` directories: the mechanics."""
    from tokenomy.cli import main

    dirs = []
    for seed in (0, 0):
        engine = _engine(seed)
        d = tmp_path / f"m{len(dirs)}"
        engine.model.save_pretrained(d)
        engine.tokenizer.save_pretrained(d)
        dirs.append(d)
    out = tmp_path / "spec.json"
    assert main(["bench", "speculative", "--long", f"hf:{dirs[0]}", "--draft", f"hf:{dirs[1]}", "--requests", "2",
                 "--workloads", "planner,ladder", "--json", str(out)]) == 0
    import json

    data = json.loads(out.read_text())
    rows = {r["workload"]: r for r in data["records"]}
    assert set(rows) == {"planner", "ladder"}
    for r in rows.values():  # the same weights draft: every proposal kept, the same tokens
        assert r["requests"] == 2 and r["identical"] == 2 and r["acceptance_rate"] == 1.0
        assert r["tokens"] > 0 and r["plain_s"] > 0 and r["speculative_s"] > 0
    assert [g["goal"] for g in data["goals"]][1] == "identical greedy tokens" and data["goals"][1]["met"]
    assert "speedup" in capsys.readouterr().out


@pytest.mark.embedded
@pytest.mark.timeout(900)
def test_the_qwen_pair_gives_the_1_5b_model_s_greedy_tokens():
    from tests.test_embedded_qwen import _need
    from tokenomy.benchmarks.planning import embedded_tokenizer
    from tokenomy.benchmarks.speculative import workload_requests
    from tokenomy.kernels.hf import TransformersEngine

    _need("qwen2.5-coder-1.5b")
    _need("qwen2.5-coder-0.5b")
    plain = TransformersEngine.embedded("qwen2.5-coder-1.5b")
    fast = TransformersEngine(plain.model, plain.tokenizer, draft="embedded:qwen2.5-coder-0.5b")
    try:
        (req,) = workload_requests("planner", 1, embedded_tokenizer())
        want = plain.generate(req.prompt, req.params)
        got = fast.generate(req.prompt, req.params)
        assert got.token_ids == want.token_ids and len(got.token_ids) > 5
        assert got.speculation.acceptance_rate > 0.5  # one family, one tokenizer: the 0.5B guesses most plan tokens
    finally:
        fast.close()


def test_k_is_chosen_for_tokens_per_second_from_what_was_measured(plain):
    from tokenomy.kernels.hf_speculative import Tuning

    spec = _speculative(plain, 1)
    t = spec._tune = Tuning()
    assert spec._choose_k(10) == 0  # first a plain step, timed
    t.step(0.1)
    assert spec._choose_k(10) == spec.draft_k and spec._choose_k(2) == 2 and spec._choose_k(0) == 0  # then draft_k
    for _ in range(5):  # a cheap draft that is right 9 times in 10, checks that cost little more than a step (a GPU)
        t.round(8, 8, ended=False, draft_s=0.01, verify_s=0.1)
        t.round(4, 8, ended=False, draft_s=0.01, verify_s=0.1)
    assert t.extra_s == 0.0 and 4 <= spec._choose_k(8) <= 8
    cpu = spec._tune = Tuning()
    cpu.step(0.45)
    for _ in range(5):  # the same draft where each checked token adds half a step (a CPU): short runs pay
        cpu.round(3, 4, ended=False, draft_s=0.05, verify_s=0.45 + 4 * 0.2)
    assert cpu.extra_s == pytest.approx(0.2) and 1 <= spec._choose_k(8) <= 3
    slow = spec._tune = Tuning()
    slow.step(0.1)
    for _ in range(5):  # a draft as slow as the model and mostly wrong: plain steps, with a look now and then
        slow.round(0, 2, ended=False, draft_s=0.1, verify_s=0.11)
    picks = [spec._choose_k(8) for _ in range(32)]
    assert picks.count(0) == 30 and picks.count(2) == 2


def test_an_int8_draft_keeps_the_long_model_s_tokens(plain):
    from tokenomy.kernels.hf import TransformersEngine

    draft = _engine(0)
    flops = draft.flops_per_token
    spec = TransformersEngine(plain.model, plain.tokenizer, batch=False, draft=draft, draft_int8=True)
    assert type(draft.model.model.layers[0].mlp.up_proj).__name__ == "Linear"  # the quantized module's name
    assert "quantized" in type(draft.model.model.layers[0].mlp.up_proj).__module__
    assert draft.flops_per_token == flops
    for prompt in PROMPTS:
        params = SamplingParams(max_tokens=32)
        assert spec.generate(prompt, params).token_ids == plain.generate(prompt, params).token_ids
