"""The radix prefix cache: matching, splitting, locking, LRU eviction under a byte budget."""

import pytest
import torch

from tokenomy.kernels.radix import RadixCache


def kv_for(ids, layers=2, heads=2, dim=4):
    """Fake per-layer KV whose values encode the token ids, so slices can be checked."""
    t = torch.tensor(ids, dtype=torch.float32).view(1, 1, -1, 1).expand(1, heads, len(ids), dim).contiguous()
    return [(t.clone() + layer, t.clone() - layer) for layer in range(layers)]


def test_match_is_capped_at_prompt_length_minus_one():
    c = RadixCache(1 << 30, bytes_per_token=1)
    c.insert([1, 2, 3, 4])
    assert c.match([1, 2, 3, 4]).length == 3  # the last token must run to give logits
    assert c.match([1, 2, 3, 4, 5]).length == 4
    assert c.peek([1, 2, 3, 4]) == 4


def test_split_on_partial_match_and_gather_concatenates_spans():
    c = RadixCache(1 << 30)
    c.insert([1, 2, 3, 4, 5], kv_for([1, 2, 3, 4, 5]))
    c.insert([1, 2, 3, 9, 9], kv_for([1, 2, 3, 9, 9]))
    # The shared [1, 2, 3] is now its own node with two children.
    (top,) = c.root.children.values()
    assert top.tokens == (1, 2, 3) and len(top.children) == 2
    m = c.match([1, 2, 3, 9, 7])
    assert m.length == 4
    kv = c.gather(m)
    assert kv[1][0][0, 0, :, 0].tolist() == [2.0, 3.0, 4.0, 10.0]  # layer 1 keys = ids + 1
    assert kv[0][1][0, 1, :, 0].tolist() == [1.0, 2.0, 3.0, 9.0]


def test_node_tensors_own_their_memory():
    # Pitfall: a view keeps the parent's buffer alive and breaks the byte accounting.
    c = RadixCache(1 << 30)
    c.insert(list(range(10)), kv_for(list(range(10))))
    c.insert(list(range(5)) + [42, 43], kv_for(list(range(5)) + [42, 43]))
    for node in c._nodes():
        for k, v in node.kv:
            assert k.untyped_storage().nbytes() == k.numel() * k.element_size()
            assert v.untyped_storage().nbytes() == v.numel() * v.element_size()
    assert c.nbytes == sum(n.nbytes for n in c._nodes())


def test_insert_without_clone_keeps_views_of_the_caller_s_buffer():
    # A batch's prefill writes every row's KV into one buffer that nothing writes again: its rows go in as views.
    c = RadixCache(1 << 30)
    buffer = kv_for([7, 8, 9, 5, 6, 4])
    c.insert([1, 2, 7, 8, 9], [(k[:, :, :3], v[:, :, :3]) for k, v in buffer], offset=2)  # nothing cached: refused
    assert c.peek([1, 2, 7, 8, 9]) == 0
    c.insert([1, 2], kv_for([1, 2]))
    c.insert([1, 2, 7, 8, 9], [(k[:, :, :3], v[:, :, :3]) for k, v in buffer], offset=2, clone=False)
    c.insert([1, 2, 5, 6, 4], [(k[:, :, 3:], v[:, :, 3:]) for k, v in buffer], offset=2, clone=False)
    rows = [n for n in c._nodes() if n.tokens[:1] in ((7,), (5,))]
    assert len(rows) == 2
    for node in rows:  # views of the caller's buffer, counted at their own size
        assert node.kv[1][0].untyped_storage().data_ptr() == buffer[1][0].untyped_storage().data_ptr()
        assert node.nbytes == 2 * 2 * (2 * 3 * 4 * 4)
    assert c.gather(c.match([1, 2, 5, 6, 4, 0]))[1][0][0, 0, :, 0].tolist() == [2.0, 3.0, 6.0, 7.0, 5.0]
    c.insert([3, 4], kv_for([3, 4]))  # the default still copies
    (copied,) = [n for n in c._nodes() if n.tokens == (3, 4)]
    assert copied.kv[0][0].untyped_storage().nbytes() == copied.kv[0][0].numel() * 4


