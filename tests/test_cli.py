"""The tokenomy command: info, chat (the README's main job), clear errors."""

import json
import os
import subprocess
import sys

import pytest

# The command as a user runs it: the dtype the CPU suits (the suite pins float32 elsewhere: tests/conftest.py).
USER_ENV = {k: v for k, v in os.environ.items() if k not in ("TOKENOMY_DTYPE", "TOKENOMY_EMBEDDED")}


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "tokenomy.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=USER_ENV)


def test_info_lists_versions_engines_and_the_model():
    p = run("info")
    assert p.returncode == 0, p.stderr
    for word in ("tokenomy", "transformers", "embedded", "vllm", "openai", "scripted", "converted"):
        assert word in p.stdout


def test_chat_with_the_scripted_double(tmp_path):
    out = tmp_path / "a.json"
    p = run("chat", "hello there", "--model", "scripted", "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("hello there") and "usage: prompt=" in p.stdout
    assert json.loads(out.read_text())["usage"]["calls"] == 1


def test_unknown_model_spec_is_a_clear_error():
    p = run("chat", "hi", "--model", "gpt-17")
    assert p.returncode == 1
    assert "unknown model spec 'gpt-17'" in p.stderr and "Traceback" not in p.stderr


def test_not_a_model_directory_is_a_clear_error(tmp_path):
    p = run("chat", "hi", "--model", f"hf:{tmp_path}")
    assert p.returncode == 1 and "not a model directory" in p.stderr


@pytest.mark.embedded
def test_main_job_answers_with_usage():
    p = run("chat", "What is the capital of France?")
    assert p.returncode == 0, p.stderr
    assert "Paris" in p.stdout
    assert "usage: prompt=" in p.stdout and "calls=1" in p.stdout and "o200k_base" in p.stdout


# -- tokenomy run (the main job) --------------------------------------------------------------------------------


def test_run_needs_a_question_and_a_corpus_with_documents(tmp_path):
    p = run("run")
    assert p.returncode == 2 and "give a question" in p.stderr
    p = run("run", "q", "--corpus", str(tmp_path / "nope"), "--model", "scripted")
    assert p.returncode == 1 and "is not a directory" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.png").write_bytes(b"\x89PNG")
    p = run("run", "q", "--corpus", str(tmp_path / "empty"), "--model", "scripted")
    assert p.returncode == 1 and "has no documents" in p.stderr
    p = run("run", "q", "--strategy", "reflexion", "--model", "scripted")
    assert p.returncode == 1 and "unknown strategy 'reflexion'" in p.stderr


def test_run_json_trace_and_resume_with_the_scripted_double(tmp_path):
    # The scripted double echoes the question, which is no plan: the run ends without an answer, says why,
    # and still prints its JSON, usage and trace.
    p = run("run", "Who founded Halvane Instruments?", "--model", "scripted", "--json", "--runs-dir",
            str(tmp_path), "--thread", "t1")
    assert p.returncode == 1, p.stderr
    out = json.loads(p.stdout)
    assert {"answer", "strategy", "plan", "plan_valid", "usage", "trace"} <= set(out)
    assert out["answer"] is None and out["plan_valid"] is False and out["strategy"] == "rewoo"
    assert out["usage"]["calls"] == 2 and out["usage"]["prompt_tokens"] > 0  # the plan and one repair
    assert any("no valid plan" in n for n in out["notes"])
    trace = [json.loads(line) for line in open(out["trace"])]
    assert [e["event"] for e in trace].count("model_call") == 2
    assert [e.get("status") for e in trace if e["event"] == "run"] == ["started", "finished"]
    again = run("run", "--resume", "t1", "--model", "scripted", "--json", "--runs-dir", str(tmp_path))
    assert json.loads(again.stdout)["usage"] == out["usage"]  # finished: nothing runs again


@pytest.mark.embedded
@pytest.mark.timeout(1500)  # four runs of the command, 300 s each at most; 550 s seen on 2 busy cores
def test_run_rewoo_and_react_on_the_embedded_model(tmp_path):
    import shutil
    import sqlite3

    from tokenomy.tools import CorpusIndex, example_corpus_dir

    corpus = tmp_path / "corpus"
    shutil.copytree(example_corpus_dir(), corpus, ignore=shutil.ignore_patterns(".tokenomy-index*"))
    CorpusIndex(corpus).close()  # made stale below: tokenomy's own index of another version is rebuilt, not fatal
    with sqlite3.connect(corpus / ".tokenomy-index.sqlite") as conn:
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    results = {}
    for strategy in ("rewoo", "react"):
        p = run("run", "Who founded Halvane Instruments?", "--corpus", str(corpus), "--strategy", strategy, "--json",
                "--runs-dir", str(tmp_path))
        results[strategy] = out = json.loads(p.stdout)
        # The exit status says whether there is an answer: 0 with one, 1 without.
        assert p.returncode == (0 if out["answer"] is not None else 1), (p.returncode, out["answer"], p.stderr)
        assert out["strategy"] == strategy and out["usage"]["calls"] >= 1
    assert results["rewoo"]["plan_valid"] is True  # the grammar keeps the tiny model's plan valid
    assert results["rewoo"]["answer"] is not None  # a valid plan runs and the solver answers: exit status 0
    assert results["react"]["usage"]["prompt_tokens"] > results["rewoo"]["usage"]["prompt_tokens"]
    text = run("run", "How long is the River Orrin?", "--runs-dir", str(tmp_path))
    assert "plan (rewoo" in text.stdout and "TOTAL" in text.stdout and "trace:" in text.stdout
    # The run's trace turns into a page: its model calls, the plan that ran and its tool calls are on it.
    trace_path = results["rewoo"]["trace"]
    page = run("viz", trace_path, "-o", str(tmp_path / "run.html"))
    assert page.returncode == 0, page.stderr
    html = (tmp_path / "run.html").read_text()
    assert 'data-agent="planner"' in html and 'data-agent="executor"' in html and 'tk plan-dag' in html
    assert "Who founded Halvane Instruments?" in html


def _fake_checkout(where):
    """A checkout's `.ci/tokenomy` (the real script) over a set-up `.venv` whose `tokenomy` is this Python's."""
    import os
    import shutil
    from pathlib import Path

    repo = where / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parent.parent / ".ci" / "tokenomy", repo / ".ci" / "tokenomy")
    (repo / ".ci" / "setup").write_text("exit 0\n")  # the environment is this one, already set up
    (repo / ".venv" / "bin").mkdir(parents=True)
    entry = repo / ".venv" / "bin" / "tokenomy"
    entry.write_text(f'#!/bin/sh\nexec {sys.executable} -m tokenomy.cli "$@"\n')
    for script in (repo / ".ci" / "tokenomy", entry):
        os.chmod(script, 0o755)
    return repo


