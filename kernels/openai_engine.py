"""The OpenAI-compatible engine (``openai:<model>@<base_url>``) on the official ``openai`` SDK.

A model served by ``vllm serve`` (or llama.cpp, Ollama, OpenAI itself) is shared by every process and keeps
its prefix cache across them; tokenomy speaks the OpenAI API to it through ``openai.OpenAI`` and
``openai.AsyncOpenAI``. What goes beyond the standard request follows the server's profile
(``openai_profiles``: vLLM, llama.cpp, Ollama, or plain OpenAI, detected unless named), so a strict server
never sees a field it does not know, and the engine's capabilities (grammars, min_tokens) are those the
server has.

Chat messages go to ``/chat/completions``, raw prompts and token ids to ``/completions``. Usage comes from the
server's ``usage``; cached prompt tokens from ``usage.prompt_tokens_details.cached_tokens`` (llama.cpp:
``timings.cache_n``) where the server reports them, otherwise they are unknown (``None``), not 0; a reasoning
model's thinking tokens from ``completion_tokens_details.reasoning_tokens``. ``stream`` and ``astream`` yield
the text as it decodes, with the usage of ``stream_options.include_usage`` in the last chunk.

Every request has one deadline (``timeout``, retries included): a server that stalls, or sends its answer a
byte at a time, is cut off then; a response larger than ``max_response_bytes`` is refused unread. Connection
errors, 429 and 5xx are retried with exponential backoff and jitter (``Retry-After`` honoured up to 5 s); a
request that timed out while the server worked on it is not. A batch is sent concurrently (a thread pool over
one client); each request that fails comes back as its own error.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import os
import random
import re
import socket
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tokenomy.errors import (
    ContextLengthExceeded,
    EngineError,
    ModelNotFound,
    RequestCancelled,
    TokenomyError,
    UserError,
)

from .engine import Engine, now
from .limits import budgeted
from .openai_profiles import PROFILES, ServerProfile, detect
from .openai_profiles import profile as named_profile
from .types import (
    Capabilities,
    Completion,
    Grammar,
    PromptInput,
    Request,
    SamplingParams,
    StreamChunk,
    chat_messages,
    token_ids,
)
from .usage import Usage

__all__ = ["OpenAIEngine"]

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_CONTEXT_HINTS = re.compile(r"context length|context_length|maximum model length|context size|context window", re.I)
_WINDOW = (r"maximum context length (?:is )?\(?(\d+)", r"context window of (\d+)")
_PROMPT = (r"(\d+) in (?:the messages|your prompt)",
           r"(?:contains|has|resulted in) (?:at least )?(\d+) (?:input )?tokens", r"Input length \((\d+)\)")


class _Deadline(Exception):
    """The request's total time ran out."""


class _TooLarge(Exception):
    """The response is larger than ``max_response_bytes``."""


