"""``tokenomy batch``: a file of questions through a strategy, answers written as they finish, a killed batch
resumed without redoing finished questions (nor a cut-off question's finished calls), on this machine and on a
local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from tokenomy.errors import UserError
from tokenomy.planners.batch import Job, done_ids, read_questions, run_batch

from .http_doubles import send_json, serve

PLAN = ('e1 = search(query="Halvane Instruments")\ne2 = llm(prompt="Who founded it? The name only.", text=e1[0])\n'
        'answer(e2)')
ANSWER = "Corvin Halvane"


class Server:
    """An OpenAI-compatible server: the planner gets PLAN, the plan's ``llm`` tool gets ANSWER (no solver call).
    The ``hang_at``-th llm-tool request (1-based) hangs until ``release`` is set. It logs who asked, and which
    question the planner was asked."""

    def __init__(self, hang_at: int = 0) -> None:
        from tokenomy.tools.builtin.llm import LLM_INSTRUCTION

        self.seen: list[str] = []
        self.questions: list[str] = []
        self.release = threading.Event()
        self.hanging = threading.Event()
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                system = body["messages"][0]["content"]
                who = ("llm-tool" if system == LLM_INSTRUCTION else
                       "planner" if system.startswith("You write plans") else "other")
                with lock:
                    server.seen.append(who)
                    if who == "planner":
                        server.questions.append(body["messages"][-1]["content"])
                    nth = server.seen.count("llm-tool")
                if who == "llm-tool" and nth == hang_at and not server.release.is_set():
                    server.hanging.set()
                    server.release.wait(60)
                    return
                text = {"planner": PLAN, "llm-tool": ANSWER}.get(who, "unexpected")
                send_json(self, {"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 100, "completion_tokens": len(text)}})

        self.httpd, root = serve(Handler)
        self.url = f"{root}/v1"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _questions(tmp_path, n: int = 3):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Who founded Halvane Instruments? ({i})"}) + "\n"
                            for i in range(n)))
    return path


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _job(server, tmp_path, **kw):
    return Job(model=f"openai:m@{server.url}", llm_tool=True, checkpoints=str(tmp_path / "ck.sqlite"),
               batch_id="b", **kw)


def test_answers_are_written_as_they_finish_with_the_usage_summed(tmp_path, server):
    out = tmp_path / "a.jsonl"
    seen = []
    summary = run_batch(_questions(tmp_path, 4), out, _job(server, tmp_path), concurrency=2, on_row=seen.append)
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == ["q0", "q1", "q2", "q3"] and [r["id"] for r in seen] == [
        r["id"] for r in rows]
    assert all(r["answer"] == ANSWER and r["error"] is None and r["usage"]["calls"] == 2 for r in rows), rows
    assert summary.answered == 4 and summary.failed == 0 and summary.usage["calls"] == 8
    assert summary.usage["prompt_tokens"] == 800 and summary.per_minute > 0
    assert summary.model_s > 0 and summary.tool_s > 0
    # Run again: everything is answered, nothing is asked.
    asked = len(server.seen)
    again = run_batch(_questions(tmp_path, 4), out, _job(server, tmp_path))
    assert again.already_done == 4 and again.answered == 0 and len(server.seen) == asked and len(_rows(out)) == 4


def test_resume_drops_a_cut_off_line_and_asks_failed_questions_again(tmp_path, server):
    out = tmp_path / "a.jsonl"
    out.write_text(json.dumps({"id": "q0", "answer": ANSWER, "error": None}) + "\n"
                   + json.dumps({"id": "q1", "answer": None, "error": "EngineError: boom"}) + "\n"
                   + '{"id": "q2", "answ')  # the kill cut this line off
    assert done_ids(out) == {"q0"} and len(_rows(out)) == 1
    summary = run_batch(_questions(tmp_path), out, _job(server, tmp_path))
    assert summary.already_done == 1 and summary.answered == 2
    assert sorted(r["id"] for r in _rows(out)) == ["q0", "q1", "q2"]
    assert [q.rsplit("(", 1)[1] for q in server.questions] == ["1)", "2)"]  # q0 was not asked again


def test_a_failing_question_is_its_line_and_the_batch_goes_on(tmp_path):
    out = tmp_path / "a.jsonl"
    # Nothing listens on port 9: every model call fails, each question says so, the batch finishes.
    job = Job(model="openai:m@http://127.0.0.1:9/v1", checkpoints=None, batch_id="b")
    summary = run_batch(_questions(tmp_path, 2), out, job)
    rows = _rows(out)
    assert summary.failed == 2 and summary.answered == 0 and all(r["error"] and r["answer"] is None for r in rows)


def test_bad_question_files_name_their_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    for text, want in (('{"question": "a"}\nnot json\n', ":2: not JSON"), ('{"q": "a"}\n', ":1: no question"),
                       ('{"id": 1, "question": "a"}\n{"id": 1, "question": "b"}\n', "used twice")):
        bad.write_text(text)
        with pytest.raises(UserError, match=want):
            read_questions(bad)
    bad.write_text('"a bare question"\n\n{"question": "b", "id": "x"}\n')
    assert read_questions(bad) == [("1", "a bare question"), ("x", "b")]
    with pytest.raises(UserError, match="concurrency"):
        run_batch(bad, tmp_path / "o.jsonl", Job(), concurrency=0)


def test_a_killed_batch_resumes_without_redoing_finished_questions_or_calls(tmp_path):
    """Killed while the second question's llm tool call is in flight: on resume the first question is not asked
    again, the second goes on from its checkpoint (no planner call, search from the journal), the third runs."""
    s = Server(hang_at=2)
    try:
        q, out = _questions(tmp_path), tmp_path / "a.jsonl"
        cmd = [sys.executable, "-m", "tokenomy.cli", "batch", str(q), "--out", str(out), "--model",
               f"openai:m@{s.url}", "--llm-tool"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            if not s.hanging.wait(120):
                proc.kill()
                pytest.fail(f"the batch never reached the second question: {proc.communicate()[1].decode()[-2000:]}")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert [r["id"] for r in _rows(out)] == ["q0"] and s.seen == ["planner", "llm-tool", "planner", "llm-tool"]
        s.release.set()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert sorted(r["id"] for r in _rows(out)) == ["q0", "q1", "q2"]
        assert all(r["answer"] == ANSWER for r in _rows(out))
        # q1: only its cut-off llm call again; q2: planner and llm tool; q0: nothing.
        assert s.seen[4:] == ["llm-tool", "planner", "llm-tool"]
        assert "1 already done" in done.stderr and "2 answered" in done.stderr
    finally:
        s.close()


@pytest.mark.timeout(300)
def test_on_a_local_ray_each_question_is_a_task(tmp_path, server):
    pytest.importorskip("ray")
    out = tmp_path / "a.jsonl"
    summary = run_batch(_questions(tmp_path, 3), out, _job(server, tmp_path), concurrency=2, ray_address="local")
    rows = _rows(out)
    assert summary.answered == 3 and summary.where == "ray local" and summary.usage["calls"] == 6
    assert sorted(r["id"] for r in rows) == ["q0", "q1", "q2"] and all(r["answer"] == ANSWER for r in rows)
    assert all(r["pid"] != os.getpid() for r in rows)  # answered in Ray's worker processes


def test_the_bench_measures_each_level_on_the_same_questions(tmp_path, server):
    """``tokenomy bench batch``'s mechanics on the server double (every answer the same, right for none of the
    prose questions): a record per level, speedups against one at a time, the time split, the table."""
    from tokenomy.benchmarks import batch

    records = batch.run_batch_bench(spec=f"openai:m@{server.url}", n=2, levels=(1, 2))
    assert [(r.concurrency, r.questions, r.answered) for r in records] == [(1, 2, 2), (2, 2, 2)]
    assert records[0].speedup == 1.0 and records[1].speedup > 0 and all(r.calls >= 2 for r in records)
    assert all(r.model_s > 0 for r in records) and all(r.correct == 0 for r in records)
    assert "q/min" in batch.format_table(records)
    assert [ok for _, _, ok in batch.goals(records)][1]  # the same (zero) accuracy at each level
