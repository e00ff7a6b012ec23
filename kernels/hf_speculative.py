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

``k`` adapts to the acceptance: +1 after a round where every proposal was kept, -1 after one where the first was
not, within ``[1, draft_k_max]``; the engine keeps it from request to request. What it cost is counted per
completion (``Completion.speculation``) and per engine (``TransformersEngine.speculation``): tokens proposed and
accepted, the long model's verification passes, and the FLOPs of both models, the wasted ones apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tokenomy.errors import UserError

from .radix import PrefixMatch
from .types import Completion, Request

if TYPE_CHECKING:
    from .hf import TransformersEngine

__all__ = ["Speculation", "SpeculativeDecoding", "check_draft"]


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
                           self.verified_tokens + other.verified_tokens,
                           self.draft_flops_per_token or other.draft_flops_per_token,
                           self.long_flops_per_token or other.long_flops_per_token)

    def to_dict(self) -> dict[str, Any]:
        return {"proposed": self.proposed, "accepted": self.accepted, "rounds": self.rounds,
                "acceptance_rate": self.acceptance_rate, "tokens_per_round": self.tokens_per_round,
                "draft_tokens": self.draft_tokens, "verified_tokens": self.verified_tokens,
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


class SpeculativeDecoding:
    """Mixin of ``hf.TransformersEngine``: ``_generate_speculative``, one request decoded with the draft's help."""

    # Set by TransformersEngine.__init__ (or by CachedPrefill).
    draft: TransformersEngine | None
    draft_k: int
    draft_k_max: int
    speculation: Speculation
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
                        k = min(self.draft_k, item.decoding.max_new - len(d.gen) - 1, window - len(seq) - 1)
                        if k < 1:  # no room for a proposal and a token of the long model's own
                            done = d.step(self._forward([seq[-1]], past))
                            _truncate(draft_past, len(seq))
                            draft_have = min(draft_have, len(seq))
                            continue
                        proposals, probs, draft_have = self._propose(d, draft, draft_past, seq, draft_have, k, stats)
                        k = len(proposals)
                        x = torch.tensor([[seq[-1], *proposals]], dtype=torch.long, device=self.device)
                        logits = self._run(past, input_ids=x, logits_to_keep=k + 1).logits[0].float()
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
                        self._adapt(kept, k)
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

    def _adapt(self, kept: int, k: int) -> None:
        if kept == k:
            self.draft_k = min(self.draft_k + 1, self.draft_k_max)
        elif kept == 0:
            self.draft_k = max(self.draft_k - 1, 1)


def _truncate(past: Any, length: int) -> None:
    """Cut a ``DynamicCache`` to its first ``length`` tokens (the rejected proposals' KV goes)."""
    if past is None:
        return
    for layer in past.layers:
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.shape[-2] > length:
            layer.keys = keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
