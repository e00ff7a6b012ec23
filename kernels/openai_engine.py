"""The OpenAI-compatible engine (``openai:<model>@<base_url>``): vLLM's, llama.cpp's or Ollama's server.

Why a remote engine: a model served by ``vllm serve`` (or llama.cpp, Ollama) is shared by every process
and keeps its prefix cache across them; tokenomy only needs to speak HTTP to it. ``httpx`` is used directly,
not the ``openai`` SDK, so no extra dependency is needed.

Chat messages go to ``/chat/completions``, raw prompts and token ids to ``/completions``. Usage comes from the
server's ``usage``; cached prompt tokens from ``usage.prompt_tokens_details.cached_tokens`` where the server
reports them (vLLM with ``--enable-prompt-tokens-details``), otherwise they are unknown (``None``), not 0.
Grammars are sent in vLLM's structured-output fields (``structured_outputs``, plus ``response_format`` for a
JSON schema in chat); servers other than vLLM may ignore them, so their output is then unconstrained.
A batch is sent concurrently (a thread pool sharing one ``httpx.Client``, so it also works when called from
inside a running event loop's worker thread); each request that fails comes back as its own error.
"""

from __future__ import annotations

import json
import os
import re
import time
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
from .types import Capabilities, Completion, Grammar, Request, chat_messages, token_ids
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


