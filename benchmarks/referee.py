"""The referee of `tokenomy bench peers`: one OpenAI-compatible server, and a recording proxy in front of it that
counts every framework's requests the same way, from what the server reports.

Every framework under test gets its own base URL on the proxy, ``http://127.0.0.1:PORT/r/TAG/v1``, where ``TAG``
names the framework and the task; the proxy forwards the request unchanged to the server's ``/v1`` and appends
one record per request to a JSON-lines log: the tag, the path, the HTTP status, the latency, and the usage as the
server reported it (prompt, cached prompt and completion tokens). No framework's own accounting enters the log.

Streaming: a streamed chat or completion reports usage only when the client asks for it
(``stream_options.include_usage``); the proxy always asks, and drops the usage-only chunk again before the client
sees it when the client did not ask, so what the client receives is what the server would have sent it.

``VllmServer`` starts a real ``vllm serve`` (from the vLLM environment, ``.venv-vllm``) with prefix caching and
tool calling on, and ``check_model`` confirms that a server serves the model the benchmark expects before anything
is counted.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import httpx

from tokenomy.kernels.serving import (
    DTYPE_BYTES,
    KV_CACHE_GIB,
    SERVER_OVERHEAD_GIB,
    ServerError,
    check_model,
    free_port,
    memory_fraction_for,
    vllm_python,
)
from tokenomy.kernels.serving import VllmServer as _VllmServer

_T = TypeVar("_T")

MAX_BODY = 32 * 1024**2
INFO_PATHS = ("/version", "/props", "/api/version")
"""GETs of a server's own description (vLLM, llama.cpp, Ollama), passed through unrecorded."""
"""Largest request body the proxy forwards (bytes); a larger one is refused with 413 and recorded."""

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
                "content-length", "host", "accept-encoding", "content-encoding"}


RefereeError = ServerError
"""The referee's server is missing, did not start, or serves another model than the one expected."""


@dataclass
class Record:
    """One request as the server saw it. Token counts are ``None`` where the server reported none (an error)."""

    tag: str
    path: str
    status: int
    latency_s: float
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    stream: bool = False
    error: str | None = None
    started: float = field(default_factory=time.time)

    @property
    def uncached_tokens(self) -> int | None:
        if self.prompt_tokens is None:
            return None
        return self.prompt_tokens - (self.cached_tokens or 0)


class UsageFields(TypedDict):
    prompt_tokens: int | None
    cached_tokens: int | None
    completion_tokens: int | None


