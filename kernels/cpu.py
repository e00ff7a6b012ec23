"""What the CPU can do, and the dtype and thread count the transformers engine picks from it.

* **dtype**: bfloat16 where the CPU computes it natively (AMX or AVX512-BF16 in ``/proc/cpuinfo``), float32
  elsewhere (emulated bfloat16 is slower than float32). On a machine with AVX512-BF16 the Qwen 0.5B model reads a
  prompt about 4x faster in bfloat16. ``TOKENOMY_DTYPE`` (``float32``, ``bfloat16``, ``float16``) overrides it.
* **threads**: torch uses one thread per core by default, and a thread more than the cores that are free makes
  every matrix product wait for the slowest one (5-10x slower under load, seen on 2-core machines). The engine
  takes the cores this process may use (its CPU affinity) less those busy right now (read from ``/proc/stat``
  over 0.1 s), at least one. ``TOKENOMY_THREADS`` overrides it.

Both choices are made once per process, when the first CPU engine is built, and logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from functools import lru_cache

from tokenomy.errors import UserError

__all__ = ["cpu_flags", "native_bf16", "default_cpu_dtype", "free_cores", "pick_threads", "configure_threads",
           "DTYPES"]

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
_configured: int | None = None
_lock = threading.Lock()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (AMX or AVX512-BF16)."""
    return bool(_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def default_cpu_dtype(flags: frozenset[str] | None = None) -> str:
    """``TOKENOMY_DTYPE`` if set, else ``bfloat16`` where the CPU has it natively, else ``float32``."""
    env = os.environ.get("TOKENOMY_DTYPE", "").strip()
    if env:
        if env not in DTYPES:
            raise UserError(f"TOKENOMY_DTYPE={env!r}: use one of {', '.join(DTYPES)}")
        return env
    return "bfloat16" if native_bf16(flags) else "float32"


def _busy_jiffies() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def free_cores(window_s: float = 0.1) -> int:
    """The cores this process may use, less those other work keeps busy now (at least 1)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    first = _busy_jiffies()
    if first is None:
        return max(1, usable)
    time.sleep(window_s)
    second = _busy_jiffies()
    if second is None or second[1] <= first[1]:
        return max(1, usable)
    cores = os.cpu_count() or usable
    busy = (second[0] - first[0]) / (second[1] - first[1]) * cores  # cores' worth of busy time, all processes
    return max(1, min(usable, usable - int(busy + 0.25)))  # a core counts busy from 3/4 of its time


def pick_threads() -> int:
    """``TOKENOMY_THREADS`` if set, else ``free_cores()``."""
    env = os.environ.get("TOKENOMY_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise UserError(f"TOKENOMY_THREADS={env!r}: use a whole number >= 1")
        return n
    return free_cores()


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count once per process (``threads`` or ``pick_threads()``); returns it. A later
    call with an explicit ``threads`` changes it; one without keeps the first choice."""
    global _configured
    with _lock:
        if threads is None and _configured is not None:
            return _configured
        n = threads if threads is not None else pick_threads()
        import torch

        torch.set_num_threads(n)
        _configured = n
        log.info("torch uses %d CPU thread(s)", n)
        return n