@pytest.mark.parametrize("how", ["in the checkout", "from elsewhere"])
def test_the_viz_command_the_run_prints_works_as_printed(tmp_path, how):
    import shlex

    repo = _fake_checkout(tmp_path)
    cwd, prog = (repo, ".ci/tokenomy") if how == "in the checkout" else (tmp_path, "repo/.ci/tokenomy")
    p = subprocess.run([prog, "run", "Who founded Halvane Instruments?", "--model", "scripted", "--runs-dir", "runs"],
                       cwd=cwd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr  # the scripted double writes no plan: no answer, but a trace
    (line,) = [line for line in p.stdout.splitlines() if line.startswith("see it: ")]
    command = shlex.split(line.removeprefix("see it: "))
    assert command[:2] == [prog, "viz"]
    shown = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert list((cwd / "runs").glob("*.html")), shown.stdout


def test_a_stopped_run_prints_a_resume_command_with_its_options(tmp_path):
    import shlex

    from tokenomy.cli import build_parser

    # Nothing listens on port 9: the model call fails and the run stops with what finished checkpointed.
    options = ["--model", "openai:m@http://127.0.0.1:9/v1", "--corpus", str(tmp_path / "my corpus"),
               "--checkpoint", str(tmp_path / "ck.sqlite"), "--trace", str(tmp_path / "t.jsonl"), "--llm-tool"]
    (tmp_path / "my corpus").mkdir()
    (tmp_path / "my corpus" / "a.md").write_text("Velmora has 412,000 people.\n")
    p = run("run", "How many people live in Velmora?", "--strategy", "react", "--thread", "t9", *options)
    assert p.returncode == 1
    (hint,) = [line for line in p.stderr.splitlines() if "Go on with: " in line]
    words = shlex.split(hint.split("Go on with: ", 1)[1])
    assert words[0] == sys.executable or words[0].endswith("tokenomy"), words
    args = build_parser().parse_args(words[words.index("run"):])
    assert (args.resume, args.strategy, args.model, args.corpus, args.checkpoint, args.trace, args.llm_tool) == (
        "t9", "react", options[1], options[3], options[5], options[7], True)
    again = subprocess.run(words, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "run t9 stopped" in again.stderr  # the same run, stopped at the same call


def test_bench_subcommands_have_their_own_flags(capsys):
    import pytest

    from tokenomy.benchmarks.commands import BENCHMARKS, Benchmark
    from tokenomy.cli import build_parser

    assert all(isinstance(b, Benchmark) for b in BENCHMARKS)
    parser = build_parser()
    # The invocations the README, BENCHMARKS.md and the tests use still parse, each to its benchmark's run.
    for words in (["prefix", "--quick", "--model", "embedded:smollm2-135m", "--dtypes", ""],
                  ["plans", "--quick", "--model", "scripted", "--json", "p.json"],
                  ["planning", "--quick", "--no-live", "--strategies", "rewoo,react", "--plot", "p.png"],
                  ["graph", "--no-live", "--iterations", "2", "--tasks", "6"],
                  ["collab", "--replay", "r.json"], ["rag", "--corpus", "c", "--questions", "q"],
                  ["gpu", "--smoke", "--variants", "radix"], ["peers", "--merge", "a.json,b.json"],
                  ["faults", "--json", "f.json"]):
        args = parser.parse_args(["bench", *words])
        (bench,) = [b for b in BENCHMARKS if b.name == words[0]]
        assert args.name == bench.name and args.fn == bench.run
    # A flag of another benchmark is refused instead of being silently ignored, and so is an unknown benchmark.
    for words in (["faults", "--quick"], ["prefix", "--replay", "r.json"], ["nope"], []):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["bench", *words])
        assert exc.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_bench_bad_list_flags_are_user_errors(capsys):
    from tokenomy.cli import main

    assert main(["bench", "planning", "--no-live", "--strategies", "rewoo,reflexion"]) == 1
    assert "--strategies: unknown reflexion; choose from" in capsys.readouterr().err
    assert main(["bench", "planning", "--live-hops", "1,x"]) == 1
    assert "expected comma-separated numbers, got '1,x'" in capsys.readouterr().err


def test_sigterm_stops_a_command_like_ctrl_c(tmp_path):
    """A command stopped by SIGTERM runs its cleanup (a bench's servers stop with it) and exits 130 with one line,
    not a traceback; the test process's own SIGTERM handler is left as it was."""
    import signal
    import subprocess
    import sys
    import time

    from tokenomy import cli

    done = tmp_path / "cleaned"
    script = ("import pathlib, sys, time\n"
              "from tokenomy import cli\n"
              "def slow(args):\n"
              "    try:\n"
              "        print('ready', flush=True)\n"
              "        time.sleep(60)\n"
              "    finally:\n"
              f"        pathlib.Path({str(done)!r}).write_text('cleaned')\n"
              "cli.cmd_info = slow\n"
              "sys.exit(cli.main(['info']))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and time.monotonic() - t0 < 10
    assert done.read_text() == "cleaned"
    assert "tokenomy: stopped" in err and "Traceback" not in err
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["info"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
