"""The transformers engine (``embedded`` and ``hf:<dir>``) with tokenomy's radix prefix cache.

On a CPU, prefill dominates agent workloads (~160 prompt tokens/s for the 135M model on 2 cores), so this
engine looks every prompt up in a ``RadixCache`` first and prefills only the uncached suffix. It runs its own
decode loop rather than ``generate()`` to control exactly which KV it reuses and keeps, to apply grammar
masks, stop strings, logprobs and cancellation per token. Requests run one at a time, in the order the
worker chose (longest shared prefix first), so each one finds the prefixes its predecessors left behind.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenomy.errors import ContextLengthExceeded, ModelNotFound, RequestCancelled, UserError

from .engine import Engine, now
from .grammar import GrammarCompiler
from .radix import PrefixMatch, RadixCache
from .tokens import TokenCounter
from .types import Capabilities, Completion, FinishReason, PromptInput, Request, Scored
from .usage import Usage

__all__ = ["TransformersEngine", "DEFAULT_CACHE_BYTES"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 512 * 1024**2


class TransformersEngine(Engine):
    """A causal LM from transformers, decoding one request at a time with a radix prefix cache.

    Args:
        model: a loaded ``PreTrainedModel`` (causal LM).
        tokenizer: its tokenizer (with a chat template for chat prompts).
        prefix_cache: reuse the KV of cached prompt prefixes.
        cache_budget_bytes: the most KV bytes the prefix cache may hold.
    """

    capabilities = Capabilities(batching=False, prefix_cache=True, grammar=True, logprobs=True, token_ids=True,
                                prefill=True, min_tokens=True, prompt_logprobs=True, hidden_states=True)

    def __init__(self, model: Any, tokenizer: Any, *, prefix_cache: bool = True,
                 cache_budget_bytes: int = DEFAULT_CACHE_BYTES, spec: str = "") -> None:
        super().__init__()
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.counter = TokenCounter(tokenizer)
        self.spec = spec
        self.device = next(model.parameters()).device
        self._torch = torch
        config = model.config
        if prefix_cache and not _sliceable_cache(config):
            # Sliding-window and linear-attention layers keep KV that cannot be cut at a token boundary.
            log.warning("prefix cache disabled: %s has sliding-window or linear-attention layers",
                        config.model_type)
            prefix_cache = False
        self.cache: RadixCache | None = RadixCache(cache_budget_bytes) if prefix_cache else None
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
        """An embedded model (default SmolLM2-135M-Instruct; ``gemma-3-270m``), converted from its PyPI GGUF on
        first use."""
        from .embedded import DEFAULT_EMBEDDED, ensure_converted

        engine = cls.from_dir(ensure_converted(name=name or DEFAULT_EMBEDDED), **options)
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
        model = AutoModelForCausalLM.from_config(config, dtype=dt).to(dev)
        return cls(model, tokenizer, spec=f"random:{config.model_type}", **options)

    # -- Engine -----------------------------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def prompt_token_ids(self, prompt: PromptInput) -> list[int]:
        return self.counter.encode(prompt)

    def cached_prefix_length(self, token_ids: Sequence[int]) -> int:
        return self.cache.peek(token_ids) if self.cache is not None else 0

    def _run_batch(self, requests: list[Request]) -> list[Completion | BaseException]:
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
                    out = self.model(input_ids=x, past_key_values=past, use_cache=True,
                                     logits_to_keep=len(cont) + 1)
                    logp = torch.log_softmax(out.logits[0, :-1].float(), dim=-1)
                    picked = logp.gather(1, torch.tensor(cont, device=self.device)[:, None])[:, 0]
            finally:
                if self.cache is not None:
                    if past is not None:
                        self._keep(seq, past)
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
        gen: list[int] = []
        past = None
        if self.cache is not None:
            self.cache.lock(match)
        try:
            with torch.inference_mode():
                past = self._past(match)
                logits = self._forward(ids[match.length:], past)
                logprobs, finish, text = self._decode(req, logits, past, max_new, constraint, gen)
        finally:
            if self.cache is not None:
                # Even a cancelled or failed request leaves behind the KV it computed, for the next one.
                if past is not None:
                    self._keep(ids + gen, past)
                self.cache.unlock(match)
        usage = Usage(prompt_tokens=len(ids), cached_prompt_tokens=match.length,
                      completion_tokens=len(gen), calls=1)
        return Completion(text=text, token_ids=gen, finish_reason=finish, usage=usage, prompt_token_ids=ids,
                          logprobs=logprobs if req.params.logprobs else None, request_id=req.request_id,
                          engine=self.spec, latency_s=now() - start)

    def _keep(self, seq: list[int], past: Any) -> None:
        """Cache the tokens of ``seq`` whose KV ``past`` holds (the prompt and every generated token fed back)."""
        assert self.cache is not None
        kv = [(layer.keys, layer.values) for layer in past.layers if getattr(layer, "keys", None) is not None]
        lengths = {k.shape[2] for k, _ in kv}
        if len(kv) != len(past.layers) or len(lengths) != 1:
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
        out = self.model(input_ids=x, past_key_values=past, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float()

    def _decode(self, req: Request, logits: Any, past: Any, max_new: int, constraint: Any,
                gen: list[int]) -> tuple[list[float], FinishReason, str]:
        """Decode into ``gen`` (filled in place, so a caller sees the tokens even if decoding fails)."""
        torch = self._torch
        params = req.params
        logprobs: list[float] = []
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=self.device)
            if params.seed is not None:
                generator.manual_seed(params.seed)
            else:
                generator.seed()
        longest_stop = max((len(s) for s in params.stop), default=0)
        text, cut, floor = "", None, 0
        finish: FinishReason = "length"
        while True:
            if req.cancelled:
                raise RequestCancelled(f"{req.request_id} was cancelled after {len(gen)} tokens")
            scores = logits.unsqueeze(0)
            if constraint is not None:
                scores = scores.clone()
                constraint.mask_logits(scores)
            if len(gen) < params.min_tokens and self.eos_token_ids:
                scores = scores.clone()
                scores[0, self.eos_token_ids] = float("-inf")
            tok = _sample(torch, scores[0], params, generator)
            if params.logprobs:
                logprobs.append(float(torch.log_softmax(logits, dim=-1)[tok]))
            gen.append(tok)
            if constraint is not None:
                constraint.accept(tok)
            if tok in self.eos_token_ids:
                finish = "stop"
                break
            if params.stop:
                prev = len(text)
                text = self.tokenizer.decode(gen, skip_special_tokens=True)
                if len(gen) <= params.min_tokens:  # stop strings count only after min_tokens
                    floor = len(text)
                else:
                    cut = _find_stop(text, params.stop, max(floor, prev - longest_stop))
                if cut is not None:
                    text, finish = text[:cut], "stop"
                    break
            if constraint is not None and constraint.finished:
                finish = "stop"
                break
            if len(gen) >= max_new:
                break
            logits = self._forward([tok], past)
        if cut is None:  # not cut at a stop string: the text is all that was generated
            text = self.tokenizer.decode(gen, skip_special_tokens=True)
        return logprobs, finish, text


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
    if dtype is None:
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        named = getattr(torch, dtype, None)
        if not isinstance(named, torch.dtype):
            raise UserError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        dt = named
    return torch, dev, dt
