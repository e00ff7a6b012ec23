"""``tokenomy bench gpu``: the transformers engine's fast paths on one GPU, with random weights of a real
architecture (BENCHMARKS.md "prefix", the GPU rows).

Workloads:

* ``shared``: ``batch`` requests share a ``prefix``-token prompt prefix and add ``suffix`` tokens of their own,
  then decode ``new`` tokens greedily (8 agents of one team, 32 samples of one prompt).
* ``single``: one request of ``prefix + suffix`` tokens decoding ``new`` tokens (batch 1).

Variants (each on a fresh prefix cache, after a warm-up run):

* ``plain``: no prefix cache, one request at a time (what a plain ``generate`` loop does);
* ``batch``: no prefix cache, the requests decode together;
* ``radix``: the radix prefix cache, prefilling and decoding together, each request's KV read for itself;
* ``radix+kernel``: the same with the shared-prefix attention: requests prefill over the cached prefix they share
  (its KV read from the cache as is) and decode reading it once per step for the batch.

On a GPU every variant but ``plain`` decodes from a CUDA graph (``kernels.batch``).

TTFT is the time until every request of the batch has its first token (a run with ``max_tokens=1``); decode
tokens/s counts the tokens after the first over the time after TTFT, and is compared with the roofline of a step
that reads the weights and the KV once at the copy bandwidth (``roofline``; the prefix read once for the batch).
The ideal TTFT speedup is what the trie allows: tokens prefilled without reuse over the distinct tokens (the prefix
once, each suffix once); achieved is the plain variant's TTFT over the variant's. ``kernel`` rows time the shared-
prefix attention alone (all layers' worth of one step) and give its achieved memory bandwidth (the prefix's KV
bytes it must read over its time) against the device's measured device-to-device copy bandwidth.

This module imports only torch, transformers and (for the kernel) triton, as installed on the GPU machine.
"""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GpuConfig", "GpuRecord", "run_gpu_bench", "format_gpu_table", "copy_bandwidth", "kernel_record",
           "roofline", "plot_records", "VARIANTS"]

VARIANTS = {  # name -> (prefix cache, batch, shared-prefix attention)
    "plain": (False, False, False),
    "batch": (False, True, False),
    "radix": (True, True, False),
    "radix+kernel": (True, True, True),
}


