"""LangChain chat models as tokenomy engines, and tokenomy engines as LangChain chat models.

``LangChainEngine(chat_model)`` runs any LangChain ``BaseChatModel`` (``ChatOpenAI``, ``ChatOllama``,
``ChatAnthropic`` ...) under a strategy, a team or a policy: a batch goes through the model's ``batch`` (concurrent,
each failure in its own slot), ``agenerate`` through ``ainvoke``, ``stream`` through ``stream``. Usage comes from
the reply's ``usage_metadata``: input, output, cached (``input_token_details.cache_read``) and reasoning
(``output_token_details.reasoning``) tokens; what the model does not report stays unknown, never 0. Sampling:
``stop`` always; ``max_tokens`` and ``temperature`` where the model has those fields (LangChain has no common
name for the rest).

``engine.as_langchain()`` (``TokenomyChatModel``) goes the other way: any tokenomy engine as a LangChain chat
model, with ``usage_metadata`` on every reply, for LangChain chains and LangGraph agents. ``langchain-core`` is
imported only here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from tokenomy.errors import EngineError, MissingExtra, TokenomyError, UserError

from .engine import Engine, now
from .limits import budgeted
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

__all__ = ["LangChainEngine", "as_langchain", "is_chat_model", "completion_of"]


def _core() -> Any:
    try:
        import langchain_core.messages as messages
    except ImportError as exc:
        raise MissingExtra("langchain-core", "langchain", what="LangChain chat models") from exc
    return messages


def is_chat_model(obj: Any) -> bool:
    """Whether ``obj`` is a LangChain chat model (without importing LangChain when it is not loaded)."""
    import sys

    lm = sys.modules.get("langchain_core.language_models")
    return lm is not None and isinstance(obj, lm.BaseChatModel)


def to_langchain_messages(prompt: PromptInput) -> list[Any]:
    """A tokenomy prompt as LangChain messages (raw text is one human message)."""
    m = _core()
    messages = chat_messages(prompt)
    if messages is None:
        if token_ids(prompt) is not None:
            raise UserError("a LangChain chat model takes text or chat messages, not token ids")
        return [m.HumanMessage(content=str(prompt))]
    kinds = {"system": m.SystemMessage, "developer": m.SystemMessage, "user": m.HumanMessage,
             "assistant": m.AIMessage}
    out = []
    for msg in messages:
        kind = kinds.get(str(msg.get("role")))
        if kind is None:
            raise UserError(f"a chat message's role must be system, user or assistant, got {msg.get('role')!r}")
        out.append(kind(content=msg.get("content") or ""))
    return out


def usage_of(message: Any) -> Usage:
    """One call's ``Usage`` from a LangChain message's ``usage_metadata``; unknown where it says nothing."""
    meta = getattr(message, "usage_metadata", None) or {}
    if not meta:
        return Usage(prompt_tokens=None, cached_prompt_tokens=None, completion_tokens=None, calls=1)
    inp = meta.get("input_token_details") or {}
    out = meta.get("output_token_details") or {}
    return Usage(prompt_tokens=meta.get("input_tokens"), cached_prompt_tokens=inp.get("cache_read"),
                 completion_tokens=meta.get("output_tokens"), calls=1,
                 reasoning_tokens=out.get("reasoning", 0))


def completion_of(message: Any, *, engine: str, request_id: str = "", latency: float = 0.0) -> Completion:
    """A LangChain reply (an ``AIMessage``) as a ``Completion``: its text, finish reason, usage and reasoning."""
    meta = getattr(message, "response_metadata", None) or {}
    reason = meta.get("finish_reason") or meta.get("stop_reason") or meta.get("done_reason")
    content = message.content
    text = content if isinstance(content, str) else "".join(
        p.get("text", "") if isinstance(p, Mapping) else str(p) for p in content)
    reasoning = (getattr(message, "additional_kwargs", None) or {}).get("reasoning_content") or ""
    return Completion(text=text, token_ids=[], finish_reason="length" if reason in ("length", "max_tokens")
                      else "stop", usage=usage_of(message), request_id=request_id, engine=engine,
                      latency_s=latency, reasoning=str(reasoning))


class LangChainEngine(Engine):
    """A LangChain ``BaseChatModel`` as a tokenomy engine.

    Args:
        model: the chat model.
        max_concurrency: requests of one batch in flight at once.
        name: the engine's spec (default ``langchain:<the model's class>``).
    """

    capabilities = Capabilities(batching=True, stop_strings=True)

    def __init__(self, model: Any, *, max_concurrency: int = 8, name: str | None = None) -> None:
        super().__init__()
        _core()
        if not is_chat_model(model):
            raise UserError(f"LangChainEngine needs a LangChain BaseChatModel, got {type(model).__name__}")
        self.model = model
        self.max_concurrency = max_concurrency
        fields = getattr(type(model), "model_fields", {})
        self._knobs = {k for k in ("max_tokens", "temperature") if k in fields}
        self.spec = name or f"langchain:{type(model).__name__}"

    def _kwargs(self, params: SamplingParams, grammar: Grammar | None) -> dict[str, Any]:
        if grammar is not None:
            raise UserError(f"{self.spec}: grammars are not passed to LangChain chat models")
        kw: dict[str, Any] = {}
        if params.stop:
            kw["stop"] = list(params.stop)
        if "max_tokens" in self._knobs:
            kw["max_tokens"] = params.max_tokens
        if "temperature" in self._knobs:
            kw["temperature"] = params.temperature
        return kw

    def _completion(self, message: Any, req: Request, latency: float) -> Completion:
        return completion_of(message, engine=self.spec, request_id=req.request_id, latency=latency)

    def _run_batch(self, requests: list[Request]) -> list[Completion | BaseException]:
        start = now()
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(requests):  # ``batch`` takes one set of keywords: group the requests by theirs
            key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                               for k, v in self._kwargs(r.params, r.grammar).items()))
            groups.setdefault(key, []).append(i)
        out: list[Completion | BaseException] = [EngineError("not run")] * len(requests)
        for key, idx in groups.items():
            kw = {k: list(v) if isinstance(v, tuple) else v for k, v in key}
            try:
                inputs = [to_langchain_messages(requests[i].prompt) for i in idx]
            except TokenomyError as exc:
                for i in idx:
                    out[i] = exc
                continue
            replies = self.model.batch(inputs, config={"max_concurrency": self.max_concurrency},
                                       return_exceptions=True, **kw)
            for i, reply in zip(idx, replies, strict=True):
                if isinstance(reply, BaseException):
                    err = EngineError(f"{self.spec}: {type(reply).__name__}: {reply}")
                    err.__cause__ = reply
                    out[i] = reply if isinstance(reply, TokenomyError) else err
                else:
                    out[i] = self._completion(reply, requests[i], now() - start)
        return out

    async def agenerate(self, prompt: PromptInput, params: SamplingParams | None = None,
                        **kwargs: object) -> Completion:
        """``generate`` through the model's ``ainvoke``."""
        req = self.make_request(prompt, params, **kwargs)  # type: ignore[arg-type]
        with budgeted(req, self) as spent:
            start = now()
            try:
                reply = await self.model.ainvoke(to_langchain_messages(req.prompt),
                                                 **self._kwargs(req.params, req.grammar))
            except TokenomyError:
                raise
            except Exception as exc:
                raise EngineError(f"{self.spec}: {type(exc).__name__}: {exc}") from exc
            completion = self._completion(reply, req, now() - start)
            spent.usage = completion.usage
            return completion

    def stream(self, prompt: PromptInput, params: SamplingParams | None = None, *, grammar: Grammar | None = None,
               agent: str | None = None, tags: Sequence[str] = (), **sampling: object) -> Iterator[StreamChunk]:
        """The reply as the model streams it; the last chunk has the whole completion and its usage."""
        req = self.make_request(prompt, params, grammar=grammar, agent=agent, tags=tags, **sampling)
        with budgeted(req, self) as spent:
            start, whole = now(), None
            try:
                for piece in self.model.stream(to_langchain_messages(req.prompt),
                                               **self._kwargs(req.params, req.grammar)):
                    whole = piece if whole is None else whole + piece
                    if isinstance(piece.content, str) and piece.content:
                        yield StreamChunk(piece.content)
            except TokenomyError:
                raise
            except Exception as exc:
                raise EngineError(f"{self.spec}: the stream broke: {type(exc).__name__}: {exc}") from exc
            if whole is None:
                whole = _core().AIMessage(content="")
            completion = self._completion(whole, req, now() - start)
            spent.usage = completion.usage
        yield StreamChunk("", completion)


