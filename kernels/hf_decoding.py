"""One request's decoding in the transformers engine (``kernels.hf``): from a step's logits to its next token
(grammar mask, min tokens, sampling, logprobs) and the ways a request ends (EOS, a stop string, the grammar's end,
the token limit, cancellation). The same per request whether it decodes alone or in a batch (``kernels.hf_batch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from tokenomy.errors import RequestCancelled

from .types import FinishReason, Request


class _DecodingEngine(Protocol):
    """What a request's decoding reads from its engine (``hf.TransformersEngine``)."""

    _torch: Any
    device: Any
    tokenizer: Any
    eos_token_ids: list[int]


class _Decoding:
    """One request's decoding: sampling, grammar, min tokens, logprobs and the ways it ends (EOS, a stop string,
    the grammar's end, the token limit, cancellation), one token per ``step``."""

    def __init__(self, engine: _DecodingEngine, req: Request, max_new: int, constraint: Any,
                 gen: list[int]) -> None:
        torch = engine._torch
        self.engine, self.req, self.max_new, self.constraint, self.gen = engine, req, max_new, constraint, gen
        self.params = req.params
        self.logprobs: list[float] = []
        self.generator = None
        if not self.params.greedy:
            self.generator = torch.Generator(device=engine.device)
            if self.params.seed is not None:
                self.generator.manual_seed(self.params.seed)
            else:
                self.generator.seed()
        self.longest_stop = max((len(st) for st in self.params.stop), default=0)
        self.text, self.floor = "", 0
        self.cut: int | None = None
        self.finish: FinishReason = "length"
        self.sent = 0
        """Characters already handed to ``req.on_text``."""

    @property
    def fast(self) -> bool:
        """Whether the next token is the argmax of the raw logits (greedy, no grammar, no logprobs, EOS not held
        off): then a batch's argmax, taken on the device, is this request's token."""
        params = self.params
        return params.greedy and self.constraint is None and not params.logprobs and (
            len(self.gen) >= params.min_tokens or not self.engine.eos_token_ids)

    def step(self, logits: Any, token: int | None = None) -> bool:
        """Pick the next token from ``logits`` (``[V]``), or take ``token`` (the argmax, when ``fast``); ``True``
        when the request is finished. A streaming request (``req.on_text``) gets the new text as it goes."""
        done = self._step(logits, token)
        if self.req.on_text is not None:
            self._emit(done)
        return done

    def _emit(self, done: bool) -> None:
        """Hand the text decoded since the last call to ``req.on_text``: all of it when the request is done;
        before that, less what a stop string could still cut and an unfinished character."""
        if done:
            text = self.result()[2]
            end = len(text)
        else:
            text = self.text if self.params.stop else self.engine.tokenizer.decode(self.gen, skip_special_tokens=True)
            end = len(text) - (self.longest_stop if self.params.stop else 0)
            while end > self.sent and text[end - 1] == "\ufffd":  # a character whose bytes are not all out yet
                end -= 1
        if end > self.sent:
            self.req.on_text(text[self.sent:end])
            self.sent = end

    def _step(self, logits: Any, token: int | None = None) -> bool:
        self._check_cancelled()
        if token is not None and self.fast:
            tok = token
        else:
            tok = _sample(self.engine._torch, self.scores(logits)[0], self.params, self.generator)
        return self._commit(logits, tok)

    def _check_cancelled(self) -> None:
        if self.req.cancelled:
            raise RequestCancelled(f"{self.req.request_id} was cancelled after {len(self.gen)} tokens")

    def scores(self, logits: Any) -> Any:
        """``logits`` (``[V]``) as ``[1, V]`` scores the next token may be drawn from: the grammar's mask, and no
        end of sequence before ``min_tokens``."""
        engine, constraint = self.engine, self.constraint
        scores = logits.unsqueeze(0)
        if constraint is not None:
            scores = scores.clone()
            constraint.mask_logits(scores)
        if len(self.gen) < self.params.min_tokens and engine.eos_token_ids:
            scores = scores.clone()
            scores[0, engine.eos_token_ids] = float("-inf")
        return scores

    def verify(self, logits: Any, proposal: int, draft_probs: Any) -> tuple[int, bool]:
        """Speculative decoding's check of a drafted token against this model's ``logits`` at its position: greedy
        keeps it when it is this model's own choice; sampling keeps it with probability ``min(1, p/q)`` and
        otherwise draws from ``max(0, p - q)`` renormalised (the standard rejection rule: the tokens come out
        distributed exactly as this model's own samples). ``draft_probs``: the draft's distribution ``q`` it was
        drawn from (``None`` when greedy). Returns the token taken and whether the request is finished."""
        self._check_cancelled()
        torch = self.engine._torch
        scores = self.scores(logits)[0]
        if self.params.greedy:
            tok = int(torch.argmax(scores))
        else:
            tok = _rejection_sample(torch, _probs(torch, scores, self.params), draft_probs, proposal,
                                    self.generator)
        done = self._commit(logits, tok)
        if self.req.on_text is not None:
            self._emit(done)
        return tok, done

    def _commit(self, logits: Any, tok: int) -> bool:
        """Take ``tok`` as the next token; ``True`` when the request is finished."""
        engine, params, gen, constraint = self.engine, self.params, self.gen, self.constraint
        torch = engine._torch
        if params.logprobs:
            self.logprobs.append(float(torch.log_softmax(logits, dim=-1)[tok]))
        gen.append(tok)
        if constraint is not None:
            constraint.accept(tok)
        if tok in engine.eos_token_ids:
            self.finish = "stop"
            return True
        if params.stop:
            prev = len(self.text)
            self.text = engine.tokenizer.decode(gen, skip_special_tokens=True)
            if len(gen) <= params.min_tokens:  # stop strings count only after min_tokens
                self.floor = len(self.text)
            else:
                self.cut = _find_stop(self.text, params.stop, max(self.floor, prev - self.longest_stop))
            if self.cut is not None:
                self.text, self.finish = self.text[:self.cut], "stop"
                return True
        if constraint is not None and constraint.finished:
            self.finish = "stop"
            return True
        return len(gen) >= self.max_new

    def result(self) -> tuple[list[float], FinishReason, str]:
        text = self.text
        if self.cut is None:  # not cut at a stop string: the text is all that was generated
            text = self.engine.tokenizer.decode(self.gen, skip_special_tokens=True)
        return self.logprobs, self.finish, text


