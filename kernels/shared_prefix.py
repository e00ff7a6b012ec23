"""Decode attention for a batch whose requests share a prefix: the prefix's KV is read once for the whole batch.

One decode step of B requests (one new query token each, ``q``: ``[B, Hq, D]``) attends to a shared prefix
(``prefix_k``/``prefix_v``: ``[Hkv, P, D]``, the same tokens for every request) and to each request's own suffix
(``suffix_k``/``suffix_v``: ``[B, Hkv, S, D]``, the first ``suffix_lens[b]`` positions valid). Attention is split
in two (the cascade of FlashInfer, the decomposition of Hydragen):

- over the prefix, the B x G queries of each KV head (G = Hq / Hkv) form one block of rows, so every block of
  the prefix's KV is loaded once and used by the whole batch, instead of once per request; long prefixes are
  split along their length across programs (flash-decoding), each split still read once;
- over each request's suffix, its G queries against its own KV;
- the partial results are merged exactly by their log-sum-exp: with ``lse_i`` the log of partial ``i``'s softmax
  denominator, ``o = sum_i exp(lse_i - m) o_i / sum_i exp(lse_i - m)``, ``m = max_i lse_i``.

``shared_prefix_attention`` runs the Triton kernel (on the GPU; on CPUs under ``TRITON_INTERPRET=1``, which is how
the tests check it); ``shared_prefix_attention_torch`` is the same cascade in PyTorch, and ``reference_attention``
the plain attention over the concatenated KV that both are checked against. Scores and sums are float32 whatever
the input dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any

__all__ = ["shared_prefix_attention", "shared_prefix_attention_torch", "reference_attention", "merge_partials",
           "decode_attention", "prefill_attention", "prefix_partial", "masked_partial", "triton_available", "install",
           "BATCH_CACHE", "COUNTERS", "TILES"]


TILES: dict[str, int] = {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3}
"""The Triton kernel's launch settings where a caller names none: rows of queries per program (``block_m``, the
prefix is read once per block of rows), KV positions per loop step (``block_n``), warps per program and software
pipeline stages. ``tokenomy bench gpu`` sweeps them on the GPU it runs on (its ``kernel`` record)."""


def _tile(name: str, value: int | None) -> int:
    return TILES[name] if value is None else value


def triton_available() -> bool:
    """Whether the Triton kernel can run here: triton imports, and there is a GPU or the interpreter is on."""
    import os

    if not _has_triton():
        return False
    import torch

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=1)
def _has_triton() -> bool:  # asked per layer and step: look once
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def _check(q: Any, prefix_k: Any, prefix_v: Any, suffix_k: Any, suffix_v: Any, suffix_lens: Any) -> tuple[int, ...]:
    if q.dim() != 3 or prefix_k.dim() != 3 or suffix_k.dim() != 4:
        raise ValueError("shapes: q [B, Hq, D], prefix_k/v [Hkv, P, D], suffix_k/v [B, Hkv, S, D]")
    b, hq, d = q.shape
    hkv, p, dk = prefix_k.shape
    if prefix_v.shape != prefix_k.shape or suffix_v.shape != suffix_k.shape:
        raise ValueError("k and v must have the same shape")
    if dk != d or suffix_k.shape[0] != b or suffix_k.shape[1] != hkv or suffix_k.shape[3] != d:
        raise ValueError(f"q {tuple(q.shape)}, prefix {tuple(prefix_k.shape)} and suffix {tuple(suffix_k.shape)} "
                         "do not fit together")
    if hq % hkv:
        raise ValueError(f"{hq} query heads are not a multiple of {hkv} KV heads")
    if tuple(suffix_lens.shape) != (b,):
        raise ValueError(f"suffix_lens must have shape ({b},)")
    return b, hq, d, hkv, p, suffix_k.shape[2]


def merge_partials(outs: Any, lses: Any) -> tuple[Any, Any]:
    """Merge partial attentions ``outs`` ``[N, ..., D]`` with log-sum-exps ``lses`` ``[N, ...]`` (``-inf`` for
    an empty partial) into one output and its log-sum-exp."""
    import torch

    m = lses.max(dim=0).values
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(lses - m.unsqueeze(0))
    total = w.sum(dim=0)
    out = (w.unsqueeze(-1) * outs).sum(dim=0) / total.clamp_min(1e-30).unsqueeze(-1)
    return out, m + torch.log(total)


def _partial_torch(q: Any, k: Any, v: Any, valid: Any, scale: float, *, per_query: bool = False) -> tuple[Any, Any]:
    """q ``[..., M, D]`` against k/v ``[..., N, D]`` with ``valid`` ``[..., N]`` (or ``[..., M, N]``,
    ``per_query``): output and log-sum-exp."""
    import torch

    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    s = s.masked_fill(~(valid if per_query else valid.unsqueeze(-2)), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)).unsqueeze(-1))
    return torch.matmul(p, v.float()), lse


def shared_prefix_attention_torch(q: Any, prefix_k: Any, prefix_v: Any, suffix_k: Any, suffix_v: Any,
                                  suffix_lens: Any, *, scale: float | None = None) -> Any:
    """The cascade in PyTorch (the prefix as one batched matmul over all requests' queries); returns ``[B, Hq, D]``
    in ``q``'s dtype."""
    import torch

    b, hq, d, hkv, p, s = _check(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens)
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    o_p, l_p = prefix_partial(q, prefix_k, prefix_v, scale=scale, use_triton=False)
    valid = torch.arange(suffix_k.shape[2], device=q.device)[None, :] < suffix_lens.to(q.device)[:, None]
    o_s, l_s = masked_partial(q, suffix_k, suffix_v, valid, scale=scale)
    out, _ = merge_partials(torch.stack([o_p, o_s]), torch.stack([l_p, l_s]))
    return out.to(q.dtype)


def reference_attention(q: Any, prefix_k: Any, prefix_v: Any, suffix_k: Any, suffix_v: Any, suffix_lens: Any, *,
                        scale: float | None = None, dtype: Any = None) -> Any:
    """Plain attention of each request over its prefix + suffix, one request at a time, in float32 or ``dtype``
    (PyTorch's ``scaled_dot_product_attention``); returns ``[B, Hq, D]`` in that dtype."""
    import torch

    dtype = dtype or torch.float32

    b, hq, d, hkv, p, s = _check(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens)
    g = hq // hkv
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    out = []
    for i in range(b):
        n = int(suffix_lens[i])
        k = torch.cat([prefix_k, suffix_k[i, :, :n]], dim=1).to(dtype).repeat_interleave(g, dim=0)  # [Hq, P+n, D]
        v = torch.cat([prefix_v, suffix_v[i, :, :n]], dim=1).to(dtype).repeat_interleave(g, dim=0)
        qi = q[i].to(dtype).unsqueeze(1)  # [Hq, 1, D]
        out.append(torch.nn.functional.scaled_dot_product_attention(qi, k, v, scale=scale)[:, 0])
    return torch.stack(out)


# -- the Triton kernel -----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _kernel() -> Any:
    """Compile-on-first-use: triton is imported only when the kernel runs."""
    import triton
    import triton.language as tl

    @triton.jit
    def partial_attention(Q, K, V, Lens, O, L, scale,
                          stride_qb, stride_qh,
                          stride_kb, stride_kh, stride_kn,
                          stride_os, stride_ob, stride_oh,
                          stride_ls, stride_lb,
                          n_rows, group, kv_len, split_len,
                          SHARED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          HEAD_DIM: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
        """One program: a block of query rows of one KV head against one split of its KV.

        SHARED (the prefix): rows are (request, query head in the group) pairs of every request, and the KV is
        the head's prefix, the same for all rows: each KV block is loaded once for BLOCK_M rows of the batch.
        Otherwise (a suffix): program axis 1 is the request, rows are its query heads in the group, and the KV
        is that request's own, ``Lens[b]`` long.
        """
        h = tl.program_id(0)
        blk = tl.program_id(1)
        split = tl.program_id(2)
        rows = tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM)
        if SHARED:
            r = blk * BLOCK_M + rows
            row_ok = r < n_rows
            b = r // group
            qh = h * group + r % group
            kv_base = h * stride_kh
            length = kv_len
        else:
            row_ok = rows < group
            b = blk + rows * 0
            qh = h * group + rows
            kv_base = blk * stride_kb + h * stride_kh
            length = tl.load(Lens + blk)
        q = tl.load(Q + b[:, None] * stride_qb + qh[:, None] * stride_qh + dims[None, :], mask=row_ok[:, None],
                    other=0.0)
        if not LOWP:
            q = q.to(tl.float32)
        start = split * split_len
        end = tl.minimum(start + split_len, length)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < end
            offs = kv_base + cols[:, None] * stride_kn + dims[None, :]
            k = tl.load(K + offs, mask=col_ok[:, None], other=0.0)
            v = tl.load(V + offs, mask=col_ok[:, None], other=0.0)
            if IEEE:  # float32 in and out
                s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee") * scale
            elif LOWP:  # bf16/fp16 operands on the tensor cores, float32 accumulation
                s = tl.dot(q, tl.trans(k.to(q.dtype))) * scale
            else:
                s = tl.dot(q, tl.trans(k.to(tl.float32))) * scale
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
            elif LOWP:
                acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype))
            else:
                acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32))
            m_i = m_new
        has = l_i > 0
        out = acc / tl.where(has, l_i, 1.0)[:, None]
        lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
        tl.store(O + split * stride_os + b[:, None] * stride_ob + qh[:, None] * stride_oh + dims[None, :], out,
                 mask=row_ok[:, None])
        tl.store(L + split * stride_ls + b * stride_lb + qh, lse, mask=row_ok)

    return partial_attention


