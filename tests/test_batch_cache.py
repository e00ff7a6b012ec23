"""The KV cache of a batch decoding together (kernels.batch): a shared prefix stored once, each row's own tokens
in a preallocated buffer, lengths on the device; and the engine's batch decode over it."""

import pytest

torch = pytest.importorskip("torch")

from tokenomy.kernels import Grammar, Request, SamplingParams  # noqa: E402
from tokenomy.kernels.batch import BatchCache  # noqa: E402

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
    real = batch.BatchCache.from_rows.__func__
    monkeypatch.setattr(batch.BatchCache, "from_rows",
                        classmethod(lambda cls, rows, *a, **k: builds.append(len(rows)) or real(cls, rows, *a, **k)))
    system = tiny_tokenizer("a team of agents shares this system prompt and its tools. " * 2)["input_ids"]
    prompts = [system + tiny_tokenizer(f" agent {i} " + "x " * i)["input_ids"] for i in range(8)]
    params = [SamplingParams(max_tokens=n) for n in (3, 3, 3, 3, 3, 14, 14, 9)]
    want = [plain.generate(p, sp).token_ids for p, sp in zip(prompts, params, strict=True)]
    got = fast.generate_batch([Request(prompt=p, params=sp) for p, sp in zip(prompts, params, strict=True)])
    assert [c.token_ids for c in got] == want
    assert builds == [8, 3]  # five finished: the three left went on in a batch of their own
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
    from tokenomy.kernels import batch, hf

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