def _find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def _probs(torch: Any, scores: Any, params: Any) -> Any:
    """The distribution a sampled token is drawn from: ``scores`` (``[V]``) after temperature, top-k and top-p."""
    scores = scores / params.temperature
    if params.top_k:
        kth = torch.topk(scores, min(params.top_k, scores.shape[-1])).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < params.top_p
        mask = torch.zeros_like(probs, dtype=torch.bool).scatter(0, order, keep)
        probs = torch.where(mask, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return probs


def _sample(torch: Any, scores: Any, params: Any, generator: Any) -> int:
    if params.greedy:
        return int(torch.argmax(scores))
    return int(torch.multinomial(_probs(torch, scores, params), 1, generator=generator))


def _rejection_sample(torch: Any, p: Any, q: Any, proposal: int, generator: Any) -> int:
    """A token distributed as ``p`` from a ``proposal`` drawn from ``q``: keep it with probability
    ``min(1, p[x] / q[x])``, else draw from ``max(0, p - q)`` renormalised (Leviathan et al. 2023; Chen et al.
    2023)."""
    px, qx = float(p[proposal]), float(q[proposal])
    u = float(torch.rand((), generator=generator, device=p.device))
    if qx > 0 and u * qx < px:  # u < p/q without dividing by a tiny q
        return proposal
    residual = torch.clamp(p - q, min=0)
    total = float(residual.sum())
    if total <= 0:  # p == q up to rounding: the proposal's rejection had probability ~0; draw from p
        residual, total = p, float(p.sum())
    return int(torch.multinomial(residual / total, 1, generator=generator))