@functools.lru_cache(maxsize=1)
def _merge_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def merge(O, L, Out, Lse, n_parts, stride_os, stride_ls,
              PARTS: tl.constexpr, HEAD_DIM: tl.constexpr, WRITE_LSE: tl.constexpr):
        """One program per (request, query head): the ``n_parts`` partial outputs ``O[i, row]`` with log-sum-exps
        ``L[i, row]`` merged into ``Out[row]`` (in ``Out``'s dtype) and, with ``WRITE_LSE``, ``Lse[row]``."""
        row = tl.program_id(0)
        parts = tl.arange(0, PARTS)
        ok = parts < n_parts
        lse = tl.load(L + parts * stride_ls + row, mask=ok, other=float("-inf"))
        m = tl.max(lse, axis=0)
        m = tl.where(m == float("-inf"), 0.0, m)
        w = tl.where(ok, tl.exp(lse - m), 0.0)  # 0 for an empty part (lse -inf)
        total = tl.sum(w, axis=0)
        dims = tl.arange(0, HEAD_DIM)
        o = tl.load(O + parts[:, None] * stride_os + row * HEAD_DIM + dims[None, :], mask=ok[:, None], other=0.0)
        out = tl.sum(w[:, None] * o, axis=0) / tl.maximum(total, 1e-30)
        tl.store(Out + row * HEAD_DIM + dims, out.to(Out.dtype.element_ty))
        if WRITE_LSE:
            tl.store(Lse + row, tl.where(total > 0, m + tl.log(tl.maximum(total, 1e-30)), float("-inf")))

    return merge


