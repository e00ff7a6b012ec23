"""The KV cache of a batch decoding together, and one decode step over it (eagerly, or replayed as a CUDA graph).

``transformers``' ``DynamicCache`` grows by concatenation: every decode step copies every row's whole KV, and a
prefix the rows share is stored (and copied) once per row. ``BatchCache`` is allocated once per batch instead:

- the prefix every row shares, stored once per layer (``[Hkv, P, D]``);
- each row's own tokens after it, in a buffer with room for all the tokens it may still generate
  (``[B, Hkv, S, D]``);
- each row's length in that buffer as a tensor on the device (``lens``), so that a step writes the new KV at
  ``lens`` and advances it without asking the host anything: the step has fixed shapes and no host sync, and on a
  GPU it is captured once as a CUDA graph and replayed (one launch instead of hundreds of kernel launches per
  step, which is what bounds plain ``transformers`` decoding at small batches).

The model's attention reads the cache through ``kernels.shared_prefix.install`` (the ``BATCH_CACHE`` keyword):
the prefix once for the batch, each row's own KV up to its length, merged by log-sum-exp.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

__all__ = ["BatchCache", "DecodeStep", "STEPS"]

log = logging.getLogger(__name__)

STEPS = {"eager": 0, "graph": 0, "captured": 0}
"""Decode steps run eagerly and replayed from a CUDA graph, and graphs captured: how tests see which path ran."""


class BatchCache:
    """The KV of ``B`` rows decoding together: a shared prefix once per layer, each row's own tokens after it.

    Args:
        prefix: per layer, the shared prefix's ``(K, V)``, ``[Hkv, P, D]`` (``P`` may be 0).
        own: per layer, every row's own ``(K, V)`` buffers, ``[B, Hkv, S, D]``.
        lens: ``[B]`` (long, on the device): how many own tokens each row holds.
    """

    def __init__(self, prefix: Sequence[tuple[Any, Any]], own: Sequence[tuple[Any, Any]], lens: Any) -> None:
        import torch

        if len(prefix) != len(own):
            raise ValueError(f"{len(prefix)} prefix layers but {len(own)} own layers")
        self.prefix = list(prefix)
        self.own = list(own)
        self.lens = lens
        b = lens.shape[0]
        self.rows = torch.arange(b, device=lens.device)
        self.seen = torch.zeros(b, dtype=torch.int32, device=lens.device)  # own tokens a step attends to
        self.at = torch.zeros_like(lens)  # where a step writes each row's new token
        self.active = torch.ones(b, dtype=lens.dtype, device=lens.device)  # rows whose length advances
        self.write_at: Any = None  # a prefill pass: where each token goes, and how far each one sees
        self.visible: Any = None

    @classmethod
    def from_parts(cls, prefix: Sequence[tuple[Any, Any]], shared: int, owns: Sequence[Sequence[tuple[Any, Any]]],
                   capacity: int) -> BatchCache:
        """Build from the KV the rows share (per layer, ``[1, Hkv, >= shared, D]``: its first ``shared``
        positions, copied once) and each row's own KV after it (per row and layer, ``[1, Hkv, L_r, D]``, copied into
        a buffer of ``capacity`` positions)."""
        import torch

        if not owns:
            raise ValueError("a batch cache needs at least one row")
        lengths = [int(own[0][0].shape[2]) if own else 0 for own in owns]
        if any(n > capacity for n in lengths) or any(k.shape[2] < shared for k, _ in prefix):
            raise ValueError(f"rows of {lengths} own tokens after a prefix of {shared} do not fit {capacity} "
                             "positions or the prefix given")
        layers, own = [], []
        for li, (k0, v0) in enumerate(prefix):
            layers.append((k0[0, :, :shared].contiguous(), v0[0, :, :shared].contiguous()))  # read as is per step
            hkv, d = k0.shape[1], k0.shape[3]
            ks = k0.new_zeros(len(owns), hkv, capacity, d)
            vs = v0.new_zeros(len(owns), hkv, capacity, d)
            for r, (kv, n) in enumerate(zip(owns, lengths, strict=True)):
                if n:
                    ks[r, :, :n] = kv[li][0][0]
                    vs[r, :, :n] = kv[li][1][0]
            own.append((ks, vs))
        return cls(layers, own, torch.tensor(lengths, dtype=torch.long, device=prefix[0][0].device))

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[tuple[Any, Any]]], lengths: Sequence[int], shared: int,
                  capacity: int) -> BatchCache:
        """Build from each row's whole KV per layer (``[1, Hkv, >= lengths[r], D]``; its first ``shared``
        positions the same in every row, read from row 0)."""
        if not rows:
            raise ValueError("a batch cache needs at least one row")
        if any(n < shared for n in lengths):
            raise ValueError(f"rows of {list(lengths)} tokens do not fit a prefix of {shared}")
        owns = [[(k[:, :, shared:n], v[:, :, shared:n]) for k, v in kv] for kv, n in zip(rows, lengths, strict=True)]
        return cls.from_parts(rows[0], shared, owns, capacity)

    def start_prefill(self, write_at: Any, visible: Any) -> None:
        """The next forward pass feeds ``W`` tokens per row (``[B, W]``, left-padded): token ``j`` of row ``r``
        is written at own position ``write_at[r, j]`` and attends to the prefix and to the first
        ``visible[r, j]`` own positions (0 for padding, which is written to a spare position past the rows')."""
        self.write_at, self.visible = write_at, visible

    def end_prefill(self, fed: Any) -> None:
        """After the prefill pass: each row holds ``fed[r]`` more own tokens."""
        self.lens += fed
        self.write_at = self.visible = None

    @property
    def batch_size(self) -> int:
        return int(self.lens.shape[0])

    @property
    def shared(self) -> int:
        return int(self.prefix[0][0].shape[1]) if self.prefix else 0

    @property
    def capacity(self) -> int:
        return int(self.own[0][0].shape[2]) if self.own else 0

    def update(self, key: Any, value: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Called by each attention layer with the pass's new ``(K, V)`` (``[B, Hkv, W, D]``): a decode step's
        one token per row is written at each row's length, a prefill pass's tokens where ``start_prefill`` said;
        returns the layer's own buffers (the attention reads ``seen``, or ``visible``, positions of them)."""
        ks, vs = self.own[layer_idx]
        if self.write_at is not None:
            if tuple(key.shape[::2]) != tuple(self.write_at.shape):
                raise ValueError(f"a prefill pass of {tuple(self.write_at.shape)} tokens got {tuple(key.shape)}")
            ks[self.rows[:, None], :, self.write_at] = key.transpose(1, 2)
            vs[self.rows[:, None], :, self.write_at] = value.transpose(1, 2)
            return ks, vs
        if key.shape[2] != 1:
            raise ValueError(f"a batch cache takes one new token per row, not {key.shape[2]}")
        if layer_idx == 0:
            # A finished row's length can sit at the end of its buffer (the live rows' grow first): it writes its
            # last position again and sees no further, never past its buffer.
            self.at.copy_(self.lens.clamp(max=ks.shape[2] - 1))
            self.seen.copy_(self.at + 1)
        ks[self.rows, :, self.at] = key[:, :, 0]
        vs[self.rows, :, self.at] = value[:, :, 0]
        return ks, vs

    def advance(self) -> None:
        """After a step: the active rows hold one more token."""
        self.lens += self.active

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.shared

    def row_kv(self, row: int, length: int) -> list[tuple[Any, Any]]:
        """Row ``row``'s KV per layer, its ``length`` own tokens after the prefix: ``[1, Hkv, P + length, D]``."""
        import torch

        return [(torch.cat([pk, ks[row, :, :length]], dim=1).unsqueeze(0),
                 torch.cat([pv, vs[row, :, :length]], dim=1).unsqueeze(0))
                for (pk, pv), (ks, vs) in zip(self.prefix, self.own, strict=True)]

    def row_parts(self, row: int, length: int) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]]]:
        """Row ``row``'s KV per layer as views, without copying the prefix: the prefix
        (``[1, Hkv, P, D]``) and its ``length`` own tokens (``[1, Hkv, length, D]``)."""
        return ([(pk.unsqueeze(0), pv.unsqueeze(0)) for pk, pv in self.prefix],
                [(ks[row:row + 1, :, :length], vs[row:row + 1, :, :length]) for ks, vs in self.own])

    def grown(self, capacity: int) -> BatchCache:
        """The same rows with room for ``capacity`` own tokens each (copied)."""
        own = []
        for ks, vs in self.own:
            k2 = ks.new_zeros(ks.shape[0], ks.shape[1], capacity, ks.shape[3])
            v2 = vs.new_zeros(vs.shape[0], vs.shape[1], capacity, vs.shape[3])
            k2[:, :, : ks.shape[2]] = ks
            v2[:, :, : vs.shape[2]] = vs
            own.append((k2, v2))
        grown = BatchCache(self.prefix, own, self.lens.clone())
        grown.active.copy_(self.active)
        return grown

    def select(self, rows: Sequence[int]) -> BatchCache:
        """A cache of only ``rows`` (copied): what a batch whose other rows finished goes on with."""
        import torch

        idx = torch.tensor(list(rows), dtype=torch.long, device=self.lens.device)
        return BatchCache(self.prefix, [(ks[idx], vs[idx]) for ks, vs in self.own], self.lens[idx].clone())


