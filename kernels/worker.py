"""The shared worker: many agents, one engine, prefixes computed once.

Agents submit requests concurrently (threads or asyncio). One background thread per engine drains the queue:
it gathers what arrived together, orders it so a shared prefix is computed once before the requests that
extend it (cached-prefix length first, like SGLang's longest-prefix-match policy, then depth-first by token
ids so siblings run back to back), hands the engine one batch (engines that gain from batching, such as vLLM,
run it as one call; the embedded engine runs it in that order) and records each completion's usage per agent
and per tag. A request that fails comes back as its own error; the others complete.

``Router`` spreads requests over several workers of one process (servers are routed by ``vllm-router``: see
``kernels.serving``) with prefix affinity and a load guard, the policy of sgl-router: route to the shortest queue
when load is imbalanced, else to the worker whose approximate radix tree matches the prompt best, else to the one
with the smallest tree.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Sequence
from typing import Any

from tokenomy.errors import EngineError, RequestCancelled, TokenomyError, UserError

from .engine import Engine, now
from .radix import RadixCache
from .types import Completion, Grammar, PromptInput, Request, SamplingParams
from .usage import UsageLedger

__all__ = ["Worker", "Router", "order_requests", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 600.0
"""How long ``Worker.generate`` waits for a request given no timeout: long enough for a CPU model's longest
answer, short enough that a lost request does not hang an agent."""


def order_requests(requests: Sequence[Request], engine: Engine) -> list[Request]:
    """Longest cached prefix first, then depth-first by token ids (siblings adjacent, shorter first)."""
    keyed = []
    for i, r in enumerate(requests):
        try:
            ids = engine.prompt_token_ids(r.prompt)
            depth = -engine.cached_prefix_length(ids) if ids is not None else 0
        except Exception:  # noqa: BLE001 - a malformed prompt: the engine reports its error when it runs, alone
            ids = None
        if ids is None:
            # A remote engine: its server caches by token ids we cannot see; sorting by the prompt's text still
            # keeps requests that share a prefix next to each other.
            keyed.append((0, tuple(_prompt_text(r).encode("utf-8")), i, r))
        else:
            keyed.append((depth, tuple(ids), i, r))
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    return [k[3] for k in keyed]


def _results(futures: Sequence[cf.Future[Completion]]) -> list[Completion | TokenomyError]:
    out: list[Completion | TokenomyError] = []
    for f in futures:
        try:
            out.append(f.result())
        except TokenomyError as exc:
            out.append(exc)
        except cf.CancelledError:
            out.append(RequestCancelled("cancelled"))
    return out


def _fail(batch: Sequence[tuple[Request, cf.Future[Completion]]], exc: BaseException) -> None:
    """Every still-open future of ``batch`` fails with an ``EngineError`` naming ``exc``."""
    err = EngineError(f"the worker failed on a batch of {len(batch)}: {exc!r}")
    err.__cause__ = exc
    for _, fut in batch:
        if not fut.done():
            try:
                fut.set_exception(err)
            except cf.InvalidStateError:
                pass  # finished meanwhile


def _prompt_text(request: Request) -> str:
    """The prompt as text, to order by (never raises: a malformed prompt gives its ``repr``)."""
    p = request.prompt
    try:
        if isinstance(p, str):
            return p
        if request.is_chat:
            return "".join(f"{m.get('role')}\n{m.get('content')}\n" for m in p)  # type: ignore[union-attr]
        return " ".join(str(t) for t in p)
    except Exception:  # noqa: BLE001
        return repr(p)


class Worker:
    """One queue and one scheduler thread in front of an engine.

    Args:
        engine: the engine every request goes to.
        max_batch: the most requests handed to the engine at once.
        gather_s: how long to wait for more requests after the first one arrives, so that requests sent
            together are ordered together.
        schedule: ``"lpm"`` (longest prefix match, then depth-first) or ``"fcfs"``.
        default_timeout: the seconds ``generate`` waits when it is given no ``timeout`` (``None``: no limit).

    A malformed request fails alone: the scheduler thread survives anything a request does, and a batch that
    fails as a whole is run again one request at a time, so that only the bad request gets the error.
    """

    def __init__(self, engine: Engine | Any, *, max_batch: int = 64, gather_s: float = 0.002,
                 schedule: str = "lpm", default_timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        if max_batch < 1:
            raise ValueError(f"Worker.max_batch must be >= 1, got {max_batch}")
        if schedule not in ("lpm", "fcfs"):
            raise ValueError(f"Worker.schedule must be 'lpm' or 'fcfs', got {schedule!r}")
        from .registry import as_engine

        self.engine = as_engine(engine)  # a LangChain chat model works too
        self.max_batch = max_batch
        self.gather_s = gather_s
        self.schedule = schedule
        self.default_timeout = default_timeout
        self.ledger = UsageLedger()
        self.scheduler_s = 0.0
        """Seconds spent ordering requests (the scheduler's overhead)."""
        self.busy_s = 0.0
        """Seconds the engine spent running batches."""
        self._pending: list[tuple[Request, cf.Future[Completion]]] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"tokenomy-worker-{self.engine.spec}", daemon=True)
        self._thread.start()

    # -- submitting -------------------------------------------------------------------------------------

    @property
    def queue_length(self) -> int:
        with self._cv:
            return len(self._pending)

    def submit(self, request: Request) -> cf.Future[Completion]:
        """Queue ``request``; the future resolves to its completion or raises its error.

        Cancelling the future cancels the request (before it starts, or at the next token)."""
        fut: cf.Future[Completion] = cf.Future()
        fut.add_done_callback(lambda f: request.cancel() if f.cancelled() else None)
        with self._cv:
            if self._closed:
                raise UserError("this worker is closed")
            self._pending.append((request, fut))
            self._cv.notify()
        return fut

    def generate(self, prompt: PromptInput, params: SamplingParams | None = None, *,
                 grammar: Grammar | None = None, agent: str | None = None, tags: Sequence[str] = (),
                 timeout: float | None = None, **sampling: Any) -> Completion:
        """Submit one request and wait for it (from any thread), at most ``timeout`` seconds (default: the
        worker's ``default_timeout``); past it the request is cancelled and ``RequestCancelled`` raised."""
        req = Engine.make_request(prompt, params, grammar=grammar, agent=agent, tags=tags, **sampling)
        timeout = self.default_timeout if timeout is None else timeout
        fut = self.submit(req)
        try:
            return fut.result(timeout)
        except cf.TimeoutError:
            fut.cancel()
            req.cancel()
            raise RequestCancelled(f"{req.request_id} timed out after {timeout} s") from None

    async def agenerate(self, prompt: PromptInput, params: SamplingParams | None = None, **kwargs: Any) -> Completion:
        """Submit one request from asyncio; cancelling the awaiting task cancels the request."""
        req = Engine.make_request(prompt, params, **kwargs)
        return await self.asubmit(req)

    async def asubmit(self, request: Request) -> Completion:
        fut = self.submit(request)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            request.cancel()
            fut.cancel()
            raise

    def map(self, requests: Sequence[Request]) -> list[Completion | TokenomyError]:
        """Submit many requests at once and wait for all; failures come back in their slots."""
        return _results([self.submit(r) for r in requests])

    # -- the scheduler thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed and not self._pending:
                    return
            if self.gather_s:
                # Let requests submitted together arrive together, so they are ordered together.
                with self._cv:
                    self._cv.wait(self.gather_s)
            # The thread serves every agent: whatever a request does, it fails that batch, never the thread.
            with self._cv:
                try:
                    batch, self._pending = self._take()
                except BaseException as exc:  # noqa: BLE001
                    batch, self._pending = self._pending, []
                    _fail(batch, exc)
                    continue
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001
                _fail(batch, exc)

    def _take(self) -> tuple[list[tuple[Request, cf.Future[Completion]]], list[tuple[Request, cf.Future[Completion]]]]:
        live = [(r, f) for r, f in self._pending if not f.done()]
        for r, f in self._pending:
            if f.done():
                r.cancel()
        if self.schedule == "fcfs" or len(live) <= 1:
            return live[: self.max_batch], live[self.max_batch:]
        t0 = now()
        futs = {id(r): f for r, f in live}
        try:
            ordered = order_requests([r for r, _ in live], self.engine)
        except Exception:  # noqa: BLE001 - ordering is an optimisation: arrival order serves as well
            ordered = [r for r, _ in live]
        self.scheduler_s += now() - t0
        pairs = [(r, futs[id(r)]) for r in ordered]
        return pairs[: self.max_batch], pairs[self.max_batch:]

    def _run(self, batch: list[tuple[Request, cf.Future[Completion]]]) -> None:
        runnable = [(r, f) for r, f in batch if f.set_running_or_notify_cancel()]
        if not runnable:
            return
        t0 = now()
        results = self._generate([r for r, _ in runnable])
        if len(runnable) > 1 and isinstance(results[0], BaseException) and all(x is results[0] for x in results):
            # The batch failed as a whole (one malformed request can do that): each request again, alone.
            results = [self._generate([r])[0] for r, _ in runnable]
        self.busy_s += now() - t0
        for (req, fut), res in zip(runnable, results, strict=True):
            if isinstance(res, Completion):
                self.ledger.record(res.usage, req.agent, req.tags)
                fut.set_result(res)
            else:
                fut.set_exception(res)

    def _generate(self, requests: list[Request]) -> list[Completion | TokenomyError]:
        try:
            return self.engine.generate_batch(requests, return_exceptions=True)
        except BaseException as exc:  # noqa: BLE001 - never leave a caller waiting
            err = exc if isinstance(exc, TokenomyError) else EngineError(f"{self.engine.spec}: {exc!r}")
            return [err] * len(requests)

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish what is queued, then stop the scheduler thread (the engine stays open)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Router:
    """Route requests over several workers **inside one process** with prefix affinity and a load guard
    (sgl-router's policy): engines this process holds itself (two embedded models, a GPU engine beside a CPU one),
    which no server-side router can see. Servers are routed by a real router in front of them, shared by every
    process: ``tokenomy serve --replicas N`` starts ``vllm-router`` before N ``vllm serve`` replicas
    (``kernels.serving``) and every agent uses its one URL through the ``openai:`` engine.

    Args:
        workers: the workers (one per engine or server).
        balance_abs, balance_rel: load is imbalanced when ``max - min > balance_abs`` and
            ``max > balance_rel * min`` (queued plus running requests); then the least loaded worker wins.
        cache_threshold: otherwise the worker whose tree matches the most of the prompt wins if it matches at
            least this fraction, else the worker with the smallest tree.
        tree_tokens: the token budget of each worker's approximate tree.
    """

    def __init__(self, workers: Sequence[Worker], *, balance_abs: int = 32, balance_rel: float = 1.5,
                 cache_threshold: float = 0.5, tree_tokens: int = 1 << 20) -> None:
        if not workers:
            raise ValueError("Router needs at least one worker")
        self.workers = list(workers)
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.cache_threshold = cache_threshold
        self._trees = [RadixCache(tree_tokens, bytes_per_token=1) for _ in workers]
        self._inflight = [0] * len(workers)
        self._lock = threading.Lock()
        self.routed = [0] * len(workers)

    def pick(self, ids: Sequence[int]) -> int:
        """The index of the worker for a prompt of token ids ``ids`` (records the choice)."""
        with self._lock:
            loads = self._inflight
            lo, hi = min(loads), max(loads)
            if hi - lo > self.balance_abs and hi > self.balance_rel * lo:
                choice = loads.index(lo)
            else:
                matches = [t.peek(ids) for t in self._trees]
                best = max(range(len(matches)), key=lambda i: (matches[i], -loads[i]))
                if ids and matches[best] / len(ids) >= self.cache_threshold:
                    choice = best
                else:
                    choice = min(range(len(self._trees)), key=lambda i: (self._trees[i].cached_tokens, loads[i]))
            self._trees[choice].insert(ids)
            self._inflight[choice] += 1
            self.routed[choice] += 1
            return choice

    def submit(self, request: Request) -> cf.Future[Completion]:
        try:
            ids = self.workers[0].engine.prompt_token_ids(request.prompt)
        except Exception:  # noqa: BLE001 - a malformed prompt: routed by its text, its worker reports the error
            ids = None
        if ids is None:
            ids = list(_prompt_text(request).encode("utf-8"))
        i = self.pick(ids)
        fut = self.workers[i].submit(request)

        def done(_: cf.Future[Completion]) -> None:
            with self._lock:
                self._inflight[i] -= 1

        fut.add_done_callback(done)
        return fut

    def map(self, requests: Sequence[Request]) -> list[Completion | TokenomyError]:
        """Route and submit many requests at once and wait for all; failures come back in their slots."""
        return _results([self.submit(r) for r in requests])

    def close(self) -> None:
        for w in self.workers:
            w.close()
