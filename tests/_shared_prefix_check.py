"""Run the shared-prefix Triton kernel on fresh random inputs and compare it with PyTorch's attention in float64.

The reference is float64 because PyTorch's own float32 path on the CPU is not always float32-exact: on a CPU with
AVX512-BF16 the first float32 call in a process was, now and then, 3e-5 off in the log-sum-exp (the next calls of
the same process were exact), three times the kernel's tolerance, while the kernel stays within 3e-7 of float64.

Run as a script (the tests start it with TRITON_INTERPRET=1 on CPUs, where triton must be told before it is first
imported); prints one JSON object per shape: the relative error, the tolerance, and whether every output was
written (the kernel's partial buffers start as NaN)."""

from __future__ import annotations

import json
import sys

import torch

from tokenomy.kernels import shared_prefix
from tokenomy.kernels.shared_prefix import prefix_partial, reference_attention, shared_prefix_attention

shared_prefix.POISON_PARTIALS = True  # partial buffers start as NaN: a slot the kernels miss shows as "not written"

# (batch, query heads, KV heads, head dim, prefix, longest suffix, dtype, prefix splits, suffix splits)
SHAPES = [
    (4, 8, 2, 64, 300, 40, "float32", None, None),  # grouped-query, prefix not a multiple of the block
    (3, 4, 4, 32, 17, 5, "float32", None, None),    # multi-head, short prefix
    (1, 8, 1, 16, 129, 1, "float32", 3, None),      # one request, multi-query, three splits
    (6, 6, 2, 64, 64, 0, "float32", None, None),    # no suffix at all
    (5, 8, 2, 64, 200, 30, "bfloat16", 2, None),    # bf16 inputs
    (40, 4, 1, 32, 96, 9, "float32", 2, None),      # more rows than one block: two row blocks
    (3, 8, 2, 64, 0, 150, "float32", None, 3),      # no shared prefix; each row's KV split in three
    (2, 4, 2, 32, 70, 200, "bfloat16", None, 4),    # suffixes longer than the prefix, split; bf16
]


def partial_float64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, ...]:
    """The prefix's partial (every request's queries ``[B, Hq, D]`` over ``[Hkv, P, D]``) and its log-sum-exp, in
    float64."""
    b, hq, d = q.shape
    hkv = k.shape[0]
    s = torch.einsum("bgjd,gpd->bgjp", q.double().reshape(b, hkv, hq // hkv, d), k.double()) * scale
    lse = torch.logsumexp(s, dim=-1)
    out = torch.einsum("bgjp,gpd->bgjd", torch.exp(s - lse[..., None]), v.double())
    return out.reshape(b, hq, d), lse.reshape(b, hq)


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for i, (b, hq, hkv, d, p, s, dtype, splits, own_splits) in enumerate(SHAPES):
        g = torch.Generator(device="cpu").manual_seed(1000 + i)
        dt = getattr(torch, dtype)

        def rnd(*shape: int, g: torch.Generator = g, dt: torch.dtype = dt) -> torch.Tensor:
            return torch.randn(*shape, generator=g).to(device=device, dtype=dt)

        q, pk, pv = rnd(b, hq, d), rnd(hkv, p, d), rnd(hkv, p, d)
        sk, sv = rnd(b, hkv, max(s, 1), d), rnd(b, hkv, max(s, 1), d)
        lens = torch.randint(0, s + 1, (b,), generator=g)
        if s:
            lens[0] = s  # the longest suffix is there
        if not p:
            lens.clamp_(min=1)  # with no prefix, every row attends to something
        ref = reference_attention(q, pk, pv, sk, sv, lens, dtype=torch.float64)
        out = shared_prefix_attention(q, pk, pv, sk, sv, lens, prefix_splits=splits, suffix_splits=own_splits,
                                      block_m=128)
        err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
        print(json.dumps({"shape": [b, hq, hkv, d, p, s], "dtype": dtype, "rel_error": err,
                          "tolerance": 2e-2 if dtype == "bfloat16" else 1e-5,
                          "written": bool(torch.isfinite(out.float()).all()), "device": device}), flush=True)
    # The prefix's partial alone, split in three and merged by the merge kernel with its log-sum-exp (what a
    # prefill pass merges with each row's own part), against the PyTorch path.
    g = torch.Generator(device="cpu").manual_seed(99)
    q, pk, pv = (torch.randn(*shape, generator=g).to(device) for shape in ((6, 8, 64), (2, 150, 64), (2, 150, 64)))
    out, lse = prefix_partial(q, pk, pv, scale=0.125, use_triton=True, splits=3, block_n=32)
    ref, ref_lse = partial_float64(q, pk, pv, scale=0.125)
    err = max(((out.double() - ref).abs().max() / ref.abs().max()).item(),
              ((lse.double() - ref_lse).abs().max() / ref_lse.abs().max()).item())
    print(json.dumps({"shape": [6, 8, 2, 64, 150, 0], "dtype": "float32", "rel_error": err, "tolerance": 1e-5,
                      "written": bool(torch.isfinite(out).all() and torch.isfinite(lse).all()), "device": device,
                      "what": "prefix partial and log-sum-exp"}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