def test_gather_returns_fresh_tensors():
    # Pitfall: transformers mutates the cache it is given; the tree must never hand out its own tensors.
    c = RadixCache(1 << 30)
    c.insert([1, 2, 3], kv_for([1, 2, 3]))
    m = c.match([1, 2, 3, 4])
    kv = c.gather(m)
    kv[0][0].fill_(-1)
    assert c.gather(c.match([1, 2, 3, 4]))[0][0][0, 0, :, 0].tolist() == [1.0, 2.0, 3.0]


def test_lru_eviction_respects_budget_and_locks():
    c = RadixCache(budget_bytes=10, bytes_per_token=1)
    c.insert([1] * 4)
    c.insert([2] * 4)
    m = c.match([1] * 4 + [0])
    c.lock(m)
    c.insert([3] * 4)  # over budget: the LRU unlocked leaf ([2]*4) goes, the locked one stays
    assert c.peek([1] * 4) == 4
    assert c.peek([2] * 4) == 0
    assert c.peek([3] * 4) == 4
    assert c.nbytes <= 10
    c.unlock(m)
    c.insert([4] * 4)
    assert c.peek([1] * 4) == 0  # unlocked now, and least recently used


def test_lock_survives_a_split_of_the_locked_path():
    c = RadixCache(budget_bytes=100, bytes_per_token=1)
    c.insert([1, 2, 3, 4, 5, 6])
    m = c.match([1, 2, 3, 4, 5, 6, 7])
    c.lock(m)
    c.insert([1, 2, 9])  # splits the locked node after [1, 2]
    c.evict(1000)
    assert c.peek([1, 2, 3, 4, 5, 6]) == 6  # still cached: locked
    c.unlock(m)
    assert all(n.lock_ref == 0 for n in c._nodes())
    c.evict(1000)
    assert c.nbytes == 0 and c.cached_tokens == 0


def test_unlock_without_lock_is_an_error():
    c = RadixCache(100, bytes_per_token=1)
    c.insert([1, 2, 3])
    with pytest.raises(RuntimeError):
        c.unlock(c.match([1, 2, 3, 4]))


def test_insert_returns_already_cached_length_and_counts_hits():
    c = RadixCache(1 << 20, bytes_per_token=2)
    assert c.insert([5, 6, 7]) == 0
    assert c.insert([5, 6, 7, 8]) == 3
    assert c.nbytes == 8
    c.match([5, 6, 7, 8, 9])
    assert c.hit_tokens == 4 and c.query_tokens == 5


def test_budget_zero_caches_nothing():
    c = RadixCache(0, bytes_per_token=1)
    c.insert([1, 2, 3])
    assert c.cached_tokens == 0


def test_insert_with_kv_from_an_offset_caches_only_what_it_has():
    """A request whose KV holds only its own tokens after a shared prefix (``offset``) caches its new span; with
    fewer than ``offset`` tokens cached, the KV between is missing and nothing is inserted."""
    c = RadixCache(1 << 30)
    c.insert([1, 2, 3], kv_for([1, 2, 3]))
    assert c.insert([1, 2, 3, 4, 5], [(k[:, :, 2:], v[:, :, 2:]) for k, v in kv_for([1, 2, 3, 4, 5])], offset=2) == 3
    kv = c.gather(c.match([1, 2, 3, 4, 5, 6]))
    assert kv[0][0][0, 0, :, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert c.insert([7, 8, 9], [(k[:, :, 1:], v[:, :, 1:]) for k, v in kv_for([7, 8, 9])], offset=1) == 0
    assert c.match([7, 8, 9, 10]).length == 0
