"""``kernels.serving``: the real ``vllm-router`` in front of replicas (doubles that answer what vLLM answers, and in
the marked test real ``vllm serve`` replicas started by ``tokenomy serve``), each start and stop bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_module
from tokenomy.kernels.serving import Deployment, ServerError, VllmRouter, free_port

from .http_doubles import send_json, serve


class Replica:
    """An OpenAI-compatible replica double: ``/health``, ``/version``, ``/v1/models`` (model ``m``) and chat
    completions answered with its own name; it logs the chat requests it got."""

    def __init__(self, name: str, *, healthy: bool = True) -> None:
        self.name, self.seen = name, []
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, obj, code=200):
                send_json(self, obj, code)

            def do_GET(self):
                if not healthy:
                    return self._send({"error": "starting"}, 503)
                if self.path.startswith("/v1/models"):
                    return self._send({"object": "list", "data": [{"id": "m", "object": "model"}]})
                if self.path == "/version":
                    return self._send({"version": "0.0-double"})
                return self._send({"status": "ok"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                replica.seen.append(body)
                self._send({"id": "c", "object": "chat.completion", "model": "m", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": replica.name}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})

        self.httpd, self.url = serve(Handler)

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def replicas():
    require_module("vllm_router", "pip install 'tokenomy[serve]'")
    pair = [Replica("A"), Replica("B")]
    yield pair
    for r in pair:
        r.close()


def _ask(url: str, system: str, question: str) -> str:
    body = {"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    return httpx.post(url + "/chat/completions", json=body, timeout=30).json()["choices"][0]["message"]["content"]


def test_round_robin_spreads_requests_over_the_replicas(replicas):
    with VllmRouter([r.url for r in replicas], served_name="m", policy="round_robin") as router:
        got = [_ask(router.base_url, "s", f"q{i}") for i in range(4)]
    assert sorted(got) == ["A", "A", "B", "B"]


def test_cache_aware_keeps_a_prompt_prefix_on_one_replica(replicas):
    prefixes = ["You are the planner of team one. " * 40, "Another agent, another long system prompt. " * 40]
    with VllmRouter([r.url for r in replicas], served_name="m") as router:
        assert router.policy == "cache_aware"
        got = {p: {_ask(router.base_url, p, f"q{i}") for i in range(5)} for p in prefixes}
    assert all(len(where) == 1 for where in got.values()), got  # each prefix stays where its KV is


def test_the_openai_engine_uses_the_router_like_one_server(replicas):
    from tokenomy.kernels.registry import load_engine

    with VllmRouter([r.url for r in replicas], served_name="m", policy="round_robin") as router:
        engine = load_engine(f"openai:m@{router.base_url}")
        try:
            assert {engine.chat(f"hello {i}", max_tokens=4).text for i in range(2)} == {"A", "B"}
            assert engine.profile.name == "vllm"  # the replicas' /version reaches the engine through the router
        finally:
            engine.close()


def test_bad_deployments_fail_alone_and_within_their_bounds(replicas, tmp_path):
    with pytest.raises(ServerError, match="unknown router policy"):
        VllmRouter([replicas[0].url], served_name="m", policy="fastest")
    with pytest.raises(ServerError, match="at least one replica"):
        VllmRouter([], served_name="m")
    # Replicas that never become healthy: the router does not come up, and says so within the bound.
    sick = Replica("C", healthy=False)
    try:
        start = time.monotonic()
        with pytest.raises(ServerError, match="vllm-router"), \
                VllmRouter([sick.url], served_name="m", start_timeout=5):
            pass
        assert time.monotonic() - start < 40
    finally:
        sick.close()
    # A deployment that cannot fit the machine is refused before anything starts.
    with open(tmp_path / "model.safetensors", "wb") as f:
        f.truncate(64 * 2**30)  # sparse: the size is all that is read
    (tmp_path / "config.json").write_text('{"dtype": "float32"}')
    with pytest.raises(ServerError, match="need about"):
        Deployment(tmp_path, served_name="big", replicas=2)
    with pytest.raises(ServerError, match="one replica only"):
        Deployment(tmp_path, served_name="big", replicas=2, router=False)


def test_a_missing_router_names_its_install(monkeypatch):
    from tokenomy.kernels import serving

    monkeypatch.setattr(serving.shutil, "which", lambda name: None)
    monkeypatch.setattr(serving, "_has_module", lambda python, module: False)
    monkeypatch.setattr(serving.sys, "executable", "/nonexistent/python")
    with pytest.raises(ServerError, match="pip install 'tokenomy\\[serve\\]'"):
        serving.router_command()


@pytest.mark.parametrize("argv, made, rc", [
    (["--replicas", "2", "--", "-O0", "--max-num-seqs", "4"],
     {"replicas": 2, "router": True, "extra_args": ("-O0", "--max-num-seqs", "4")}, 0),
    (["--replicas", "1", "--no-router"], {"replicas": 1, "router": False, "extra_args": ()}, 0),
    (["--replicas", "2", "--no-router"], None, 2),  # two replicas have one URL only through the router
    (["--replicas", "2", "--", "stray"], None, 2),
])
def test_tokenomy_serve_passes_its_options_to_the_deployment(monkeypatch, tmp_path, capsys, argv, made, rc):
    from tokenomy import cli
    from tokenomy.kernels import serving

    seen = []

    class Made(Exception):
        pass

    class FakeDeployment:
        def __init__(self, model_dir, **kw):
            seen.append({k: kw[k] for k in ("replicas", "router", "extra_args")})
            self.router = object() if kw["router"] else None

        def __enter__(self):
            raise Made  # nothing is started: the options are what this test checks

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(serving, "Deployment", FakeDeployment)
    monkeypatch.setattr(serving, "model_dir_of", lambda spec: (tmp_path, "m"))
    if made is None:
        assert cli.main(["serve", "--model", "hf:x", *argv]) == rc
        assert not seen and "serve:" in capsys.readouterr().err
    else:
        with pytest.raises(Made):
            cli.main(["serve", "--model", "hf:x", *argv])
        assert seen == [made]


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_tokenomy_serve_runs_two_vllm_replicas_behind_the_router(tmp_path):
    """The command as a user runs it: two real ``vllm serve`` replicas of the small embedded model behind
    ``vllm-router``; the printed spec answers; SIGTERM stops every process it started. The replicas get vLLM's
    ``-O0`` after ``--`` (no compilation at start-up: minutes less on a CPU, the same answers)."""
    require_module("vllm_router", "pip install 'tokenomy[serve]'")
    from tokenomy.kernels.serving import vllm_python

    try:
        vllm_python()
    except ServerError as exc:
        pytest.skip(str(exc))
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    name = f"serve-test-{os.getpid()}"  # in each replica's command line: how the test finds them afterwards
    proc = subprocess.Popen([sys.executable, "-m", "tokenomy.cli", "serve", "--model", "embedded:smollm2-135m",
                             "--replicas", "2", "--name", name, "--", "-O0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        spec = None
        deadline = time.monotonic() + 800
        assert proc.stdout is not None
        while time.monotonic() < deadline and spec is None:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("spec: "):
                spec = line.split(": ", 1)[1].strip()
        assert spec, proc.stderr.read()[-3000:] if proc.stderr else "no output"
        from tokenomy.kernels.registry import load_engine

        engine = load_engine(spec)
        try:
            shared = "You are a terse assistant. Answer in one word. " * 30  # whole KV blocks of it can be cached
            outs = [engine.chat([{"role": "system", "content": shared}, {"role": "user", "content": q}],
                                max_tokens=4) for q in ("Sky colour?", "Grass colour?", "Snow colour?")]
        finally:
            engine.close()
        assert all(o.text.strip() for o in outs) and spec.startswith(f"openai:{name}@")
        assert outs[-1].usage.cached_prompt_tokens  # the router kept the shared prefix on its replica
        logs = sorted(Path(tmp_path).glob("tokenomy-vllm-*.log"))
        assert len(logs) == 2 and list(Path(tmp_path).glob("tokenomy-router-*.log"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0
    left = subprocess.run(["pgrep", "-f", name], capture_output=True, text=True).stdout.strip()
    assert not left  # no replica outlived the command
    with pytest.raises(httpx.HTTPError):  # nor the router
        httpx.get(spec.split("@", 1)[1] + "/models", timeout=5)


class CachingReplica:
    """A ``/v1/completions`` double with a block prefix cache (32-token blocks, as the served bench asks of vLLM):
    it reports the cached tokens of each prompt the way vLLM does, and generates ``len`` tokens of its own."""

    def __init__(self) -> None:
        self.prompts: list[list[int]] = []
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "m", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                ids = list(body["prompt"])
                best = max((_common(ids, p) for p in replica.prompts), default=0)
                cached = min(best, len(ids) - 1) // 32 * 32
                n = int(body.get("max_tokens") or 4)
                out = [7] * n
                replica.prompts.append(ids + out)
                self._send({"id": "c", "object": "text_completion", "model": "m", "choices": [
                    {"index": 0, "text": "x" * n, "token_ids": out, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": len(ids), "completion_tokens": n,
                              "prompt_tokens_details": {"cached_tokens": cached}}})

            def _send(self, obj):
                send_json(self, obj)

        self.httpd, root = serve(Handler)
        self.base_url = f"{root}/v1"


def _common(a: list[int], b: list[int]) -> int:
    return len(os.path.commonprefix([a, b]))


def test_a_stopped_server_takes_its_children_with_it(tmp_path):
    """A server whose leader exits on SIGTERM but leaves a child that ignores it (as a vLLM API server can leave its
    engine core): ``stop`` ends the whole process group within its bounds."""
    from tokenomy.kernels.serving import _Process

    pid_file = tmp_path / "child.pid"
    child = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)")
    leader = (f"import signal, subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); "
              "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(300)")
    proc = _Process([sys.executable, "-c", leader], tmp_path / "server.log")
    proc.start()
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    t0 = time.monotonic()
    proc.stop(grace=5)
    assert time.monotonic() - t0 < 20
    for _ in range(50):  # killed; reaped by init shortly after
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            break  # a zombie: dead, waiting for init to reap it
        time.sleep(0.1)
    else:
        pytest.fail(f"the child {pid} outlived stop()")
    proc.stop()  # a second stop does nothing


def test_finished_requests_are_read_from_vllm_s_metrics():
    """How many requests each replica finished (the load split the served bench reports), from the Prometheus
    text vLLM serves; a server without it is a clear ``ServerError``."""
    from tokenomy.kernels.serving import requests_finished

    text = ('# HELP vllm:request_success_total Count of successfully processed requests.\n'
            '# TYPE vllm:request_success_total counter\n'
            'vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 5.0\n'
            'vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 7.0\n'
            'vllm:request_success_created{engine="0",finished_reason="stop",model_name="m"} 1.7e+09\n'
            'vllm:prompt_tokens_total{engine="0",model_name="m"} 4096.0\n')

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd, root = serve(Handler)
    try:
        assert requests_finished(f"{root}/v1") == 12
    finally:
        httpd.shutdown()
    replica = Replica("r")  # answers /metrics, but not as vLLM does
    try:
        with pytest.raises(ServerError, match="/metrics: no vllm:request_success_total"):
            requests_finished(f"{replica.url}/v1", timeout=2)
    finally:
        replica.close()
    with pytest.raises(ServerError, match="/metrics"):  # nothing there at all
        requests_finished(f"http://127.0.0.1:{free_port()}/v1", timeout=2)


def test_the_served_prefix_bench_measures_each_deployment_fresh(monkeypatch, tmp_path):
    """``bench prefix --served``'s mechanics with a deployment double (a caching completions server per
    deployment): one record per deployment and workload, eta_B from the server's cached tokens, the goal."""
    from tokenomy.benchmarks import prefix
    from tokenomy.kernels import serving

    made: list[dict] = []

    class Counted:  # a replica's finished requests, as VllmServer.requests_finished reads them from /metrics
        def __init__(self, replica):
            self.replica = replica

        def requests_finished(self):
            return len(self.replica.prompts)

    class FakeDeployment:
        def __init__(self, model_dir, *, served_name, **options):
            made.append(options)
            self.server = CachingReplica()
            self.base_url = self.server.base_url
            self.servers = [Counted(self.server)]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.server.httpd.shutdown()

    from tokenomy.kernels.archs import byte_tokenizer

    byte_tokenizer().save_pretrained(tmp_path)
    monkeypatch.setattr(serving, "Deployment", FakeDeployment)
    records = prefix.run_served_prefix_bench(quick=True, spec=f"hf:{tmp_path}", log=lambda m: None)
    assert [(r.engine, r.workload) for r in records] == [
        (label, w) for label in ("served x1", "served x2 cache_aware", "served x2 round_robin")
        for w in ("agents", "rewoo")]
    assert made == [{"replicas": 1, "router": False, "extra_args": ("--block-size", "32")},
                    {"replicas": 2, "policy": "cache_aware", "extra_args": ("--block-size", "32")},
                    {"replicas": 2, "policy": "round_robin", "extra_args": ("--block-size", "32")}]
    for r in records:  # each deployment starts with empty caches and reuses the workload's shared prefixes
        assert r.block_size == 32 and r.eta is not None and 0 < r.eta <= 1.0 and r.hit_rate > 0
        assert r.notes["requests_per_replica"] == [r.prompts]  # this workload's requests, not the earlier one's
    goals = prefix.served_goals(records)
    assert [g for g, _, _ in goals] == [f"{w}: eta_B through the router within 5% of one replica's"
                                        for w in ("agents", "rewoo")]
    assert all(ok for _, _, ok in goals)  # the same double behind each: the same eta
