"""A TEST DOUBLE of a strict OpenAI-compatible server: it takes only the fields of OpenAI's own API reference and
answers any other field with OpenAI's 400 ("Unrecognized request argument supplied: top_k"), as OpenAI and the
strict gateways do. On 127.0.0.1 with a free port, no network.

``kind`` makes it look like another server to profile detection: ``"openai"`` answers no probe, ``"llamacpp"``
answers ``GET /props``, ``"ollama"`` ``GET /api/version`` (each then also takes that server's own fields).
Replies: chat echoes the last message reversed, completions upper-case the prompt; ``stream=True`` sends the reply
in pieces of 3 characters as server-sent events, with the usage in a last chunk when
``stream_options.include_usage`` is set. A prompt containing "think" reports 5 reasoning tokens. ``bodies``
records every request body.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_FIELDS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "stop", "seed", "logprobs", "top_logprobs", "response_format", "presence_penalty",
    "frequency_penalty", "logit_bias", "user", "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort",
    "metadata", "store", "service_tier", "modalities", "prediction", "audio", "web_search_options", "verbosity",
    "prompt_cache_key", "safety_identifier"})
COMPLETION_FIELDS = frozenset({
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "logprobs", "echo",
    "stop", "presence_penalty", "frequency_penalty", "best_of", "logit_bias", "user", "seed", "suffix"})
OWN_FIELDS = {"openai": frozenset(), "llamacpp": frozenset({"top_k", "grammar", "json_schema"}),
              "ollama": frozenset()}
PROBES = {"llamacpp": ("/props", {"default_generation_settings": {}, "build_info": "b0-fake"}),
          "ollama": ("/api/version", {"version": "0.0-fake"})}


class StrictOpenAIServer:
    def __init__(self, kind: str = "openai") -> None:
        self.kind = kind
        self.bodies: list[dict[str, Any]] = []
        self.gets: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                server.gets.append(self.path)
                probe = PROBES.get(server.kind)
                if probe and self.path == probe[0]:
                    self._send(200, probe[1])
                else:
                    self._send(404, {"error": {"message": f"Invalid URL (GET {self.path})", "type":
                                               "invalid_request_error"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.bodies.append(body)
                chat = self.path == "/v1/chat/completions"
                if not chat and self.path != "/v1/completions":
                    return self._send(404, {"error": {"message": f"Invalid URL (POST {self.path})"}})
                allowed = (CHAT_FIELDS if chat else COMPLETION_FIELDS) | OWN_FIELDS[server.kind]
                unknown = sorted(set(body) - allowed)
                if unknown:
                    return self._send(400, {"error": {"message": f"Unrecognized request argument supplied: "
                                                                 f"{', '.join(unknown)}",
                                                      "type": "invalid_request_error", "param": None,
                                                      "code": None}})
                prompt = json.dumps(body.get("messages", body.get("prompt")))
                reply = body["messages"][-1]["content"][::-1] if chat else str(body["prompt"]).upper()
                usage: dict[str, Any] = {"prompt_tokens": 12, "completion_tokens": len(reply), "total_tokens":
                                         12 + len(reply), "prompt_tokens_details": {"cached_tokens": 0}}
                if "think" in prompt:
                    usage["completion_tokens_details"] = {"reasoning_tokens": 5}
                if not body.get("stream"):
                    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
                    if chat:
                        choice["message"] = {"role": "assistant", "content": reply}
                    else:
                        choice["text"] = reply
                    return self._send(200, {"id": "x", "object": "chat.completion" if chat else "text_completion",
                                            "created": 0, "model": body["model"], "choices": [choice],
                                            "usage": usage})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def event(payload: Any) -> None:
                    data = f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()

                base = {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion", "created": 0,
                        "model": body["model"]}
                pieces = [reply[i:i + 3] for i in range(0, len(reply), 3)]
                for i, piece in enumerate(pieces):
                    last = i == len(pieces) - 1
                    choice = {"index": 0, "finish_reason": "stop" if last else None}
                    if chat:
                        choice["delta"] = {"content": piece}
                    else:
                        choice["text"] = piece
                    event({**base, "choices": [choice]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    event({**base, "choices": [], "usage": usage})
                event("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self._httpd = Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> StrictOpenAIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