class _Guard:
    """One attempt's bounds, seen by the HTTP client's response hook: the deadline and the byte cap. ``cut``
    shuts the socket (a watchdog calls it at the deadline, so a server that drips cannot hold a read)."""

    def __init__(self, deadline: float, limit: int) -> None:
        self.deadline, self.limit, self.size = deadline, limit, 0
        self.fired = False
        self.network: Any = None

    def count(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise _TooLarge(f"{self.size:,} bytes read so far")
        if time.monotonic() > self.deadline:
            raise _Deadline(f"{self.size:,} bytes read")

    def cut(self) -> None:
        self.fired = True
        sock = self.network.get_extra_info("socket") if self.network is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


_GUARD: contextvars.ContextVar[_Guard | None] = contextvars.ContextVar("tokenomy_openai_guard", default=None)


def _http_module(response: Any) -> Any:
    """The httpx flavour the SDK runs on (``httpx``, or ``httpx2`` in newer SDKs), from one of its objects."""
    return sys.modules[type(response).__module__.split(".")[0]]


@functools.cache
def _capped(http: Any, sync: bool) -> type:
    """A byte stream of ``http``'s kind that reads another through a ``_Guard`` (made once per kind)."""
    if sync:
        class Capped(http.SyncByteStream):  # type: ignore[misc, name-defined]
            def __init__(self, inner: Any, guard: _Guard) -> None:
                self.inner, self.guard = inner, guard

            def __iter__(self) -> Iterator[bytes]:
                for chunk in self.inner:
                    self.guard.count(chunk)
                    yield chunk

            def close(self) -> None:
                self.inner.close()

        return Capped

    class ACapped(http.AsyncByteStream):  # type: ignore[misc, name-defined]
        def __init__(self, inner: Any, guard: _Guard) -> None:
            self.inner, self.guard = inner, guard

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self.inner:
                self.guard.count(chunk)
                yield chunk

        async def aclose(self) -> None:
            await self.inner.aclose()

    return ACapped


def _guard_response(response: Any, *, sync: bool) -> None:
    """The client's response hook: refuse a declared size over the cap, and read the body through the guard."""
    guard = _GUARD.get()
    if guard is None:
        return
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > guard.limit:
        raise _TooLarge(f"{int(declared):,} bytes declared")
    guard.network = response.extensions.get("network_stream")
    response.stream = _capped(_http_module(response), sync)(response.stream, guard)


class OpenAIEngine(Engine):
    """Any server that speaks the OpenAI API (vLLM's ``vllm serve``, llama.cpp's server, Ollama, OpenAI).

    Args:
        model: the model name the server knows (vLLM: ``--served-model-name`` or the model path).
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``; used as given, less a trailing ``/``.
        api_key: defaults to ``$OPENAI_API_KEY`` or ``EMPTY`` (local servers ignore it).
        profile: ``auto`` (ask the server on first use), ``vllm``, ``llamacpp``, ``ollama`` or ``openai`` (plain:
            standard fields only, for OpenAI and strict servers).
        timeout: seconds one request may take in all, retries included (connecting gets at most 10 of them).
        max_response_bytes: the largest response read; a larger one is refused.
        max_concurrency: requests of one batch in flight at once.
        max_retries: retries after a connection error, 429 or 5xx, with exponential backoff from ``backoff_s``
            and jitter. A request that timed out while the server worked on it is not retried.
        backoff_s: the first retry's delay in seconds (before jitter).
        default_headers: headers sent with every request (an organisation, a gateway's routing key).
    """

    def __init__(self, model: str, base_url: str, *, api_key: str | None = None, profile: str = "auto",
                 timeout: float = 120.0, max_concurrency: int = 8, max_retries: int = 2, backoff_s: float = 0.25,
                 max_response_bytes: int = 32 * 2**20, default_headers: dict[str, str] | None = None) -> None:
        super().__init__()
        import openai

        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_concurrency < 1 or max_retries < 0 or not timeout > 0 or max_response_bytes < 1024:
            raise UserError("max_concurrency must be >= 1, max_retries >= 0, timeout > 0 and max_response_bytes "
                            f">= 1024, got {max_concurrency}, {max_retries}, {timeout}, {max_response_bytes}")
        self._profile: ServerProfile | None = None if profile == "auto" else named_profile(profile)
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.spec = f"openai:{model}@{self.base_url}"
        self.max_retries, self.backoff_s, self.timeout = max_retries, backoff_s, timeout
        self.max_response_bytes = max_response_bytes
        self._openai = openai
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._http = openai.DefaultHttpxClient(
            event_hooks={"response": [lambda r: _guard_response(r, sync=True)]})
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=timeout,
                                     default_headers=default_headers, http_client=self._http)
        self._async_args = {"base_url": self.base_url, "api_key": key, "max_retries": 0, "timeout": timeout,
                            "default_headers": default_headers}
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._detect_lock = threading.Lock()
        self._probe_after = 0.0
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="tokenomy-openai")

    # -- the server's profile ---------------------------------------------------------------------------

    @property
    def profile(self) -> ServerProfile:
        """The server's profile: as named, or asked of the server once (a server that cannot be reached yet is
        treated as plain OpenAI and asked again 10 s later)."""
        if self._profile is not None:
            return self._profile
        with self._detect_lock:
            if self._profile is None:
                if time.monotonic() < self._probe_after:  # unreachable a moment ago: not asked again yet
                    return PROFILES["openai"]
                found = detect(self.base_url, self._probe)
                if found is None:
                    self._probe_after = time.monotonic() + 10.0
                    return PROFILES["openai"]
                self._profile = found
            return self._profile

    def _probe(self, url: str) -> tuple[int, Any]:
        try:
            resp = self._http.get(url, timeout=min(self.timeout, 3.0))
        except Exception as exc:  # the SDK's httpx flavour: not reachable
            raise OSError(str(exc)) from exc
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, None

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """What the server can do, from its profile."""
        return self.profile.capabilities

    # -- batches --------------------------------------------------------------------------------------------

    def _run_batch(self, requests: list[Request]) -> list[Completion | BaseException]:
        # All in flight at once; the results are then collected in order, each failure in its own slot.
        futures = {id(r): self._pool.submit(self._one, r) for r in requests}
        return self._run_each(requests, lambda req: futures[id(req)].result())

    def close(self) -> None:
        """Stop the thread pool and close the HTTP clients."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # -- one request ------------------------------------------------------------------------------------

    def _body(self, req: Request) -> tuple[str, dict[str, Any]]:
        """The endpoint (``chat`` or ``completions``) and the SDK's arguments; non-standard fields go in
        ``extra_body``, and only those the server's profile takes."""
        prof = self.profile
        messages = chat_messages(req.prompt)
        chat = messages is not None
        std, extra = prof.sampling_fields(req.params, chat=chat)
        body: dict[str, Any] = {"model": self.model, **std}
        if chat:
            body["messages"] = messages
        else:  # text, or token ids (the standard's prompt may be an array of tokens)
            body["prompt"] = req.prompt if isinstance(req.prompt, str) else token_ids(req.prompt)
        if req.grammar is not None:
            g_std, g_extra = prof.grammar_body(req.grammar, chat=chat, who=self.spec)
            body.update(g_std)
            extra.update(g_extra)
        if extra:
            body["extra_body"] = extra
        return ("chat" if chat else "completions"), body

    def _api(self, client: Any, kind: str) -> Any:
        return client.chat.completions if kind == "chat" else client.completions

    def _path(self, kind: str) -> str:
        return self.base_url + ("/chat/completions" if kind == "chat" else "/completions")

    def _one(self, req: Request) -> Completion:
        kind, body = self._body(req)
        start = now()
        data = self._retrying(req, kind, lambda guard, left: self._post(kind, body, guard, left))
        return self._completion(data, req, kind, now() - start)

    def _post(self, kind: str, body: dict[str, Any], guard: _Guard, left: float) -> Any:
        token = _GUARD.set(guard)
        watchdog = threading.Timer(left, guard.cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            raw = self._api(self._client, kind).with_raw_response.create(**body, timeout=self._timeout(left))
            return self._json(raw.content, kind)
        finally:
            watchdog.cancel()
            _GUARD.reset(token)

    def _timeout(self, left: float) -> Any:
        return self._openai.Timeout(left, connect=min(left, 10.0))

    def _json(self, content: bytes, kind: str) -> dict[str, Any]:
        try:
            data = json.loads(content)
        except ValueError as exc:
            raise EngineError(f"{self._path(kind)} answered something that is not JSON: {content[:200]!r}") from exc
        if not isinstance(data, dict):
            raise EngineError(f"{self._path(kind)} sent a malformed response: {content[:200]!r}")
        return data

    def _retrying(self, req: Request, kind: str, attempt_fn: Any) -> Any:
        """Run ``attempt_fn(guard, seconds_left)`` until it succeeds, a failure that is not worth retrying, the
        retries or the deadline run out."""
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            guard, left = self._next_attempt(req, kind, deadline)
            try:
                return attempt_fn(guard, left)
            except TokenomyError:
                raise
            except Exception as exc:
                delay = self._retry_delay(exc, guard, kind, req, attempt, deadline)
            attempt += 1
            time.sleep(delay)

    async def _aretrying(self, req: Request, kind: str, attempt_fn: Any) -> Any:
        """``_retrying`` for coroutines (``asyncio.wait_for`` is the deadline)."""
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            guard, left = self._next_attempt(req, kind, deadline)
            try:
                return await asyncio.wait_for(attempt_fn(guard, left), left)
            except TokenomyError:
                raise
            except (asyncio.TimeoutError, TimeoutError):
                raise EngineError(f"{self._path(kind)} timed out after {self.timeout:g} s") from None
            except Exception as exc:
                delay = self._retry_delay(exc, guard, kind, req, attempt, deadline)
            attempt += 1
            await asyncio.sleep(delay)

    def _next_attempt(self, req: Request, kind: str, deadline: float) -> tuple[_Guard, float]:
        if req.cancelled:
            raise RequestCancelled(f"{req.request_id} was cancelled")
        left = deadline - time.monotonic()
        if left <= 0:
            raise EngineError(f"{self._path(kind)} timed out after {self.timeout:g} s")
        return _Guard(deadline, self.max_response_bytes), left

    def _retry_delay(self, exc: Exception, guard: _Guard, kind: str, req: Request, attempt: int,
                     deadline: float) -> float:
        """The wait before the next attempt after ``exc``, or the error to raise when there is none."""
        err, retry, hint = self._failure(exc, guard, kind, req)
        delay = self._delay(attempt, hint)
        if not retry or attempt >= self.max_retries or time.monotonic() + delay >= deadline:
            raise err
        return delay

    def _delay(self, attempt: int, retry_after: float) -> float:
        """Exponential backoff with jitter (half fixed, half random, so clients that failed together do not
        retry together), or the server's ``Retry-After`` (at most 5 s) if longer."""
        base = self.backoff_s * 2**attempt
        return max(base / 2 + random.uniform(0, base / 2), min(retry_after, 5.0))

    def _failure(self, exc: BaseException, guard: _Guard, kind: str,
                 req: Request) -> tuple[TokenomyError, bool, float]:
        """The error to raise for ``exc``, whether it is worth retrying, and the server's Retry-After."""
        url = self._path(kind)
        openai = self._openai
        chain: list[BaseException] = []
        cause: BaseException | None = exc
        while cause is not None and len(chain) < 8:
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        too_large = next((c for c in chain if isinstance(c, _TooLarge)), None)
        if too_large is not None:
            return (EngineError(f"{url} sent a response of more than {self.max_response_bytes:,} bytes "
                                f"({too_large}); refused"), False, 0.0)
        if guard.fired or any(isinstance(c, (_Deadline, openai.APITimeoutError)) for c in chain):
            err = EngineError(f"{url} timed out after {self.timeout:g} s: {exc!r}")
            err.__cause__ = exc
            return err, False, 0.0
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            return (self._http_error(exc.response, url, req), status in _RETRY_STATUS,
                    _float(exc.response.headers.get("retry-after")))
        if isinstance(exc, openai.APIConnectionError):
            err = EngineError(f"cannot reach {url}: {exc.__cause__ or exc!r}")
        else:
            err = EngineError(f"{url} failed: {exc!r}")
        err.__cause__ = exc
        return err, isinstance(exc, openai.APIConnectionError), 0.0

    def _completion(self, data: dict[str, Any], req: Request, kind: str, latency: float) -> Completion:
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content") if "message" in choice else choice.get("text")
            reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
            prompt_ids = data.get("prompt_token_ids") or choice.get("prompt_token_ids")
            return Completion(
                text=text or "", token_ids=[int(t) for t in choice.get("token_ids") or []],
                finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                usage=_usage(data.get("usage") or {}, data.get("timings"), bool(reasoning)),
                prompt_token_ids=[int(t) for t in prompt_ids] if prompt_ids else None, logprobs=_logprobs(choice),
                request_id=req.request_id, engine=self.spec, latency_s=latency, reasoning=str(reasoning))
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise EngineError(f"{self._path(kind)} sent a malformed response: {str(data)[:200]!r}") from exc

    # -- asyncio ------------------------------------------------------------------------------------------

    def _aclient(self) -> Any:
        """An ``AsyncOpenAI`` client for the running event loop (an async client belongs to one loop)."""
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            openai = self._openai

            async def hook(response: Any) -> None:
                _guard_response(response, sync=False)

            http = openai.DefaultAsyncHttpxClient(event_hooks={"response": [hook]})
            client = self._aclients[loop] = openai.AsyncOpenAI(**self._async_args, http_client=http)
        return client

    async def agenerate(self, prompt: PromptInput, params: SamplingParams | None = None,
                        **kwargs: object) -> Completion:
        """``generate`` on ``AsyncOpenAI``: the event loop stays free while the server works."""
        req = self.make_request(prompt, params, **kwargs)  # type: ignore[arg-type]
        with budgeted(req, self) as spent:
            kind, body = await asyncio.to_thread(self._body, req)  # the profile may ask the server once
            start = now()
            client = self._aclient()

            async def post(guard: _Guard, left: float) -> Any:
                token = _GUARD.set(guard)
                try:
                    raw = await self._api(client, kind).with_raw_response.create(**body,
                                                                                 timeout=self._timeout(left))
                    return self._json(raw.content, kind)
                finally:
                    _GUARD.reset(token)

            data = await self._aretrying(req, kind, post)
            completion = self._completion(data, req, kind, now() - start)
            spent.usage = completion.usage
            return completion

    # -- streaming ---------------------------------------------------------------------------------------

    def stream(self, prompt: PromptInput, params: SamplingParams | None = None, *, grammar: Grammar | None = None,
               agent: str | None = None, tags: Sequence[str] = (), **sampling: object) -> Iterator[StreamChunk]:
        """The completion as the server decodes it (``stream=True`` with ``stream_options.include_usage``): a
        chunk per piece of text, the last one with the whole ``Completion`` and its usage. A failure before the
        first piece is retried like any request; one after it is an ``EngineError``."""
        req = self.make_request(prompt, params, grammar=grammar, agent=agent, tags=tags, **sampling)
        with budgeted(req, self) as spent:
            kind, body = self._body(req)
            body.update(stream=True, stream_options={"include_usage": True})
            start = now()
            state = _StreamState()
            opened = self._retrying(req, kind, lambda guard, left: self._open_stream(kind, body, guard, left))
            try:
                for event in opened:
                    delta = state.add(event)
                    if delta:
                        yield StreamChunk(delta)
            except Exception as exc:
                raise EngineError(f"{self._path(kind)}: the stream broke after {len(state.text)} characters: "
                                  f"{exc!r}") from exc
            finally:
                opened.close()
            completion = state.completion(req, self.spec, now() - start)
            spent.usage = completion.usage
        yield StreamChunk("", completion)

    def _open_stream(self, kind: str, body: dict[str, Any], guard: _Guard, left: float) -> Any:
        token = _GUARD.set(guard)
        try:
            return self._api(self._client, kind).create(**body, timeout=self._timeout(left))
        finally:
            _GUARD.reset(token)

    async def astream(self, prompt: PromptInput, params: SamplingParams | None = None,
                      **kwargs: object) -> AsyncIterator[StreamChunk]:
        """``stream`` on ``AsyncOpenAI``."""
        req = self.make_request(prompt, params, **kwargs)  # type: ignore[arg-type]
        with budgeted(req, self) as spent:
            kind, body = await asyncio.to_thread(self._body, req)
            body.update(stream=True, stream_options={"include_usage": True})
            start = now()
            client = self._aclient()
            state = _StreamState()

            async def open_stream(guard: _Guard, left: float) -> Any:
                token = _GUARD.set(guard)
                try:
                    return await self._api(client, kind).create(**body, timeout=self._timeout(left))
                finally:
                    _GUARD.reset(token)

            opened = await self._aretrying(req, kind, open_stream)
            try:
                async for event in opened:
                    delta = state.add(event)
                    if delta:
                        yield StreamChunk(delta)
            except Exception as exc:
                raise EngineError(f"{self._path(kind)}: the stream broke after {len(state.text)} characters: "
                                  f"{exc!r}") from exc
            finally:
                await opened.close()
            completion = state.completion(req, self.spec, now() - start)
            spent.usage = completion.usage
        yield StreamChunk("", completion)

    # -- errors -----------------------------------------------------------------------------------------

    def _http_error(self, resp: Any, url: str, req: Request) -> TokenomyError:
        info: dict[str, Any] = {}
        try:
            detail = resp.json()
            error = detail.get("error", detail) if isinstance(detail, dict) else detail
            info = error if isinstance(error, dict) else {"message": error}
            message = str(info.get("message") or info.get("detail") or resp.text)
        except ValueError:
            message = resp.text
        message = message[:500]
        status = resp.status_code
        if status == 404:
            return ModelNotFound(f"{url}: model {self.model!r} not found ({message}); "
                                 "check the model name and that base_url ends with the API root (often /v1)")
        if status == 400 and (_CONTEXT_HINTS.search(message) or "context" in str(info.get("type", ""))
                              or "context" in str(info.get("code", ""))):
            window = info.get("n_ctx") or _first(_WINDOW, message)
            prompt = info.get("n_prompt_tokens") or _first(_PROMPT, message)
            if window and prompt:
                return ContextLengthExceeded(int(prompt), req.params.max_tokens, int(window))
            return UserError(f"{url}: prompt too long for {self.model!r}: {message}")
        if 400 <= status < 500 and status not in _RETRY_STATUS:
            return UserError(f"{url} rejected the request ({status}): {message}")
        return EngineError(f"{url} failed ({status}): {message}")


class _StreamState:
    """The pieces of a stream so far: text, reasoning, token ids, the finish reason and the final usage."""

    def __init__(self) -> None:
        self.text, self.reasoning = "", ""
        self.ids: list[int] = []
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.timings: Any = None

    def add(self, event: Any) -> str:
        data = event.model_dump() if hasattr(event, "model_dump") else dict(event)
        if data.get("usage"):
            self.usage = data["usage"]
        self.timings = data.get("timings") or self.timings
        delta_text = ""
        for choice in data.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            delta_text = (delta.get("content") if "delta" in choice else choice.get("text")) or ""
            self.reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
            self.ids += [int(t) for t in choice.get("token_ids") or []]
            self.finish = choice.get("finish_reason") or self.finish
        self.text += delta_text
        return delta_text

    def completion(self, req: Request, spec: str, latency: float) -> Completion:
        usage = _usage(self.usage, self.timings, bool(self.reasoning)) if self.usage is not None else \
            Usage(prompt_tokens=None, cached_prompt_tokens=None, completion_tokens=None, calls=1)
        return Completion(text=self.text, token_ids=self.ids,
                          finish_reason="length" if self.finish == "length" else "stop", usage=usage,
                          request_id=req.request_id, engine=spec, latency_s=latency, reasoning=self.reasoning)


def _usage(usage: dict[str, Any], timings: Any, had_reasoning: bool) -> Usage:
    """One call's ``Usage`` from the server's ``usage`` (and llama.cpp's ``timings``): what it does not report
    is unknown, not 0."""
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens")
    if cached is None and isinstance(timings, dict):
        cached = timings.get("cache_n")
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if reasoning is None:
        reasoning = None if had_reasoning else 0
    return Usage(prompt_tokens=usage.get("prompt_tokens"), cached_prompt_tokens=cached,
                 completion_tokens=usage.get("completion_tokens"), calls=1, reasoning_tokens=reasoning)


def _logprobs(choice: dict[str, Any]) -> list[float] | None:
    lp = choice.get("logprobs")
    if not lp:
        return None
    if isinstance(lp.get("content"), list):  # chat format
        return [float(t["logprob"]) for t in lp["content"]]
    if isinstance(lp.get("token_logprobs"), list):  # completions format
        return [float(x) for x in lp["token_logprobs"] if x is not None]
    return None


def _first(patterns: tuple[str, ...], text: str) -> int | None:
    for pattern in patterns:
        m = re.search(pattern, text, re.I)
        if m:
            return int(m.group(1))
    return None


def _float(value: str | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0
