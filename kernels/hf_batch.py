"""The transformers engine's batch path (``kernels.hf``, ``batch=True``, the default on a GPU): the requests of one
batch run together. The first prefills alone and its prompt is cached at once; the others prefill their uncached
suffixes together, in one forward pass, on top of what they find cached (the first one's prompt included; a prefix
they all find cached is read from the cache as is, once for the batch, not copied per request); then their KV goes
into one ``kernels.batch`` ``BatchCache`` (the prefix they all share stored once, each request's rest in a buffer
with room for its new tokens) and every step decodes all of them in one forward pass, each at its own position,
replayed as a CUDA graph on a GPU; a request that finishes stops there, its KV kept in the prefix cache. Greedy
decoding gives the same tokens either way (tested).
"""

from __future__ import annotations

from typing import Any

from tokenomy.errors import EngineError

from .hf_cached import CachedPrefill, _Live, _Split
from .types import Completion, Request

MIN_SHARED_PREFIX = 16  # fewer shared tokens than this decode with plain attention
PREFILL_BATCH_TOKENS = 16384  # the most (padded) tokens one batched prefill takes
DECODE_CHUNK = 256  # a decoding batch's KV buffers grow by at least this many tokens per row at a time
GRAPH_MIN_STEPS = 8  # a batch with fewer decode steps left than this runs them eagerly, not as a CUDA graph


