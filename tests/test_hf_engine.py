"""The transformers engine: the radix cache never changes greedy output; errors stay in their slot."""

import json
import re
from collections import Counter

import pytest

from tokenomy.errors import ContextLengthExceeded, GrammarError, ModelNotFound, RequestCancelled, UserError
from tokenomy.kernels import Grammar, Request, SamplingParams

GREEDY = SamplingParams(max_tokens=12)


def prompts_sharing_prefixes(tok):
    base = tok("the quick brown fox jumps over the lazy dog " * 6)["input_ids"]
    return [
        base + tok(" first")["input_ids"],
        base + tok(" second one")["input_ids"],        # shares base: a split
        base[:20] + tok(" other branch")["input_ids"],  # splits inside the base node
        base + tok(" first")["input_ids"],              # exact repeat: capped at len - 1
        base,                                           # a prefix of cached prompts
    ]


def test_greedy_output_with_cache_equals_without(tiny_engine_factory, tiny_tokenizer):
    on, off = tiny_engine_factory(prefix_cache=True), tiny_engine_factory(prefix_cache=False)
    cached_total = 0
    for ids in prompts_sharing_prefixes(tiny_tokenizer):
        a, b = on.generate(ids, GREEDY), off.generate(ids, GREEDY)
        assert a.token_ids == b.token_ids
        assert a.usage.prompt_tokens == b.usage.prompt_tokens == len(ids)
        assert b.usage.cached_prompt_tokens == 0
        assert a.usage.cached_prompt_tokens <= len(ids) - 1
        cached_total += a.usage.cached_prompt_tokens
    assert cached_total > 0


def test_generated_ids_carried_forward_are_reused(tiny_engine_factory, tiny_tokenizer):
    # Pitfall: re-tokenizing rendered history breaks the prefix; carrying the generated ids keeps it.
    on, off = tiny_engine_factory(True), tiny_engine_factory(False)
    p1 = tiny_tokenizer("a long shared system prompt " * 5)["input_ids"]
    c1 = on.generate(p1, GREEDY)
    p2 = p1 + c1.token_ids + tiny_tokenizer(" next turn")["input_ids"]
    c2 = on.generate(p2, GREEDY)
    assert c2.usage.cached_prompt_tokens == len(p1) + len(c1.token_ids) - 1
    assert c2.token_ids == off.generate(p2, GREEDY).token_ids


def test_cache_under_memory_pressure_stays_correct(tiny_engine_factory, tiny_tokenizer):
    on = tiny_engine_factory(True, cache_budget_bytes=40_000)
    off = tiny_engine_factory(False)
    for i in range(6):
        ids = tiny_tokenizer(f"prefix number {i % 3} " * 8 + f"tail {i}")["input_ids"]
        assert on.generate(ids, GREEDY).token_ids == off.generate(ids, GREEDY).token_ids
        assert on.cache.nbytes <= 40_000


def test_sampling_is_seeded(tiny_engine_factory, tiny_tokenizer):
    from dataclasses import replace

    e = tiny_engine_factory()
    ids = tiny_tokenizer("sample me")["input_ids"]
    p = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    assert e.generate(ids, p).token_ids == e.generate(ids, p).token_ids  # same seed, same tokens
    # The seed is used: other seeds give other tokens somewhere (an engine that ignored it would repeat one).
    assert len({tuple(e.generate(ids, replace(p, seed=s)).token_ids) for s in range(5)}) > 1
    # The temperature is used: sampled hot, the tokens leave the greedy ones (an engine decoding greedily
    # whatever the temperature would not); at temperature 0 the seed changes nothing.
    greedy = e.generate(ids, SamplingParams(max_tokens=10)).token_ids
    assert all(e.generate(ids, SamplingParams(max_tokens=10, temperature=0.0, seed=s)).token_ids == greedy
               for s in range(3))
    assert any(e.generate(ids, SamplingParams(max_tokens=10, temperature=2.0, seed=s)).token_ids != greedy
               for s in range(3))