def cache_keyword(model: Any) -> str:
    """The name under which ``model``'s forward takes its KV cache: ``cache`` since transformers 5.24 (where the
    old ``past_key_values`` warns that it goes in 5.40), ``past_key_values`` before."""
    import inspect

    forward = type(model).forward  # the class's: a wrapper set on the instance (a test's, a profiler's) hides it
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


class DecodeStep:
    """One decode step of a batch over its ``BatchCache``: the model's forward for each row's last token at its
    own position, the float32 logits of every row and their argmax, then the active rows' lengths advance.

    Inputs and outputs live in fixed buffers (``tokens`` in; ``logits``, ``argmax`` out). With ``graph=True``
    (CUDA only) the step is captured as a CUDA graph after two warm-up steps that leave the cache's lengths
    unchanged, and each call replays it; if capturing fails, it logs why and runs eagerly.
    """

    def __init__(self, model: Any, cache: BatchCache, *, graph: bool = False) -> None:
        import torch

        from .shared_prefix import BATCH_CACHE

        self.model, self.cache, self._torch = model, cache, torch
        device = cache.lens.device
        self.tokens = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=device)
        self._mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)  # 4-D: transformers passes it as is
        self._extra = {BATCH_CACHE: cache, cache_keyword(model): cache}
        self.logits: Any = None
        self.argmax: Any = None
        self.graph: Any = None
        if graph and device.type == "cuda":
            try:
                self._capture()
            except Exception as exc:  # noqa: BLE001 - a model that cannot be captured still decodes eagerly
                log.warning("decoding without a CUDA graph: capturing the step failed: %r", exc)
                self.graph = None
                with contextlib.suppress(Exception):  # a broken capture may fail this too; the eager step will say
                    torch.cuda.synchronize(device)

    def _forward(self) -> None:
        cache = self.cache
        positions = (cache.lens + cache.shared).unsqueeze(1)
        out = self.model(input_ids=self.tokens, attention_mask=self._mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **self._extra)
        logits = out.logits[:, -1].float()
        argmax = logits.argmax(dim=-1)
        if self.logits is None:
            self.logits, self.argmax = logits, argmax
        else:  # graph warm-up and capture fill the same buffers
            self.logits.copy_(logits)
            self.argmax.copy_(argmax)
        cache.advance()

    def _capture(self) -> None:
        torch = self._torch
        cache = self.cache
        active = cache.active.clone()
        cache.active.zero_()  # warm-up steps write at each row's length but do not advance it
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.inference_mode(), torch.cuda.stream(stream):
                for _ in range(2):
                    self._forward()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                self._forward()
            self.graph = graph
            STEPS["captured"] += 1
        finally:
            cache.active.copy_(active)

    def __call__(self, tokens: Sequence[int]) -> None:
        """Run one step for ``tokens`` (one per row); results in ``logits`` and ``argmax``."""
        torch = self._torch
        self.tokens.copy_(torch.tensor(list(tokens), dtype=torch.long).view(-1, 1))
        if self.graph is not None:
            self.graph.replay()
            STEPS["graph"] += 1
        else:
            with torch.inference_mode():
                self._forward()
            STEPS["eager"] += 1