@dataclass
class GpuConfig:
    arch: str = "llama-3-8b"
    batch: int = 32
    prefix: int = 2048
    suffix: int = 32
    new: int = 64
    overrides: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None  # None: bfloat16 on a GPU, float32 on a CPU
    device: str | None = None
    seed: int = 0

    @classmethod
    def smoke(cls) -> GpuConfig:
        """A tiny run that exercises every path on a CPU (for tests; its timings mean nothing)."""
        return cls(arch="llama-3-8b", batch=4, prefix=48, suffix=6, new=4, dtype="float32", overrides={
            "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 512})


@dataclass
class GpuRecord:
    workload: str
    variant: str
    arch: str
    device: str
    batch: int
    prefix_tokens: int
    suffix_tokens: int
    new_tokens: int
    ttft_ms: float | None = None
    decode_tok_s: float | None = None
    prefilled_tokens: int | None = None
    ideal_speedup: float | None = None
    achieved_speedup: float | None = None
    bandwidth_gb_s: float | None = None
    copy_bandwidth_gb_s: float | None = None
    roofline_tok_s: float | None = None
    of_roofline: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(torch: Any, device: Any, fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync(torch, device)
    t0 = time.perf_counter()
    out = fn()
    _sync(torch, device)
    return time.perf_counter() - t0, out


def copy_bandwidth(device: str | None = None, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read plus bytes written, best of ``repeats``)."""
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=dev)
    dst = torch.empty_like(src)
    best = min(_timed(torch, dev, lambda: dst.copy_(src))[0] for _ in range(repeats))
    return 2 * nbytes / best / 1e9


def roofline(model: Any, batch: int, shared: int, own: float, bandwidth_gb_s: float) -> float:
    """Decode tokens/s if a step took only the time to read the weights and the KV it needs once at
    ``bandwidth_gb_s`` (the copy bandwidth, bytes read plus written, as BENCHMARKS.md's anchor counts it):
    ``shared`` context tokens read once for the batch, ``own`` tokens per request read per request. The input
    embedding is left out unless tied to the output (a step reads only its rows)."""
    conf = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    if emb is not model.get_output_embeddings().weight:
        weights -= emb.numel() * emb.element_size()
    hq, hkv = conf.num_attention_heads, conf.num_key_value_heads
    d = getattr(conf, "head_dim", None) or conf.hidden_size // hq
    per_token = 2 * conf.num_hidden_layers * hkv * d * emb.element_size()
    step_bytes = weights + per_token * (shared + batch * own)
    return batch * bandwidth_gb_s * 1e9 / step_bytes


def _prompts(cfg: GpuConfig, vocab: int) -> list[list[int]]:
    import random

    rng = random.Random(cfg.seed)
    top = min(vocab, 32000) - 1
    prefix = [rng.randint(3, top) for _ in range(cfg.prefix)]
    return [prefix + [rng.randint(3, top) for _ in range(cfg.suffix)] for _ in range(cfg.batch)]


def _run(engine: Any, prompts: Sequence[list[int]], new: int) -> list[Any]:
    from tokenomy.kernels.types import Request, SamplingParams

    params = SamplingParams(max_tokens=new)
    requests = [Request(prompt=list(p), params=params) for p in prompts]
    if engine.batch:
        return engine.generate_batch(requests)
    return [engine.generate_batch([r])[0] for r in requests]


def run_gpu_bench(cfg: GpuConfig | None = None, *, variants: Sequence[str] = tuple(VARIANTS),
                  workloads: Sequence[str] = ("shared", "single"), kernel: bool = True,
                  progress: Callable[[str], None] = lambda m: None) -> list[GpuRecord]:
    """Measure every variant on every workload, side by side on one model; returns the records (with the
    greedy tokens of every variant checked equal to the plain one's: a mismatch is a note on the record)."""
    import torch

    from tokenomy.kernels.hf import TransformersEngine

    cfg = cfg or GpuConfig()
    base = TransformersEngine.dummy(cfg.arch, seed=cfg.seed, dtype=cfg.dtype, device=cfg.device,
                                    overrides=cfg.overrides, prefix_cache=False, batch=False)
    model, tokenizer, device = base.model, base.tokenizer, base.device
    vocab = model.config.vocab_size
    bandwidth = copy_bandwidth(str(device), nbytes=1 << 30 if device.type == "cuda" else 1 << 24)
    records: list[GpuRecord] = []
    for workload in workloads:
        batch = cfg.batch if workload == "shared" else 1
        prompts = _prompts(GpuConfig(**{**asdict(cfg), "batch": batch}), vocab)
        distinct = cfg.prefix + batch * cfg.suffix if batch > 1 else cfg.prefix + cfg.suffix
        total = sum(len(p) for p in prompts)
        reference: list[list[int]] | None = None
        plain_ttft = None
        for name in variants:
            prefix_cache, together, shared = VARIANTS[name]
            if workload == "single" and name in ("batch", "radix+kernel"):
                continue  # one request: nothing to batch, no prefix shared with another
            engine = TransformersEngine(model, tokenizer, prefix_cache=prefix_cache, batch=together,
                                        shared_prefix=shared, spec=base.spec)
            rec = GpuRecord(workload, name, cfg.arch, str(device), batch, cfg.prefix, cfg.suffix, cfg.new)
            _run(engine, prompts[:2], 2)  # warm-up: kernels compiled, allocator warm
            runs = []
            for max_tokens in (1, cfg.new):
                if engine.cache is not None:
                    engine.cache.clear()
                gc.collect()
                runs.append(_timed(torch, device, functools.partial(_run, engine, prompts, max_tokens)))
            (t1, first), (tn, outs) = runs
            rec.ttft_ms = t1 * 1e3
            generated = sum(len(c.token_ids) for c in outs)
            rec.decode_tok_s = (generated - batch) / (tn - t1) if tn > t1 and generated > batch else None
            rec.prefilled_tokens = sum(c.usage.prompt_tokens - (c.usage.cached_prompt_tokens or 0) for c in first)
            rec.ideal_speedup = total / distinct if prefix_cache else 1.0
            # The roofline the goals name: the prefix read once per step for the batch (shared), each request's
            # own tokens per request; a single request reads its whole context.
            own = cfg.suffix + cfg.new / 2 if batch > 1 else cfg.prefix + cfg.suffix + cfg.new / 2
            rec.roofline_tok_s = roofline(model, batch, cfg.prefix if batch > 1 else 0, own, bandwidth)
            rec.copy_bandwidth_gb_s = bandwidth
            if rec.decode_tok_s:
                rec.of_roofline = rec.decode_tok_s / rec.roofline_tok_s
            tokens = [c.token_ids for c in outs]
            if reference is None:
                reference, plain_ttft = tokens, rec.ttft_ms
            elif tokens != reference:
                same = sum(a == b for a, b in zip(tokens, reference, strict=True))
                first = min(next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                            for a, b in zip(tokens, reference, strict=True) if a != b)
                rec.notes.append(f"greedy tokens differ from the plain variant's: {same}/{len(tokens)} requests "
                                 f"equal, the first difference at token {first}")
            rec.achieved_speedup = plain_ttft / rec.ttft_ms if plain_ttft and rec.ttft_ms else None
            progress(f"[gpu] {workload:6} {name:13} ttft {rec.ttft_ms:9.1f} ms  decode "
                     f"{rec.decode_tok_s or 0:9.1f} tok/s ({rec.of_roofline or 0:.0%} of roofline)  prefilled "
                     f"{rec.prefilled_tokens}")
            records.append(rec)
            del engine
    if kernel:
        records.append(kernel_record(cfg, model, progress=progress))
    return records


def kernel_record(cfg: GpuConfig, model: Any, *, repeats: int = 20,
                  progress: Callable[[str], None] = lambda m: None) -> GpuRecord:
    """Time the shared-prefix attention alone for one decode step of every layer (the prefix's KV read once per
    layer for the batch) and compare its bandwidth with the device's copy bandwidth."""
    import torch

    from tokenomy.kernels.shared_prefix import prefix_partial, triton_available

    conf = model.config
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    hq, hkv = conf.num_attention_heads, conf.num_key_value_heads
    d = getattr(conf, "head_dim", None) or conf.hidden_size // hq
    layers = conf.num_hidden_layers
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    q = torch.randn(cfg.batch, hq, d, generator=g).to(device=device, dtype=dtype)
    pk = torch.randn(layers, hkv, cfg.prefix, d, generator=g).to(device=device, dtype=dtype)
    pv = torch.randn(layers, hkv, cfg.prefix, d, generator=g).to(device=device, dtype=dtype)
    use_triton = device.type == "cuda" and triton_available()
    scale = d ** -0.5
    kv_bytes = 2 * layers * hkv * cfg.prefix * d * pk.element_size()

    def timed(block_m: int, block_n: int) -> float:
        def step() -> None:
            for layer in range(layers):
                prefix_partial(q, pk[layer], pv[layer], scale=scale, use_triton=use_triton, block_m=block_m,
                               block_n=block_n)

        step()  # compiled, warm
        return min(_timed(torch, device, step)[0] for _ in range(repeats))

    # The tile sizes: rows of queries per program (the prefix is read once per block of rows) and KV positions
    # per loop step. On a CPU only the defaults (the PyTorch path has no tiles).
    tiles = [(m, n) for m in (64, 128) for n in (32, 64, 128)] if use_triton else [(128, 64)]
    times, failed = {}, []
    for tile in tiles:
        try:
            times[tile] = timed(*tile)
        except Exception as exc:  # noqa: BLE001 - a tile too big for the GPU (Triton's OutOfResources) is skipped
            failed.append(f"{tile[0]}x{tile[1]}: {type(exc).__name__}")
    if not times:
        raise RuntimeError(f"the shared-prefix attention ran with no tile size: {'; '.join(failed)}")
    (block_m, block_n), best = min(times.items(), key=lambda kv: kv[1])
    rec = GpuRecord("kernel", "triton" if use_triton else "torch", cfg.arch, str(device), cfg.batch, cfg.prefix, 0,
                    0, bandwidth_gb_s=kv_bytes / best / 1e9,
                    copy_bandwidth_gb_s=copy_bandwidth(str(device), nbytes=min(1 << 30, 64 * kv_bytes)))
    rec.notes.append(f"{best * 1e3:.3f} ms per step of {layers} layers; {kv_bytes / 1e6:.1f} MB of prefix KV; "
                     f"best tiles block_m={block_m} block_n={block_n}")
    if len(times) > 1:
        rec.notes.append("GB/s by (block_m, block_n): " + ", ".join(
            f"{m}x{n} {kv_bytes / t / 1e9:.0f}" for (m, n), t in sorted(times.items())))
    if failed:
        rec.notes.append("tiles that did not run: " + ", ".join(failed))
    progress(f"[gpu] kernel {rec.variant}: {rec.bandwidth_gb_s:.0f} GB/s vs copy {rec.copy_bandwidth_gb_s:.0f} GB/s")
    return rec


def format_gpu_table(records: Sequence[GpuRecord]) -> str:
    head = ("| workload | variant | TTFT ms | decode tok/s | roofline tok/s | of roofline | prefilled | "
            "ideal speedup | achieved | of ideal | notes |\n|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in records:
        if r.workload == "kernel":
            continue
        frac = (r.achieved_speedup / r.ideal_speedup) if r.achieved_speedup and r.ideal_speedup else None
        rows.append(f"| {r.workload} | {r.variant} | {r.ttft_ms:.1f} | {r.decode_tok_s or 0:.1f} | "
                    f"{r.roofline_tok_s or 0:.0f} | {r.of_roofline or 0:.2f} | {r.prefilled_tokens} | "
                    f"{r.ideal_speedup:.2f} | {r.achieved_speedup or 0:.2f} | "
                    f"{frac or 0:.2f} | {'; '.join(r.notes)} |")
    out = [head, *rows]
    for r in records:
        if r.workload == "kernel" and r.bandwidth_gb_s and r.copy_bandwidth_gb_s:
            out.append(f"\nshared-prefix attention ({r.variant}, {r.device}): {r.bandwidth_gb_s:.0f} GB/s, "
                       f"{r.bandwidth_gb_s / r.copy_bandwidth_gb_s:.0%} of the copy bandwidth "
                       f"({r.copy_bandwidth_gb_s:.0f} GB/s); {'; '.join(r.notes)}")
    return "\n".join(out)


def plot_records(records: Sequence[GpuRecord], path: str | Path) -> Path:
    """A PNG of TTFT and decode tokens/s per workload and variant (side by side)."""
    from tokenomy import plot

    rows = [(f"{r.workload} {r.variant}", {"TTFT ms": r.ttft_ms or 0.0, "decode tok/s": r.decode_tok_s or 0.0})
            for r in records if r.workload != "kernel"]
    return plot.bars(rows, path, title="gpu: TTFT and decode speed per variant", ylabel="ms | tokens/s",
                     stacked=False)
