"""The transformers engine (``embedded`` and ``hf:<dir>``) with tokenomy's radix prefix cache.

On a CPU, prefill dominates agent workloads (~160 prompt tokens/s for the 135M model on 2 cores), so this
engine looks every prompt up in a ``RadixCache`` first and prefills only the uncached suffix. It runs its own
decode loop rather than ``generate()`` to control exactly which KV it reuses and keeps, to apply grammar
masks, stop strings, logprobs and cancellation per token. Requests run one at a time, in the order the
worker chose (longest shared prefix first), so each one finds the prefixes its predecessors left behind.

With ``batch=True`` (the default on a GPU) the requests of one batch run together: prefilled in groups on top of
what they find cached, then decoded in one forward pass per step over a ``kernels.batch`` ``BatchCache``. Greedy
decoding gives the same tokens either way (tested).

This module loads models and holds the engine's public API (``complete`` through ``Engine``, ``score``,
``embed``); the engine's paths live beside it: ``hf_cached`` (one request at a time over the prefix cache, and
every request's start and end), ``hf_batch`` (a batch prefilled and decoded together), ``hf_decoding`` (a
request's next token and the ways it ends).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenomy.errors import ContextLengthExceeded, ModelNotFound, UserError

from .batch import cache_keyword
from .engine import Engine
from .grammar import GrammarCompiler
from .hf_batch import MIN_SHARED_PREFIX, BatchDecoding
from .hf_speculative import Speculation, SpeculativeDecoding, Tuning, check_draft, quantize_draft
from .radix import PrefixMatch, RadixCache
from .tokens import TokenCounter
from .types import Capabilities, Completion, PromptInput, Request, Scored
from .usage import Usage

__all__ = ["TransformersEngine", "DEFAULT_CACHE_BYTES", "MIN_SHARED_PREFIX"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 512 * 1024**2


class TransformersEngine(SpeculativeDecoding, BatchDecoding, Engine):
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
        draft: a smaller model of the same tokenizer (an engine, or its spec: ``embedded:qwen2.5-coder-0.5b``)
            that proposes tokens for this one to check (``kernels.hf_speculative``: the same tokens, sooner);
            requests then decode one at a time. The spec form ``<model>+draft=<draft>`` does the same.
        draft_k: the proposals per check to start from; then each check takes the number (up to ``draft_k_max``)
            that gives the most tokens per second by what was measured, or none where no number pays.
        draft_int8: the draft's linear layers in int8 on a CPU (``hf_speculative.quantize_draft``); ``None``: for
            a draft loaded from its spec here (an engine passed in is left as it is).
    """

    streams_tokens = True
    capabilities = Capabilities(batching=False, prefix_cache=True, grammar=True, logprobs=True, token_ids=True,
                                prefill=True, min_tokens=True, prompt_logprobs=True, hidden_states=True)

    def __init__(self, model: Any, tokenizer: Any, *, prefix_cache: bool = True,
                 cache_budget_bytes: int = DEFAULT_CACHE_BYTES, spec: str = "", batch: bool | None = None,
                 shared_prefix: bool | None = None, cuda_graphs: bool | None = None,
                 draft: TransformersEngine | str | None = None, draft_k: int = 4, draft_k_max: int = 8,
                 draft_int8: bool | None = None) -> None:
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
        if not 1 <= draft_k <= draft_k_max:
            raise UserError(f"draft_k must be in [1, draft_k_max={draft_k_max}], got {draft_k}")
        self.draft_k, self.draft_k_max = draft_k, draft_k_max
        self.speculation = Speculation()
        """What speculative decoding did over this engine's life (with a ``draft``)."""
        self._tune = Tuning()
        self.draft: TransformersEngine | None = None
        if draft is not None:
            owned = isinstance(draft, str)
            if isinstance(draft, str):
                draft = _load_draft(draft, self.device)
            check_draft(self, draft)
            if draft_int8 if draft_int8 is not None else owned:
                quantize_draft(draft)
            self.draft = draft

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
        if self.draft is not None:  # a draft proposes for one request at a time
            return self._run_each(requests, self._generate_speculative)
        if self.batch:  # one request too: its steps run over a batch cache (a CUDA graph on a GPU)
            return self._generate_together(requests)
        return self._run_each(requests, self._generate_one)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.clear()
        if self.draft is not None:
            self.draft.close()

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

    def _score(self, prompt: PromptInput, continuation: str, *, agent: str | None = None,
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


def _load_draft(spec: str, device: Any) -> TransformersEngine:
    from .registry import load_engine

    engine = load_engine(spec, device=str(device))
    if not isinstance(engine, TransformersEngine):
        raise UserError(f"a draft model must be a transformers model (embedded:<name> or hf:<dir>), not {spec!r}")
    return engine


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
