"""The OpenAI-compatible engine against ``FakeOpenAIServer``, a local test double (127.0.0.1 only, no network)."""

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tokenomy.errors import ContextLengthExceeded, EngineError, ModelNotFound, RequestCancelled, UserError
from tokenomy.kernels import Grammar, Request, SamplingParams, Usage
from tokenomy.kernels.openai_engine import OpenAIEngine
from tokenomy.kernels.registry import load_engine

CONTEXT_400 = (400, {"error": {"message": "This model's maximum context length is 2048 tokens. However, your "
                                          "prompt contains 3000 input tokens, which exceeds this limit.",
                               "type": "BadRequestError", "code": 400}})


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that gave up (timeout test): not an error here
        pass


class FakeOpenAIServer:
    """A TEST DOUBLE of an OpenAI-compatible server (vLLM-like: it answers ``GET /version``), on 127.0.0.1 with a
    random free port.

    Replies are deterministic: chat echoes the last message reversed, completions upper-case the prompt (or say
    how many ids it had). ``bodies`` records ``(path, json_body, authorization)`` of every request. Failures:
    ``failures`` is a queue of ``(status, payload)`` answered first, in order; ``triggers`` maps a substring of
    the prompt to a ``(status, payload)`` (or to ``"hang"``: no answer until the server closes). With ``overlap``
    set to n, every request waits until n requests have been in flight at once (``peak`` counts them), so a
    client that does not send them concurrently fails the test (``overlap_missed`` counts the requests that gave
    up after ``patience_s``), however fast or slow the machine. A str payload is sent as is (malformed JSON).
    Prompts containing "cached" report cached tokens, others do not.
    """

    def __init__(self):
        self.bodies, self.failures, self.triggers = [], [], {}
        self.in_flight, self.peak, self.overlap, self.overlap_missed, self.patience_s = 0, 0, 0, 0, 60.0
        self._cv, self._stop = threading.Condition(), threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # vLLM's /version: the engine's profile detection finds a vLLM server
                found = self.path == "/version"
                data = json.dumps({"version": "0.0-fake"} if found else {"detail": "Not Found"}).encode()
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._cv:
                    fake.bodies.append((self.path, body, self.headers.get("Authorization")))
                    fake.in_flight += 1
                    fake.peak = max(fake.peak, fake.in_flight)
                    failure = fake.failures.pop(0) if fake.failures else None
                    fake._cv.notify_all()
                    if not fake._cv.wait_for(lambda: fake.peak >= fake.overlap, fake.patience_s):
                        fake.overlap_missed += 1
                try:
                    status, payload = failure or fake._answer(self.path, body)
                finally:
                    with fake._cv:
                        fake.in_flight -= 1
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def _answer(self, path, body):
        prompt = json.dumps(body.get("messages", body.get("prompt")))
        for key, outcome in self.triggers.items():
            if key in prompt:
                if outcome == "hang":
                    self._stop.wait()
                    break
                return outcome
        if body["model"] != "test-model":
            return 404, {"error": {"message": f"The model `{body['model']}` does not exist.", "code": 404}}
        usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
        if "cached" in prompt:
            usage["prompt_tokens_details"] = {"cached_tokens": 8}
        reply = {"choices": [], "usage": usage}
        if path == "/v1/chat/completions":
            choice = {"message": {"role": "assistant", "content": body["messages"][-1]["content"][::-1]},
                      "finish_reason": "stop"}
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [{"token": "x", "logprob": -0.5}, {"token": "y", "logprob": -1.0}]}
            if body.get("return_token_ids"):
                reply["prompt_token_ids"] = [7, 8, 9]
        elif path == "/v1/completions":
            p = body["prompt"]
            choice = {"text": p.upper() if isinstance(p, str) else f"{len(p)} ids", "finish_reason": "length"}
            if body.get("logprobs"):
                choice["logprobs"] = {"tokens": ["A", "B"], "token_logprobs": [-0.25, -0.75]}
            if body.get("return_token_ids"):
                choice.update(token_ids=[1, 2, 3], prompt_token_ids=[4, 5])
        else:
            return 404, {"detail": "Not Found"}
        reply["choices"].append(choice)
        return 200, reply

    def close(self):
        self._stop.set()
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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_load_via_registry_and_api_key(server, monkeypatch):
    e = load_engine(f"openai:test-model@{server.url}/", api_key="sk-test")
    assert isinstance(e, OpenAIEngine) and e.base_url == server.url and e.context_window is None
    assert e.capabilities.grammar and e.capabilities.batching and not e.capabilities.token_ids
    e.generate("x")
    assert server.bodies[-1][2] == "Bearer sk-test"
    e.close()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAIEngine("test-model", server.url) as e:
        e.generate("x")
    assert server.bodies[-1][2] == "Bearer EMPTY"


