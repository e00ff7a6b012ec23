"""The transformers engine (``embedded`` and ``hf:<dir>``) with tokenomy's radix prefix cache.

On a CPU, prefill dominates agent workloads (~160 prompt tokens/s for the 135M model on 2 cores), so this
engine looks every prompt up in a ``RadixCache`` first and prefills only the uncached suffix. It runs its own
decode loop rather than ``generate()`` to control exactly which KV it reuses and keeps, to apply grammar
masks, stop strings, logprobs and cancellation per token. Requests run one at a time, in the order the
worker chose (longest shared prefix first), so each one finds the prefixes its predecessors left behind.

With ``batch=True`` (the default on a GPU) the requests of one batch run together: the first prefills alone and
its prompt is cached at once; the others prefill their uncached suffixes together, in one forward pass, on top
of what they find cached (the first one's prompt included; a prefix they all find cached is read from the cache
as is, once for the batch, not copied per request); then their KV goes into one ``kernels.batch``
``BatchCache`` (the prefix they all share stored once, each request's rest in a buffer with room for its new
tokens) and every step decodes all of them in one forward pass, each at its own position, replayed as a CUDA
graph on a GPU; a request that finishes stops there, its KV kept in the prefix cache. Greedy decoding gives the
same tokens either way (tested).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenomy.errors import (
    ContextLengthExceeded,
    EngineError,
    ModelNotFound,
    RequestCancelled,
    TokenomyError,
    UserError,
)

from .batch import cache_keyword
from .engine import Engine, now
from .grammar import GrammarCompiler
from .radix import PrefixMatch, RadixCache
from .tokens import TokenCounter
from .types import Capabilities, Completion, FinishReason, PromptInput, Request, Scored
from .usage import Usage

__all__ = ["TransformersEngine", "DEFAULT_CACHE_BYTES", "MIN_SHARED_PREFIX"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 512 * 1024**2
MIN_SHARED_PREFIX = 16  # fewer shared tokens than this decode with plain attention
PREFILL_BATCH_TOKENS = 16384  # the most (padded) tokens one batched prefill takes
DECODE_CHUNK = 256  # a decoding batch's KV buffers grow by at least this many tokens per row at a time
GRAPH_MIN_STEPS = 8  # a batch with fewer decode steps left than this runs them eagerly, not as a CUDA graph


class TransformersEngine(Engine):
    """A causal LM from transformers, decoding one request at a time with a radix prefix cache.

    Args:
        model: a loaded ``PreTrainedModel`` (causal LM).
        tokenizer: its tokenizer (with a chat template for chat prompts).
        prefix_cache: reuse the KV of cached prompt prefixes.
        cache_budget_bytes: the most KV bytes the prefix cache may hold (on the model's device).
        batch: decode the requests of one batch together; ``None``: on a GPU, not on a CPU (where the 2-core
            machines gain nothing from it and one request at a time reuses more prefixes).
        shared_prefix: when the requests decoding together start with the same tokens (at least
            ``MIN_SHARED_PREFIX``), read that prefix's KV once per step for the whole batch
            (``kernels.shared_prefix``: the Triton kernel on a GPU); ``None``: with ``batch`` and the prefix cache.
        cuda_graphs: capture a batch's decode step as a CUDA graph and replay it (``kernels.batch``); ``None``:
            with ``batch`` on a GPU.
    """

    capabilities = Capabilities(batching=False, prefix_cache=True, grammar=True, logprobs=True, token_ids=True,
                                prefill=True, min_tokens=True, prompt_logprobs=True, hidden_states=True)

    def __init__(self, model: Any, tokenizer: Any, *, prefix_cache: bool = True,
                 cache_budget_bytes: int = DEFAULT_CACHE_BYTES, spec: str = "", batch: bool | None = None,
                 shared_prefix: bool | None = None, cuda_graphs: bool | None = None) -> None:
        super().__init__()
        import torch

        self.model = model.eval()
        self._cache_keyword = cache_keyword(model)
        self.tokenizer = tokenizer
        self.counter = TokenCounter(tokenizer)
        self.spec = spec
        self.device = next(model.parameters()).device
        self._torch = torch
        self.batch = self.device.type == "cuda" if batch is None else batch
        config = model.config
        if self.batch and not _sliceable_cache(config):
            # The batch cache and its attention know no sliding window: such models decode one request at a time.
            log.warning("batch decoding disabled: %s has sliding-window or linear-attention layers",
                        config.model_type)
            self.batch = False
        self.cuda_graphs = self.batch and self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.batch:
            self.capabilities = dataclasses.replace(type(self).capabilities, batching=True)
        if prefix_cache and not _sliceable_cache(config):
            # Sliding-window and linear-attention layers keep KV that cannot be cut at a token boundary.
            log.warning("prefix cache disabled: %s has sliding-window or linear-attention layers",
                        config.model_type)
            prefix_cache = False
        self.cache: RadixCache | None = RadixCache(cache_budget_bytes) if prefix_cache else None
        # The shared prefix is read from one row of the batch: rows must hold the same KV for it, which the
        # prefix cache guarantees (every row after the first reuses the first one's prefill).
        self.shared_prefix = self.batch and (prefix_cache if shared_prefix is None else shared_prefix)
        if self.batch:  # the batch decodes through its own attention (kernels.batch)
            from .shared_prefix import install

            install(model)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_token_ids = sorted(eos_ids)
        vocab = config.get_text_config().vocab_size
        self.grammars = GrammarCompiler(tokenizer, vocab, self.eos_token_ids)

    # -- construction -----------------------------------------------------------------------------------

    @classmethod
    def embedded(cls, name: str = "", **options: Any) -> TransformersEngine:
        """An embedded model (``name`` one of ``embedded.EMBEDDED_MODELS``; by default ``default_embedded()``),
        converted from its PyPI GGUF on first use."""
        import os

        from .embedded import CPU_FLOAT32, default_embedded, ensure_converted

        name_ = name or default_embedded()
        if name_ in CPU_FLOAT32 and not os.environ.get("TOKENOMY_DTYPE"):
            import torch

            device = options.get("device")
            if device == "cpu" or (device is None and not torch.cuda.is_available()):
                options.setdefault("dtype", "float32")
        engine = cls.from_dir(ensure_converted(name=name_), **options)
        engine.spec = f"embedded:{name}" if name else "embedded"
        return engine

    @classmethod
    def from_dir(cls, path: str | Path, *, dtype: str | None = None, device: str | None = None,
                 **options: Any) -> TransformersEngine:
        """Load a local transformers model directory (``config.json``, weights, tokenizer)."""
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} is not a model directory (no config.json)")
        try:
            json.loads((path / "config.json").read_text())
        except ValueError as exc:
            raise ModelNotFound(f"{path}/config.json is not valid JSON: {exc}") from exc
        torch, dev, dt = _device_dtype(device, dtype)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dt).to(dev)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelNotFound(f"{path} could not be loaded as a causal LM: {exc}") from exc
        return cls(model, tokenizer, spec=f"hf:{path}", **options)

    @classmethod
    def from_config(cls, config: Any, tokenizer: Any, *, seed: int = 0, dtype: str | None = None,
                    device: str | None = None, **options: Any) -> TransformersEngine:
        """Random weights of any architecture config (speed and equivalence tests; nothing downloaded)."""
        torch, dev, dt = _device_dtype(device, dtype)
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        with dev:  # initialised where it runs: an 8B model's random weights take seconds on a GPU, minutes on CPUs
            model = AutoModelForCausalLM.from_config(config, dtype=dt)
        model = model.to(dev)  # a no-op where the context was heeded
        return cls(model, tokenizer, spec=f"random:{config.model_type}", **options)

    @classmethod
    def dummy(cls, arch: str, *, seed: int = 0, dtype: str | None = None, device: str | None = None,
              overrides: dict[str, Any] | None = None, **options: Any) -> TransformersEngine:
        """Random weights of a real architecture (``kernels.archs.ARCHS``: ``qwen2.5-1.5b``, ``llama-3-8b``),
        with ``byte_tokenizer``; ``overrides`` change config fields (fewer layers for a test)."""
        from .archs import arch_config, byte_tokenizer

        engine = cls.from_config(arch_config(arch, **(overrides or {})), byte_tokenizer(), seed=seed, dtype=dtype,
                                 device=device, **options)
        engine.spec = f"random:{arch}"
        return engine

    # -- Engine -----------------------------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def prompt_token_ids(self, prompt: PromptInput) -> list[int]:
        return self.counter.encode(prompt)

    def cached_prefix_length(self, token_ids: Sequence[int]) -> int:
        return self.cache.peek(token_ids) if self.cache is not None else 0

    def _run_batch(self, requests: list[Request]) -> list[Completion | BaseException]:
        if self.batch:  # one request too: its steps run over a batch cache (a CUDA graph on a GPU)
            return self._generate_together(requests)
        return self._run_each(requests, self._generate_one)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.clear()

    @property
    def flops_per_token(self) -> float:
        """2 x (non-embedding parameters + d x V): the LM head counts even when tied to the embeddings."""
        if getattr(self, "_flops", None) is None:
            emb = self.model.get_input_embeddings().weight
            total = sum(p.numel() for p in self.model.parameters())
            head = self.model.get_output_embeddings()
            tied = head is None or head.weight is emb or head.weight.data_ptr() == emb.data_ptr()
            non_embedding = total - emb.numel() - (0 if tied else head.weight.numel())
            self._flops = 2.0 * (non_embedding + emb.shape[0] * emb.shape[1])
        return float(self._flops)

    def score(self, prompt: PromptInput, continuation: str, *, agent: str | None = None,
              tags: Sequence[str] = ()) -> Scored:
        """Log-probabilities of ``continuation``'s tokens after ``prompt``, reusing the prompt's cached KV."""
        torch = self._torch
        ids = self.prompt_token_ids(prompt)
        cont = list(self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        if not cont:
            return Scored([], [], Usage())  # nothing to score: no pass is made
        seq = ids + cont
        if len(seq) >= self.context_window:
            raise ContextLengthExceeded(len(seq), 0, self.context_window)
        with self._lock:
            # The token before the continuation must be computed to give its first token's logits.
            match = self.cache.match(ids, cap=len(ids) - 1) if self.cache is not None else PrefixMatch()
            if self.cache is not None:
                self.cache.lock(match)
            past = None
            try:
                with torch.inference_mode():
                    past = self._past(match)
                    x = torch.tensor([seq[match.length:]], dtype=torch.long, device=self.device)
                    out = self._run(past, input_ids=x, logits_to_keep=len(cont) + 1)
                    logp = torch.log_softmax(out.logits[0, :-1].float(), dim=-1)
                    picked = logp.gather(1, torch.tensor(cont, device=self.device)[:, None])[:, 0]
            finally:
                if self.cache is not None:
                    self._keep_past(seq, past)
                    self.cache.unlock(match)
        usage = Usage(prompt_tokens=len(seq), cached_prompt_tokens=match.length, completion_tokens=0, calls=1)
        return Scored(cont, [float(v) for v in picked.tolist()], usage)

    def embed(self, prompt: PromptInput) -> list[float]:
        """The last layer's hidden state at the prompt's last token (a full forward pass, no cache)."""
        torch = self._torch
        ids = self.prompt_token_ids(prompt)
        with self._lock, torch.inference_mode():
            x = torch.tensor([ids[-self.context_window + 1:]], dtype=torch.long, device=self.device)
            out = self.model(input_ids=x, output_hidden_states=True, logits_to_keep=1)
            return [float(v) for v in out.hidden_states[-1][0, -1].float().tolist()]

    # -- one request ------------------------------------------------------------------------------------

    def _generate_one(self, req: Request) -> Completion:
        torch = self._torch
        item = self._start(0, req)
        d = item.decoding
        past = None
        try:
            with torch.inference_mode():
                past = self._past(item.match)
                logits = self._forward(item.ids[item.match.length:], past)
                while not d.step(logits):
                    logits = self._forward([d.gen[-1]], past)
        finally:
            if self.cache is not None:
                # Even a cancelled or failed request leaves behind the KV it computed, for the next one.
                self._keep_past(item.ids + d.gen, past)
                self.cache.unlock(item.match)
            item.released = True
        return self._completion(item)

    def _keep_kv(self, seq: list[int], kv: list[tuple[Any, Any]]) -> None:
        assert self.cache is not None
        lengths = {k.shape[2] for k, _ in kv}
        if len(lengths) != 1:
            return  # a forward pass that failed half-way: layers disagree, keep nothing
        (n,) = lengths
        if 0 < n <= len(seq):
            self.cache.insert(seq[:n], kv)

    def _past(self, match: PrefixMatch) -> Any:
        from transformers import DynamicCache

        if match.length and self.cache is not None:
            return DynamicCache(ddp_cache_data=self.cache.gather(match))
        return DynamicCache(config=self.model.config)

    def _forward(self, ids: Sequence[int], past: Any) -> Any:
        torch = self._torch
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        return self._run(past, input_ids=x, logits_to_keep=1).logits[0, -1].float()

    def _run(self, past: Any, **inputs: Any) -> Any:
        """The model's forward pass over a KV cache, which it extends."""
        return self.model(**inputs, **{self._cache_keyword: past}, use_cache=True)

    # -- a batch decoding together ----------------------------------------------------------------------

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

    def _start(self, index: int, req: Request) -> _Live:
        """Check a request, find and lock its cached prefix: what both paths do before prefilling."""
        start = now()
        if req.cancelled:
            raise RequestCancelled(f"{req.request_id} was cancelled before it started")
        ids = self.prompt_token_ids(req.prompt)
        window = self.context_window
        if len(ids) >= window:
            raise ContextLengthExceeded(len(ids), req.params.max_tokens, window)
        max_new = min(req.params.max_tokens, window - len(ids))
        constraint = self.grammars.constraint(req.grammar) if req.grammar is not None else None
        match = self.cache.match(ids) if self.cache is not None else PrefixMatch()
        if self.cache is not None:
            self.cache.lock(match)
        return _Live(index, req, ids, match, _Decoding(self, req, max_new, constraint, []), start)

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

    def _keep_past(self, seq: list[int], past: Any, *, clone: bool = True) -> None:
        """Cache the tokens of ``seq`` whose KV ``past`` holds (the prompt and every generated token fed back): a
        ``DynamicCache``, a ``_Split`` or a list of ``(K, V)`` per layer (``None``: nothing). ``clone=False``: a
        ``_Split``'s own KV is cached as views (``RadixCache.insert``), for buffers nothing writes again."""
        if self.cache is None or past is None:
            return
        if isinstance(past, _Split):
            n = past.length
            if 0 < n <= len(seq):
                self.cache.insert(seq[:n], past.own, offset=past.shared, clone=clone)
            return
        kv = past if isinstance(past, list) else _cache_kv(past)
        if kv is not None:
            self._keep_kv(seq, kv)

    def _release(self, item: _Live, kv: Any) -> None:
        if self.cache is not None:
            self._keep_past(item.ids + item.decoding.gen, kv)
            self.cache.unlock(item.match)
        item.released = True

    def _finish(self, item: _Live, kv: Any) -> Completion:
        self._release(item, kv)
        return self._completion(item)

    def _completion(self, item: _Live) -> Completion:
        d, req = item.decoding, item.req
        logprobs, finish, text = d.result()
        usage = Usage(prompt_tokens=len(item.ids), cached_prompt_tokens=item.match.length,
                      completion_tokens=len(d.gen), calls=1)
        return Completion(text=text, token_ids=list(d.gen), finish_reason=finish, usage=usage,
                          prompt_token_ids=item.ids, logprobs=logprobs if req.params.logprobs else None,
                          request_id=req.request_id, engine=self.spec, latency_s=now() - item.start)

    def _failed(self, req: Request, exc: Exception, item: _Live | None, kv: Any = None) -> BaseException:
        if item is not None and not item.released:
            self._release(item, kv if kv is not None else item.past)
        if isinstance(exc, TokenomyError):
            return exc
        err = EngineError(f"request {req.request_id} failed: {exc!r}")
        err.__cause__ = exc
        return err


class _Live:
    """A request of a batch between its prefill and its end."""

    def __init__(self, index: int, req: Request, ids: list[int], match: PrefixMatch, decoding: _Decoding,
                 start: float) -> None:
        self.index, self.req, self.ids, self.match, self.decoding, self.start = index, req, ids, match, decoding, start
        self.past: Any = None
        self.prefix_kv: list[tuple[Any, Any]] = []  # the cached prefix's KV, gathered when it was matched
        self.released = False


class _Split:
    """A request's KV as the prefix it shares with the other requests of its prefill (per layer
    ``[1, Hkv, P, D]``, views of one tensor) and its own tokens after it (``[1, Hkv, L, D]``)."""

    def __init__(self, prefix: list[tuple[Any, Any]], own: list[tuple[Any, Any]]) -> None:
        self.prefix, self.own = prefix, own

    @property
    def shared(self) -> int:
        return int(self.prefix[0][0].shape[2])

    @property
    def length(self) -> int:
        return self.shared + int(self.own[0][0].shape[2])


class _Decoding:
    """One request's decoding: sampling, grammar, min tokens, logprobs and the ways it ends (EOS, a stop string,
    the grammar's end, the token limit, cancellation), one token per ``step``."""

    def __init__(self, engine: TransformersEngine, req: Request, max_new: int, constraint: Any,
                 gen: list[int]) -> None:
        torch = engine._torch
        self.engine, self.req, self.max_new, self.constraint, self.gen = engine, req, max_new, constraint, gen
        self.params = req.params
        self.logprobs: list[float] = []
        self.generator = None
        if not self.params.greedy:
            self.generator = torch.Generator(device=engine.device)
            if self.params.seed is not None:
                self.generator.manual_seed(self.params.seed)
            else:
                self.generator.seed()
        self.longest_stop = max((len(st) for st in self.params.stop), default=0)
        self.text, self.floor = "", 0
        self.cut: int | None = None
        self.finish: FinishReason = "length"

    @property
    def fast(self) -> bool:
        """Whether the next token is the argmax of the raw logits (greedy, no grammar, no logprobs, EOS not held
        off): then a batch's argmax, taken on the device, is this request's token."""
        params = self.params
        return params.greedy and self.constraint is None and not params.logprobs and (
            len(self.gen) >= params.min_tokens or not self.engine.eos_token_ids)

    def step(self, logits: Any, token: int | None = None) -> bool:
        """Pick the next token from ``logits`` (``[V]``), or take ``token`` (the argmax, when ``fast``); ``True``
        when the request is finished."""
        engine, params, gen, constraint = self.engine, self.params, self.gen, self.constraint
        torch = engine._torch
        if self.req.cancelled:
            raise RequestCancelled(f"{self.req.request_id} was cancelled after {len(gen)} tokens")
        if token is not None and self.fast:
            tok = token
        else:
            scores = logits.unsqueeze(0)
            if constraint is not None:
                scores = scores.clone()
                constraint.mask_logits(scores)
            if len(gen) < params.min_tokens and engine.eos_token_ids:
                scores = scores.clone()
                scores[0, engine.eos_token_ids] = float("-inf")
            tok = _sample(torch, scores[0], params, self.generator)
        if params.logprobs:
            self.logprobs.append(float(torch.log_softmax(logits, dim=-1)[tok]))
        gen.append(tok)
        if constraint is not None:
            constraint.accept(tok)
        if tok in engine.eos_token_ids:
            self.finish = "stop"
            return True
        if params.stop:
            prev = len(self.text)
            self.text = engine.tokenizer.decode(gen, skip_special_tokens=True)
            if len(gen) <= params.min_tokens:  # stop strings count only after min_tokens
                self.floor = len(self.text)
            else:
                self.cut = _find_stop(self.text, params.stop, max(self.floor, prev - self.longest_stop))
            if self.cut is not None:
                self.text, self.finish = self.text[:self.cut], "stop"
                return True
        if constraint is not None and constraint.finished:
            self.finish = "stop"
            return True
        return len(gen) >= self.max_new

    def result(self) -> tuple[list[float], FinishReason, str]:
        text = self.text
        if self.cut is None:  # not cut at a stop string: the text is all that was generated
            text = self.engine.tokenizer.decode(self.gen, skip_special_tokens=True)
        return self.logprobs, self.finish, text


def _cache_kv(past: Any) -> list[tuple[Any, Any]] | None:
    """A ``DynamicCache``'s ``(K, V)`` per layer; ``None`` unless every layer holds some (a forward pass that
    failed half-way leaves layers without)."""
    kv = [(layer.keys, layer.values) for layer in past.layers if getattr(layer, "keys", None) is not None]
    return kv if kv and len(kv) == len(past.layers) else None


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


def _find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def _sample(torch: Any, scores: Any, params: Any, generator: Any) -> int:
    if params.greedy:
        return int(torch.argmax(scores))
    scores = scores / params.temperature
    if params.top_k:
        kth = torch.topk(scores, min(params.top_k, scores.shape[-1])).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < params.top_p
        mask = torch.zeros_like(probs, dtype=torch.bool).scatter(0, order, keep)
        probs = torch.where(mask, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def _sliceable_cache(config: Any) -> bool:
    text = config.get_text_config()
    layer_types = getattr(text, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return False
    return not (getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True))


def _device_dtype(device: str | None, dtype: str | None) -> tuple[Any, Any, Any]:
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu":
        from .cpu import configure_threads, default_cpu_dtype

        configure_threads()
    if dtype is None:
        dt = torch.bfloat16 if dev.type == "cuda" else getattr(torch, default_cpu_dtype())
    else:
        named = getattr(torch, dtype, None)
        if not isinstance(named, torch.dtype):
            raise UserError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        dt = named
    return torch, dev, dt
