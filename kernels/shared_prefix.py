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

import math
from typing import Any

__all__ = ["shared_prefix_attention", "shared_prefix_attention_torch", "reference_attention", "merge_partials",
           "triton_available"]


def triton_available() -> bool:
    """Whether the Triton kernel can run here: triton imports, and there is a GPU or the interpreter is on."""
    import importlib.util
    import os

    if importlib.util.find_spec("triton") is None:
        return False
    import torch

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


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


def _partial_torch(q: Any, k: Any, v: Any, valid: Any, scale: float) -> tuple[Any, Any]:
    """q ``[..., M, D]`` against k/v ``[..., N, D]`` with ``valid`` ``[..., N]``: output and log-sum-exp."""
    import torch

    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    s = s.masked_fill(~valid.unsqueeze(-2), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)).unsqueeze(-1))
    return torch.matmul(p, v.float()), lse


def shared_prefix_attention_torch(q: Any, prefix_k: Any, prefix_v: Any, suffix_k: Any, suffix_v: Any,
                                  suffix_lens: Any, *, scale: float | None = None) -> Any:
    """The cascade in PyTorch (the prefix as one batched matmul over all requests' queries); returns ``[B, Hq, D]``
    in ``q``'s dtype."""
    import torch

    b, hq, d, hkv, p, s = _check(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens)
    g = hq // hkv
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    # Prefix: per KV head, the B*G queries as rows: [Hkv, B*G, D] against [Hkv, P, D].
    rows = q.view(b, hkv, g, d).permute(1, 0, 2, 3).reshape(hkv, b * g, d)
    o_p, l_p = _partial_torch(rows, prefix_k, prefix_v, torch.ones(hkv, p, dtype=torch.bool, device=q.device), scale)
    o_p = o_p.view(hkv, b, g, d).permute(1, 0, 2, 3).reshape(b, hq, d)
    l_p = l_p.view(hkv, b, g).permute(1, 0, 2).reshape(b, hq)
    # Suffix: per request and KV head, its G queries: [B, Hkv, G, D] against [B, Hkv, S, D].
    valid = torch.arange(s, device=q.device)[None, :] < suffix_lens.to(q.device)[:, None]
    o_s, l_s = _partial_torch(q.view(b, hkv, g, d), suffix_k, suffix_v, valid[:, None, :].expand(b, hkv, s), scale)
    out, _ = merge_partials(torch.stack([o_p, o_s.reshape(b, hq, d)]), torch.stack([l_p, l_s.reshape(b, hq)]))
    return out.to(q.dtype)


def reference_attention(q: Any, prefix_k: Any, prefix_v: Any, suffix_k: Any, suffix_v: Any, suffix_lens: Any, *,
                        scale: float | None = None) -> Any:
    """Plain attention of each request over its prefix + suffix, one request at a time, in float32 (PyTorch's
    ``scaled_dot_product_attention``); returns ``[B, Hq, D]`` float32."""
    import torch

    b, hq, d, hkv, p, s = _check(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens)
    g = hq // hkv
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    out = []
    for i in range(b):
        n = int(suffix_lens[i])
        k = torch.cat([prefix_k, suffix_k[i, :, :n]], dim=1).float().repeat_interleave(g, dim=0)  # [Hq, P+n, D]
        v = torch.cat([prefix_v, suffix_v[i, :, :n]], dim=1).float().repeat_interleave(g, dim=0)
        qi = q[i].float().unsqueeze(1)  # [Hq, 1, D]
        out.append(torch.nn.functional.scaled_dot_product_attention(qi, k, v, scale=scale)[:, 0])
    return torch.stack(out)


# -- the Triton kernel -----------------------------------------------------------------------------------------

_KERNEL: Any = None