def test_stop_string_and_logprobs(tiny_engine_factory, tiny_tokenizer):
    e = tiny_engine_factory()
    ids = tiny_tokenizer("hello")["input_ids"]
    full = e.generate(ids, SamplingParams(max_tokens=20))
    assert full.finish_reason == "length" and len(full.token_ids) == 20
    stop = full.text[5:7]
    c = e.generate(ids, SamplingParams(max_tokens=20, stop=(stop,), logprobs=True))
    assert c.finish_reason == "stop" and c.text == full.text[: full.text.index(stop)]
    assert len(c.logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.logprobs)


def test_grammars_constrain_random_weights(tiny_engine_factory, tiny_tokenizer):
    e = tiny_engine_factory()
    ids = tiny_tokenizer("number:")["input_ids"]
    c = e.generate(ids, SamplingParams(max_tokens=20), grammar=Grammar.regex("[0-9]{3}"))
    assert len(c.text) == 3 and c.text.isdigit() and c.finish_reason == "stop"
    c = e.generate(ids, SamplingParams(max_tokens=20), grammar=Grammar.ebnf('root ::= "yes" | "no"'))
    assert c.text in ("yes", "no")
    c = e.generate(ids, SamplingParams(max_tokens=20), grammar=Grammar.lark('start: "up" | "down"'))
    assert c.text in ("up", "down")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    # Every output is checked: a finished one is the JSON the schema asks for; one cut at the token limit is a
    # prefix of such JSON (the grammar allows any whitespace, which random weights may fill the limit with).
    prefix = re.compile(r'\{\s*(?:"(?:a(?:"\s*(?::\s*(?:-?(?:0|[1-9][0-9]*)?(?:\s*\}?)?)?)?)?)?)?', re.S)
    finished = 0
    for text in ("number:", "json please", "x"):
        for seed in range(3):
            c = e.generate(tiny_tokenizer(text)["input_ids"], SamplingParams(max_tokens=60, temperature=1.0, seed=seed),
                           grammar=Grammar.json_schema(schema))
            if c.finish_reason == "stop":
                data = json.loads(c.text)
                assert list(data) == ["a"] and isinstance(data["a"], int) and not isinstance(data["a"], bool)
                finished += 1
            else:
                assert c.finish_reason == "length" and len(c.token_ids) == 60
                assert prefix.fullmatch(c.text), c.text
    assert finished >= 3, finished


@pytest.mark.parametrize("grammar", [Grammar.ebnf("root ::= ("), Grammar.regex("[0-9"),
                                     Grammar.lark("start: ("), Grammar.json_schema("{not json")])
def test_bad_grammar_is_a_grammar_error(tiny_engine_factory, tiny_tokenizer, grammar):
    e = tiny_engine_factory()
    with pytest.raises(GrammarError):
        e.generate(tiny_tokenizer("x")["input_ids"], GREEDY, grammar=grammar)


def test_errors_stay_in_their_slot(tiny_engine_factory, tiny_tokenizer):
    e = tiny_engine_factory()
    ok = tiny_tokenizer("fine")["input_ids"]
    too_long = [5] * 600  # the tiny model's window is 512
    cancelled = Request(prompt=ok)
    cancelled.cancel()
    reqs = [Request(prompt=ok, params=GREEDY), Request(prompt=too_long), cancelled,
            Request(prompt=ok, params=GREEDY, grammar=Grammar.regex("[")), Request(prompt=ok, params=GREEDY)]
    out = e.generate_batch(reqs, return_exceptions=True)
    assert isinstance(out[1], ContextLengthExceeded) and out[1].context_window == 512
    assert isinstance(out[2], RequestCancelled)
    assert isinstance(out[3], GrammarError)
    assert out[0].token_ids == out[4].token_ids
    with pytest.raises(ContextLengthExceeded):
        e.generate_batch(reqs[:2])


