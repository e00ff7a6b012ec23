"""Speculative decoding in the transformers engine (``kernels.hf``): a small draft model of the same tokenizer
proposes ``k`` tokens, one at a time over its own radix-cached prefix; the engine's model checks all of them in one
forward pass (the last committed token and the ``k`` proposals, on top of its own cached prefix) and keeps the
longest run it agrees with, plus one token of its own: the correction where it disagreed, or a bonus token after
``k`` accepted. On a CPU a forward pass over ``k + 1`` tokens costs little more than over one (decoding reads
every weight once either way), so each accepted token saves most of a long-model step.

Lossless: every token is taken by the engine's model from its own logits at that position, through the same
``_Decoding`` as plain decoding (grammar mask, min tokens, stop strings, logprobs, streaming): greedy gives the
tokens the model gives alone (tested), sampling keeps a proposal with probability ``min(1, p/q)`` and otherwise
draws from ``max(0, p - q)`` (the standard rejection rule), so the tokens are distributed as the model's own.
Under a grammar the draft proposes from the grammar's mask too (the matcher is rolled back before the check).

``k`` adapts to what speculation measures on the engine (``Tuning``, kept from request to request): the acceptance
of a proposal and the seconds of a draft step, a check and a plain step; each check proposes the ``k`` in
``[1, draft_k_max]`` that gives the most tokens per second, or none (a plain step) where no ``k`` beats plain
decoding (a draft that guesses badly on this text costs little then). What it cost is counted per
completion (``Completion.speculation``) and per engine (``TransformersEngine.speculation``): tokens proposed and
accepted, the long model's verification passes, and the FLOPs of both models, the wasted ones apart.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tokenomy.errors import UserError

from .radix import PrefixMatch
from .types import Completion, Request

if TYPE_CHECKING:
    from .hf import TransformersEngine

__all__ = ["Speculation", "SpeculativeDecoding", "Tuning", "check_draft", "quantize_draft"]


@dataclasses.dataclass
class Speculation:
    """What speculative decoding did for one completion, or a sum of them (``+``)."""

    proposed: int = 0
    """Tokens the draft proposed."""
    accepted: int = 0
    """Of them, those the long model kept."""
    rounds: int = 0
    """The long model's verification passes (each also yields one token of its own)."""
    draft_tokens: int = 0
    """Tokens the draft model computed: its prefill of the prompt's uncached part, and every token it was fed."""
    verified_tokens: int = 0
    """Positions the long model computed in its verification passes (``k + 1`` per round)."""
    plain_steps: int = 0
    """Tokens the long model decoded alone (where no proposal paid, or no room was left for one)."""
    draft_flops_per_token: float = 0.0
    long_flops_per_token: float = 0.0

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted over proposed (``None`` before any proposal)."""
        return self.accepted / self.proposed if self.proposed else None

    @property
    def tokens_per_round(self) -> float | None:
        """Tokens each verification pass gave: accepted proposals plus the long model's own."""
        return (self.accepted + self.rounds) / self.rounds if self.rounds else None

    @property
    def draft_flops(self) -> float:
        """Every FLOP the draft spent: the cost speculation adds to the long model's."""
        return self.draft_tokens * self.draft_flops_per_token

    @property
    def wasted_flops(self) -> float:
        """FLOPs spent on tokens that were thrown away: the rejected proposals in the draft, and the long model's
        positions after the first rejection in each verification pass."""
        rejected = self.proposed - self.accepted
        return rejected * (self.draft_flops_per_token + self.long_flops_per_token)

    def __add__(self, other: Speculation) -> Speculation:
        return Speculation(self.proposed + other.proposed, self.accepted + other.accepted,
                           self.rounds + other.rounds, self.draft_tokens + other.draft_tokens,
                           self.verified_tokens + other.verified_tokens, self.plain_steps + other.plain_steps,
                           self.draft_flops_per_token or other.draft_flops_per_token,
                           self.long_flops_per_token or other.long_flops_per_token)

    def to_dict(self) -> dict[str, Any]:
        return {"proposed": self.proposed, "accepted": self.accepted, "rounds": self.rounds,
                "acceptance_rate": self.acceptance_rate, "tokens_per_round": self.tokens_per_round,
                "draft_tokens": self.draft_tokens, "verified_tokens": self.verified_tokens,
                "plain_steps": self.plain_steps,
                "draft_flops": self.draft_flops, "wasted_flops": self.wasted_flops}