def _merge_triton(outs: Any, lses: Any, dtype: Any, *, with_lse: bool = False) -> tuple[Any, Any]:
    """``merge_partials`` in one launch: ``outs`` ``[N, B, Hq, D]`` and ``lses`` ``[N, B, Hq]`` (contiguous,
    float32) into ``[B, Hq, D]`` of ``dtype`` (and the log-sum-exp ``[B, Hq]`` with ``with_lse``, else ``None``)."""
    import torch

    n, b, hq, d = outs.shape
    out = torch.empty(b, hq, d, dtype=dtype, device=outs.device)
    lse = torch.empty(b, hq, dtype=torch.float32, device=outs.device) if with_lse else out
    _merge_kernel()[(b * hq,)](outs, lses, out, lse, n, outs.stride(0), lses.stride(0),
                               PARTS=_pow2(n, 2), HEAD_DIM=d, WRITE_LSE=with_lse, num_warps=1)
    return out, (lse if with_lse else None)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int, lo: int) -> int:
    return max(lo, 1 << max(n - 1, 0).bit_length())


def shared_prefix_attention(q: Any, prefix_k: Any, prefix_v: Any, suffix_k: Any, suffix_v: Any, suffix_lens: Any, *,
                            scale: float | None = None, prefix_splits: int | None = None, block_n: int | None = None,
                            block_m: int | None = None, suffix_splits: int | None = None) -> Any:
    """The cascade with the Triton kernel; returns ``[B, Hq, D]`` in ``q``'s dtype.

    ``prefix_splits``/``suffix_splits``: programs along the prefix (per block of rows) and along each suffix
    (default: ``_splits``, enough programs to fill the GPU without the partial outputs outweighing the KV they
    summarise). ``block_m`` caps the rows a program takes: with ``B * Hq / Hkv <= block_m`` the prefix's KV is read
    exactly once.
    """
    _check(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens)
    d = q.shape[2]
    if d & (d - 1) or d < 16:
        raise ValueError(f"head dim {d}: the kernel takes a power of two >= 16")
    return decode_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens,
                            scale=scale if scale is not None else 1.0 / math.sqrt(d), use_triton=True,
                            block_n=block_n, block_m=block_m, prefix_splits=prefix_splits,
                            suffix_splits=suffix_splits)