def test_engine_crash_mid_batch_keeps_the_other_results(tiny_engine_factory, tiny_tokenizer, monkeypatch):
    e = tiny_engine_factory()
    real = e._generate_one
    calls = []

    def flaky(req):
        calls.append(req.request_id)
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return real(req)

    monkeypatch.setattr(e, "_generate_one", flaky)
    ids = tiny_tokenizer("go")["input_ids"]
    out = e.generate_batch([Request(prompt=ids, params=GREEDY) for _ in range(3)], return_exceptions=True)
    from tokenomy.errors import EngineError

    assert isinstance(out[1], EngineError) and "device lost" in str(out[1])
    assert out[0].token_ids == out[2].token_ids


def test_sliding_window_models_run_without_prefix_cache(tiny_tokenizer):
    from transformers import MistralConfig

    from tokenomy.kernels.hf import TransformersEngine

    cfg = MistralConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=256, sliding_window=16)
    e = TransformersEngine.from_config(cfg, tiny_tokenizer)
    assert e.cache is None
    c = e.generate(tiny_tokenizer("hi there")["input_ids"], GREEDY)
    assert c.usage.cached_prompt_tokens == 0 and len(c.token_ids) == 12


def test_not_a_model_directory(tmp_path):
    from tokenomy.kernels.hf import TransformersEngine

    with pytest.raises(ModelNotFound):
        TransformersEngine.from_dir(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ModelNotFound):
        TransformersEngine.from_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelNotFound):
        TransformersEngine.from_dir(tmp_path)


def test_chat_messages_use_the_template(tiny_engine_factory, tiny_tokenizer):
    e = tiny_engine_factory()
    ids = e.prompt_token_ids([{"role": "user", "content": "hi"}])
    assert tiny_tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    prefill = e.prompt_token_ids([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure"}])
    assert tiny_tokenizer.decode(prefill).endswith("<|im_start|>assistant\nSure")
    with pytest.raises(UserError):
        e.prompt_token_ids([])


@pytest.mark.embedded
def test_embedded_model_answers(embedded_engine):
    c = embedded_engine.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=30)
    assert "Paris" in c.text
    assert c.usage.prompt_tokens > 20 and c.usage.completion_tokens > 0 and c.usage.calls == 1


@pytest.mark.embedded
def test_embedded_greedy_equal_with_and_without_cache(embedded_engine):
    from tokenomy.kernels.hf import TransformersEngine

    off = TransformersEngine(embedded_engine.model, embedded_engine.tokenizer, prefix_cache=False)
    system = {"role": "system", "content": "You are a terse assistant. Answer in one sentence. " * 10}
    questions = ["What is the capital of Italy?", "What is 2 + 2?", "Name a color.", "What is the capital of Italy?"]
    hits = 0
    for q in questions:
        msgs = [system, {"role": "user", "content": q}]
        a = embedded_engine.chat(msgs, max_tokens=16)
        b = off.chat(msgs, max_tokens=16)
        assert a.token_ids == b.token_ids
        hits += a.usage.cached_prompt_tokens
    assert hits > 3 * 100  # the long system prompt is computed once


def test_a_cancelled_request_keeps_the_kv_it_computed(tiny_engine_factory, tiny_tokenizer):
    e = tiny_engine_factory()
    ids = tiny_tokenizer("a long prompt that is worth keeping " * 4)["input_ids"]
    req = Request(prompt=ids, params=SamplingParams(max_tokens=50))
    real = e._forward
    calls = []

    def forward_then_cancel(x, past):
        calls.append(len(x))
        if len(calls) == 3:
            req.cancel()
        return real(x, past)

    e._forward = forward_then_cancel
    (out,) = e.generate_batch([req], return_exceptions=True)
    assert isinstance(out, RequestCancelled)
    e._forward = real
    assert e.cached_prefix_length(ids + [0]) == len(ids)  # the prompt's KV survived the cancellation
    assert e.cache.cached_tokens == len(ids) + 2  # and the two generated tokens that were fed back


def test_score_gives_the_logprobs_greedy_decoding_saw(tiny_engine_factory, tiny_tokenizer):
    # Scoring a continuation is one forward pass over it; its log-probabilities are those of generating it.
    on, off = tiny_engine_factory(True), tiny_engine_factory(False)
    prompt = "the quick brown fox jumps over the lazy dog " * 3
    gen = off.generate(prompt, SamplingParams(max_tokens=6, logprobs=True))
    cont = tiny_tokenizer.decode(gen.token_ids)
    # The comparison needs a continuation that re-tokenizes to the generated ids (seeded weights: it does).
    assert tiny_tokenizer(cont, add_special_tokens=False)["input_ids"] == gen.token_ids
    for eng in (off, on, on):  # the second `on` call finds the prompt cached
        s = eng.score(prompt, cont)
        assert s.token_ids == gen.token_ids
        assert s.logprobs == pytest.approx(gen.logprobs, abs=1e-4)
        assert s.usage.prompt_tokens == gen.usage.prompt_tokens + len(gen.token_ids)
        assert s.usage.completion_tokens == 0
    assert on.score(prompt, cont).usage.cached_prompt_tokens > 0


def test_min_tokens_holds_off_eos_and_stop_strings(tiny_engine_factory, tiny_tokenizer):
    eng = tiny_engine_factory(False)
    prompt = "a b c d"
    free = eng.generate(prompt, SamplingParams(max_tokens=12))
    eos = eng.eos_token_ids[0]
    # Make EOS the greedy choice everywhere: without min_tokens, generation ends at once.
    real = eng._forward

    def eos_first(ids, past):
        logits = real(ids, past)
        logits[eos] = logits.max() + 10
        return logits

    eng._forward = eos_first
    assert eng.generate(prompt, SamplingParams(max_tokens=12)).usage.completion_tokens == 1
    held = eng.generate(prompt, SamplingParams(max_tokens=12, min_tokens=5))
    assert held.usage.completion_tokens == 6 and held.token_ids[-1] == eos
    eng._forward = real
    text = free.text.strip()
    assert text  # something to stop at
    stop = text[0]
    assert eng.generate(prompt, SamplingParams(max_tokens=12, stop=(stop,))).usage.completion_tokens < 12
    cut = eng.generate(prompt, SamplingParams(max_tokens=12, stop=(stop,), min_tokens=12))
    assert cut.usage.completion_tokens == 12  # no stop string before min_tokens
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=4, min_tokens=5)