class BatchDecoding(CachedPrefill):
    """Mixin of ``hf.TransformersEngine``: the requests of a batch prefilled in groups and decoded together."""

    # Set by TransformersEngine.__init__.
    shared_prefix: bool
    cuda_graphs: bool

    def _generate_together(self, requests: list[Request]) -> list[Completion | BaseException]:
        """Prefill the first request alone (its prompt is cached at once), the others together on top of what
        they find cached (in groups of at most ``PREFILL_BATCH_TOKENS`` padded tokens), then decode all of them
        in one batch."""
        results: list[Completion | BaseException | None] = [None] * len(requests)
        live: list[_Live] = []
        pending: list[tuple[list[_Live], Any]] = []  # prefilled groups and their logits, first tokens not yet taken
        gathered: dict[tuple[int, ...], list[tuple[Any, Any]]] = {}  # one copy per cached prefix, not per request
        try:
            first = True
            group: list[_Live] = []
            for i, req in enumerate(requests):
                item = None
                try:
                    item = self._start(i, req)
                    # Gathered now: a later request's match may split the nodes this match points to.
                    if self.cache is not None and item.match.length:
                        key = tuple(item.ids[:item.match.length])
                        if key not in gathered:
                            gathered[key] = self.cache.gather(item.match)
                        item.prefix_kv = gathered[key]
                except Exception as exc:  # noqa: BLE001 - confined to its slot, like _run_each
                    results[i] = self._failed(req, exc, item)
                    continue
                if first:  # alone: its prompt is what the others reuse
                    self._prefill_group([item], results, pending)
                    first = False
                    continue
                width = max(len(x.ids) - x.match.length for x in [*group, item])
                if group and width * (len(group) + 1) > PREFILL_BATCH_TOKENS:
                    self._prefill_group(group, results, pending)
                    group = []
                group.append(item)
            if group:
                self._prefill_group(group, results, pending)
            self._first_tokens(pending, results, live)
            if live:
                self._decode_together(live, results)
        finally:
            for item in [*live, *(x for grp, _ in pending for x in grp)]:
                if not item.released:
                    self._release(item, None)
        return [r if r is not None else EngineError(f"request {requests[i].request_id} got no result")
                for i, r in enumerate(results)]

    def _prefill_group(self, group: list[_Live], results: list[Any], pending: list[tuple[list[_Live], Any]]) -> None:
        """Prefill ``group`` (one forward pass) and cache each prompt at once (later requests of the batch reuse
        it); the group and its logits join ``pending``. Nothing here waits for the device: the host goes on to the
        next requests while the forward pass runs, and ``_first_tokens`` reads the results of every group."""
        try:
            with self._torch.inference_mode():
                logits = self._prefill_together(group)
        except Exception as exc:  # noqa: BLE001 - the group failed, not the batch
            for item in group:
                results[item.index] = self._failed(item.req, exc, item)
            return
        for item in group:
            try:
                # A group's own KV (a _Split) sits in buffers of this prefill alone, never written again: the
                # cache keeps views of them instead of a copy per request and layer.
                self._keep_past(item.ids, item.past, clone=not isinstance(item.past, _Split))
            except Exception as exc:  # noqa: BLE001 - confined to its slot
                results[item.index] = self._failed(item.req, exc, item)
        pending.append((group, logits))

    def _first_tokens(self, pending: list[tuple[list[_Live], Any]], results: list[Any], live: list[_Live]) -> None:
        """Take each prefilled request's first token (a greedy request's from the group's argmax on the device:
        one read per group); finished requests get their result, the others join ``live``."""
        while pending:
            group, logits = pending[0]
            rows = [(row, item) for row, item in enumerate(group) if not item.released]
            picked = logits.argmax(dim=-1).tolist() if any(item.decoding.fast for _, item in rows) else None
            for row, item in rows:
                try:
                    if item.decoding.step(logits[row], picked[row] if picked is not None else None):
                        results[item.index] = self._finish(item, item.past)
                    else:
                        live.append(item)
                except Exception as exc:  # noqa: BLE001 - confined to its slot
                    results[item.index] = self._failed(item.req, exc, item)
            pending.pop(0)

    def _prefill_together(self, items: list[_Live]) -> Any:
        """One forward pass over every item's uncached suffix on top of its cached prefix (both left-padded,
        masked, each row at its own positions); each item's ``past`` is then its own cache. Returns the logits
        of every row's last prompt token, ``[B, V]``."""
        from transformers import DynamicCache

        torch = self._torch
        cached = [item.match.length for item in items]
        kvs = [item.prefix_kv for item in items]
        if len(items) == 1:
            item = items[0]
            item.past = DynamicCache(ddp_cache_data=kvs[0]) if cached[0] else DynamicCache(config=self.model.config)
            return self._forward(item.ids[cached[0]:], item.past).unsqueeze(0)
        if self.shared_prefix:
            shared = min(min(cached), self._common_prefix([item.ids for item in items]))
            if shared >= MIN_SHARED_PREFIX:
                return self._prefill_shared(items, shared)
        news = [item.ids[c:] for item, c in zip(items, cached, strict=True)]
        wp, wn = max(cached), max(len(n) for n in news)
        past: Any
        if wp:
            template = next(kv for kv in kvs if kv)
            data = []
            for li, (k0, _) in enumerate(template):
                ks, vs = [], []
                for kv, c in zip(kvs, cached, strict=True):
                    k, v = (kv[li][0][:, :, :c], kv[li][1][:, :, :c]) if c else (k0[:, :, :0], k0[:, :, :0])
                    ks.append(torch.nn.functional.pad(k, (0, 0, wp - c, 0)))
                    vs.append(torch.nn.functional.pad(v, (0, 0, wp - c, 0)))
                data.append((torch.cat(ks), torch.cat(vs)))
            past = DynamicCache(ddp_cache_data=data)
        else:
            past = DynamicCache(config=self.model.config)
        b = len(items)
        ids = torch.zeros(b, wn, dtype=torch.long, device=self.device)
        positions = torch.zeros(b, wn, dtype=torch.long, device=self.device)
        mask = torch.zeros(b, wp + wn, dtype=torch.long, device=self.device)
        for row, (c, new) in enumerate(zip(cached, news, strict=True)):
            ids[row, wn - len(new):] = torch.tensor(new, device=self.device)
            positions[row, wn - len(new):] = torch.arange(c, c + len(new), device=self.device)
            mask[row, wp - c:wp] = 1
            mask[row, wp + wn - len(new):] = 1
        out = self._run(past, input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
        for row, item in enumerate(items):
            item.past = DynamicCache(ddp_cache_data=self._row_kv(past, mask, row))
        return out.logits[:, -1].float()

    def _prefill_shared(self, items: list[_Live], shared: int) -> Any:
        """Prefill items whose first ``shared`` tokens are cached and the same, over a ``BatchCache``: that prefix's
        KV is used from the cache as is (read once per layer for the batch, never copied per row), each row's new
        tokens go into its own buffer, left-padded so that every row's last prompt token is the last column. Each
        item's ``past`` is then a ``_Split`` (the prefix shared, its own KV after it). Returns ``[B, V]`` logits."""
        from .batch import BatchCache
        from .shared_prefix import BATCH_CACHE

        torch, device = self._torch, self.device
        cached = [item.match.length for item in items]
        news = [item.ids[c:] for item, c in zip(items, cached, strict=True)]
        w = max(len(n) for n in news)
        owns = [[(k[:, :, shared:c], v[:, :, shared:c]) for k, v in item.prefix_kv]
                for item, c in zip(items, cached, strict=True)]
        capacity = max(c - shared for c in cached) + w + 1  # the last position takes the padding's KV
        cache = BatchCache.from_parts(items[0].prefix_kv, shared, owns, capacity)
        b = len(items)
        # Built on the host, moved once: [4, B, W] = token ids, positions, where each goes, how far each sees.
        plan = torch.zeros(4, b, w, dtype=torch.long)
        plan[2] = capacity - 1
        for row, (c, new) in enumerate(zip(cached, news, strict=True)):
            m, o = len(new), c - shared
            plan[0, row, w - m:] = torch.tensor(new)
            plan[1, row, w - m:] = torch.arange(c, c + m)
            plan[2, row, w - m:] = torch.arange(o, o + m)
            plan[3, row, w - m:] = torch.arange(o + 1, o + m + 1)
        ids, positions, write_at, visible = plan.to(device)
        cache.start_prefill(write_at, visible)
        try:
            mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)  # 4-D: transformers passes it as is
            out = self._run(cache, input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1,
                            **{BATCH_CACHE: cache})
        finally:
            cache.end_prefill(torch.tensor([len(n) for n in news], dtype=torch.long, device=device))
        prefix = [(k.unsqueeze(0), v.unsqueeze(0)) for k, v in cache.prefix]
        for row, (item, c) in enumerate(zip(items, cached, strict=True)):
            n = c - shared + len(news[row])
            item.past = _Split(prefix, [(ks[row:row + 1, :, :n], vs[row:row + 1, :, :n]) for ks, vs in cache.own])
        return out.logits[:, -1].float()

    def _decode_together(self, live: list[_Live], results: list[Any]) -> None:
        """One forward pass per step for every live request, over a ``BatchCache`` (the prefix all rows share
        stored and read once when ``shared_prefix``); finished rows stop advancing, and when at most half of the
        rows are left the batch goes on with those alone. A greedy request (no grammar, no logprobs) takes the
        step's argmax, computed on the device: the host reads one token per row, not its logits."""
        from .batch import BatchCache, DecodeStep

        lengths = [len(item.ids) + len(item.decoding.gen) - 1 for item in live]  # tokens whose KV is cached
        shared = self._common_prefix([item.ids for item in live]) if self.shared_prefix else 0
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        own = [n - shared for n in lengths]
        # Room for every token a row may still generate, but allocated in steps of DECODE_CHUNK as rows need it.
        need = [o + item.decoding.max_new - len(item.decoding.gen) + 1 for item, o in zip(live, own, strict=True)]
        with self._torch.inference_mode():
            owns = [_kv_range(item.past, shared, n) for item, n in zip(live, lengths, strict=True)]
            cache = BatchCache.from_parts(_kv_range(live[0].past, 0, shared), shared, owns,
                                          min(max(need), max(own) + DECODE_CHUNK))
            del owns
            for item in live:
                item.past = None  # the batch cache holds its KV now
            alive = list(range(len(live)))

            def graphed() -> bool:  # a capture costs about three steps: worth it only for more steps than that
                steps = max(live[r].decoding.max_new - len(live[r].decoding.gen) for r in alive)
                return self.cuda_graphs and steps >= GRAPH_MIN_STEPS

            step = DecodeStep(self.model, cache, graph=graphed())
            while alive:
                if max(own[r] for r in alive) >= cache.capacity:  # a row's next token would not fit: grow
                    cache = cache.grown(min(max(need[r] for r in alive), 2 * cache.capacity))
                    step = DecodeStep(self.model, cache, graph=graphed())
                try:
                    step([item.decoding.gen[-1] for item in live])
                except Exception as exc:  # noqa: BLE001 - the step failed for the live requests, not the finished
                    for r in alive:
                        results[live[r].index] = self._failed(live[r].req, exc, live[r])
                    return
                # The argmax on the device serves every greedy row; the others pick from their logits.
                picked = step.argmax.tolist() if any(live[r].decoding.fast for r in alive) else None
                finished = []
                for r in alive:
                    item = live[r]
                    own[r] += 1
                    try:
                        done = item.decoding.step(step.logits[r], picked[r] if picked is not None else None)
                    except Exception as exc:  # noqa: BLE001 - confined to its slot
                        results[item.index] = self._failed(item.req, exc, item, _Split(*cache.row_parts(r, own[r])))
                        finished.append(r)
                        continue
                    if done:
                        results[item.index] = self._finish(item, _Split(*cache.row_parts(r, own[r])))
                        finished.append(r)
                if not finished:
                    continue
                alive = [r for r in alive if r not in finished]
                cache.active[finished] = 0
                if alive and len(live) >= 4 and len(alive) <= len(live) // 2:  # go on in a smaller batch
                    cache = cache.select(alive)
                    live, own, need = [live[r] for r in alive], [own[r] for r in alive], [need[r] for r in alive]
                    alive = list(range(len(live)))
                    step = DecodeStep(self.model, cache, graph=graphed())

    @staticmethod
    def _row_kv(cache: Any, mask: Any, row: int) -> list[tuple[Any, Any]]:
        """One request's KV out of the batch cache, without its padding (wherever the padding is)."""
        keep = mask[row, : cache.layers[0].keys.shape[2]].bool()
        return [(layer.keys[row:row + 1, :, keep], layer.values[row:row + 1, :, keep]) for layer in cache.layers]

    @staticmethod
    def _common_prefix(seqs: list[list[int]]) -> int:
        n = min(len(x) for x in seqs)
        first = seqs[0]
        for i in range(n):
            if any(x[i] != first[i] for x in seqs[1:]):
                return i
        return n


def _kv_range(past: Any, start: int, stop: int) -> list[tuple[Any, Any]]:
    """Positions ``[start, stop)`` of a ``DynamicCache``'s or a ``_Split``'s KV per layer (views where the range
    lies in one part)."""
    if not isinstance(past, _Split):
        return [(layer.keys[:, :, start:stop], layer.values[:, :, start:stop]) for layer in past.layers]
    import torch

    p = past.shared
    if start >= p:
        return [(k[:, :, start - p:stop - p], v[:, :, start - p:stop - p]) for k, v in past.own]
    if stop <= p:
        return [(k[:, :, start:stop], v[:, :, start:stop]) for k, v in past.prefix]
    return [(torch.cat([pk[:, :, start:], k[:, :, :stop - p]], dim=2),
             torch.cat([pv[:, :, start:], v[:, :, :stop - p]], dim=2))
            for (pk, pv), (k, v) in zip(past.prefix, past.own, strict=True)]