def _kernel() -> Any:
    """Compile-on-first-use: triton is imported only when the kernel runs."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
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
                          HEAD_DIM: tl.constexpr, IEEE: tl.constexpr):
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
                    other=0.0).to(tl.float32)
        start = split * split_len
        end = tl.minimum(start + split_len, length)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < end
            offs = kv_base + cols[:, None] * stride_kn + dims[None, :]
            k = tl.load(K + offs, mask=col_ok[:, None], other=0.0).to(tl.float32)
            v = tl.load(V + offs, mask=col_ok[:, None], other=0.0).to(tl.float32)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:
                s = tl.dot(q, tl.trans(k)) * scale
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p, v)
            m_i = m_new
        has = l_i > 0
        out = acc / tl.where(has, l_i, 1.0)[:, None]
        lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
        tl.store(O + split * stride_os + b[:, None] * stride_ob + qh[:, None] * stride_oh + dims[None, :], out,
                 mask=row_ok[:, None])
        tl.store(L + split * stride_ls + b * stride_lb + qh, lse, mask=row_ok)

    _KERNEL = partial_attention
    return _KERNEL


def _pow2(n: int, lo: int) -> int:
    return max(lo, 1 << max(n - 1, 0).bit_length())


def shared_prefix_attention(q: Any, prefix_k: Any, prefix_v: Any, suffix_k: Any, suffix_v: Any, suffix_lens: Any, *,
                            scale: float | None = None, prefix_splits: int | None = None, block_n: int = 64,
                            block_m: int = 128) -> Any:
    """The cascade with the Triton kernel; returns ``[B, Hq, D]`` in ``q``'s dtype.

    ``prefix_splits``: programs along the prefix per block of rows (default: enough to give the GPU about four
    programs per KV head and row block, each over at least ``4 * block_n`` tokens). ``block_m`` caps the rows a
    program takes: with ``B * Hq / Hkv <= block_m`` the prefix's KV is read exactly once.
    """
    import torch

    b, hq, d, hkv, p, s = _check(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens)
    if d & (d - 1) or d < 16:
        raise ValueError(f"head dim {d}: the kernel takes a power of two >= 16")
    g = hq // hkv
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    kernel = _kernel()
    q = q.contiguous()
    prefix_k, prefix_v = prefix_k.contiguous(), prefix_v.contiguous()
    suffix_k, suffix_v = suffix_k.contiguous(), suffix_v.contiguous()
    lens = suffix_lens.to(device=q.device, dtype=torch.int32).contiguous()
    ieee = q.dtype == torch.float32
    rows = b * g
    bm = min(_pow2(rows, 16), _pow2(block_m, 16))
    row_blocks = -(-rows // bm)
    splits = prefix_splits or max(1, min(-(-p // (4 * block_n)), 4))
    split_len = -(-max(p, 1) // splits)
    split_len = -(-split_len // block_n) * block_n
    splits = max(1, -(-p // split_len))
    # Partials: the prefix splits, then the suffix (index ``splits``); NaN first, so a row left unwritten shows.
    outs = torch.full((splits + 1, b, hq, d), float("nan"), dtype=torch.float32, device=q.device)
    lses = torch.full((splits + 1, b, hq), float("nan"), dtype=torch.float32, device=q.device)
    kernel[(hkv, row_blocks, splits)](
        q, prefix_k, prefix_v, lens, outs, lses, scale,
        q.stride(0), q.stride(1),
        0, prefix_k.stride(0), prefix_k.stride(1),
        outs.stride(0), outs.stride(1), outs.stride(2),
        lses.stride(0), lses.stride(1),
        rows, g, p, split_len,
        SHARED=True, BLOCK_M=bm, BLOCK_N=block_n, HEAD_DIM=d, IEEE=ieee)
    suffix_split_len = -(-max(s, 1) // block_n) * block_n
    kernel[(hkv, b, 1)](
        q, suffix_k, suffix_v, lens, outs[splits:], lses[splits:], scale,
        q.stride(0), q.stride(1),
        suffix_k.stride(0), suffix_k.stride(1), suffix_k.stride(2),
        outs.stride(0), outs.stride(1), outs.stride(2),
        lses.stride(0), lses.stride(1),
        g, g, s, suffix_split_len,
        SHARED=False, BLOCK_M=_pow2(g, 16), BLOCK_N=block_n, HEAD_DIM=d, IEEE=ieee)
    out, _ = merge_partials(outs, lses)
    return out.to(q.dtype)