def test_chat_sends_sampling_params_and_maps_the_reply(engine, server):
    c = engine.chat([{"role": "system", "content": "s"}, {"role": "user", "content": "cached hello"}],
                    max_tokens=5, temperature=0.5, top_p=0.9, stop=["\n", "END"], top_k=4, seed=3, logprobs=True)
    assert c.text == "olleh dehcac" and c.finish_reason == "stop" and c.logprobs == [-0.5, -1.0]
    assert c.usage == Usage(prompt_tokens=11, cached_prompt_tokens=8, completion_tokens=3, calls=1)
    assert c.prompt_token_ids == [7, 8, 9] and c.token_ids == [] and c.engine.startswith("openai:test-model@")
    assert c.latency_s > 0 and c.request_id.startswith("req-")
    path, body, _ = server.bodies[-1]
    assert path == "/v1/chat/completions" and body["messages"][0] == {"role": "system", "content": "s"}
    assert body["model"] == "test-model" and body["max_tokens"] == 5 and body["temperature"] == 0.5
    assert body["top_p"] == 0.9 and body["stop"] == ["\n", "END"] and body["top_k"] == 4 and body["seed"] == 3
    assert body["logprobs"] is True and body["return_token_ids"] is True


def test_raw_and_token_id_prompts(engine, server):
    c = engine.generate("abc", logprobs=True)
    assert c.text == "ABC" and c.finish_reason == "length" and c.token_ids == [1, 2, 3]
    assert c.prompt_token_ids == [4, 5] and c.logprobs == [-0.25, -0.75]
    assert c.usage.cached_prompt_tokens is None and c.usage.prompt_tokens == 11  # not reported: unknown, not 0
    path, body, _ = server.bodies[-1]
    assert path == "/v1/completions" and body["prompt"] == "abc" and body["logprobs"] == 1
    assert "top_k" not in body and "seed" not in body and "stop" not in body and "structured_outputs" not in body
    assert engine.generate([5, 6, 7]).text == "3 ids" and server.bodies[-1][1]["prompt"] == [5, 6, 7]


def test_usage_sums_keep_unknown_apart(engine):
    known = engine.generate("cached a").usage
    unknown = engine.generate("b").usage
    total = sum([known, unknown, unknown])
    assert (total.prompt_tokens, total.completion_tokens, total.calls) == (33, 9, 3)
    assert total.cached_prompt_tokens == 8 and "cached_prompt_tokens" in total.unknown_fields
    both_unknown = unknown + unknown
    assert both_unknown.cached_prompt_tokens is None and both_unknown.computed_prompt_tokens is None


@pytest.mark.parametrize("grammar, chat, expected", [
    (Grammar.json_schema({"type": "object"}), True, {"json": {"type": "object"}}),
    (Grammar.json_schema({"type": "object"}), False, {"json": {"type": "object"}}),
    (Grammar.regex("[0-9]+"), False, {"regex": "[0-9]+"}),
    (Grammar.ebnf('root ::= "a"'), True, {"grammar": 'root ::= "a"'}),
    (Grammar.lark('start: "a"'), False, {"grammar": 'start: "a"'}),
])
def test_grammar_fields(engine, server, grammar, chat, expected):
    (engine.chat if chat else engine.generate)("x", grammar=grammar)
    body = server.bodies[-1][1]
    assert body["structured_outputs"] == expected
    if chat and grammar.kind == "json_schema":
        assert body["response_format"] == {"type": "json_schema",
                                           "json_schema": {"name": "output", "schema": {"type": "object"}}}
    else:
        assert "response_format" not in body


def test_batch_returns_errors_in_their_slots(server):
    server.triggers = {"too-long": CONTEXT_400, "bad-field": (422, {"detail": [{"msg": "bad field"}]}),
                       "garbage": (200, "not json {"), "empty": (200, {"choices": []}),
                       "gone": (404, {"object": "error", "message": "no such model"})}
    server.overlap = 8  # each request waits until 8 are in flight at once
    prompts = ["a", "too-long", "b", "bad-field", "c", "garbage", "d", "empty", "gone"]
    reqs = [Request(prompt=p, params=SamplingParams(max_tokens=7)) for p in prompts]
    cancelled = Request(prompt="never sent")
    cancelled.cancel()
    with load_engine(f"openai:test-model@{server.url}", max_concurrency=8, max_retries=0) as e:
        out = e.generate_batch([*reqs, cancelled], return_exceptions=True)
    assert [o.text for o in out[0:7:2]] == ["A", "B", "C", "D"]
    assert [o.request_id for o in out[0:7:2]] == [r.request_id for r in reqs[0:7:2]]
    assert isinstance(out[1], ContextLengthExceeded) and out[1].max_tokens == 7
    assert isinstance(out[3], UserError) and "bad field" in str(out[3])
    assert isinstance(out[5], EngineError) and "not JSON" in str(out[5])
    assert isinstance(out[7], EngineError) and "malformed" in str(out[7])
    assert isinstance(out[8], ModelNotFound) and "test-model" in str(out[8])
    assert isinstance(out[9], RequestCancelled)
    assert len(server.bodies) == 9  # the cancelled request was not sent
    assert server.peak == 8 and server.overlap_missed == 0  # sent concurrently, max_concurrency at once
    with OpenAIEngine("test-model", server.url) as e, pytest.raises(ContextLengthExceeded):
        e.generate_batch(reqs[:2])  # without return_exceptions the first error is raised


