"""The KV cache of a batch decoding together (kernels.batch): a shared prefix stored once, each row's own tokens
in a preallocated buffer, lengths on the device; and the engine's batch decode over it."""

import pytest
import torch

from tokenomy.kernels import Grammar, Request, SamplingParams
from tokenomy.kernels.batch import BatchCache

LAYERS, HKV, D = 2, 2, 4
GREEDY = SamplingParams(max_tokens=12)


def row(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, HKV, n, D, generator=g), torch.randn(1, HKV, n, D, generator=g)) for _ in range(LAYERS)]


def test_rows_go_in_with_their_prefix_once_and_come_out_whole():
    shared = row(5, 0)
    rows = [[(torch.cat([sk, k[:, :, :n]], 2), torch.cat([sv, v[:, :, :n]], 2)) for (sk, sv), (k, v) in
             zip(shared, row(n, 10 + n), strict=True)] for n in (3, 0, 6)]
    cache = BatchCache.from_rows(rows, [8, 5, 11], shared=5, capacity=9)
    assert (cache.batch_size, cache.shared, cache.capacity) == (3, 5, 9)
    assert cache.lens.tolist() == [3, 0, 6]
    assert cache.prefix[0][0].shape == (HKV, 5, D)  # once, not once per row
    for r, n in enumerate((8, 5, 11)):
        for (k, v), (rk, rv) in zip(cache.row_kv(r, n - 5), rows[r], strict=True):
            assert torch.equal(k, rk[:, :, :n]) and torch.equal(v, rv[:, :, :n])
    with pytest.raises(ValueError, match="do not fit"):
        BatchCache.from_rows(rows, [8, 5, 11], shared=5, capacity=5)
    with pytest.raises(ValueError, match="do not fit"):
        BatchCache.from_rows(rows, [8, 4, 11], shared=5, capacity=9)


def test_a_step_writes_each_row_at_its_length_and_only_active_rows_advance():
    rows = [row(n, n) for n in (4, 7)]
    cache = BatchCache.from_rows(rows, [4, 7], shared=0, capacity=10)
    for layer in range(LAYERS):
        new_k = torch.full((2, HKV, 1, D), float(layer + 1))
        ks, vs = cache.update(new_k, -new_k, layer)
        assert ks is cache.own[layer][0]
    assert cache.seen.tolist() == [5, 8]  # what this step attends to: the old tokens and the new one
    cache.active[1] = 0
    cache.advance()
    assert cache.lens.tolist() == [5, 7]
    k, v = cache.row_kv(0, 5)[1]
    assert torch.equal(k[0, :, :4], rows[0][1][0][0]) and (k[0, :, 4] == 2).all() and (v[0, :, 4] == -2).all()
    with pytest.raises(ValueError, match="one new token"):
        cache.update(torch.zeros(2, HKV, 2, D), torch.zeros(2, HKV, 2, D), 0)
    rest = cache.select([1])
    assert rest.lens.tolist() == [7] and torch.equal(rest.row_kv(0, 7)[0][0], cache.row_kv(1, 7)[0][0])


def test_a_batch_whose_rows_mostly_finish_goes_on_smaller_with_the_same_tokens(tiny_engine_factory, tiny_tokenizer,
                                                                                monkeypatch):
    from tokenomy.kernels import batch

    plain = tiny_engine_factory(prefix_cache=False, batch=False)
    fast = tiny_engine_factory(prefix_cache=True, batch=True)
    builds = []
    real = batch.BatchCache.from_parts.__func__
    monkeypatch.setattr(batch.BatchCache, "from_parts", classmethod(
        lambda cls, prefix, shared, owns, capacity: builds.append(len(owns)) or real(cls, prefix, shared, owns,
                                                                                      capacity)))
    select = batch.BatchCache.select
    monkeypatch.setattr(batch.BatchCache, "select", lambda self, rows: builds.append(len(rows)) or select(self, rows))
    system = tiny_tokenizer("a team of agents shares this system prompt and its tools. " * 2)["input_ids"]
    prompts = [system + tiny_tokenizer(f" agent {i} " + "x " * i)["input_ids"] for i in range(8)]
    params = [SamplingParams(max_tokens=n) for n in (3, 3, 3, 3, 3, 14, 14, 9)]
    want = [plain.generate(p, sp).token_ids for p, sp in zip(prompts, params, strict=True)]
    got = fast.generate_batch([Request(prompt=p, params=sp) for p, sp in zip(prompts, params, strict=True)])
    assert [c.token_ids for c in got] == want
    assert builds == [7, 8, 3]  # the prefill of the 7 after the first; then decoding 8; five finished: 3 go on
    assert [n for n in fast.cache._nodes() if n is not fast.cache.root and n.lock_ref] == []