def usage_fields(usage: dict[str, Any] | None) -> UsageFields:
    """Prompt, cached and completion tokens of an OpenAI ``usage`` object (``None`` for what it lacks)."""
    if not isinstance(usage, dict):
        return {"prompt_tokens": None, "cached_tokens": None, "completion_tokens": None}
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return {"prompt_tokens": _int(usage.get("prompt_tokens")), "cached_tokens": _int(cached),
            "completion_tokens": _int(usage.get("completion_tokens"))}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class RecordingProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of an OpenAI-compatible server (``upstream``, ending in
    ``/v1``), recording each request (see the module's docstring). Use as a context manager, or ``start``/``stop``.

    ``timeout``: seconds the proxy waits for the server to answer (and between streamed chunks); past it the
    client gets a 504 and the record says ``timeout``. ``log``: the JSON-lines file records are appended to."""

    def __init__(self, upstream: str, *, log: str | Path | None = None, timeout: float = 600.0,
                 api_key: str | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        if not self.upstream.endswith("/v1"):
            raise ValueError(f"upstream {upstream!r}: give the server's OpenAI base URL, ending in /v1")
        self.log_path = Path(log) if log else None
        self.timeout = timeout
        self.api_key = api_key
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))

    # -- life cycle -------------------------------------------------------------------------------------------

    def start(self) -> RecordingProxy:
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="referee-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._client.close()

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        return int(self._server.server_address[1])

    def base_url(self, tag: str) -> str:
        """The OpenAI base URL a framework is given: its requests are recorded under ``tag``."""
        if not tag or "/" in tag or not tag.isprintable() or " " in tag:
            raise ValueError(f"tag {tag!r}: one path segment, no spaces")
        return f"http://127.0.0.1:{self.port}/r/{tag}/v1"

    # -- records ----------------------------------------------------------------------------------------------

    def record(self, rec: Record) -> None:
        with self._lock:
            self.records.append(rec)
            if self.log_path is not None:
                with self.log_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(asdict(rec)) + "\n")

    def records_for(self, tag: str) -> list[Record]:
        with self._lock:
            return [r for r in self.records if r.tag == tag]


def read_log(path: str | Path) -> list[Record]:
    """The records of a proxy's log; a line that is not a record (a run cut off mid-write) is skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        try:
            out.append(Record(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return out


_CLIENT_GONE = "the client went away before the whole answer"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request is its own problem: the proxy neither prints nor stops."""


class _Handler(BaseHTTPRequestHandler):
    proxy: RecordingProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the records are the log

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._forward(None)

    def do_POST(self) -> None:  # noqa: N802
        length = self.headers.get("Content-Length")
        try:
            size = int(length or 0)
        except ValueError:
            size = -1
        tag, path = self._route()
        if size < 0 or size > MAX_BODY:
            self.close_connection = True  # the body is not read: the connection cannot carry another request
            self._refuse(413 if size > MAX_BODY else 400, tag, path, f"request body of {length} bytes")
            return
        self._forward(self.rfile.read(size))

    def _route(self) -> tuple[str, str]:
        parts = self.path.split("/", 3)  # "", "r", tag, "v1/..."
        if len(parts) == 4 and parts[1] == "r" and (parts[3].startswith("v1") or "/" + parts[3] in INFO_PATHS):
            return parts[2], "/" + parts[3]
        return "-", self.path

    def _forward_info(self, path: str) -> None:
        """A GET of the server's own description (``/version`` ...), passed through unrecorded: it is no model
        call, and a client that asks which server it talks to (tokenomy's ``openai:`` engine) must find the
        server behind the referee, not the referee."""
        root = self.proxy.upstream[:-len("/v1")]
        try:
            resp = self.proxy._client.get(root + path, timeout=10.0)
            status, data, kind = resp.status_code, resp.content, resp.headers.get("content-type", "text/plain")
        except httpx.HTTPError as e:
            status, data, kind = 502, f"referee proxy: {type(e).__name__}".encode(), "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, status: int, tag: str, path: str, why: str, started: float | None = None) -> None:
        body = json.dumps({"error": {"message": f"referee proxy: {why}", "type": "proxy_error"}}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            why = f"{why}; {_CLIENT_GONE}"
        latency = time.monotonic() - started if started is not None else 0.0
        self.proxy.record(Record(tag=tag, path=path, status=status, latency_s=round(latency, 4), error=why))

    def _forward(self, body: bytes | None) -> None:
        proxy = self.proxy
        tag, path = self._route()
        if self.command == "GET" and path in INFO_PATHS:
            self._forward_info(path)
            return
        if not path.startswith("/v1"):
            self._refuse(404, tag, path, "not an OpenAI path: use /r/TAG/v1/...")
            return
        started = time.monotonic()
        payload: Any = None
        if body:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None  # forwarded as is: the server says what is wrong with it
        stream = isinstance(payload, dict) and payload.get("stream") is True
        client_wants_usage = True
        if stream:
            opts = payload.get("stream_options")
            client_wants_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            payload["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
            body = json.dumps(payload).encode()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        if proxy.api_key:
            headers["Authorization"] = f"Bearer {proxy.api_key}"
        url = proxy.upstream + path[len("/v1"):]
        resp = self._upstream(
            lambda: proxy._client.send(proxy._client.build_request(self.command, url, content=body, headers=headers),
                                       stream=True),
            tag, path, started, timeout="the server did not answer", broken="server unreachable")
        if resp is None:
            return
        try:
            if stream and resp.status_code == 200:
                self._relay_stream(resp, tag, path, started, client_wants_usage)
            else:
                self._relay_whole(resp, tag, path, started)
        finally:
            resp.close()

    def _start_response(self, resp: httpx.Response, *, chunked: bool, length: int | None = None) -> None:
        self.send_response(resp.status_code)
        for k, v in resp.headers.items():
            if k.lower() not in _HOP_HEADERS:
                self.send_header(k, v)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length or 0))
        self.end_headers()

    def _upstream(self, call: Callable[[], _T], tag: str, path: str, started: float, *, timeout: str,
                  broken: str) -> _T | None:
        """``call()``'s value; where the server times out a 504 to the client, where the connection fails a 502
        (each recorded), and None."""
        try:
            return call()
        except httpx.TimeoutException:
            self._refuse(504, tag, path, f"timeout: {timeout}", started)
        except httpx.HTTPError as e:
            self._refuse(502, tag, path, f"{broken}: {type(e).__name__}", started)
        return None

    def _relay_whole(self, resp: httpx.Response, tag: str, path: str, started: float) -> None:
        data = self._upstream(resp.read, tag, path, started, timeout="the server stopped answering",
                              broken="server broke off")
        if data is None:
            return
        usage: Any = None
        error = None
        try:
            parsed = json.loads(data)
            usage = parsed.get("usage") if isinstance(parsed, dict) else None
        except ValueError:
            parsed = None
        if resp.status_code >= 400:
            error = _error_text(parsed) or f"HTTP {resp.status_code}"
        try:
            self._start_response(resp, chunked=False, length=len(data))
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # a framework stopped at its deadline: the server did the work, so it is counted
            error = error or _CLIENT_GONE
        self.proxy.record(Record(tag=tag, path=path, status=resp.status_code,
                                 latency_s=round(time.monotonic() - started, 4), error=error, **usage_fields(usage)))

    def _relay_stream(self, resp: httpx.Response, tag: str, path: str, started: float, client_wants_usage: bool
                      ) -> None:
        self._start_response(resp, chunked=True)
        usage: Any = None
        error = None
        try:
            for event in _sse_events(resp.iter_lines()):
                data = event[len("data:"):].strip() if event.startswith("data:") else None
                if data and data != "[DONE]":
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        chunk = None
                    if isinstance(chunk, dict) and chunk.get("usage"):
                        usage = chunk["usage"]
                        if not client_wants_usage and not chunk.get("choices"):
                            continue  # the usage-only chunk the proxy asked for
                        if not client_wants_usage:
                            chunk = {k: v for k, v in chunk.items() if k != "usage"}
                            event = "data: " + json.dumps(chunk)
                self._chunk((event + "\n\n").encode())
        except httpx.TimeoutException:
            error = "timeout: the stream stalled"
        except httpx.HTTPError as e:
            error = f"stream broke off: {type(e).__name__}"
        except (BrokenPipeError, ConnectionResetError):
            error = _CLIENT_GONE
        try:
            self._chunk(b"")
        except OSError:
            pass
        self.proxy.record(Record(tag=tag, path=path, status=resp.status_code, stream=True, error=error,
                                 latency_s=round(time.monotonic() - started, 4), **usage_fields(usage)))

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _sse_events(lines: Iterator[str]) -> Iterator[str]:
    """Server-sent events as single strings (the lines of one event joined), blank lines as separators."""
    buf: list[str] = []
    for line in lines:
        if line == "":
            if buf:
                yield "\n".join(buf)
                buf = []
        else:
            buf.append(line)
    if buf:
        yield "\n".join(buf)


def _error_text(parsed: Any) -> str | None:
    if isinstance(parsed, dict):
        err = parsed.get("error", parsed.get("message"))
        if isinstance(err, dict):
            err = err.get("message")
        if err:
            return str(err)[:300]
    return None


# -- the server ---------------------------------------------------------------------------------------------------


class VllmServer(_VllmServer):
    """``kernels.serving.VllmServer`` with tool calling on, as the peers need it: Qwen2.5's chat template asks for
    hermes-style ``<tool_call>`` blocks; the default parser, ``tokenomy_hermes`` of ``vllm_tool_parser.py``, also
    reads the fenced JSON calls that the Qwen2.5-Coder models write instead."""

    def __init__(self, model_dir: str | Path, *, served_name: str, tool_parser: str = "tokenomy_hermes",
                 **options: Any) -> None:
        plugin = Path(__file__).with_name("vllm_tool_parser.py") if tool_parser == "tokenomy_hermes" else None
        super().__init__(model_dir, served_name=served_name, tool_parser=tool_parser, tool_parser_plugin=plugin,
                         **options)


__all__ = ["DTYPE_BYTES", "KV_CACHE_GIB", "SERVER_OVERHEAD_GIB", "RefereeError", "VllmServer", "check_model",
           "free_port", "memory_fraction_for", "vllm_python", "RecordingProxy", "Record", "read_log"]