@pytest.mark.parametrize("message, window, prompt", [
    ("This model's maximum context length is 2048 tokens. However, your prompt contains 3000 input tokens, "
     "which exceeds this limit even without any output tokens.", 2048, 3000),  # vLLM 0.32
    ("This model's maximum context length is 2048 tokens. However, you requested 3000 tokens (2990 in the "
     "messages, 10 in the completion). Please reduce the length of the messages or completion.", 2048, 2990),
    ("'max_tokens' or 'max_completion_tokens' is too large: 1000. This model's maximum context length is 2048 "
     "tokens and your request has 1500 input tokens (1000 > 2048 - 1500).", 2048, 1500),
    ("Input length (4000) exceeds model's maximum context length (2048).", 2048, 4000),
    ("This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
     8192, 9000),  # OpenAI
])
def test_context_length_errors_carry_numbers(engine, server, message, window, prompt):
    server.failures = [(400, {"error": {"message": message}})]
    with pytest.raises(ContextLengthExceeded) as info:
        engine.generate("x", max_tokens=10)
    assert (info.value.context_window, info.value.prompt_tokens, info.value.max_tokens) == (window, prompt, 10)


def test_context_length_errors_without_numbers(engine, server):
    server.failures = [(400, {"error": {"code": 400, "message": "the request exceeds the available context size",
                                       "type": "exceed_context_size_error", "n_prompt_tokens": 5000,
                                       "n_ctx": 4096}})]  # llama.cpp
    with pytest.raises(ContextLengthExceeded, match="4096"):
        engine.generate("x")
    message = ("This model's maximum context length is 1024 tokens. However, your prompt contains 9000 characters "
               "(more than 4096 characters, which is the upper bound for 1024 input tokens).")
    server.failures = [(400, {"error": {"message": message}})]
    with pytest.raises(UserError, match="9000 characters") as info:
        engine.generate("x")
    assert not isinstance(info.value, ContextLengthExceeded)


def test_retries_server_errors_then_succeeds(engine, server):
    server.failures = [(503, {"error": {"message": "overloaded"}}), (429, "slow down"), (500, "oops")]
    with pytest.raises(EngineError, match="oops"):  # 2 retries, all failed
        engine.generate("ok")
    assert len(server.bodies) == 3
    server.failures = [(503, {"error": {"message": "overloaded"}}), (500, "oops")]
    assert engine.generate("ok").text == "OK"
    assert len(server.bodies) == 6


def test_client_errors_are_not_retried(engine, server):
    server.failures = [(400, {"error": {"message": "temperature must be non-negative"}})]
    with pytest.raises(UserError, match="temperature must be non-negative"):
        engine.generate("x")
    assert len(server.bodies) == 1


def test_unknown_model_and_wrong_path(server):
    with load_engine(f"openai:nope@{server.url}") as e:
        with pytest.raises(ModelNotFound, match="nope"):
            e.generate("x")
    with load_engine(f"openai:test-model@{server.url}/v2") as e:  # a base_url that is not the API root
        with pytest.raises(ModelNotFound, match="base_url"):
            e.generate("x")


def test_connection_refused_is_an_engine_error():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with load_engine(f"openai:test-model@{url}", max_retries=2, backoff_s=0.01, timeout=2.0) as e:
        out = e.generate_batch([Request(prompt="x"), Request(prompt=[{"role": "user", "content": "y"}])],
                               return_exceptions=True)
    assert all(isinstance(o, EngineError) and "cannot reach" in str(o) and url in str(o) for o in out)


def test_timeout_is_an_engine_error_and_not_retried(server):
    server.triggers = {"slow": "hang"}  # never answered while the test runs
    with load_engine(f"openai:test-model@{server.url}", max_retries=2, timeout=0.2) as e:
        out = e.generate_batch([Request(prompt="slow"), Request(prompt="fast")], return_exceptions=True)
    assert isinstance(out[0], EngineError) and "timed out" in str(out[0]) and server.url in str(out[0])
    assert out[1].text == "FAST" and len(server.bodies) == 2


def test_works_from_inside_an_event_loop(engine):
    async def main():
        a = await engine.agenerate("x")
        b = engine.generate("y")  # a blocking call inside a running loop: no nested asyncio.run
        return a.text + b.text

    assert asyncio.run(main()) == "XY"


def test_bad_options():
    with pytest.raises(UserError):
        OpenAIEngine("m", "ftp://x")
    with pytest.raises(UserError):
        OpenAIEngine("m", "http://127.0.0.1:1/v1", max_concurrency=0)