def test_greedy_rows_take_the_batch_s_argmax_and_the_others_pick_their_own(tiny_engine_factory, tiny_tokenizer):
    """Grammar, logprobs, min_tokens, seeded sampling and plain greedy rows in one batch: each gives what it gives
    alone."""
    from tokenomy.kernels import batch

    plain = tiny_engine_factory(prefix_cache=False, batch=False)
    fast = tiny_engine_factory(prefix_cache=True, batch=True)
    base = tiny_tokenizer("the quick brown fox jumps over the lazy dog " * 3)["input_ids"]
    prompts = [base + tiny_tokenizer(f" {w}")["input_ids"] for w in ("one", "two", "three", "four", "five")]
    reqs = [
        Request(prompt=prompts[0], params=SamplingParams(max_tokens=10)),
        Request(prompt=prompts[1], params=SamplingParams(max_tokens=10, logprobs=True)),
        Request(prompt=prompts[2], params=SamplingParams(max_tokens=10, min_tokens=6)),
        Request(prompt=prompts[3], params=SamplingParams(max_tokens=10, temperature=0.8, seed=7)),
        Request(prompt=prompts[4], params=SamplingParams(max_tokens=10),
                grammar=Grammar.regex("[ab]{2,6}")),
    ]
    want = [plain.generate(r.prompt, r.params, grammar=r.grammar) for r in reqs]
    eager = batch.STEPS["eager"]
    got = fast.generate_batch(reqs)
    assert batch.STEPS["eager"] > eager  # no GPU here: the steps ran eagerly
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert got[1].logprobs == pytest.approx(want[1].logprobs, abs=1e-4)
    assert len(got[2].token_ids) >= 6


def test_a_batch_s_buffers_grow_as_its_rows_need_and_the_tokens_stay_the_same(tiny_engine_factory, tiny_tokenizer,
                                                                               monkeypatch):
    """Buffers are not sized for max_tokens up front (a long max_tokens would reserve its KV for every row): they
    start DECODE_CHUNK past the longest row and double when a row reaches the end."""
    from tokenomy.kernels import batch
    from tokenomy.kernels import hf_batch as hf

    monkeypatch.setattr(hf, "DECODE_CHUNK", 2)
    sizes = []
    real = batch.BatchCache.grown
    monkeypatch.setattr(batch.BatchCache, "grown", lambda self, n: sizes.append(n) or real(self, n))
    plain = tiny_engine_factory(prefix_cache=False, batch=False)
    fast = tiny_engine_factory(prefix_cache=True, batch=True)
    prompts = [tiny_tokenizer(f"request {i} wants many tokens")["input_ids"] for i in range(3)]
    params = SamplingParams(max_tokens=60)
    want = [plain.generate(p, params).token_ids for p in prompts]
    assert [c.token_ids for c in fast.generate_batch([Request(prompt=p, params=params) for p in prompts])] == want
    assert len(sizes) >= 2 and sizes == sorted(set(sizes))  # doubled, then capped at what the rows need


