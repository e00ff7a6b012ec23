"""``tokenomy bench gpu``: the transformers engine's fast paths on one GPU, with random weights of a real
architecture (BENCHMARKS.md "prefix", the GPU rows).

Workloads:

* ``shared``: ``batch`` requests share a ``prefix``-token prompt prefix and add ``suffix`` tokens of their own,
  then decode ``new`` tokens greedily (8 agents of one team, 32 samples of one prompt).
* ``single``: one request of ``prefix + suffix`` tokens decoding ``new`` tokens (batch 1).

Variants (each on a fresh prefix cache, after a warm-up run):

* ``plain``: no prefix cache, one request at a time (what a plain ``generate`` loop does; its decode is timed on
  ``PLAIN_DECODE_ROWS`` of the requests, its TTFT on all);
* ``generate``: transformers' own ``generate``, the requests as one batch, greedy, its default dynamic cache (the
  "plain transformers" anchor of BENCHMARKS.md; the baseline where ``plain`` is not run);
* ``batch``: no prefix cache, the requests decode together;
* ``radix``: the radix prefix cache, prefilling and decoding together, each request's KV read for itself;
* ``radix+kernel``: the same with the shared-prefix attention: requests prefill over the cached prefix they share
  (its KV read from the cache as is) and decode reading it once per step for the batch.

On a GPU every variant but ``plain`` decodes from a CUDA graph (``kernels.batch``).

TTFT is the time until every request of the batch has its first token (a run with ``max_tokens=1``); decode
tokens/s counts the tokens after the first over the time after TTFT, and is compared with the roofline of a step
that reads the weights and the KV once at the copy bandwidth (``roofline``; the prefix read once for the batch).
The ideal TTFT speedup is what the trie allows: tokens prefilled without reuse over the distinct tokens (the prefix
once, each suffix once); achieved is the plain variant's TTFT over the variant's. The TTFT goal's reference is one
plain forward pass over those distinct tokens (``distinct_prefill_ms``). TTFT is the better of two runs.
``kernel`` rows time the shared-prefix attention alone (all layers' worth of one step, replayed from a CUDA graph,
over a sweep of launch settings) and give its achieved memory bandwidth (the prefix's KV bytes it must read over
its time) against the device's measured device-to-device copy bandwidth.

This module imports only torch, transformers and (for the kernel) triton, as installed on the GPU machine.
"""

from __future__ import annotations

import cProfile
import functools
import gc
import io
import pstats
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GpuConfig", "GpuRecord", "run_gpu_bench", "format_gpu_table", "copy_bandwidth", "kernel_record", "goals",
           "distinct_prefill_ms", "roofline", "plot_records", "profile_fast_paths", "VARIANTS", "PLAIN_DECODE_ROWS"]

