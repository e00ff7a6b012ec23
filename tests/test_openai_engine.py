"""The OpenAI-compatible engine against a local test-double server (127.0.0.1 only)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tokenomy.errors import ContextLengthExceeded, EngineError, ModelNotFound, UserError
from tokenomy.kernels import Grammar, Request, SamplingParams
from tokenomy.kernels.registry import load_engine


class FakeOpenAIServer:
    """A test double of an OpenAI-compatible server: deterministic replies, scripted failures, recorded bodies."""

    def __init__(self):
        self.bodies = []
        self.failures = []  # queue of (status, body) answered before normal replies
        self.delay_s = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.bodies.append((self.path, body))
                if server.delay_s:
                    time.sleep(server.delay_s)
                if server.failures:
                    status, payload = server.failures.pop(0)
                    return self._send(status, payload)
                if body["model"] != "test-model":
                    return self._send(404, {"error": {"message": f"model {body['model']} does not exist"}})
                if self.path.endswith("/chat/completions"):
                    text = body["messages"][-1]["content"][::-1]
                    choice = {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    if body.get("logprobs"):
                        choice["logprobs"] = {"content": [{"token": "x", "logprob": -0.5}]}
                else:
                    prompt = body["prompt"]
                    text = prompt.upper() if isinstance(prompt, str) else f"{len(prompt)} ids"
                    choice = {"text": text, "finish_reason": "length", "token_ids": [1, 2, 3]}
                usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
                if "cached" in json.dumps(body):
                    usage["prompt_tokens_details"] = {"cached_tokens": 8}
                self._send(200, {"choices": [choice], "usage": usage})

            def _send(self, status, payload):
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeOpenAIServer()
    yield s
    s.close()


@pytest.fixture
def engine(server):
    e = load_engine(f"openai:test-model@{server.url}", timeout=2.0, backoff_s=0.01)
    yield e
    e.close()


def test_chat_and_raw_prompts_with_usage(engine, server):
    c = engine.chat([{"role": "user", "content": "cached hello"}], max_tokens=5, temperature=0.5, stop=["\n"],
                    top_k=4, seed=3, logprobs=True)
    assert c.text == "olleh dehcac"
    assert (c.usage.prompt_tokens, c.usage.cached_prompt_tokens, c.usage.completion_tokens) == (11, 8, 3)
    assert c.logprobs == [-0.5]
    path, body = server.bodies[-1]
    assert path == "/v1/chat/completions"
    assert body["max_tokens"] == 5 and body["stop"] == ["\n"] and body["top_k"] == 4 and body["seed"] == 3
    c = engine.generate("abc")
    assert c.text == "ABC" and c.finish_reason == "length" and c.token_ids == [1, 2, 3]
    assert c.usage.cached_prompt_tokens is None  # not reported: unknown, not 0
    assert server.bodies[-1][0] == "/v1/completions" and "top_k" not in server.bodies[-1][1]
    assert engine.generate([5, 6, 7]).text == "3 ids"
    total = c.usage + c.usage
    assert total.prompt_tokens == 22 and total.cached_prompt_tokens is None


def test_grammar_fields(engine, server):
    schema = {"type": "object"}
    engine.chat("x", grammar=Grammar.json_schema(schema))
    body = server.bodies[-1][1]
    assert body["structured_outputs"] == {"json": schema}
    assert body["response_format"]["json_schema"]["schema"] == schema
    engine.generate("x", grammar=Grammar.regex("[0-9]+"))
    assert server.bodies[-1][1]["structured_outputs"] == {"regex": "[0-9]+"}
    engine.generate("x", grammar=Grammar.ebnf('root ::= "a"'))
    assert server.bodies[-1][1]["structured_outputs"] == {"grammar": 'root ::= "a"'}


def test_errors_stay_in_their_slots(engine, server):
    server.failures = [(400, {"error": {"message": "This model's maximum context length is 2048 tokens. "
                                                  "However, you requested 3000 tokens"}})]
    reqs = [Request(prompt="long", params=SamplingParams(max_tokens=1))]
    out = engine.generate_batch(reqs, return_exceptions=True)
    assert isinstance(out[0], ContextLengthExceeded) and out[0].context_window == 2048
    server.failures = [(422, {"message": "bad field"})]
    assert isinstance(engine.generate_batch([Request(prompt="x")], return_exceptions=True)[0], UserError)
    server.failures = [(200, "not json {")]
    with pytest.raises(EngineError, match="not JSON"):
        engine.generate("x")
    server.failures = [(200, {"choices": []})]
    with pytest.raises(EngineError, match="malformed"):
        engine.generate("x")


def test_batch_mixes_failures_and_successes(server):
    e = load_engine(f"openai:test-model@{server.url}", max_concurrency=1, backoff_s=0.01, max_retries=0)
    server.failures = [(200, {"ok": 1}), (500, {"error": {"message": "boom"}})]
    out = e.generate_batch([Request(prompt="a"), Request(prompt="b"), Request(prompt="c")], return_exceptions=True)
    assert isinstance(out[0], EngineError) and isinstance(out[1], EngineError) and out[2].text == "C"
    e.close()


def test_retry_after_server_error(engine, server):
    server.failures = [(503, {"error": {"message": "overloaded"}}), (500, "oops")]
    assert engine.generate("ok").text == "OK"
    assert len(server.bodies) == 3


def test_unknown_model(server):
    e = load_engine(f"openai:nope@{server.url}")
    with pytest.raises(ModelNotFound, match="nope"):
        e.generate("x")
    e.close()


def test_unreachable_server_and_timeout(server):
    server.close()
    e = load_engine(f"openai:test-model@{server.url}", max_retries=1, backoff_s=0.01, timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="cannot reach"):
        e.generate("x")
    assert time.monotonic() - t0 < 5
    e.close()
    slow = FakeOpenAIServer()
    slow.delay_s = 1.0
    e = load_engine(f"openai:test-model@{slow.url}", max_retries=0, timeout=0.2)
    with pytest.raises(EngineError, match="timed out"):
        e.generate("x")
    e.close()
    slow.close()


def test_base_url_must_be_http():
    from tokenomy.kernels.openai_engine import OpenAIEngine

    with pytest.raises(UserError):
        OpenAIEngine("m", "ftp://x")