def test_embed_and_flops(tiny_engine_factory):
    eng = tiny_engine_factory(False)
    vec = eng.embed("a b c")
    assert len(vec) == eng.model.config.hidden_size
    assert eng.embed("a b c") == vec and eng.embed("c b a") != vec
    emb = eng.model.get_input_embeddings().weight
    total = sum(p.numel() for p in eng.model.parameters())
    assert eng.model.config.tie_word_embeddings
    # Non-embedding parameters plus the (tied) LM head's d x V: here that is every parameter once.
    assert eng.flops_per_token == 2 * (total - emb.numel() + emb.shape[0] * emb.shape[1])
    assert {"prefill", "min_tokens", "prompt_logprobs", "hidden_states"} <= set(eng.capabilities.names())


# -- requests decoding together (batch=True) ----------------------------------------------------------------


def test_a_batch_decoding_together_gives_the_plain_path_s_greedy_tokens(tiny_engine_factory, tiny_tokenizer):
    """Different prompt lengths, shared prefixes, different stop points: token for token the same as one
    request at a time without any cache."""
    plain = tiny_engine_factory(prefix_cache=False, batch=False)
    fast = tiny_engine_factory(prefix_cache=True, batch=True)
    assert fast.capabilities.batching and not plain.capabilities.batching
    prompts = prompts_sharing_prefixes(tiny_tokenizer)
    params = [SamplingParams(max_tokens=n) for n in (12, 3, 9, 1, 16)]
    want = [plain.generate(p, sp) for p, sp in zip(prompts, params, strict=True)]
    for _ in range(2):  # the second time, prefixes come from the cache the first batch left
        got = fast.generate_batch([Request(prompt=p, params=sp) for p, sp in zip(prompts, params, strict=True)])
        assert [c.token_ids for c in got] == [c.token_ids for c in want]
        assert [c.text for c in got] == [c.text for c in want]
        assert [c.finish_reason for c in got] == [c.finish_reason for c in want]
    assert sum(c.usage.cached_prompt_tokens for c in got) > 0
    # What the batch left in the cache is right too: one request at a time from it gives the same tokens.
    again = tiny_engine_factory(prefix_cache=True, batch=False)
    again.cache = fast.cache
    assert [again.generate(p, sp).token_ids for p, sp in zip(prompts, params, strict=True)] == \
        [c.token_ids for c in want]