class OpenAIEngine(Engine):
    """Any server that speaks the OpenAI API (vLLM's ``vllm serve``, llama.cpp's server, Ollama).

    Args:
        model: the model name the server knows (vLLM: ``--served-model-name`` or the model path).
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``; used as given, less a trailing ``/``.
        api_key: defaults to ``$OPENAI_API_KEY`` or ``EMPTY`` (local servers ignore it).
        timeout: seconds one request may take in all, retries included (connecting gets at most 10 of them): a
            server that stalls, or sends its answer a byte at a time, is cut off then with an ``EngineError``.
        max_response_bytes: the largest response read (decompressed); a larger one is refused unread.
        max_concurrency: requests of one batch in flight at once.
        max_retries: retries after a connection error, 429 or 5xx, with exponential backoff from ``backoff_s``.
            A request that timed out while the server worked on it is not retried.
        backoff_s: the first retry's delay in seconds.
    """

    capabilities = Capabilities(batching=True, prefix_cache=True, grammar=True, logprobs=True, token_ids=False,
                                stop_strings=True)

    def __init__(self, model: str, base_url: str, *, api_key: str | None = None, timeout: float = 120.0,
                 max_concurrency: int = 8, max_retries: int = 2, backoff_s: float = 0.25,
                 max_response_bytes: int = 32 * 2**20) -> None:
        super().__init__()
        import httpx

        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_concurrency < 1 or max_retries < 0 or not timeout > 0 or max_response_bytes < 1024:
            raise UserError("max_concurrency must be >= 1, max_retries >= 0, timeout > 0 and max_response_bytes "
                            f">= 1024, got {max_concurrency}, {max_retries}, {timeout}, {max_response_bytes}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.spec = f"openai:{model}@{self.base_url}"
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._httpx = httpx
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                                  headers={"Authorization": f"Bearer {key}"},
                                  limits=httpx.Limits(max_connections=max_concurrency))
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="tokenomy-openai")

    def _run_batch(self, requests: list[Request]) -> list[Completion | BaseException]:
        # All in flight at once; the results are then collected in order, each failure in its own slot.
        futures = {id(r): self._pool.submit(self._one, r) for r in requests}
        return self._run_each(requests, lambda req: futures[id(req)].result())

    def close(self) -> None:
        """Stop the thread pool and close the HTTP client."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    # -- one request ------------------------------------------------------------------------------------

    def _body(self, req: Request) -> tuple[str, dict[str, Any]]:
        p = req.params
        body: dict[str, Any] = {"model": self.model, "max_tokens": p.max_tokens, "temperature": p.temperature,
                                "top_p": p.top_p}
        if p.top_k > 0:
            body["top_k"] = p.top_k  # a vLLM extra parameter
        if p.min_tokens:
            body["min_tokens"] = p.min_tokens  # a vLLM extra parameter (others may ignore it: no capability)
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        messages = chat_messages(req.prompt)
        if messages is not None:
            path, body["messages"] = "/chat/completions", messages
            if p.logprobs:
                body["logprobs"] = True
        else:
            path = "/completions"
            body["prompt"] = req.prompt if isinstance(req.prompt, str) else token_ids(req.prompt)
            if p.logprobs:
                body["logprobs"] = 1
        body["return_token_ids"] = True  # vLLM returns prompt and generated ids; others ignore unknown fields
        if req.grammar is not None:
            body.update(_grammar_fields(req.grammar, chat=messages is not None))
        return path, body

    def _one(self, req: Request) -> Completion:
        if req.cancelled:
            raise RequestCancelled(f"{req.request_id} was cancelled before it started")
        path, body = self._body(req)
        start = now()
        data = self._post(path, body, req)
        try:
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            details = usage.get("prompt_tokens_details") or {}
            text = choice["message"].get("content") if "message" in choice else choice.get("text")
            u = Usage(prompt_tokens=usage.get("prompt_tokens"), cached_prompt_tokens=details.get("cached_tokens"),
                      completion_tokens=usage.get("completion_tokens"), calls=1)
            prompt_ids = data.get("prompt_token_ids") or choice.get("prompt_token_ids")
            return Completion(
                text=text or "", token_ids=[int(t) for t in choice.get("token_ids") or []],
                finish_reason="length" if choice.get("finish_reason") == "length" else "stop", usage=u,
                prompt_token_ids=[int(t) for t in prompt_ids] if prompt_ids else None, logprobs=_logprobs(choice),
                request_id=req.request_id, engine=self.spec, latency_s=now() - start)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise EngineError(f"{self.base_url + path} sent a malformed response: {str(data)[:200]!r}") from exc

    def _post(self, path: str, body: dict[str, Any], req: Request) -> dict[str, Any]:
        url = self.base_url + path
        attempt = 0
        deadline = time.monotonic() + self.timeout
        while True:
            if req.cancelled:
                raise RequestCancelled(f"{req.request_id} was cancelled")
            delay = self.backoff_s * 2**attempt
            try:
                resp = self._fetch(url, body, deadline)
            except (self._httpx.ReadTimeout, self._httpx.WriteTimeout, _Deadline) as exc:  # busy or stalling: no retry
                raise EngineError(f"{url} timed out after {self.timeout:g} s: {exc!r}") from exc
            except _TooLarge as exc:
                raise EngineError(f"{url} sent a response of more than {self.max_response_bytes:,} bytes "
                                  f"({exc}); refused") from None
            except self._httpx.TransportError as exc:
                err: TokenomyError = EngineError(f"cannot reach {url} (after {attempt + 1} attempts): {exc!r}")
                err.__cause__ = exc
            else:
                if resp.status_code < 400:
                    try:
                        data = resp.json()
                    except ValueError as exc:
                        raise EngineError(f"{url} answered something that is not JSON: {resp.text[:200]!r}") \
                            from exc
                    if not isinstance(data, dict):
                        raise EngineError(f"{url} sent a malformed response: {resp.text[:200]!r}")
                    return data
                err = self._http_error(resp, url, req)
                if resp.status_code not in _RETRY_STATUS:
                    raise err
                delay = max(delay, min(_float(resp.headers.get("retry-after")), 5.0))
            if attempt >= self.max_retries or time.monotonic() + delay >= deadline:
                raise err
            attempt += 1
            time.sleep(delay)

    def _fetch(self, url: str, body: dict[str, Any], deadline: float) -> Any:
        """POST ``body`` and read the response, streamed: at most ``max_response_bytes``, done by ``deadline``
        (a watchdog shuts the socket then, so a server that drips its answer cannot hold the call)."""
        import socket
        import threading

        httpx = self._httpx
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Deadline("no time left")
        timeout = httpx.Timeout(left, connect=min(left, 10.0))
        with self._http.stream("POST", url, json=body, timeout=timeout) as resp:
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_response_bytes:
                raise _TooLarge(f"{int(declared):,} bytes declared")
            fired = threading.Event()

            def cut() -> None:
                fired.set()
                stream = resp.extensions.get("network_stream")
                sock = stream.get_extra_info("socket") if stream is not None else None
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

            watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), cut)
            watchdog.daemon = True
            watchdog.start()
            chunks, size = [], 0
            try:
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise _TooLarge(f"{size:,} bytes read so far")
                    if time.monotonic() > deadline:
                        raise _Deadline(f"{size:,} bytes read")
                    chunks.append(chunk)
            except (httpx.TransportError, OSError) as exc:
                if fired.is_set():
                    raise _Deadline(f"cut off after {size:,} bytes") from exc
                raise
            finally:
                watchdog.cancel()
            headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in ("content-encoding",
                                                                                     "content-length",
                                                                                     "transfer-encoding")]
            return httpx.Response(resp.status_code, headers=headers, content=b"".join(chunks))


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


def _grammar_fields(grammar: Grammar, *, chat: bool) -> dict[str, Any]:
    """vLLM's structured-output fields for ``grammar`` (vLLM >= 0.10; other servers may ignore them)."""
    if grammar.kind == "json_schema":
        schema = json.loads(grammar.source)
        fields: dict[str, Any] = {"structured_outputs": {"json": schema}}
        if chat:
            fields["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        return fields
    if grammar.kind == "regex":
        return {"structured_outputs": {"regex": grammar.source}}
    return {"structured_outputs": {"grammar": grammar.source}}  # EBNF (GBNF dialect) or Lark


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