def check_draft(long: TransformersEngine, draft: TransformersEngine) -> None:
    """Raise ``UserError`` unless ``draft`` can propose tokens for ``long``: the same vocabulary, token for token
    (speculation compares token ids), and a model of its own (a model cannot draft for itself)."""
    if draft is long or draft.model is long.model:
        raise UserError("a draft model must be another model than the one it drafts for")
    if draft.device != long.device:
        raise UserError(f"the draft model is on {draft.device}, the long model on {long.device}: put both on one")
    if draft.tokenizer.get_vocab() != long.tokenizer.get_vocab():
        raise UserError(f"{draft.spec or 'the draft'} and {long.spec or 'the long model'} tokenize differently: "
                        "speculative decoding needs one tokenizer (e.g. Qwen2.5-Coder-0.5B for the 1.5B)")
    if draft.eos_token_ids != long.eos_token_ids:
        raise UserError("the draft model and the long model end text with different tokens")


def quantize_draft(draft: TransformersEngine) -> None:
    """The draft's linear layers in int8 (dynamic quantization, in place), on a CPU: a draft step reads a quarter
    of the bytes, and on a CPU a step is bound by reading the weights. Lossless all the same (the long model keeps
    only what it would pick itself); its FLOPs are counted as before."""
    import torch

    if draft.device.type != "cpu":
        return
    draft.flops_per_token  # noqa: B018 - computed from the float weights before they are packed
    torch.ao.quantization.quantize_dynamic(draft.model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


class SpeculativeDecoding:
    """Mixin of ``hf.TransformersEngine``: ``_generate_speculative``, one request decoded with the draft's help."""

    # Set by TransformersEngine.__init__ (or by CachedPrefill).
    draft: TransformersEngine | None
    draft_k: int
    draft_k_max: int
    speculation: Speculation
    _tune: Tuning
    _torch: Any
    _lock: Any

    if TYPE_CHECKING:  # TransformersEngine's and CachedPrefill's
        from .hf_cached import _Live

        @property
        def context_window(self) -> int: ...

        @property
        def flops_per_token(self) -> float: ...

        def _start(self, index: int, req: Request) -> _Live: ...

        def _past(self, match: PrefixMatch) -> Any: ...

        def _forward(self, ids: Sequence[int], past: Any) -> Any: ...

        def _run(self, past: Any, **inputs: Any) -> Any: ...

        def _keep_past(self, seq: list[int], past: Any, *, clone: bool = True) -> None: ...

        def _completion(self, item: _Live) -> Completion: ...

        cache: Any
        device: Any

    def _generate_speculative(self, req: Request) -> Completion:
        draft = self.draft
        assert draft is not None
        torch = self._torch
        item = self._start(0, req)
        d = item.decoding
        stats = Speculation(draft_flops_per_token=draft.flops_per_token, long_flops_per_token=self.flops_per_token)
        past = draft_past = None
        draft_match = PrefixMatch()
        draft_have = 0  # tokens whose KV the draft's cache holds
        window = min(self.context_window, draft.context_window)
        with draft._lock:  # the draft may also be an engine of its own, shared with other callers
            try:
                with torch.inference_mode():
                    past = self._past(item.match)
                    done = d.step(self._forward(item.ids[item.match.length:], past))
                    if not done:
                        if draft.cache is not None:
                            draft_match = draft.cache.match(item.ids)
                            draft.cache.lock(draft_match)
                        draft_past = draft._past(draft_match)
                        draft_have = draft_match.length
                    while not done:
                        seq = item.ids + d.gen
                        room = min(item.decoding.max_new - len(d.gen) - 1, window - len(seq) - 1)
                        # A seeded sample proposes draft_k every time: a k chosen by timing would change its random
                        # draws, and so its tokens, from one run to the next.
                        seeded = not d.params.greedy and d.params.seed is not None
                        k = min(self.draft_k, room) if seeded else self._choose_k(room)
                        if k < 1:  # no room for a proposal, or proposals do not pay now: one plain step
                            t0 = time.perf_counter()
                            done = d.step(self._forward([seq[-1]], past))
                            self._tune.step(time.perf_counter() - t0)
                            stats.plain_steps += 1
                            _truncate(draft_past, len(seq))
                            draft_have = min(draft_have, len(seq))
                            continue
                        t0 = time.perf_counter()
                        proposals, probs, draft_have = self._propose(d, draft, draft_past, seq, draft_have, k, stats)
                        t1 = time.perf_counter()
                        k = len(proposals)
                        x = torch.tensor([[seq[-1], *proposals]], dtype=torch.long, device=self.device)
                        logits = self._run(past, input_ids=x, logits_to_keep=k + 1).logits[0].float()
                        t2 = time.perf_counter()
                        stats.rounds += 1
                        stats.verified_tokens += k + 1
                        kept = 0
                        for i in range(k + 1):
                            if i == k:  # every proposal kept: the long model's next token comes free
                                done = d.step(logits[k])
                                break
                            tok, done = d.verify(logits[i], proposals[i], probs[i])
                            if tok != proposals[i]:
                                break
                            kept += 1
                            if done:
                                break
                        stats.accepted += kept
                        self._tune.round(kept, k, ended=done and kept < k, draft_s=(t1 - t0) / max(k, 1),
                                         verify_s=t2 - t1)
                        # Both caches hold every token but the last committed one.
                        have = len(item.ids) + len(d.gen) - 1
                        _truncate(past, have)
                        _truncate(draft_past, have)
                        draft_have = min(draft_have, have)
            finally:
                seq = item.ids + d.gen
                if past is not None:
                    _truncate(past, len(seq))
                if self.cache is not None:
                    self._keep_past(seq, past)
                    self.cache.unlock(item.match)
                if draft_past is not None:
                    _truncate(draft_past, min(draft_have, len(seq)))
                    draft._keep_past(seq, draft_past)
                if draft.cache is not None:
                    draft.cache.unlock(draft_match)
                item.released = True
                with self._lock:
                    self.speculation = self.speculation + stats
        completion = self._completion(item)
        completion.speculation = stats
        return completion

    def _propose(self, d: Any, draft: TransformersEngine, draft_past: Any, seq: list[int], have: int, k: int,
                 stats: Speculation) -> tuple[list[int], list[Any], int]:
        """Up to ``k`` tokens from the draft after ``seq`` (its cache holds ``have`` of them), each picked the way
        the long model picks (greedy, or sampled after the same temperature, top-k and top-p, under the request's
        grammar); with their distributions when sampling. Returns them and what the draft's cache then holds."""
        from .hf_decoding import _probs

        torch = self._torch
        params, constraint = d.params, d.constraint
        proposals: list[int] = []
        probs: list[Any] = []
        in_matcher = 0  # proposals the grammar's matcher accepted, rolled back before the check
        feed = seq[have:]
        try:
            for _ in range(k):
                logits = draft._forward(feed, draft_past)
                stats.draft_tokens += len(feed)
                have += len(feed)
                scores = logits.unsqueeze(0)
                if constraint is not None:
                    scores = scores.clone()
                    constraint.mask_logits(scores)
                if params.greedy:
                    tok = int(torch.argmax(scores[0]))
                    probs.append(None)
                else:
                    q = _probs(torch, scores[0], params)
                    tok = int(torch.multinomial(q, 1, generator=d.generator))
                    probs.append(q)
                proposals.append(tok)
                stats.proposed += 1
                if tok in draft.eos_token_ids:
                    break
                if constraint is not None:
                    constraint.accept(tok)
                    in_matcher += 1
                    if constraint.finished:
                        break
                feed = [tok]
        finally:
            if constraint is not None:
                constraint.rollback(in_matcher)
        return proposals, probs, have

    def _choose_k(self, limit: int) -> int:
        """The proposals for the next check: ``draft_k`` until a few checks are timed, then the ``k`` that
        maximises the expected tokens per second, ``(1 - a^(k+1)) / (1 - a)`` tokens for ``k`` draft steps and
        one check, from the measured acceptance ``a`` and times; 0 (a plain step) when no ``k`` beats plain
        decoding, with a look with ``k = 2`` every 16 plain steps, as the text may have changed."""
        if limit < 1:
            return 0
        t = self._tune
        if not t.plain_s:
            return 0  # once per engine: time a plain step, the yardstick
        if t.rounds < 3:
            return min(self.draft_k, limit)
        best_k, best_rate = 0, 1.0 / t.plain_s
        a = min(t.alpha, 0.98)
        for k in range(1, min(self.draft_k_max, limit) + 1):
            rate = (1.0 - a ** (k + 1)) / (1.0 - a) / (k * t.draft_s + t.check_s(k))
            if rate > best_rate:
                best_k, best_rate = k, rate
        if best_k == 0:
            t.skipped += 1
            if t.skipped >= 16:
                t.skipped = 0
                return min(2, limit)
        return best_k


class Tuning:
    """What speculation has measured on an engine (decaying, so it follows the text): the acceptance of a
    proposal (kept over kept plus rejections: the estimate of a geometric run's rate when full runs are cut off),
    the draft's seconds per proposal, a plain step's seconds and what each checked proposal adds to a check (on a
    GPU almost nothing; on a CPU without matrix units a 5-token pass of the 1.5B model took 2.9 times a 1-token
    one, measured)."""

    DECAY = 0.9

    def __init__(self) -> None:
        self.kept = self.rejected = 0.0
        self.draft_s = self.verify_s = self.plain_s = self.extra_s = 0.0
        self.rounds = 0
        self.skipped = 0

    def check_s(self, k: int) -> float:
        """The seconds of a check of ``k`` proposals: a plain step and ``k`` times the measured extra."""
        return self.plain_s + k * self.extra_s if self.plain_s else self.verify_s

    @property
    def alpha(self) -> float:
        seen = self.kept + self.rejected
        return self.kept / seen if seen else 0.0

    def round(self, kept: int, k: int, *, ended: bool, draft_s: float, verify_s: float) -> None:
        self.kept = self.kept * self.DECAY + kept
        self.rejected = self.rejected * self.DECAY + (1 if kept < k and not ended else 0)
        self.draft_s = _ema(self.draft_s, draft_s, self.rounds)
        self.verify_s = _ema(self.verify_s, verify_s, self.rounds)
        if self.plain_s and k:
            self.extra_s = _ema(self.extra_s, max(0.0, (verify_s - self.plain_s) / k), self.rounds)
        self.rounds += 1

    def step(self, seconds: float) -> None:
        self.plain_s = _ema(self.plain_s, seconds, 1 if self.plain_s else 0)


def _ema(old: float, new: float, seen: int) -> float:
    return new if not seen else 0.7 * old + 0.3 * new


def _truncate(past: Any, length: int) -> None:
    """Cut a ``DynamicCache`` to its first ``length`` tokens (the rejected proposals' KV goes)."""
    if past is None:
        return
    for layer in past.layers:
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.shape[-2] > length:
            layer.keys = keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