def test_in_a_batch_a_failing_request_fails_alone(tiny_engine_factory, tiny_tokenizer):
    fast = tiny_engine_factory(prefix_cache=True, batch=True)
    plain = tiny_engine_factory(prefix_cache=False, batch=False)
    ok = tiny_tokenizer("the quick brown fox")["input_ids"]
    too_long = [5] * (fast.context_window + 3)
    cancelled = Request(prompt=ok, params=GREEDY)
    cancelled.cancel()
    bad_grammar = Request(prompt=ok, params=GREEDY, grammar=Grammar.regex("("))
    got = fast.generate_batch([Request(prompt=ok, params=GREEDY), Request(prompt=too_long, params=GREEDY),
                               cancelled, bad_grammar, Request(prompt=ok + ok, params=GREEDY)],
                              return_exceptions=True)
    assert got[0].token_ids == plain.generate(ok, GREEDY).token_ids
    assert isinstance(got[1], ContextLengthExceeded) and isinstance(got[2], RequestCancelled)
    assert isinstance(got[3], GrammarError)
    assert got[4].token_ids == plain.generate(ok + ok, GREEDY).token_ids
    # Every request, failed or not, released its cached prefix: all of it can be evicted again.
    assert [n for n in fast.cache._nodes() if n is not fast.cache.root and n.lock_ref] == []
    assert fast.cache.evict(fast.cache.nbytes) > 0 and fast.cache.nbytes == 0


@pytest.mark.embedded
def test_the_embedded_model_decoding_a_batch_together_gives_one_at_a_time_s_tokens(embedded_engine):
    from tokenomy.kernels.hf import TransformersEngine

    together = TransformersEngine(embedded_engine.model, embedded_engine.tokenizer, batch=True)
    alone = TransformersEngine(embedded_engine.model, embedded_engine.tokenizer, prefix_cache=False, batch=False)
    system = {"role": "system", "content": "You are one of several agents. Answer in one short sentence."}
    prompts = [[system, {"role": "user", "content": q}] for q in
               ("What is the capital of France?", "Name a colour.", "What is 2 + 2? Explain briefly.")]
    params = SamplingParams(max_tokens=24)
    got = together.generate_batch([Request(prompt=p, params=params) for p in prompts])
    assert [c.token_ids for c in got] == [alone.generate(p, params).token_ids for p in prompts]
    # Each prompt is cached as soon as it is prefilled: the next ones of the same batch reuse the system prompt.
    assert got[0].usage.cached_prompt_tokens == 0
    assert got[1].usage.cached_prompt_tokens > 10 and got[2].usage.cached_prompt_tokens > 10