VARIANTS = {  # name -> (prefix cache, batch, shared-prefix attention)
    "plain": (False, False, False),
    "generate": (False, True, False),
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
    distinct_prefill_ms: float | None = None
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


def _generate(model: Any, eos: Sequence[int], prompts: Sequence[list[int]], new: int) -> list[list[int]]:
    """transformers' own ``generate`` (greedy, its default dynamic cache), the prompts as one batch (they have one
    length): each row's new tokens up to and with its first end-of-sequence token, as the engine stops there."""
    import torch

    device = next(model.parameters()).device
    x = torch.tensor([list(p) for p in prompts], dtype=torch.long, device=device)
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new, do_sample=False,
                             eos_token_id=list(eos) or None, pad_token_id=0)
    rows = []
    for row in out[:, x.shape[1]:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def distinct_prefill_ms(model: Any, cfg: GpuConfig, prompts: Sequence[list[int]], repeats: int = 3) -> float:
    """The time of one plain forward pass (no cache) over the distinct tokens of ``prompts``: the shared prefix
    once and every request's suffix after it, as one sequence. What prefilling the batch would cost if nothing
    were computed twice: the TTFT goal's reference ("one prefix prefill plus the suffixes")."""
    import torch

    device = next(model.parameters()).device
    seq = list(prompts[0][:cfg.prefix]) + [t for p in prompts for t in p[cfg.prefix:]]
    x = torch.tensor([seq], dtype=torch.long, device=device)

    def once() -> None:
        with torch.inference_mode():
            model(input_ids=x, use_cache=False, logits_to_keep=1)

    once()  # warm
    return 1e3 * min(_timed(torch, device, once)[0] for _ in range(repeats))


PLAIN_DECODE_ROWS = 8
"""The ``plain`` variant decodes one request at a time, so its tokens/s does not depend on how many requests it
runs: its decode is timed on this many of the batch (its TTFT on all of them)."""


def _check_tokens(rec: GpuRecord, tokens: list[list[int]], reference: list[list[int]] | None) -> None:
    """Note on ``rec`` where greedy tokens differ from the baseline variant's (over the requests both ran)."""
    if reference is None:
        return
    pairs = list(zip(tokens, reference, strict=False))
    differ = [(a, b) for a, b in pairs if a != b]
    if differ:
        first = min(next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                    for a, b in differ)
        rec.notes.append(f"greedy tokens differ from the baseline's: {len(pairs) - len(differ)}/{len(pairs)} "
                         f"requests equal, the first difference at token {first}")


def run_gpu_bench(cfg: GpuConfig | None = None, *, variants: Sequence[str] = tuple(VARIANTS),
                  workloads: Sequence[str] = ("shared", "single"), kernel: bool = True,
                  progress: Callable[[str], None] = lambda m: None,
                  on_record: Callable[[list[GpuRecord]], None] = lambda records: None,
                  profile: str | Path | None = None) -> list[GpuRecord]:
    """Measure every variant on every workload, side by side on one model; returns the records (with the
    greedy tokens of every variant checked equal to the plain one's: a mismatch is a note on the record).
    ``on_record`` gets the records so far after each one (a run cut off still leaves what it measured);
    ``profile``: a file for the torch profiler's tables of the fast paths (``profile_fast_paths``)."""
    import torch

    from tokenomy.kernels.hf import DEFAULT_CACHE_BYTES, TransformersEngine

    cfg = cfg or GpuConfig()
    started = time.perf_counter()

    def say(message: str) -> None:
        progress(f"[gpu {time.perf_counter() - started:6.1f}s] {message}")

    base = TransformersEngine.dummy(cfg.arch, seed=cfg.seed, dtype=cfg.dtype, device=cfg.device,
                                    overrides=cfg.overrides, prefix_cache=False, batch=False)
    model, tokenizer, device = base.model, base.tokenizer, base.device
    conf = model.config
    vocab = conf.vocab_size
    bandwidth = copy_bandwidth(str(device), nbytes=1 << 30 if device.type == "cuda" else 1 << 24)
    say(f"{cfg.arch} on {device} ({next(model.parameters()).dtype}); copy bandwidth {bandwidth:.0f} GB/s")
    # The prefix cache holds the whole workload (prompts and generated tokens) so that no variant evicts.
    hkv = conf.num_key_value_heads
    d = getattr(conf, "head_dim", None) or conf.hidden_size // conf.num_attention_heads
    token_bytes = 2 * conf.num_hidden_layers * hkv * d * next(model.parameters()).element_size()
    budget = max(DEFAULT_CACHE_BYTES, 2 * token_bytes * (cfg.prefix + cfg.batch * (cfg.suffix + cfg.new + 1)))
    records: list[GpuRecord] = []
    for workload in workloads:
        batch = cfg.batch if workload == "shared" else 1
        prompts = _prompts(GpuConfig(**{**asdict(cfg), "batch": batch}), vocab)
        distinct = cfg.prefix + batch * cfg.suffix if batch > 1 else cfg.prefix + cfg.suffix
        total = sum(len(p) for p in prompts)
        reference: list[list[int]] | None = None
        plain_ttft = None
        floor_ms = distinct_prefill_ms(model, cfg, prompts) if batch > 1 else None
        if floor_ms is not None:
            say(f"one forward pass over the {distinct} distinct tokens: {floor_ms:.1f} ms")
        # The roofline the goals name: the prefix read once per step for the batch (shared), each request's
        # own tokens per request; a single request reads its whole context.
        own = cfg.suffix + cfg.new / 2 if batch > 1 else cfg.prefix + cfg.suffix + cfg.new / 2
        top = roofline(model, batch, cfg.prefix if batch > 1 else 0, own, bandwidth)
        for name in variants:
            if workload == "single" and name in ("batch", "radix+kernel"):
                continue  # one request: nothing to batch, no prefix shared with another
            rec = GpuRecord(workload, name, cfg.arch, str(device), batch, cfg.prefix, cfg.suffix, cfg.new,
                            copy_bandwidth_gb_s=bandwidth, roofline_tok_s=top, distinct_prefill_ms=floor_ms)
            try:
                tokens = _measure(rec, name, model, tokenizer, base, cfg, prompts, budget, total, distinct)
            except Exception as exc:  # noqa: BLE001 - one variant failing leaves the others' numbers
                rec.notes.append(f"failed: {type(exc).__name__}: {str(exc)[:300]}")
                say(f"{workload} {name} failed: {exc!r}"[:500])
                records.append(rec)
                on_record(records)
                continue
            if rec.decode_tok_s:
                rec.of_roofline = rec.decode_tok_s / top
            # The baseline of tokens and TTFT: the plain variant, or transformers' generate where plain is not run.
            if reference is None and name in ("plain", "generate"):
                reference, plain_ttft = tokens, rec.ttft_ms
                if name == "generate":
                    rec.notes.append("the baseline: speedups are over this variant's TTFT (plain not run)")
            else:
                _check_tokens(rec, tokens, reference)
            rec.achieved_speedup = plain_ttft / rec.ttft_ms if plain_ttft and rec.ttft_ms else None
            say(f"{workload:6} {name:13} ttft {rec.ttft_ms:9.1f} ms  decode {rec.decode_tok_s or 0:9.1f} tok/s "
                f"({rec.of_roofline or 0:.0%} of roofline)  prefilled {rec.prefilled_tokens}")
            records.append(rec)
            on_record(records)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if profile is not None:
        try:
            profile_fast_paths(cfg, base, profile, budget)
            say(f"profile written to {profile}")
        except Exception as exc:  # noqa: BLE001 - a profile is a diagnosis; the numbers stand without it
            say(f"profiling failed: {exc!r}"[:500])
    if kernel:
        try:
            records.append(kernel_record(cfg, model, progress=say))
        except Exception as exc:  # noqa: BLE001 - the sweep failing leaves the runs' numbers
            rec = GpuRecord("kernel", "failed", cfg.arch, str(device), cfg.batch, cfg.prefix, 0, 0)
            rec.notes.append(f"failed: {type(exc).__name__}: {str(exc)[:300]}")
            records.append(rec)
        on_record(records)
    return records


def _measure(rec: GpuRecord, name: str, model: Any, tokenizer: Any, base: Any, cfg: GpuConfig,
             prompts: list[list[int]], budget: int, total: int, distinct: int) -> list[list[int]]:
    """Fill ``rec``'s TTFT, decode speed and prefill counts for variant ``name``; returns its greedy tokens."""
    import torch

    from tokenomy.kernels.hf import TransformersEngine

    device = base.device
    batch = len(prompts)

    def timed_runs(run: Callable[[list[list[int]], int], Any], rows: list[list[int]]) -> tuple[float, float, Any,
                                                                                                 Any]:
        run(rows[:2], 2)  # warm-up: kernels compiled, allocator warm
        out = []
        for max_tokens in (1, 1, cfg.new):  # TTFT: the better of two runs (a one-off stall is not the path's)
            gc.collect()
            out.append(_timed(torch, device, functools.partial(run, rows, max_tokens)))
        (t1, first), (tn, outs) = min(out[:2], key=lambda run: run[0]), out[2]
        return t1, tn, first, outs

    if name == "generate":
        eos = base.eos_token_ids

        def run_generate(rows: list[list[int]], n: int) -> list[list[int]]:
            return _generate(model, eos, rows, n)

        t1, tn, _, outs = timed_runs(run_generate, prompts)
        rec.ttft_ms = t1 * 1e3
        rec.prefilled_tokens = total
        rec.ideal_speedup = 1.0
        tokens = outs
        generated = sum(len(t) for t in tokens)
        rec.decode_tok_s = (generated - batch) / (tn - t1) if tn > t1 and generated > batch else None
        return tokens
    prefix_cache, together, shared = VARIANTS[name]
    engine = TransformersEngine(model, tokenizer, prefix_cache=prefix_cache, batch=together, shared_prefix=shared,
                                spec=base.spec, cache_budget_bytes=budget)

    def run_engine(rows: list[list[int]], n: int) -> list[Any]:
        if engine.cache is not None:
            engine.cache.clear()
        return _run(engine, rows, n)

    try:
        t1, tn, first, outs = timed_runs(run_engine, prompts)
        rec.ttft_ms = t1 * 1e3
        rec.prefilled_tokens = sum(c.usage.prompt_tokens - (c.usage.cached_prompt_tokens or 0) for c in first)
        rec.ideal_speedup = total / distinct if prefix_cache else 1.0
        if name == "plain" and batch > PLAIN_DECODE_ROWS:
            # One request at a time: decode timed on a few of them (TTFT above is the whole batch's).
            t1, tn, _, outs = timed_runs(run_engine, prompts[:PLAIN_DECODE_ROWS])
            rec.notes.append(f"decode timed on {PLAIN_DECODE_ROWS} of the {batch} requests, one at a time")
        generated = sum(len(c.token_ids) for c in outs)
        rows = len(outs)
        rec.decode_tok_s = (generated - rows) / (tn - t1) if tn > t1 and generated > rows else None
        return [c.token_ids for c in outs]
    finally:
        engine.close()  # its prefix cache's device memory goes back before the next variant


def profile_fast_paths(cfg: GpuConfig, base: Any, path: str | Path, budget: int) -> Path:
    """The torch profiler's per-kernel tables for the batch with the shared prefix (TTFT, then a few decode
    steps, eager: below ``GRAPH_MIN_STEPS`` steps no CUDA graph is captured, so each kernel shows) and for one
    request: where a step's time goes, and how many launches it makes."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from tokenomy.kernels.hf import TransformersEngine

    device = base.device
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    out: list[str] = []
    for workload, variant, new in (("shared", "radix+kernel", 1), ("shared", "radix+kernel", 6),
                                   ("single", "radix", 6)):
        batch = cfg.batch if workload == "shared" else 1
        prompts = _prompts(GpuConfig(**{**asdict(cfg), "batch": batch}), base.model.config.vocab_size)
        prefix_cache, together, shared = VARIANTS[variant]
        engine = TransformersEngine(base.model, base.tokenizer, prefix_cache=prefix_cache, batch=together,
                                    shared_prefix=shared, spec=base.spec, cache_budget_bytes=budget)
        _run(engine, prompts[:2], 2)  # warm
        if engine.cache is not None:
            engine.cache.clear()
        _sync(torch, device)
        with torch_profile(activities=activities) as prof:
            t0 = time.perf_counter()
            _run(engine, prompts, new)
            _sync(torch, device)
            wall = time.perf_counter() - t0
        events = prof.key_averages()
        out.append(f"== {workload} {variant}, {batch} request(s), max_tokens={new}: {wall * 1e3:.1f} ms wall")
        for key in ("self_device_time_total", "self_cuda_time_total") if cuda else ():
            try:
                out.append(f"-- by {key}\n" + events.table(sort_by=key, row_limit=30))
                break
            except (AttributeError, KeyError, ValueError):
                continue
        out.append("-- by self_cpu_time_total\n" + events.table(sort_by="self_cpu_time_total", row_limit=20))
        if new == 1:  # the host's side of a TTFT: Python's own profile, by cumulative time
            if engine.cache is not None:
                engine.cache.clear()
            stats = io.StringIO()
            with cProfile.Profile() as host:
                _run(engine, prompts, new)
                _sync(torch, device)
            pstats.Stats(host, stream=stats).sort_stats("cumulative").print_stats(40)
            out.append("-- Python, by cumulative time\n" + stats.getvalue())
        engine.close()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(out))
    return target


def kernel_record(cfg: GpuConfig, model: Any, *, repeats: int = 20,
                  progress: Callable[[str], None] = lambda m: None) -> GpuRecord:
    """Time the shared-prefix attention alone for one decode step of every layer (the prefix's KV read once per
    layer for the batch) and compare its bandwidth with the device's copy bandwidth.

    On a GPU the step is captured as a CUDA graph and replayed, as the engine runs it (Python's launch overhead
    would otherwise be what is timed), and the launch settings are swept: tiles and warps first, then pipeline
    stages and prefix splits with the best of those."""
    import torch

    from tokenomy.kernels.shared_prefix import TILES, prefix_partial, triton_available

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

    def timed(setting: dict[str, Any]) -> float:
        def step() -> None:
            for layer in range(layers):
                prefix_partial(q, pk[layer], pv[layer], scale=scale, use_triton=use_triton, **setting)

        step()  # compiled, warm
        if device.type != "cuda":
            return min(_timed(torch, device, step)[0] for _ in range(repeats))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        graph.replay()
        best = min(_timed(torch, device, graph.replay)[0] for _ in range(repeats))
        del graph
        return best

    times: dict[str, float] = {}  # by label
    tried: dict[str, dict[str, Any]] = {}  # label -> setting
    failed: list[str] = []

    def sweep(settings: list[dict[str, Any]]) -> None:
        for setting in settings:
            label = " ".join(f"{k}={v}" for k, v in setting.items())
            tried[label] = setting
            try:
                times[label] = timed(setting)
            except Exception as exc:  # noqa: BLE001 - a tile too big for the GPU (OutOfResources) is skipped
                failed.append(f"{label}: {type(exc).__name__}")

    def fastest() -> str:
        if not times:
            raise RuntimeError(f"the shared-prefix attention ran with no launch setting: {'; '.join(failed)}")
        return min(times, key=lambda label: times[label])

    base = {**TILES, "splits": None}
    default_label = " ".join(f"{k}={v}" for k, v in base.items())
    if use_triton:
        sweep([{**base, "block_m": m, "block_n": n, "num_warps": w} for m in (64, 128) for n in (32, 64, 128)
               for w in (4, 8)])
        best = tried[fastest()]
        sweep([{**best, "num_stages": st} for st in (2, 4)] + [{**best, "splits": n} for n in (8, 32, 64)])
    else:
        sweep([base])
    label = fastest()
    best_t = times[label]
    rec = GpuRecord("kernel", "triton" if use_triton else "torch", cfg.arch, str(device), cfg.batch, cfg.prefix, 0,
                    0, bandwidth_gb_s=kv_bytes / best_t / 1e9,
                    copy_bandwidth_gb_s=copy_bandwidth(str(device), nbytes=min(1 << 30, 64 * kv_bytes)))
    rec.notes.append(f"{best_t * 1e3:.3f} ms per step of {layers} layers; {kv_bytes / 1e6:.1f} MB of prefix KV; "
                     f"best: {label}")
    if default_label in times:
        rec.notes.append(f"defaults ({default_label}): {kv_bytes / times[default_label] / 1e9:.0f} GB/s")
    if len(times) > 1:
        rec.notes.append("GB/s by setting: " + "; ".join(f"{k} {kv_bytes / t / 1e9:.0f}" for k, t in times.items()))
    if failed:
        rec.notes.append("settings that did not run: " + ", ".join(failed))
    progress(f"kernel {rec.variant}: {rec.bandwidth_gb_s:.0f} GB/s vs copy {rec.copy_bandwidth_gb_s:.0f} GB/s "
             f"({label})")
    return rec


def _find(records: Sequence[GpuRecord], workload: str, variant: str) -> GpuRecord | None:
    return next((r for r in records if r.workload == workload and r.variant == variant and r.ttft_ms), None)


def goals(records: Sequence[GpuRecord]) -> list[tuple[str, str, bool]]:
    """BENCHMARKS.md "prefix", the GPU rows: each goal, what was measured, and whether it is met (a goal whose
    records are missing is listed as not met, with what is missing)."""
    out: list[tuple[str, str, bool]] = []
    fast, gen = _find(records, "shared", "radix+kernel"), _find(records, "shared", "generate")
    if fast and gen and fast.decode_tok_s and gen.decode_tok_s:
        x = fast.decode_tok_s / gen.decode_tok_s
        out.append((f"decode tok/s, batch {fast.batch}, shared {fast.prefix_tokens}-token prefix >= 4x plain "
                    "transformers (generate)", f"{fast.decode_tok_s:.0f} vs {gen.decode_tok_s:.0f}: {x:.1f}x",
                    x >= 4))
    else:
        out.append(("decode >= 4x plain transformers", "missing: shared radix+kernel or generate", False))
    if fast and fast.of_roofline:
        out.append((f"decode tok/s, batch {fast.batch}, shared prefix >= 0.5 of the shared-prefix roofline",
                    f"{fast.decode_tok_s:.0f} of {fast.roofline_tok_s:.0f}: {fast.of_roofline:.2f}",
                    fast.of_roofline >= 0.5))
    else:
        out.append(("decode >= 0.5 of the shared-prefix roofline", "missing: shared radix+kernel", False))
    one = _find(records, "single", "radix")
    if one and one.of_roofline:
        out.append(("decode tok/s, batch 1 >= 0.6 of roofline",
                    f"{one.decode_tok_s:.0f} of {one.roofline_tok_s:.0f}: {one.of_roofline:.2f}",
                    one.of_roofline >= 0.6))
    else:
        out.append(("decode batch 1 >= 0.6 of roofline", "missing: single radix", False))
    if fast and fast.ttft_ms and fast.distinct_prefill_ms:
        x = fast.ttft_ms / fast.distinct_prefill_ms
        out.append((f"TTFT of {fast.batch} requests sharing a {fast.prefix_tokens}-token prefix within 1.25x of one "
                    "prefill of the prefix plus the suffixes", f"{fast.ttft_ms:.1f} ms vs "
                    f"{fast.distinct_prefill_ms:.1f} ms: {x:.2f}x", x <= 1.25))
        if fast.achieved_speedup and fast.ideal_speedup:
            frac = fast.achieved_speedup / fast.ideal_speedup
            out.append(("TTFT speedup >= 0.8 of the ideal the trie allows",
                        f"{fast.achieved_speedup:.1f}x of {fast.ideal_speedup:.1f}x: {frac:.2f}", frac >= 0.8))
    else:
        out.append(("TTFT within 1.25x of the prefix prefill plus the suffixes", "missing: shared radix+kernel",
                    False))
    return out


def format_gpu_table(records: Sequence[GpuRecord]) -> str:
    head = ("| workload | variant | TTFT ms | decode tok/s | roofline tok/s | of roofline | prefilled | "
            "ideal speedup | achieved | of ideal | notes |\n|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in records:
        if r.workload == "kernel":
            continue
        if r.ttft_ms is None:
            rows.append(f"| {r.workload} | {r.variant} | | | | | | | | | {'; '.join(r.notes)} |")
            continue
        frac = (r.achieved_speedup / r.ideal_speedup) if r.achieved_speedup and r.ideal_speedup else None
        rows.append(f"| {r.workload} | {r.variant} | {r.ttft_ms:.1f} | {r.decode_tok_s or 0:.1f} | "
                    f"{r.roofline_tok_s or 0:.0f} | {r.of_roofline or 0:.2f} | {r.prefilled_tokens} | "
                    f"{r.ideal_speedup or 0:.2f} | {r.achieved_speedup or 0:.2f} | "
                    f"{frac or 0:.2f} | {'; '.join(r.notes)} |")
    out = [head, *rows]
    floor = next((r.distinct_prefill_ms for r in records if r.distinct_prefill_ms), None)
    if floor:
        out.append(f"\none forward pass over the distinct tokens (the prefix once, every suffix once): {floor:.1f} ms")
    for r in records:
        if r.workload == "kernel" and r.bandwidth_gb_s and r.copy_bandwidth_gb_s:
            out.append(f"\nshared-prefix attention ({r.variant}, {r.device}): {r.bandwidth_gb_s:.0f} GB/s, "
                       f"{r.bandwidth_gb_s / r.copy_bandwidth_gb_s:.0%} of the copy bandwidth "
                       f"({r.copy_bandwidth_gb_s:.0f} GB/s); {'; '.join(r.notes)}")
        elif r.workload == "kernel":
            out.append(f"\nshared-prefix attention: {'; '.join(r.notes)}")
    if any(r.workload == "shared" for r in records):
        out.append("\ngoals (BENCHMARKS.md, prefix, GPU):")
        out.extend(f"- {'met' if ok else 'NOT met'}: {g}: {m}" for g, m, ok in goals(records))
    return "\n".join(out)


def plot_records(records: Sequence[GpuRecord], path: str | Path) -> Path:
    """A PNG of TTFT and decode tokens/s per workload and variant (side by side)."""
    from tokenomy.benchmarks import plot

    rows = [(f"{r.workload} {r.variant}", {"TTFT ms": r.ttft_ms or 0.0, "decode tok/s": r.decode_tok_s or 0.0})
            for r in records if r.workload != "kernel"]
    return plot.bars(rows, path, title="gpu: TTFT and decode speed per variant", ylabel="ms | tokens/s",
                     stacked=False)
