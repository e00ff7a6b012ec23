"""The transformers engine's requests over tokenomy's radix prefix cache (``kernels.hf``): each request looks its
prompt up in the ``RadixCache``, locks the prefix it finds, prefills only the uncached suffix on top of that
prefix's KV, and leaves the KV it computed behind in the cache (a cancelled or failed request too) for the next
one. ``CachedPrefill`` holds that path, one request at a time, and what every request does before and after it
decodes (``_start``, ``_release``, ``_completion``, ``_failed``), which the batch path (``kernels.hf_batch``)
shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tokenomy.errors import ContextLengthExceeded, EngineError, RequestCancelled, TokenomyError

from .engine import now
from .grammar import GrammarCompiler
from .hf_decoding import _Decoding
from .radix import PrefixMatch, RadixCache
from .types import Completion, PromptInput, Request
from .usage import Usage


class CachedPrefill:
    """Mixin of ``hf.TransformersEngine``: one request at a time over the radix prefix cache, and the bookkeeping
    of a request's cached prefix (found and locked at its start, extended and unlocked at its end)."""

    # Set by TransformersEngine.__init__.
    model: Any
    tokenizer: Any
    spec: str
    device: Any
    _torch: Any
    _cache_keyword: str
    cache: RadixCache | None
    eos_token_ids: list[int]
    grammars: GrammarCompiler

    if TYPE_CHECKING:  # TransformersEngine's

        @property
        def context_window(self) -> int: ...

        def prompt_token_ids(self, prompt: PromptInput) -> list[int]: ...

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

    def _keep_kv(self, seq: list[int], kv: list[tuple[Any, Any]]) -> None:
        assert self.cache is not None
        lengths = {k.shape[2] for k, _ in kv}
        if len(lengths) != 1:
            return  # a forward pass that failed half-way: layers disagree, keep nothing
        (n,) = lengths
        if 0 < n <= len(seq):
            self.cache.insert(seq[:n], kv)

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


def _cache_kv(past: Any) -> list[tuple[Any, Any]] | None:
    """A ``DynamicCache``'s ``(K, V)`` per layer; ``None`` unless every layer holds some (a forward pass that
    failed half-way leaves layers without)."""
    kv = [(layer.keys, layer.values) for layer in past.layers if getattr(layer, "keys", None) is not None]
    return kv if kv and len(kv) == len(past.layers) else None