@pytest.mark.parametrize("arch", ["qwen2.5-1.5b", "llama-3-8b"])
def test_real_architectures_load_with_random_weights_and_batch_like_the_plain_path(arch):
    """The configs of real models, shrunk in depth and width for a CPU test (the GPU bench uses them whole)."""
    from tokenomy.kernels.archs import ARCHS, arch_config
    from tokenomy.kernels.hf import TransformersEngine

    small = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 1024}
    cfg = arch_config(arch)
    assert cfg.model_type == ARCHS[arch]["model_type"] and cfg.num_key_value_heads == ARCHS[arch]["num_key_value_heads"]
    plain = TransformersEngine.dummy(arch, overrides=small, prefix_cache=False, batch=False)
    fast = TransformersEngine.dummy(arch, overrides=small, batch=True)
    assert plain.spec == f"random:{arch}" and type(plain.model).__name__.lower().startswith(cfg.model_type)
    prompts = [[7] * 40 + [i, i + 1, i + 2][: 1 + i % 3] for i in range(5)]
    params = SamplingParams(max_tokens=10)
    want = [plain.generate(p, params).token_ids for p in prompts]
    assert [c.token_ids for c in fast.generate_batch([Request(prompt=p, params=params) for p in prompts])] == want
    with pytest.raises(UserError, match="unknown architecture"):
        TransformersEngine.dummy("gpt-7")


def test_a_batch_sharing_a_prefix_reads_it_once_per_step_and_gives_the_same_tokens(tiny_engine_factory,
                                                                                   tiny_tokenizer):
    from tokenomy.kernels import shared_prefix

    plain = tiny_engine_factory(prefix_cache=False, batch=False)
    fast = tiny_engine_factory(prefix_cache=True, batch=True)
    without = tiny_engine_factory(prefix_cache=True, batch=True, shared_prefix=False)
    assert fast.shared_prefix and not without.shared_prefix
    system = tiny_tokenizer("you are one agent of a team; the shared tools are search and lookup. " * 3)["input_ids"]
    prompts = [system + tiny_tokenizer(f" agent {i}: " + "go " * i)["input_ids"] for i in range(6)]
    params = [SamplingParams(max_tokens=n) for n in (14, 6, 14, 1, 10, 14)]
    want = [plain.generate(p, sp).token_ids for p, sp in zip(prompts, params, strict=True)]
    before = shared_prefix.COUNTERS["shared_prefix_calls"]
    got = fast.generate_batch([Request(prompt=p, params=sp) for p, sp in zip(prompts, params, strict=True)])
    layers = fast.model.config.num_hidden_layers
    assert shared_prefix.COUNTERS["shared_prefix_calls"] - before >= layers * 13  # every step, every layer
    assert [c.token_ids for c in got] == want
    before = shared_prefix.COUNTERS["shared_prefix_calls"]
    assert [c.token_ids for c in without.generate_batch(
        [Request(prompt=p, params=sp) for p, sp in zip(prompts, params, strict=True)])] == want
    assert shared_prefix.COUNTERS["shared_prefix_calls"] == before
    # The model's own attention still serves every other call unchanged.
    assert plain.generate(prompts[0], params[0]).token_ids == want[0]


