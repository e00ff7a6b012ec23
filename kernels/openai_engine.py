"""The OpenAI-compatible engine (``openai:<model>@<base_url>``): vLLM's, llama.cpp's or Ollama's server.

Chat messages go to ``/chat/completions``, raw prompts and token ids to ``/completions``. Usage comes from the
server's ``usage``; cached prompt tokens from ``usage.prompt_tokens_details.cached_tokens`` where the server
reports them (vLLM with ``--enable-prompt-tokens-details``), otherwise they are unknown (``None``), not 0.
Grammars are sent in vLLM's structured-output fields; servers that do not know them may ignore them.
A batch is sent concurrently; each request that fails comes back as its own error.
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


class OpenAIEngine(Engine):
    """Any server that speaks the OpenAI API.

    Args:
        model: the model name the server knows.
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        api_key: defaults to ``$OPENAI_API_KEY`` or ``EMPTY`` (local servers ignore it).
        timeout: seconds per HTTP request.
        max_concurrency: requests of one batch in flight at once.
        max_retries: retries after a connection error, a timeout, 429 or 5xx (with exponential backoff).
    """

    capabilities = Capabilities(batching=True, prefix_cache=True, grammar=True, logprobs=True, token_ids=False)

    def __init__(self, model: str, base_url: str, *, api_key: str | None = None, timeout: float = 120.0,
                 max_concurrency: int = 8, max_retries: int = 2, backoff_s: float = 0.25) -> None:
        super().__init__()
        import httpx

        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.spec = f"openai:{model}@{self.base_url}"
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._http = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {key}"})
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="tokenomy-openai")
        self._httpx = httpx

    def _run_batch(self, requests: list[Request]) -> list[Completion | BaseException]:
        futures = [self._pool.submit(self._one, r) for r in requests]
        out: list[Completion | BaseException] = []
        for f in futures:
            try:
                out.append(f.result())
            except TokenomyError as exc:
                out.append(exc)
            except Exception as exc:
                out.append(EngineError(f"{self.spec}: {exc!r}"))
        return out

    # -- one request ------------------------------------------------------------------------------------

    def _body(self, req: Request) -> tuple[str, dict[str, Any]]:
        p = req.params
        body: dict[str, Any] = {"model": self.model, "max_tokens": p.max_tokens, "temperature": p.temperature,
                                "top_p": p.top_p}
        if p.top_k:
            body["top_k"] = p.top_k
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        messages = chat_messages(req.prompt)
        if messages is not None:
            body["messages"] = messages
            path = "/chat/completions"
            if p.logprobs:
                body["logprobs"] = True
        else:
            body["prompt"] = req.prompt if isinstance(req.prompt, str) else token_ids(req.prompt)
            path = "/completions"
            if p.logprobs:
                body["logprobs"] = 1
        body["return_token_ids"] = True  # vLLM returns generated ids; others ignore unknown fields
        if req.grammar is not None:
            body.update(_grammar_fields(req.grammar, chat=req.is_chat))
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
            text = choice["message"].get("content") or "" if "message" in choice else choice.get("text", "")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise EngineError(f"{self.spec}: malformed response {str(data)[:200]!r}") from exc
        details = usage.get("prompt_tokens_details") or {}
        u = Usage(prompt_tokens=usage.get("prompt_tokens"), cached_prompt_tokens=details.get("cached_tokens"),
                  completion_tokens=usage.get("completion_tokens"), calls=1)
        return Completion(text=text, token_ids=list(choice.get("token_ids") or []),
                          finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                          usage=u, prompt_token_ids=data.get("prompt_token_ids") or choice.get("prompt_token_ids"),
                          logprobs=_logprobs(choice), request_id=req.request_id, engine=self.spec,
                          latency_s=now() - start)

    def _post(self, path: str, body: dict[str, Any], req: Request) -> dict[str, Any]:
        url = self.base_url + path
        attempt = 0
        while True:
            if req.cancelled:
                raise RequestCancelled(f"{req.request_id} was cancelled")
            try:
                resp = self._http.post(url, json=body)
            except self._httpx.TimeoutException as exc:
                err: TokenomyError = EngineError(f"{url} timed out: {exc}")
            except self._httpx.TransportError as exc:
                err = EngineError(f"cannot reach {url}: {exc}")
            else:
                if resp.status_code < 400:
                    try:
                        return dict(resp.json())
                    except (ValueError, TypeError) as exc:
                        raise EngineError(f"{url} answered something that is not JSON: {resp.text[:200]!r}") \
                            from exc
                err = self._http_error(resp, url)
                if resp.status_code not in _RETRY_STATUS:
                    raise err
            if attempt >= self.max_retries:
                raise err
            attempt += 1
            time.sleep(self.backoff_s * 2 ** (attempt - 1))

    def _http_error(self, resp: Any, url: str) -> TokenomyError:
        try:
            detail = resp.json()
            message = detail.get("error", {}).get("message") if isinstance(detail.get("error"), dict) \
                else detail.get("message") or detail.get("detail") or resp.text
        except (ValueError, AttributeError):
            message = resp.text
        message = str(message)[:500]
        if resp.status_code == 404:
            return ModelNotFound(f"{url}: model {self.model!r} not found ({message})")
        if resp.status_code == 400 and re.search(r"context length|context_length|maximum model length", message, re.I):
            numbers = [int(n) for n in re.findall(r"\d+", message)]
            if len(numbers) >= 2:
                window, prompt = min(numbers[:2]), max(numbers[:2])
                return ContextLengthExceeded(prompt, 0, window)
            return UserError(f"{url}: prompt too long: {message}")
        if 400 <= resp.status_code < 500 and resp.status_code not in _RETRY_STATUS:
            return UserError(f"{url} rejected the request ({resp.status_code}): {message}")
        return EngineError(f"{url} failed ({resp.status_code}): {message}")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()


def _grammar_fields(grammar: Grammar, *, chat: bool) -> dict[str, Any]:
    if grammar.kind == "json_schema":
        schema = json.loads(grammar.source)
        fields: dict[str, Any] = {"structured_outputs": {"json": schema}}
        if chat:
            fields["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        return fields
    if grammar.kind == "regex":
        return {"structured_outputs": {"regex": grammar.source}}
    return {"structured_outputs": {"grammar": grammar.source}}


def _logprobs(choice: dict[str, Any]) -> list[float] | None:
    lp = choice.get("logprobs")
    if not lp:
        return None
    if isinstance(lp.get("content"), list):  # chat format
        return [float(t["logprob"]) for t in lp["content"]]
    if isinstance(lp.get("token_logprobs"), list):  # completions format
        return [float(x) for x in lp["token_logprobs"] if x is not None]
    return None