def decode_attention(q: Any, prefix_k: Any, prefix_v: Any, own_k: Any, own_v: Any, own_lens: Any, *, scale: float,
                     use_triton: bool | None = None, block_n: int | None = None, block_m: int | None = None,
                     prefix_splits: int | None = None, suffix_splits: int | None = None) -> Any:
    """One decode step's attention for a batch: every request's queries (``[B, Hq, D]``) over the prefix they
    share (``[Hkv, P, D]``, read once for the batch; ``P`` may be 0) and over its own KV (``[B, Hkv, S, D]``, the
    first ``own_lens[b]`` positions valid), merged by log-sum-exp; ``[B, Hq, D]`` in ``q``'s dtype. The Triton
    kernel where it can run (``use_triton=None``: on a GPU with triton), else PyTorch.

    With Triton a step is three launches whatever the splits: the prefix's partials and the own partials go into
    one buffer, and one merge kernel combines them (a decode step runs this per layer: launches, not bytes, are
    what it costs at these sizes)."""
    import torch

    d = q.shape[2]
    if use_triton is None:
        use_triton = q.is_cuda and triton_available() and not (d & (d - 1)) and d >= 16
    if not use_triton:
        own = _own_partial(q, own_k, own_v, own_lens, scale=scale, use_triton=False)
        if not prefix_k.shape[1]:
            return own[0].to(q.dtype)
        pre = prefix_partial(q, prefix_k, prefix_v, scale=scale, use_triton=False)
        out, _ = merge_partials(torch.stack([pre[0], own[0]]), torch.stack([pre[1], own[1]]))
        return out.to(q.dtype)
    q = q.contiguous()
    own_launch = _OwnLaunch(q, own_k, own_v, own_lens, block_n=block_n, splits=suffix_splits)
    pre_launch = _PrefixLaunch(q, prefix_k, prefix_v, block_n=block_n, block_m=block_m, splits=prefix_splits) \
        if prefix_k.shape[1] else None
    n_pre = pre_launch.splits if pre_launch is not None else 0
    outs, lses = _partials(n_pre + own_launch.splits, q)
    if pre_launch is not None:
        pre_launch.run(outs[:n_pre], lses[:n_pre], scale)
    own_launch.run(outs[n_pre:], lses[n_pre:], scale)
    return _merge_triton(outs, lses, q.dtype)[0]


POISON_PARTIALS = False
"""Tests set this: partial buffers then start as NaN, so a slot the kernels leave unwritten shows in the result
(otherwise they are left uninitialised: every slot is written)."""


def _partials(n: int, q: Any) -> tuple[Any, Any]:
    """Buffers for ``n`` partial outputs ``[n, B, Hq, D]`` and log-sum-exps ``[n, B, Hq]`` (float32)."""
    import torch

    b, hq, d = q.shape
    make = functools.partial(torch.full, fill_value=float("nan")) if POISON_PARTIALS else torch.empty
    return (make((n, b, hq, d), dtype=torch.float32, device=q.device),
            make((n, b, hq), dtype=torch.float32, device=q.device))


def _split(length: int, splits: int, block_n: int) -> tuple[int, int]:
    """A KV length cut in about ``splits`` parts of whole blocks: each part's length and how many parts."""
    split_len = _ceil(_ceil(max(length, 1), splits), block_n) * block_n
    return split_len, max(1, _ceil(length, split_len))


def _launch_options(num_warps: int | None, num_stages: int | None) -> dict[str, int]:
    return {"num_warps": _tile("num_warps", num_warps), "num_stages": _tile("num_stages", num_stages)}