def test_a_batch_step_that_fails_fails_only_the_requests_still_decoding(tiny_engine_factory, tiny_tokenizer,
                                                                        monkeypatch):
    from tokenomy.errors import EngineError

    fast = tiny_engine_factory(prefix_cache=True, batch=True)
    plain = tiny_engine_factory(prefix_cache=False, batch=False)
    prompts = prompts_sharing_prefixes(tiny_tokenizer)[:3]
    params = [SamplingParams(max_tokens=2), SamplingParams(max_tokens=12), SamplingParams(max_tokens=12)]
    real = fast.model.forward
    calls = {"batched": 0}

    def flaky(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > 1:  # a decode step of the batch
            calls["batched"] += 1
            if calls["batched"] == 3:
                raise RuntimeError("device lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(fast.model, "forward", flaky)
    got = fast.generate_batch([Request(prompt=p, params=sp) for p, sp in zip(prompts, params, strict=True)],
                              return_exceptions=True)
    assert got[0].token_ids == plain.generate(prompts[0], params[0]).token_ids  # finished before the failure
    assert all(isinstance(g, EngineError) and "device lost" in str(g) for g in got[1:])
    assert [n for n in fast.cache._nodes() if n is not fast.cache.root and n.lock_ref] == []


def test_a_prefill_group_caches_its_rows_as_views_and_launches_every_group_before_reading_one(tiny_engine_factory,
                                                                                             tiny_tokenizer,
                                                                                             monkeypatch):
    """The requests prefilled together over a shared prefix are cached as views of that pass's buffer (no copy
    per request and layer), and the host launches every group's forward pass before it reads any first token
    (it waits for the device once, not once per group). Tokens stay the plain path's, also for a later request
    that reads those views back from the cache."""
    from tokenomy.kernels import hf_batch as hf
    from tokenomy.kernels.hf_decoding import _Decoding

    monkeypatch.setattr(hf, "PREFILL_BATCH_TOKENS", 40)  # a few uncached tokens each: groups after the first
    plain = tiny_engine_factory(prefix_cache=False, batch=False)
    fast = tiny_engine_factory(prefix_cache=True, batch=True)
    system = tiny_tokenizer("a shared system prompt for every agent of the team. " * 2)["input_ids"]
    prompts = [system + tiny_tokenizer(f" agent {i:02d} go")["input_ids"] for i in range(12)]
    events, groups = [], []
    real_prefill, real_step = fast._prefill_together, _Decoding.step
    monkeypatch.setattr(fast, "_prefill_together",
                        lambda items: events.append("prefill") or groups.append(len(items)) or real_prefill(items))
    monkeypatch.setattr(_Decoding, "step", lambda self, *a: events.append("token") or real_step(self, *a))
    first = SamplingParams(max_tokens=1)
    got = fast.generate_batch([Request(prompt=p, params=first) for p in prompts])
    assert [c.token_ids for c in got] == [plain.generate(p, first).token_ids for p in prompts]
    assert groups[0] == 1 and len(groups) >= 3 and sum(groups) == len(prompts)
    assert events.index("token") > max(i for i, e in enumerate(events) if e == "prefill")
    leaves = [n for n in fast.cache._nodes() if not n.children and n.kv]
    assert len(leaves) == len(prompts)  # every prompt ends in a leaf of its own
    # A group's rows are views of its one buffer (a node split later by another match is copied in two).
    shared = Counter(n.kv[0][0].untyped_storage().data_ptr() for n in leaves).most_common(1)[0][1]
    assert shared >= max(groups) // 2 + 1
    later = prompts[5] + tiny_tokenizer(" and then")["input_ids"]
    assert fast.cached_prefix_length(later) == len(prompts[5])  # read back from those views
    assert fast.generate(later, GREEDY).token_ids == plain.generate(later, GREEDY).token_ids


@pytest.mark.parametrize("budget", [300, 600])
def test_batched_prefill_in_groups_under_a_token_budget_gives_the_same_tokens(tiny_engine_factory, tiny_tokenizer,
                                                                               monkeypatch, budget):
    from tokenomy.kernels import hf_batch as hf

    monkeypatch.setattr(hf, "PREFILL_BATCH_TOKENS", budget)  # ~236-token prompts: groups of 1, then of 2
    plain = tiny_engine_factory(prefix_cache=False, batch=False)
    together = tiny_engine_factory(prefix_cache=False, batch=True)  # no cache: every prompt prefills in full
    prompts = prompts_sharing_prefixes(tiny_tokenizer)
    calls = []
    real = together._prefill_together
    monkeypatch.setattr(together, "_prefill_together", lambda items: calls.append(len(items)) or real(items))
    got = together.generate_batch([Request(prompt=p, params=GREEDY) for p in prompts])
    assert [c.token_ids for c in got] == [plain.generate(p, GREEDY).token_ids for p in prompts]
    assert sum(calls) == len(prompts) and max(calls) == (1 if budget == 300 else 2)


def test_no_deprecated_argument_on_the_engine_paths(tiny_engine_factory, tiny_tokenizer):
    """transformers warns (FutureWarning) before it removes an argument: 5.24+ renamed forward's `past_key_values`
    to `cache` (removed in 5.40). Every path the engine takes (one request, a batch prefilled over a shared
    prefix and decoded together, scoring, embedding) must warn nothing, so the next release breaks nothing."""
    import warnings

    prompts = prompts_sharing_prefixes(tiny_tokenizer)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for batch in (False, True):
            engine = tiny_engine_factory(prefix_cache=True, batch=batch, shared_prefix=batch)
            engine.generate(prompts[0], SamplingParams(max_tokens=3))  # cached: the batch shares it
            engine.generate_batch([Request(prompt=p, params=SamplingParams(max_tokens=4)) for p in prompts])
            engine.score(prompts[1], " tail")
            engine.embed(prompts[2])
    deprecated = [w for w in seen if issubclass(w.category, FutureWarning)
                  or (issubclass(w.category, DeprecationWarning) and "transformers" in (w.filename + str(w.message)))]
    assert deprecated == [], [f"{w.category.__name__}: {w.message}" for w in deprecated]


def test_processes_converting_the_embedded_model_at_once_convert_it_once(tmp_path):
    """Two environments set up side by side (.ci/run) both ask for the converted model on a new machine: one
    converts, the other waits for it and finds it complete (a stand-in conversion, as the real one takes a
    minute). Each process says when it asks for the lock; the converting one goes on only when the test, having
    heard both, tells it to, so the other is waiting on the lock by then."""
    import os
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from tokenomy.kernels import embedded\n"
        "take_lock = embedded._exclusive\n"
        "def exclusive(path):\n"
        "    print('asking', flush=True)\n"
        "    return take_lock(path)\n"
        "def fake(name, dtype, target):\n"
        "    with open(sys.argv[1], 'a') as log: log.write('converting\\n')\n"
        "    assert sys.stdin.readline() == 'go\\n'\n"
        "    target.mkdir(parents=True)\n"
        "    (target / 'model.safetensors').write_bytes(b'')\n"
        "    (target / embedded._MARKER).write_text(json.dumps({'format_version': embedded._FORMAT_VERSION}))\n"
        "embedded._exclusive = exclusive\n"
        "embedded._convert = fake\n"
        "print(embedded.ensure_converted())\n")
    env = {**os.environ, "TOKENOMY_CACHE_DIR": str(tmp_path / "cache")}
    log = tmp_path / "conversions.log"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(log)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        assert [p.stdout.readline() for p in procs] == ["asking\n"] * 2
        for p in procs:  # the converting one reads it; the other never does
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] and outs[0].startswith(str(tmp_path / "cache"))
    assert log.read_text() == "converting\n"