def as_langchain(engine: Engine) -> Any:
    """``engine`` as a LangChain chat model (``TokenomyChatModel``)."""
    return _chat_model_class()(engine=engine)


_CLASS: Any = None


def _chat_model_class() -> Any:
    """``TokenomyChatModel``, defined on first use (it subclasses LangChain's ``BaseChatModel``)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    m = _core()
    from langchain_core.language_models import BaseChatModel
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
    from pydantic import ConfigDict

    def to_dicts(messages: Sequence[Any]) -> list[dict[str, str]]:
        roles = {"system": "system", "human": "user", "ai": "assistant"}
        out = []
        for msg in messages:
            role = roles.get(msg.type)
            if role is None:
                raise UserError(f"TokenomyChatModel takes system, human and AI messages, got a {msg.type} message")
            out.append({"role": role, "content": msg.text if hasattr(msg, "text") else str(msg.content)})
        return out

    def metadata(usage: Usage) -> dict[str, Any]:
        prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
        meta: dict[str, Any] = {"input_tokens": prompt, "output_tokens": completion,
                                "total_tokens": prompt + completion}
        if usage.cached_prompt_tokens is not None:
            meta["input_token_details"] = {"cache_read": usage.cached_prompt_tokens}
        if usage.reasoning_tokens:
            meta["output_token_details"] = {"reasoning": usage.reasoning_tokens}
        return meta

    def _piece(chunk: StreamChunk) -> Any:
        """A stream chunk as LangChain's: its text, and on the last one the usage."""
        if chunk.completion is None:
            return m.AIMessageChunk(content=chunk.delta)
        return m.AIMessageChunk(content=chunk.delta, usage_metadata=metadata(chunk.completion.usage))

    class TokenomyChatModel(BaseChatModel):  # type: ignore[misc, valid-type]
        """A tokenomy engine as a LangChain chat model; every reply carries ``usage_metadata``."""

        model_config = ConfigDict(arbitrary_types_allowed=True)
        engine: Any
        max_tokens: int = 256
        temperature: float = 0.0

        @property
        def _llm_type(self) -> str:
            return "tokenomy"

        def _params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> SamplingParams:
            return SamplingParams(max_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
                                  temperature=float(kwargs.get("temperature", self.temperature)),
                                  stop=tuple(stop or ()))

        def _extra(self, kwargs: dict[str, Any]) -> dict[str, Any]:
            """The engine's own keywords a tokenomy caller passes through: a grammar, the agent and tags."""
            return {"grammar": kwargs.get("grammar"), "agent": kwargs.get("tokenomy_agent"),
                    "tags": tuple(kwargs.get("tokenomy_tags") or ())}

        def _message(self, c: Completion) -> Any:
            return m.AIMessage(content=c.text, usage_metadata=metadata(c.usage),
                               response_metadata={"finish_reason": c.finish_reason, "model_name": c.engine})

        @property
        def _identifying_params(self) -> dict[str, Any]:
            return {"engine": getattr(self.engine, "spec", "")}

        def _generate(self, messages: list[Any], stop: list[str] | None = None, run_manager: Any = None,
                      **kwargs: Any) -> Any:
            c = self.engine.chat(to_dicts(messages), self._params(stop, kwargs), **self._extra(kwargs))
            return ChatResult(generations=[ChatGeneration(message=self._message(c))])

        async def _agenerate(self, messages: list[Any], stop: list[str] | None = None, run_manager: Any = None,
                             **kwargs: Any) -> Any:
            c = await self.engine.agenerate(to_dicts(messages), self._params(stop, kwargs), **self._extra(kwargs))
            return ChatResult(generations=[ChatGeneration(message=self._message(c))])

        def _stream(self, messages: list[Any], stop: list[str] | None = None, run_manager: Any = None,
                    **kwargs: Any) -> Iterator[Any]:
            for chunk in self.engine.stream(to_dicts(messages), self._params(stop, kwargs), **self._extra(kwargs)):
                piece = _piece(chunk)
                if run_manager is not None and chunk.delta:
                    run_manager.on_llm_new_token(chunk.delta, chunk=ChatGenerationChunk(message=piece))
                yield ChatGenerationChunk(message=piece)

        async def _astream(self, messages: list[Any], stop: list[str] | None = None, run_manager: Any = None,
                           **kwargs: Any) -> AsyncIterator[Any]:
            async for chunk in self.engine.astream(to_dicts(messages), self._params(stop, kwargs),
                                                   **self._extra(kwargs)):
                piece = _piece(chunk)
                if run_manager is not None and chunk.delta:
                    await run_manager.on_llm_new_token(chunk.delta, chunk=ChatGenerationChunk(message=piece))
                yield ChatGenerationChunk(message=piece)

    _CLASS = TokenomyChatModel
    return _CLASS