class _OwnLaunch:
    """The Triton launch of each request's queries over its own KV (the first ``lens[b]`` of ``S`` positions),
    split along ``S`` when the batch alone does not give the GPU enough programs."""

    def __init__(self, q: Any, k: Any, v: Any, lens: Any, *, block_n: int | None = None, splits: int | None = None,
                 num_warps: int | None = None, num_stages: int | None = None) -> None:
        import torch

        b, hq, d = q.shape
        hkv, s = k.shape[1], k.shape[2]
        self.block_n = _tile("block_n", block_n)
        self.q, self.k, self.v = q, k.contiguous(), v.contiguous()
        self.lens = lens.to(device=q.device, dtype=torch.int32)
        self.g, self.hkv, self.b, self.s, self.d = hq // hkv, hkv, b, s, d
        splits = splits or _splits(q.device, hkv * b, s, hkv * s * d * k.element_size() * 2 * b, b * hq * d * 4,
                                   self.block_n)
        self.split_len, self.splits = _split(s, splits, self.block_n)
        self.launch = _launch_options(num_warps, num_stages)

    def run(self, outs: Any, lses: Any, scale: float) -> None:
        q, k, v = self.q, self.k, self.v
        _kernel()[(self.hkv, self.b, self.splits)](
            q, k, v, self.lens, outs, lses, scale,
            q.stride(0), q.stride(1),
            k.stride(0), k.stride(1), k.stride(2),
            outs.stride(0), outs.stride(1), outs.stride(2),
            lses.stride(0), lses.stride(1),
            self.g, self.g, self.s, self.split_len,
            SHARED=False, BLOCK_M=_pow2(self.g, 16), BLOCK_N=self.block_n, HEAD_DIM=self.d, **_precision(q),
            **self.launch)


class _PrefixLaunch:
    """The Triton launch of every request's queries over one shared prefix: the rows of a KV head (every request's
    queries in its group) in blocks of ``block_m``, so each block of the prefix's KV is loaded once per block of
    rows; the prefix split along its length so that the GPU has programs to spare."""

    def __init__(self, q: Any, k: Any, v: Any, *, block_n: int | None = None, block_m: int | None = None,
                 splits: int | None = None, num_warps: int | None = None, num_stages: int | None = None) -> None:
        b, hq, d = q.shape
        hkv, p, _ = k.shape
        self.block_n = _tile("block_n", block_n)
        self.q, self.k, self.v = q, k.contiguous(), v.contiguous()
        self.g, self.hkv, self.p, self.d = hq // hkv, hkv, p, d
        self.rows = b * self.g
        self.bm = min(_pow2(self.rows, 16), _pow2(_tile("block_m", block_m), 16))
        splits = splits or _splits(q.device, hkv * _ceil(self.rows, self.bm), p, hkv * p * d * k.element_size() * 2,
                                   b * hq * d * 4, self.block_n)
        self.split_len, self.splits = _split(p, splits, self.block_n)
        self.launch = _launch_options(num_warps, num_stages)

    def run(self, outs: Any, lses: Any, scale: float) -> None:
        q, k, v = self.q, self.k, self.v
        _kernel()[(self.hkv, _ceil(self.rows, self.bm), self.splits)](
            q, k, v, q, outs, lses, scale, q.stride(0), q.stride(1),  # q stands in for the lengths: not read
            0, k.stride(0), k.stride(1), outs.stride(0), outs.stride(1), outs.stride(2),
            lses.stride(0), lses.stride(1), self.rows, self.g, self.p, self.split_len,
            SHARED=True, BLOCK_M=self.bm, BLOCK_N=self.block_n, HEAD_DIM=self.d, **_precision(q), **self.launch)


def _own_partial(q: Any, k: Any, v: Any, lens: Any, *, scale: float, use_triton: bool, block_n: int | None = None,
                 splits: int | None = None) -> tuple[Any, Any]:
    """Each request's queries over its own KV (the first ``lens[b]`` of ``S`` positions): float32 output and
    log-sum-exp (``-inf`` where a request has none)."""
    import torch

    if not use_triton:
        valid = torch.arange(k.shape[2], device=q.device)[None, :] < lens.to(q.device)[:, None]
        return masked_partial(q, k, v, valid, scale=scale)
    launch = _OwnLaunch(q.contiguous(), k, v, lens, block_n=block_n, splits=splits)
    return _run_partials(launch, scale)