@pytest.mark.parametrize("batch", [False, True])
def test_stream_yields_the_text_as_it_decodes_and_ends_with_the_same_completion(tiny_engine_factory, tiny_tokenizer,
                                                                                 batch):
    engine = tiny_engine_factory(batch=batch)
    prompt = "the cat sat on"
    whole = engine.generate(prompt, max_tokens=24)
    chunks = list(engine.stream(prompt, max_tokens=24))
    *pieces, last = chunks
    assert len(pieces) > 3  # token by token, not one piece at the end
    assert "".join(c.delta for c in chunks) == whole.text == last.completion.text
    assert last.completion.token_ids == whole.token_ids and last.completion.usage.completion_tokens == 24
    stopped = engine.generate(prompt, max_tokens=24, stop=[whole.text[5:8]])
    streamed = "".join(c.delta for c in engine.stream(prompt, max_tokens=24, stop=[whole.text[5:8]]))
    assert streamed == stopped.text  # what a stop string cuts is never sent


def test_a_stream_stopped_early_stops_the_decoding(tiny_engine_factory):
    engine = tiny_engine_factory()
    gen = engine.stream("the cat sat on", max_tokens=200)
    next(gen)
    gen.close()  # the reader went away: the request is cancelled, the engine is free for the next one
    assert engine.generate("the dog", max_tokens=3).usage.completion_tokens == 3
