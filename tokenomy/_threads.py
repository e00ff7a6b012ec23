"""Blocking work for asyncio callers, in a daemon thread of its own.

``asyncio.to_thread`` uses the loop's default executor, and ``asyncio.run`` joins that executor's threads when it
ends (Python 3.11 waits without limit): a synchronous tool that hangs would hold the whole run long after its step
timed out. Here each call gets its own daemon thread. When the caller stops waiting (a timeout, a cancel), the
thread is left to finish on its own and its result is dropped; Python cannot stop a thread, but nothing waits for
it, neither the run nor the interpreter's exit.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["in_daemon_thread"]


def in_daemon_thread(fn: Callable[..., T], args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, *,
                     name: str = "tokenomy-worker") -> asyncio.Future[T]:
    """Start ``fn(*args, **kwargs)`` in a new daemon thread named ``name`` (with the caller's context variables);
    a future of its result in the running loop. Cancelling the future abandons the call, it does not stop it.
    (The arguments come as a tuple and a dict, so a tool may have a parameter called ``name``.)"""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    ctx = contextvars.copy_context()

    def settle(value: Any, exc: BaseException | None) -> None:
        if fut.done():  # the caller gave up (a timeout): drop the late result
            return
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)

    def work() -> None:
        value: Any = None
        exc: BaseException | None = None
        try:
            value, exc = ctx.run(fn, *args, **(kwargs or {})), None
        except StopIteration as e:  # an asyncio future refuses StopIteration
            value, exc = None, RuntimeError(f"StopIteration in {name}: {e}")
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting caller as it is, as to_thread does
            value, exc = None, e
        try:
            loop.call_soon_threadsafe(settle, value, exc)
        except RuntimeError:  # the loop has closed: nobody waits for this result any more
            pass

    threading.Thread(target=work, name=name, daemon=True).start()
    return fut