def test_one_request_alone_decodes_over_a_batch_cache_its_prompt_the_shared_part(tiny_engine_factory,
                                                                                 tiny_tokenizer):
    from tokenomy.kernels import shared_prefix

    plain = tiny_engine_factory(prefix_cache=False, batch=False)
    fast = tiny_engine_factory(prefix_cache=True, batch=True)
    prompt = tiny_tokenizer("a single request with a prompt long enough to share " * 2)["input_ids"]
    before = dict(shared_prefix.COUNTERS)
    assert fast.generate(prompt, GREEDY).token_ids == plain.generate(prompt, GREEDY).token_ids
    layers = fast.model.config.num_hidden_layers
    assert shared_prefix.COUNTERS["shared_prefix_calls"] - before["shared_prefix_calls"] == layers * 11


def test_prefill_attention_over_a_shared_prefix_equals_causal_attention_over_each_row():
    """Rows of different lengths, left-padded, some with own tokens cached before the pass: every real query's
    output equals plain causal attention over the row's whole KV (prefix, cached own tokens, new tokens)."""
    from tokenomy.kernels.shared_prefix import prefill_attention

    g = torch.Generator().manual_seed(3)
    b, hq, hkv, d, p, w = 3, 4, 2, 8, 11, 5
    before, fed = [0, 2, 4], [5, 3, 1]  # own tokens cached before the pass, and fed in it
    cap = max(o + w for o in before) + 1
    pk, pv = torch.randn(hkv, p, d, generator=g), torch.randn(hkv, p, d, generator=g)
    ok, ov = torch.randn(b, hkv, cap, d, generator=g), torch.randn(b, hkv, cap, d, generator=g)
    q = torch.randn(b, hq, w, d, generator=g)
    visible = torch.zeros(b, w, dtype=torch.long)
    for r, (o, m) in enumerate(zip(before, fed, strict=True)):
        visible[r, w - m:] = torch.arange(o + 1, o + m + 1)
    out = prefill_attention(q, pk, pv, ok, ov, visible, scale=d ** -0.5, max_bytes=200)  # a few queries at a time
    assert out.shape == (b, w, hq, d)
    for r, (o, m) in enumerate(zip(before, fed, strict=True)):
        k = torch.cat([pk, ok[r, :, :o + m]], dim=1).repeat_interleave(hq // hkv, dim=0)
        v = torch.cat([pv, ov[r, :, :o + m]], dim=1).repeat_interleave(hq // hkv, dim=0)
        causal = torch.ones(m, p + o + m, dtype=torch.bool).tril(diagonal=p + o)
        want = torch.nn.functional.scaled_dot_product_attention(q[r, :, w - m:], k, v, attn_mask=causal)
        assert torch.allclose(out[r, w - m:].transpose(0, 1), want, atol=1e-5)


def test_a_batch_prefills_over_its_shared_prefix_without_copying_it_per_row(tiny_engine_factory, tiny_tokenizer,
                                                                             monkeypatch):
    """The rows after the first prefill their own tokens over the cached prefix they share (one pass, the prefix
    read from the cache as is); tokens and what the cache keeps are the plain path's."""
    plain = tiny_engine_factory(prefix_cache=False, batch=False)
    fast = tiny_engine_factory(prefix_cache=True, batch=True)
    calls = []
    real = fast._prefill_shared
    monkeypatch.setattr(fast, "_prefill_shared", lambda items, shared: calls.append((len(items), shared))
                        or real(items, shared))
    system = tiny_tokenizer("one system prompt for the whole team of agents. " * 2)["input_ids"]
    prompts = [system + tiny_tokenizer(f" task {i}: " + "do it " * i)["input_ids"] for i in range(5)]
    params = SamplingParams(max_tokens=9)
    want = [plain.generate(p, params).token_ids for p in prompts]
    got = fast.generate_batch([Request(prompt=p, params=params) for p in prompts])
    assert [c.token_ids for c in got] == want
    assert calls and calls[0][0] == 4 and calls[0][1] >= len(system)
    assert [c.usage.cached_prompt_tokens >= len(system) for c in got[1:]] == [True] * 4
    again = tiny_engine_factory(prefix_cache=True, batch=False)  # what the batch cached gives the same tokens
    again.cache = fast.cache
    assert [again.generate(p, params).token_ids for p in prompts] == want
    assert all(again.cached_prefix_length(p) == len(p) for p in prompts)  # each prompt is cached whole


@pytest.mark.parametrize("arch", ["llama-3-8b", "qwen2.5-1.5b"])
@pytest.mark.parametrize("shared", [0, 20])
def test_a_decode_step_has_no_host_sync_so_a_cuda_graph_can_capture_it(arch, shared):
    """What stops a CUDA graph capture (``.item()``, ``.tolist()``, a Python branch on a tensor's value) is also
    what stops ``torch.compile(fullgraph=True)``: the step traces as one graph, and computes what it does eagerly."""
    from tokenomy.kernels.batch import DecodeStep
    from tokenomy.kernels.hf import TransformersEngine

    small = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512}
    model = TransformersEngine.dummy(arch, overrides=small, dtype="float32", batch=True).model
    g = torch.Generator().manual_seed(5)
    first = [(torch.randn(1, 2, shared + 6, 16, generator=g), torch.randn(1, 2, shared + 6, 16, generator=g))
             for _ in range(2)]
    rows = [[(torch.cat([k[:, :, :shared], torch.randn(1, 2, 6, 16, generator=g)], 2),
              torch.cat([v[:, :, :shared], torch.randn(1, 2, 6, 16, generator=g)], 2)) for k, v in first]
            for _ in range(2)]
    lengths = [shared + 3, shared + 6, shared + 4]

    def run(compiled):
        cache = BatchCache.from_rows([first, *rows], lengths, shared, 12)
        step = DecodeStep(model, cache)
        with torch.inference_mode():
            step([1, 2, 3])  # fills the output buffers
            step.tokens.copy_(torch.tensor([[4], [5], [6]]))
            (torch.compile(step._forward, fullgraph=True, backend="eager") if compiled else step._forward)()
        return step.logits.clone(), cache.lens.tolist()

    eager, traced = run(False), run(True)
    assert traced[1] == eager[1] == [n - shared + 2 for n in lengths]
    assert torch.allclose(traced[0], eager[0], atol=1e-5)


def test_a_cuda_graph_is_asked_for_only_when_enough_steps_are_left(tiny_engine_factory, tiny_tokenizer, monkeypatch):
    from tokenomy.kernels import batch

    fast = tiny_engine_factory(prefix_cache=True, batch=True, cuda_graphs=True)  # on a CPU the step stays eager
    asked = []
    real = batch.DecodeStep.__init__
    monkeypatch.setattr(batch.DecodeStep, "__init__",
                        lambda self, model, cache, graph=False: asked.append(graph) or real(self, model, cache))
    prompts = [tiny_tokenizer(f"prompt number {i}")["input_ids"] for i in range(2)]
    fast.generate_batch([Request(prompt=p, params=SamplingParams(max_tokens=4)) for p in prompts])
    fast.generate_batch([Request(prompt=p, params=SamplingParams(max_tokens=30)) for p in prompts])
    assert asked == [False, True]


def test_a_row_that_finishes_at_the_end_of_its_buffer_does_not_write_past_it(tiny_engine_factory, monkeypatch):
    """The long prompt fills its buffer exactly as it finishes; the short one goes on without the batch growing.
    The finished row's later writes stay in its buffer (an index error before the fix; a stray write on a GPU)."""
    from tokenomy.kernels import hf_batch as hf

    monkeypatch.setattr(hf, "DECODE_CHUNK", 2)
    plain = tiny_engine_factory(prefix_cache=False, batch=False)
    fast = tiny_engine_factory(prefix_cache=True, batch=True)
    reqs = [Request(prompt=list(range(40, 50)), params=SamplingParams(max_tokens=3)),
            Request(prompt=list(range(60, 65)), params=SamplingParams(max_tokens=12))]
    got = fast.generate_batch(reqs)
    assert [c.token_ids for c in got] == [plain.generate(r.prompt, r.params).token_ids for r in reqs]