def _run_partials(launch: _OwnLaunch | _PrefixLaunch, scale: float) -> tuple[Any, Any]:
    outs, lses = _partials(launch.splits, launch.q)
    launch.run(outs, lses, scale)
    if launch.splits == 1:
        return outs[0], lses[0]
    return _merge_triton(outs, lses, outs.dtype, with_lse=True)


def _precision(q: Any) -> dict[str, bool]:
    """float32 queries: IEEE float32 dots. bf16/fp16: dots in that dtype with float32 accumulation (LOWP), except
    under Triton's interpreter, whose bf16 ``tl.dot`` is wrong: there the operands are upcast to float32."""
    import os

    import torch

    ieee = q.dtype == torch.float32
    return {"IEEE": ieee, "LOWP": not ieee and os.environ.get("TRITON_INTERPRET") != "1"}


@functools.lru_cache(maxsize=8)
def _sm_count(device: Any) -> int:
    import torch

    if device.type != "cuda":
        return 0
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


def _splits(device: Any, programs: int, length: int, kv_bytes: int, out_bytes: int, block_n: int) -> int:
    """How many programs to split a KV length over: enough for about one program per SM of the GPU (4 where
    there is none, the interpreter), but no more than the KV's bytes over the bytes of one split's partial
    output (more splits would write more than they read) and no split under one block."""
    sms = _sm_count(device)
    want = _ceil(sms, max(programs, 1)) if sms else 4
    return max(1, min(want, kv_bytes // max(out_bytes, 1), _ceil(max(length, 1), block_n)))


def prefix_partial(q: Any, prefix_k: Any, prefix_v: Any, *, scale: float, use_triton: bool | None = None,
                   block_n: int | None = None, block_m: int | None = None, splits: int | None = None,
                   num_warps: int | None = None, num_stages: int | None = None) -> tuple[Any, Any]:
    """Attention of every request's queries (``[B, Hq, D]``) over one shared prefix (``[Hkv, P, D]``): the
    float32 output ``[B, Hq, D]`` and log-sum-exp ``[B, Hq]``, the prefix's KV read once for the batch. The
    Triton kernel where it can run (``use_triton=None``: on a GPU with triton), else one batched matmul."""
    import torch

    b, hq, d = q.shape
    hkv, p, _ = prefix_k.shape
    g = hq // hkv
    if use_triton is None:
        use_triton = q.is_cuda and triton_available() and not (d & (d - 1)) and d >= 16
    if not use_triton:
        rows = q.reshape(b, hkv, g, d).permute(1, 0, 2, 3).reshape(hkv, b * g, d)
        o, lse = _partial_torch(rows, prefix_k, prefix_v, torch.ones(hkv, p, dtype=torch.bool, device=q.device),
                                scale)
        return (o.view(hkv, b, g, d).permute(1, 0, 2, 3).reshape(b, hq, d),
                lse.view(hkv, b, g).permute(1, 0, 2).reshape(b, hq))
    launch = _PrefixLaunch(q.contiguous(), prefix_k, prefix_v, block_n=block_n, block_m=block_m, splits=splits,
                           num_warps=num_warps, num_stages=num_stages)
    return _run_partials(launch, scale)


def masked_partial(q: Any, k: Any, v: Any, valid: Any, *, scale: float) -> tuple[Any, Any]:
    """Each request's queries (``[B, Hq, D]``) over its own KV (``[B, Hkv, N, D]``) where ``valid``
    (``[B, N]``): float32 output and log-sum-exp (``-inf`` where nothing is valid)."""
    b, hq, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    o, lse = _partial_torch(q.reshape(b, hkv, g, d), k, v, valid[:, None, :].expand(b, hkv, valid.shape[1]), scale)
    return o.reshape(b, hq, d), lse.reshape(b, hq)


def prefill_attention(q: Any, prefix_k: Any, prefix_v: Any, own_k: Any, own_v: Any, visible: Any, *, scale: float,
                      max_bytes: int = 256 * 1024**2) -> Any:
    """A prefill pass's attention for a batch: each row's ``W`` queries (``[B, Hq, W, D]``) over the prefix all rows
    share (``[Hkv, P, D]``, every query sees all of it; the Triton kernel on a GPU, the queries of the whole batch
    in blocks of rows) and over the row's own KV (``[B, Hkv, S, D]``: query ``j`` of row ``b`` sees the first
    ``visible[b, j]`` positions, causal by construction), merged by log-sum-exp. Own scores are computed
    ``max_bytes`` at a time. Returns ``[B, W, Hq, D]`` in ``q``'s dtype, the layout attention layers return."""
    import torch

    b, hq, w, d = q.shape
    hkv, s = own_k.shape[1], own_k.shape[2]
    g = hq // hkv
    rows = q.transpose(1, 2).reshape(b * w, hq, d)  # [B*W, Hq, D]: every query of the batch against the prefix
    out = torch.empty(b, w, hq, d, dtype=torch.float32, device=q.device)
    lse = torch.empty(b, w, hq, dtype=torch.float32, device=q.device)
    cols = torch.arange(s, device=q.device)
    step = max(1, max_bytes // max(1, b * hq * s * 4))
    k32, v32 = own_k.float().unsqueeze(2), own_v.float().unsqueeze(2)  # [B, Hkv, 1, S, D]
    for j0 in range(0, w, step):
        qs = q[:, :, j0:j0 + step].reshape(b, hkv, g, -1, d)  # [B, Hkv, G, w', D]
        valid = cols[None, None, :] < visible[:, j0:j0 + step, None]  # [B, w', S]
        o, part = _partial_torch(qs, k32, v32, valid[:, None, None], scale, per_query=True)  # [B, Hkv, G, w', .]
        n = o.shape[3]
        out[:, j0:j0 + n] = o.reshape(b, hq, n, d).transpose(1, 2)
        lse[:, j0:j0 + n] = part.reshape(b, hq, n).transpose(1, 2)
    if prefix_k.shape[1]:
        o_p, l_p = prefix_partial(rows, prefix_k, prefix_v, scale=scale)
        merged, _ = merge_partials(torch.stack([o_p.view(b, w, hq, d), out]), torch.stack([l_p.view(b, w, hq), lse]))
        return merged.to(q.dtype)
    return out.to(q.dtype)


COUNTERS = {"shared_prefix_calls": 0}
"""Attention calls (per layer and pass) over a ``BatchCache`` with a shared prefix read once: how tests see that
the path ran."""

BATCH_CACHE = "tokenomy_batch_cache"
"""The keyword a model's forward passes down to its attention layers: the ``kernels.batch.BatchCache`` the batch
decodes from (missing: the model's own attention, unchanged)."""


def install(model: Any) -> None:
    """Make ``model``'s attention decode from a ``BatchCache`` in forward passes given one as ``BATCH_CACHE``
    (``decode_attention``: the shared prefix read once for the batch, each row's own KV up to its length; the
    attention mask is not used, the cache's lengths are); every other call goes to the model's own attention
    implementation, unchanged. Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = model.config._attn_implementation
    if current.startswith("tokenomy_shared_prefix:"):
        return
    plain = ALL_ATTENTION_FUNCTIONS[current] if current != "eager" else None
    name = f"tokenomy_shared_prefix:{current}"

    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                  scaling: float | None = None, **kwargs: Any) -> tuple[Any, Any]:
        cache = kwargs.pop(BATCH_CACHE, None)
        if cache is None:
            if plain is not None:
                return plain(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
            from transformers.models.llama.modeling_llama import eager_attention_forward

            return eager_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                           scaling=scaling if scaling is not None else module.scaling, **kwargs)
        prefix_k, prefix_v = cache.prefix[module.layer_idx]
        scale = scaling if scaling is not None else module.scaling
        if prefix_k.shape[1]:
            COUNTERS["shared_prefix_calls"] += 1
        if cache.visible is not None:  # a prefill pass: [B, W, Hq, D]
            return prefill_attention(query, prefix_k, prefix_v, key, value, cache.visible, scale=scale), None
        if query.shape[2] != 1:
            raise ValueError(f"a batch cache decodes one token per row, not {query.shape[2]}")
        out = decode_attention(query[:, :, 0], prefix_k, prefix_v, key, value, cache.seen, scale=scale)
        return out.unsqueeze(1), None  # [B, 1, Hq, D], as the layer expects

    AttentionInterface.register(name, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    model.set_attn_implementation(name)
