"""The ``Engine`` protocol: turn prompts into completions, and say what it cost.

Every backend (embedded transformers, vLLM, an OpenAI-compatible server, the scripted test double)
subclasses ``Engine`` and implements one method, ``_run_batch``. The base class gives every engine the
same surface: ``generate`` / ``chat`` for one request, ``generate_batch`` for many (one failed request
does not fail the others), and ``agenerate`` for asyncio callers.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from tokenomy._threads import in_daemon_thread
from tokenomy.errors import CapabilityError, EngineError, TokenomyError

from .limits import admit_all, budgeted, settle_all
from .types import Capabilities, Completion, Grammar, PromptInput, Request, SamplingParams, Scored, StreamChunk

__all__ = ["Engine"]


class Engine(abc.ABC):
    """A backend that generates text. Subclasses implement ``_run_batch``."""

    spec: str = ""
    """The model spec this engine was built from (``embedded``, ``vllm:/dir`` ...)."""
    capabilities: Capabilities = Capabilities()

    def __init__(self) -> None:
        # Engines hold one model; callers from several threads take turns.
        self._lock = threading.RLock()

    # -- what subclasses provide -------------------------------------------------------------------------

    @abc.abstractmethod
    def _run_batch(self, requests: list[Request]) -> list[Completion | BaseException]:
        """Run ``requests``; return one completion or exception per request, in order.

        An error confined to one request is returned in its slot, not raised, so the others complete.
        """

    @staticmethod
    def _run_each(requests: list[Request], one: Callable[[Request], Completion]) -> list[Completion | BaseException]:
        """Run requests one by one; a failure (even a crash) stays in its slot and the rest still run."""
        results: list[Completion | BaseException] = []
        for req in requests:
            try:
                results.append(one(req))
            except TokenomyError as exc:
                results.append(exc)
            except Exception as exc:
                err = EngineError(f"request {req.request_id} failed: {exc!r}")
                err.__cause__ = exc
                results.append(err)
        return results

    def prompt_token_ids(self, prompt: PromptInput) -> list[int] | None:
        """The token ids the engine would prefill for ``prompt`` (after the chat template), if it knows."""
        return None

    def cached_prefix_length(self, token_ids: Sequence[int]) -> int:
        """How many leading tokens of ``token_ids`` are cached now (0 if the engine has no prefix cache)."""
        return 0

    @property
    def context_window(self) -> int | None:
        return None

    @property
    def flops_per_token(self) -> float | None:
        """Forward FLOPs per token: 2 x (non-embedding parameters + the LM head's d x V); ``None`` if unknown.

        Attention over the context is left out (small next to the weights at these lengths)."""
        return None

    def require(self, needs: Sequence[str], who: str, hint: str = "") -> None:
        """Raise ``CapabilityError`` naming ``who`` if this engine lacks one of ``needs``."""
        missing = self.capabilities.missing(needs)
        if missing:
            raise CapabilityError(who, self.spec or type(self).__name__, missing, hint)

    def score(self, prompt: PromptInput, continuation: str, *, agent: str | None = None,
              tags: Sequence[str] = ()) -> Scored:
        """Each token's log-probability of ``continuation`` right after ``prompt`` (a scoring pass, no sampling),
        within the budgets in force (``UsageLimits``: the pass counts as a call of prompt tokens).

        Engines with the ``prompt_logprobs`` capability implement ``_score``."""
        req = Request(prompt=prompt, params=SamplingParams(max_tokens=1), agent=agent, tags=tuple(tags))
        with budgeted(req, self) as spent:
            scored = self._score(prompt, continuation, agent=agent, tags=tags)
            spent.usage = scored.usage
            return scored

    def _score(self, prompt: PromptInput, continuation: str, *, agent: str | None = None,
               tags: Sequence[str] = ()) -> Scored:
        raise CapabilityError("score()", self.spec or type(self).__name__, ["prompt_logprobs"])

    def embed(self, prompt: PromptInput) -> list[float]:
        """The last layer's hidden state at the last token of ``prompt`` (``hidden_states`` capability)."""
        raise CapabilityError("embed()", self.spec or type(self).__name__, ["hidden_states"])

    def as_langchain(self) -> Any:
        """This engine as a LangChain chat model (``TokenomyChatModel``: ``invoke``, ``stream``, ``batch`` and their
        async forms, ``usage_metadata`` on every reply); needs ``langchain-core``."""
        from .langchain_engine import as_langchain

        return as_langchain(self)

    def close(self) -> None:  # noqa: B027 - optional hook, most engines hold nothing to free
        """Free the engine's resources. The engine must not be used afterwards."""

    # -- the surface every engine shares -----------------------------------------------------------------

    def generate_batch(
        self, requests: Sequence[Request], *, return_exceptions: bool = False
    ) -> list[Completion | TokenomyError]:
        """Run several requests. With ``return_exceptions`` a failed request yields its error in its slot
        and the others complete; otherwise the first error is raised after all requests have run."""
        reqs = list(requests)
        if not reqs:
            return []
        refused: dict[int, TokenomyError] = {}
        for i, req in enumerate(reqs):  # every budget in force where the request was made, before the call
            try:
                admit_all(req, self)
            except TokenomyError as exc:
                refused[i] = exc
        run = [r for i, r in enumerate(reqs) if i not in refused]
        ran: list[Completion | BaseException] = []
        try:
            if run:
                with self._lock:
                    try:
                        ran = self._run_batch(run)
                    except TokenomyError as exc:
                        ran = [exc] * len(run)
                    except Exception as exc:  # a backend bug or crash: every request of the batch failed
                        err = EngineError(f"{type(self).__name__} failed on a batch of {len(run)}: {exc!r}")
                        err.__cause__ = exc
                        ran = [err] * len(run)
        finally:
            for req, r in itertools.zip_longest(run, ran):
                if req is not None:
                    settle_all(req, r.usage if isinstance(r, Completion) else None, self.spec)
        if len(ran) != len(run):
            raise EngineError(f"{type(self).__name__} returned {len(ran)} results for {len(run)} requests")
        done = iter(ran)
        results = [refused[i] if i in refused else next(done) for i in range(len(reqs))]
        out: list[Completion | TokenomyError] = []
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, TokenomyError):
                wrapped = EngineError(f"{type(self).__name__}: {r!r}")
                wrapped.__cause__ = r
                r = wrapped
            out.append(r)  # type: ignore[arg-type]
        if not return_exceptions:
            for r in out:
                if isinstance(r, TokenomyError):
                    raise r
        return out

    def generate(
        self,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        *,
        grammar: Grammar | None = None,
        agent: str | None = None,
        tags: Sequence[str] = (),
        **sampling: object,
    ) -> Completion:
        """Generate one completion. Keyword arguments such as ``max_tokens=`` or ``stop=`` build the
        ``SamplingParams`` when ``params`` is not given."""
        req = self.make_request(prompt, params, grammar=grammar, agent=agent, tags=tags, **sampling)
        (result,) = self.generate_batch([req])
        assert isinstance(result, Completion)
        return result

    def chat(self, messages: Sequence[dict], params: SamplingParams | None = None, **kwargs: object) -> Completion:
        """Generate the assistant's reply to chat ``messages`` (rendered with the model's chat template)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return self.generate(list(messages), params, **kwargs)  # type: ignore[arg-type]

    async def agenerate(
        self,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        **kwargs: object,
    ) -> Completion:
        """``generate`` for asyncio callers; runs in a thread so the event loop stays free.

        Many agents sharing one engine should go through a ``Worker``, which also batches and orders them.
        """
        return await in_daemon_thread(self.generate, (prompt, params), dict(kwargs), name="tokenomy-generate")

    streams_tokens: bool = False
    """Calls ``Request.on_text`` as it decodes (``stream`` then yields text token by token)."""

    def stream(self, prompt: PromptInput, params: SamplingParams | None = None, *, grammar: Grammar | None = None,
               agent: str | None = None, tags: Sequence[str] = (), **sampling: object) -> Iterator[StreamChunk]:
        """Generate one completion as it decodes: ``StreamChunk``s of new text, the last one carrying the whole
        ``Completion`` and its usage. Engines that cannot stream send the text in one chunk."""
        req = self.make_request(prompt, params, grammar=grammar, agent=agent, tags=tags, **sampling)
        if not self.streams_tokens:
            (completion,) = self.generate_batch([req])
            assert isinstance(completion, Completion)
            yield StreamChunk(completion.text, completion)
            return
        pieces: queue.Queue[Any] = queue.Queue()
        req.on_text = pieces.put
        done = object()

        def run() -> None:
            try:
                pieces.put((done, self.generate_batch([req], return_exceptions=True)[0]))
            except BaseException as exc:  # noqa: BLE001 - handed to the reader
                pieces.put((done, exc))

        threading.Thread(target=run, name="tokenomy-stream", daemon=True).start()
        try:
            while True:
                item = pieces.get()
                if isinstance(item, tuple) and item and item[0] is done:
                    if isinstance(item[1], BaseException):
                        raise item[1]
                    yield StreamChunk("", item[1])
                    return
                yield StreamChunk(item)
        finally:
            req.cancel()  # a reader that stops early stops the decoding too (a no-op once it is done)

    async def astream(self, prompt: PromptInput, params: SamplingParams | None = None,
                      **kwargs: object) -> AsyncIterator[StreamChunk]:
        """``stream`` for asyncio callers: the decoding runs in a thread, the event loop stays free."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[Any] = asyncio.Queue()
        end = object()

        def run() -> None:
            try:
                for chunk in self.stream(prompt, params, **kwargs):  # type: ignore[arg-type]
                    loop.call_soon_threadsafe(pieces.put_nowait, chunk)
                loop.call_soon_threadsafe(pieces.put_nowait, end)
            except BaseException as exc:  # noqa: BLE001 - handed to the reader
                loop.call_soon_threadsafe(pieces.put_nowait, exc)

        threading.Thread(target=run, name="tokenomy-astream", daemon=True).start()
        while True:
            item = await pieces.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    @staticmethod
    def make_request(
        prompt: PromptInput,
        params: SamplingParams | None = None,
        *,
        grammar: Grammar | None = None,
        agent: str | None = None,
        tags: Sequence[str] = (),
        **sampling: object,
    ) -> Request:
        if params is None:
            params = SamplingParams(**sampling)  # type: ignore[arg-type]
        elif sampling:
            raise TypeError(f"pass either params or sampling keywords, not both: {sorted(sampling)}")
        return Request(prompt=prompt, params=params, grammar=grammar, agent=agent, tags=tuple(tags))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def now() -> float:
    return time.perf_counter()
