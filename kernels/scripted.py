"""``ScriptedEngine``: the deterministic test double.

It answers from a script (a list of replies, or a function of the request), tokenizes with UTF-8 bytes (one
token per byte, so counts are exact and easy to check by hand) and keeps a token-level radix tree, so prefix
reuse, scheduling and usage accounting can be tested without a model. It is named for what it is: never a
default, never a stand-in for a real model in benchmarks. Given a ``tokenizer`` it counts with that tokenizer
after its chat template instead, which is how the planning benchmark's oracle replay (gold replies in each
strategy's format, measured, never reported as a model's skill) counts every token as the model would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from tokenomy.errors import ContextLengthExceeded, EngineError, RequestCancelled, TokenomyError

from .engine import Engine, now
from .radix import RadixCache
from .tokens import TokenCounter
from .types import Capabilities, Completion, PromptInput, Request, Scored, chat_messages, token_ids
from .usage import Usage

__all__ = ["ScriptedEngine"]

Reply = str | BaseException
Script = Iterable[Reply] | Callable[[Request], Reply]


def render_chatml(messages: Sequence[dict]) -> str:
    """The ChatML text the scripted engine 'sees' for chat messages (with the assistant header at the end)."""
    if messages and messages[-1].get("role") == "assistant":  # a prefill: continue that message
        head = render_chatml(messages[:-1])
        return head + str(messages[-1].get("content", ""))
    text = "".join(f"<|im_start|>{m['role']}\n{m.get('content', '')}<|im_end|>\n" for m in messages)
    return text + "<|im_start|>assistant\n"


class ScriptedEngine(Engine):
    """Replies from a script; counts tokens as UTF-8 bytes; caches prefixes in a token-only radix tree.

    Args:
        script: replies in order (an exception in the list is returned as that request's error), or a function
            ``request -> reply``. Default: echo the last message's content, or the last line of a raw prompt.
        context_window: prompts at least this long fail with ``ContextLengthExceeded``.
        delay_s: seconds each request takes (to test concurrency and cancellation).
        prefix_cache: track cached prefixes (usage then reports ``cached_prompt_tokens``).
        tokenizer: a HuggingFace tokenizer to count with (prompts after its chat template, replies without
            special tokens) instead of UTF-8 bytes.
        scorer: ``(prompt_text, continuation) -> log-probabilities`` (one per continuation token); gives the
            engine the ``prompt_logprobs`` capability (``score``) and the ``logprobs`` one (each reply's tokens,
            scored the same way, where a request asks for them).
        embedder: ``prompt_text -> vector``; gives it the ``hidden_states`` capability (``embed``).
        flops_per_token: what each computed token is said to cost (for FLOPs accounting tests).
    """

    capabilities = Capabilities(batching=True, prefix_cache=True, grammar=False, logprobs=False, token_ids=True,
                                prefill=True)

    def __init__(self, script: Script | None = None, *, context_window: int = 1 << 20, delay_s: float = 0.0,
                 prefix_cache: bool = True, tokenizer: Any = None,
                 scorer: Callable[[str, str], Sequence[float]] | None = None,
                 embedder: Callable[[str], Sequence[float]] | None = None,
                 flops_per_token: float | None = None) -> None:
        super().__init__()
        self._scorer, self._embedder, self._flops = scorer, embedder, flops_per_token
        if scorer is not None or embedder is not None:
            self.capabilities = replace(type(self).capabilities, prompt_logprobs=scorer is not None,
                                        logprobs=scorer is not None, hidden_states=embedder is not None)
        self.tokenizer = tokenizer
        self._counter = TokenCounter(tokenizer) if tokenizer is not None else None
        self.spec = "scripted"
        self._fn = script if callable(script) else None
        self._replies = iter(script) if script is not None and not callable(script) else None
        self._window = context_window
        self.delay_s = delay_s
        self.cache = RadixCache(1 << 40, bytes_per_token=1) if prefix_cache else None
        self.requests: list[Request] = []
        """Every request received, in the order it ran (for assertions)."""
        self.batches: list[list[str]] = []
        """The request ids of each batch, as the engine received them."""

    @property
    def context_window(self) -> int:
        return self._window

    def prompt_token_ids(self, prompt: PromptInput) -> list[int]:
        if self._counter is not None:
            return self._counter.encode(prompt)  # type: ignore[arg-type]
        if isinstance(prompt, str):
            return list(prompt.encode("utf-8"))
        messages = chat_messages(prompt)
        if messages is not None:
            return list(render_chatml(messages).encode("utf-8"))
        return token_ids(prompt) or []

    def cached_prefix_length(self, token_ids: Sequence[int]) -> int:
        return self.cache.peek(token_ids) if self.cache is not None else 0

    @property
    def flops_per_token(self) -> float | None:
        return self._flops

    def _text(self, prompt: PromptInput) -> str:
        if isinstance(prompt, str):
            return prompt
        messages = chat_messages(prompt)
        return render_chatml(messages) if messages is not None else bytes(token_ids(prompt) or []).decode(
            "utf-8", errors="replace")

    def _score(self, prompt: PromptInput, continuation: str, *, agent: str | None = None,
               tags: Sequence[str] = ()) -> Scored:
        if self._scorer is None:
            return super()._score(prompt, continuation, agent=agent, tags=tags)
        ids = self.prompt_token_ids(prompt)
        cont = list(continuation.encode("utf-8")) if self.tokenizer is None else list(
            self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        with self._lock:
            self.requests.append(Request(prompt=prompt, agent=agent, tags=("score", *tags)))
            logprobs = [float(x) for x in self._scorer(self._text(prompt), continuation)]
            cached = 0
            if self.cache is not None:
                cached = self.cache.match(ids[:-1]).length
                self.cache.insert(ids + cont)
        logprobs = _spread(logprobs, len(cont))
        return Scored(cont, logprobs, Usage(prompt_tokens=len(ids) + len(cont), cached_prompt_tokens=cached,
                                            completion_tokens=0, calls=1))

    def embed(self, prompt: PromptInput) -> list[float]:
        if self._embedder is None:
            return super().embed(prompt)
        return [float(x) for x in self._embedder(self._text(prompt))]

    def _run_batch(self, requests: list[Request]) -> list[Completion | BaseException]:
        self.batches.append([r.request_id for r in requests])
        return self._run_each(requests, self._one)

    def _one(self, req: Request) -> Completion:
        start = now()
        if req.cancelled:
            raise RequestCancelled(f"{req.request_id} was cancelled before it started")
        self.requests.append(req)
        ids = self.prompt_token_ids(req.prompt)
        if len(ids) >= self._window:
            raise ContextLengthExceeded(len(ids), req.params.max_tokens, self._window)
        if self.delay_s:
            deadline = time.monotonic() + self.delay_s
            while time.monotonic() < deadline:
                if req.cancelled:
                    raise RequestCancelled(f"{req.request_id} was cancelled while running")
                time.sleep(min(0.005, self.delay_s))
        reply = self._next_reply(req, ids)
        if isinstance(reply, BaseException):
            raise reply if isinstance(reply, TokenomyError) else EngineError(f"scripted failure: {reply!r}")
        text, finish = reply, "stop"
        for s in req.params.stop:
            if s in text:
                text = text[: text.index(s)]
        tok = self.tokenizer
        gen = list(tok(text, add_special_tokens=False)["input_ids"]) if tok is not None else list(text.encode())
        if len(gen) > req.params.max_tokens:
            gen = gen[: req.params.max_tokens]
            text = tok.decode(gen) if tok is not None else bytes(gen).decode("utf-8", errors="ignore")
            finish = "length"
        cached = 0
        if self.cache is not None:
            match = self.cache.match(ids)
            cached = match.length
            self.cache.insert(ids + gen[:-1])
        usage = Usage(prompt_tokens=len(ids), cached_prompt_tokens=cached, completion_tokens=len(gen), calls=1)
        logprobs = None
        if req.params.logprobs and self._scorer is not None:
            logprobs = _spread([float(x) for x in self._scorer(self._text(req.prompt), text)], len(gen))
        return Completion(text=text, token_ids=gen, finish_reason=finish, usage=usage,  # type: ignore[arg-type]
                          prompt_token_ids=ids, logprobs=logprobs, request_id=req.request_id, engine="scripted",
                          latency_s=now() - start)

    def _next_reply(self, req: Request, ids: list[int]) -> Reply:
        if self._fn is not None:
            return self._fn(req)
        if self._replies is not None:
            try:
                return next(self._replies)
            except StopIteration:
                return EngineError("ScriptedEngine ran out of scripted replies")
        if req.is_chat:
            return str(req.prompt[-1].get("content", ""))  # type: ignore[index, union-attr]
        text = bytes(ids).decode("utf-8", errors="replace").rstrip("\n")
        return text.rsplit("\n", 1)[-1]


def _spread(logprobs: list[float], n: int) -> list[float]:
    """A scorer's values, one per token: as given, or their mean on every token (a scorer may give one value)."""
    if len(logprobs) == n:
        return logprobs
    mean = sum(logprobs) / len(logprobs) if logprobs else 0.0
    return [mean] * n
