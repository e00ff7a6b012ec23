"""The shared-prefix decode attention: the PyTorch cascade and the Triton kernel against PyTorch's attention in
float32, on fresh random inputs at several shapes. On CPUs the kernel runs under Triton's interpreter."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import require
from tokenomy.kernels.shared_prefix import (
    merge_partials,
    reference_attention,
    shared_prefix_attention,
    shared_prefix_attention_torch,
)


def inputs(b, hq, hkv, d, p, s, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    lens = torch.randint(0, s + 1, (b,), generator=g)
    return rnd(b, hq, d), rnd(hkv, p, d), rnd(hkv, p, d), rnd(b, hkv, max(s, 1), d), rnd(b, hkv, max(s, 1), d), lens


@pytest.mark.parametrize("shape", [(4, 8, 2, 64, 300, 40), (3, 4, 4, 32, 17, 5), (1, 8, 1, 16, 1, 1),
                                   (6, 6, 2, 64, 64, 0)])
def test_the_pytorch_cascade_equals_plain_attention(shape):
    args = inputs(*shape, seed=sum(shape))
    ref = reference_attention(*args)
    out = shared_prefix_attention_torch(*args)
    assert out.shape == ref.shape and torch.allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_merging_partials_by_log_sum_exp_is_exact():
    g = torch.Generator().manual_seed(7)
    q, k, v = torch.randn(3, 16, generator=g), torch.randn(50, 16, generator=g), torch.randn(50, 16, generator=g)
    full = torch.softmax(q @ k.T, dim=-1) @ v
    outs, lses = [], []
    for lo, hi in ((0, 7), (7, 7), (7, 31), (31, 50)):  # one empty part
        s = q @ k[lo:hi].T
        lse = torch.logsumexp(s, dim=-1) if hi > lo else torch.full((3,), float("-inf"))
        outs.append(torch.softmax(s, dim=-1) @ v[lo:hi] if hi > lo else torch.zeros(3, 16))
        lses.append(lse)
    out, lse = merge_partials(torch.stack(outs), torch.stack(lses))
    assert torch.allclose(out, full, atol=1e-6) and torch.allclose(lse, torch.logsumexp(q @ k.T, dim=-1))


def test_shapes_that_do_not_fit_are_refused():
    q, pk, pv, sk, sv, lens = inputs(2, 6, 4, 16, 8, 2)
    with pytest.raises(ValueError, match="not a multiple"):
        shared_prefix_attention_torch(q, pk, pv, sk, sv, lens)
    q, pk, pv, sk, sv, lens = inputs(2, 4, 2, 16, 8, 2)
    with pytest.raises(ValueError, match="do not fit"):
        shared_prefix_attention_torch(q, pk[:, :, :8], pv[:, :, :8], sk, sv, lens)
    with pytest.raises(ValueError, match="power of two"):
        shared_prefix_attention(q[..., :12], pk[..., :12], pv[..., :12], sk[..., :12], sv[..., :12], lens)


def test_the_triton_kernel_equals_plain_attention_at_several_shapes():
    if importlib.util.find_spec("triton") is None:
        require("triton (pip install 'tokenomy[test]')")
    env = {**os.environ}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"  # triton reads it when first imported: a fresh process
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "tests" / "_shared_prefix_check.py")], capture_output=True,
                         text=True, timeout=600, env=env, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 9
    assert {tuple(r["shape"]) for r in rows} >= {(3, 8, 2, 64, 0, 150), (2, 4, 2, 32, 70, 200), (6, 8, 2, 64, 150, 0)}
    for r in rows:
        assert r["written"], r
        assert r["rel_error"] <= r["tolerance"], r
