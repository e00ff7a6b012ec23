"""`tokenomy bench peers`: tasks, the framework processes (deadlines, crashes), the summary from the proxy's
records, goals and the report. The frameworks themselves run against a real `vllm serve` in the benchmark; here
tokenomy's own strategies run in the framework process against the scripted server of tests/test_referee.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenomy.benchmarks import peers
from tokenomy.benchmarks.peer_agents import FRAMEWORKS, Toolbox, error_kind
from tokenomy.benchmarks.referee import Record
from tokenomy.benchmarks.world import World

from .test_referee import ScriptedServer

PROSE = Path(__file__).parent / "prose"


def test_the_tasks_are_the_planning_world_s_multi_hop_questions():
    full, quick = peers.peer_tasks(), peers.peer_tasks(quick=True)
    assert len(full) == 32 and sorted({t.hops for t in full}) == [1, 2, 3, 4]
    assert len(quick) == 6 and len({t.question for t in quick}) == 6
    assert [t.id for t in peers.peer_tasks()] == [t.id for t in full]  # the same tasks on every run


def test_the_toolbox_gives_every_framework_the_tools_tokenomy_s_strategies_get():
    import asyncio

    world = World(0)
    task = world.tasks(1, 2)[0]
    box = Toolbox.world(world, 20)
    search, lookup, calc = box.functions
    step = task.steps[0]
    entity = step.subject
    native = {t.name: t for t in world.tools(obs_tokens=20)}
    assert lookup(entity, step.attribute) == asyncio.run(native["lookup"].fn(entity=entity,
                                                                            attribute=step.attribute))
    assert search(entity) == asyncio.run(native["search"].fn(entity=entity))
    assert calc("1969 - 1921") == "48"
    assert search("Nowhere Inc").startswith("error: no entity")  # an error goes back to the model as text
    assert (box.calls, box.errors) == (4, 1)
    for fn in box.functions:  # what frameworks read to build their schemas
        assert fn.__doc__ and "Args:" in fn.__doc__ and fn.__annotations__


def test_failure_kinds_come_from_the_exception_s_type_without_importing_the_framework():
    class GraphRecursionError(Exception):
        pass

    class AgentParsingError(Exception):
        pass

    class APIConnectionError(Exception):
        pass

    assert error_kind(GraphRecursionError("Recursion limit of 25 reached")) == "max_steps"
    assert error_kind(AgentParsingError("bad")) == "parse"
    assert error_kind(APIConnectionError("refused")) == "server"
    assert error_kind(TimeoutError()) == "timeout"
    assert error_kind(RuntimeError("Max iterations of 20 reached")) == "max_steps"
    assert error_kind(ZeroDivisionError()) == "crash"


def _records(tag: str, *usage: tuple[int, int, int]) -> list[Record]:
    return [Record(tag=tag, path="/v1/chat/completions", status=200, latency_s=0.1, prompt_tokens=p,
                   cached_tokens=c, completion_tokens=k) for p, c, k in usage]


def test_the_summary_counts_what_the_proxy_recorded_not_what_the_framework_said():
    tasks = peers.peer_tasks(quick=True)[:2]
    rows = [{"tag": "fw--a", "answer": tasks[0].answer, "own_usage": {"prompt_tokens": 1, "completion_tokens": 1},
             "wall_s": 2.0, "tool_calls": 1},
            {"tag": "fw--b", "answer": "no idea", "error_kind": "max_steps", "own_usage": None, "wall_s": 3.0}]
    records = [*_records("fw--a", (300, 200, 20), (350, 300, 10)), *_records("fw--b", (400, 0, 30)),
               Record(tag="fw--b", path="/v1/models", status=200, latency_s=0.0),
               Record(tag="fw--b", path="/v1/chat/completions", status=500, latency_s=0.0, error="boom"),
               *_records("other--a", (9999, 0, 9))]
    rec = peers.summarize("fw", tasks, rows, records)
    assert (rec.prompt_tokens, rec.cached_tokens, rec.completion_tokens) == (1050, 500, 60)
    assert rec.calls == 4 and rec.failed_requests == 1  # the model list is not a model call
    assert rec.total_tokens == 1110 and rec.uncached_tokens == 610
    assert rec.correct == [True, False] and rec.accuracy == 0.5 and rec.failures == {"max_steps": 1}
    assert rec.own_prompt_tokens is None  # one task without the framework's own count: no own total
    assert rec.per_task(rec.calls) == 2.0 and rec.wall_s == 5.0
    json.dumps(rec.to_json())


def _rec(name: str, tokens: int, calls: int, correct: list[bool]) -> peers.PeerRecord:
    tasks = peers.peer_tasks(quick=True)[:len(correct)]
    rows = [{"tag": f"{name}--{t.id}", "answer": t.answer if ok else "?"} for t, ok in zip(tasks, correct, strict=True)]
    rec = peers.summarize(name, tasks, rows, [])
    rec.prompt_tokens, rec.completion_tokens, rec.calls = tokens * len(correct), 0, calls * len(correct)
    return rec


def _paired(rec: peers.PeerRecord, base: list[bool]) -> peers.PeerRecord:
    from tokenomy.benchmarks.graph import paired_bootstrap

    rec.diff_vs_baseline = paired_bootstrap(rec.correct, base)
    return rec


def test_goals_compare_rewoo_with_the_most_accurate_peer():
    base = _rec("tokenomy-rewoo", 500, 2, [True] * 6)
    best = _rec("langgraph", 3000, 4, [True] * 5 + [False])
    other = _rec("dspy", 4000, 5, [False] * 6)
    from tokenomy.benchmarks.graph import paired_bootstrap

    best.diff_vs_baseline = paired_bootstrap(best.correct, base.correct)
    got = {name.split(" (")[0]: met for name, _, met in peers.goals([base, best, other])}
    assert not peers.goals([_rec("tokenomy-rewoo", 500, 2, [False] * 6), _paired(best, [False] * 6)])[1][2]
    assert got == {"total tokens per task >= 5x fewer than the best peer": True,
                   "accuracy non-inferior to the best peer": True, "fewer model calls per task than any peer": True}
    report = peers.format_report([base, best, other, peers.PeerRecord("smolagents-code", 0, missing="not here")],
                                 {"dspy": "3.4.1"})
    assert "| langgraph | 83%" in report and "not run: not here" in report and "versions: dspy 3.4.1" in report
    assert peers.goals([base])[0][2] is None


def test_the_plot_labels_a_framework_cut_off_with_the_tasks_it_did(monkeypatch, tmp_path):
    """Its point is from its first (easiest) tasks only: the plot says so, as the table does."""
    seen = []
    monkeypatch.setattr(peers.plot, "scatter", lambda points, path, **kw: seen.extend(points) or path)
    cut = _rec("dspy", 7000, 6, [True, True])
    cut.planned = 6
    peers.plot_records([_rec("tokenomy-rewoo", 500, 2, [True, False]), cut], tmp_path / "p.png")
    assert [name for name, _, _ in seen] == ["tokenomy-rewoo", "dspy (2 of 6 tasks)"]


def test_sittings_merge_into_one_run_paired_on_the_tasks_both_asked(tmp_path, capsys):
    from tokenomy.cli import main

    base = _rec("tokenomy-rewoo", 500, 2, [True, True, False, True, True, True])
    peer = _rec("langgraph", 3000, 4, [True, False, False, True, True, True])
    cut = _rec("dspy", 7000, 6, [True, True])
    cut.planned = 6  # cut off after its first two tasks
    stale = _rec("langgraph", 1, 1, [False] * 6)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"records": [stale.to_json(), base.to_json()], "versions": {"dspy": "3.4.1"}}))
    second.write_text(json.dumps({"records": [peer.to_json(), cut.to_json()], "versions": {"langchain": "1.5.2"}}))
    merged = {r.framework: r for r in peers.load_records([first, second])}
    assert set(merged) == {"tokenomy-rewoo", "langgraph", "dspy"}
    assert merged["langgraph"].total_tokens == peer.total_tokens  # the later sitting's langgraph
    from tokenomy.benchmarks.graph import paired_bootstrap

    assert merged["langgraph"].diff_vs_baseline == tuple(round(x, 3) for x in
                                                         paired_bootstrap(peer.correct, base.correct))
    assert merged["dspy"].diff_vs_baseline == tuple(round(x, 3) for x in
                                                    paired_bootstrap(cut.correct, base.correct[:2]))
    report = peers.format_report(list(merged.values()))
    assert "| dspy (2 of 6 tasks) | 100%" in report
    # a framework cut off asked only the first (easiest) tasks: it is not the best peer, and the goal says so
    assert all("langgraph" in name and "left out" in value for name, value, _ in peers.goals(list(merged.values()))
               [:1])
    out = tmp_path / "merged.json"
    assert main(["bench", "peers", "--merge", f"{first},{second}", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["versions"] == {"dspy": "3.4.1", "langchain": "1.5.2"} and len(data["records"]) == 3
    assert "| langgraph |" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        peers.load_records([tmp_path / "bad.json"])
    assert main(["bench", "peers", "--merge", str(tmp_path / "bad.json")]) != 0


def test_on_a_prose_corpus_every_framework_gets_tokenomy_s_real_tools_and_the_same_questions():
    from tokenomy.benchmarks.peer_agents import Setting
    from tokenomy.benchmarks.prose import load_questions

    questions = load_questions(PROSE / "questions.jsonl")
    tasks = peers.prose_tasks(PROSE / "corpus", PROSE / "questions.jsonl")
    assert len(tasks) == len(questions) - 1  # tokenomy's worked exemplar is not asked
    assert [t.id for t in peers.prose_tasks(PROSE / "corpus", PROSE / "questions.jsonl", quick=True)] == \
        [t.id for t in tasks[:6]]
    setting = Setting.prose(str(PROSE / "corpus"), str(PROSE / "questions.jsonl"))
    assert len(setting.exemplars) == 1 and {t.name for t in setting.tools()} == {"search", "lookup", "calc"}
    box = setting.toolbox()
    search, lookup, calc = box.functions
    assert [fn.__name__ for fn in box.functions] == ["search", "lookup", "calc"]
    assert list(search.__annotations__) == ["query", "return"]  # full-text search, as tokenomy's tool
    native = {t.name: t for t in setting.tools()}
    step = next(s for s in questions[0].program if s["tool"] == "lookup")
    got = lookup(step["args"]["entity"], step["args"]["attribute"])
    assert got == native["lookup"].invoke(**step["args"]) and str(step["value"]).replace(",", "") in \
        got.replace(",", "")
    assert search(step["args"]["entity"]) == "\n".join(native["search"].invoke(query=step["args"]["entity"]))
    assert calc("12,900 [x.md#2] + 100") == "13000"  # lookup's value with its source, as calc takes it
    assert box.calls == 3 and box.errors == 0


def test_a_framework_whose_packages_are_missing_is_reported_not_run(tmp_path):
    assert peers.missing_packages("tokenomy-rewoo") is None
    assert set(peers.PEERS) == set(peers.IMPORTS) and set(peers.PEERS) < set(FRAMEWORKS)
    why = peers.missing_packages("smolagents-code", python=str(tmp_path / "no-python"))
    assert why


@pytest.mark.timeout(300)
def test_tokenomy_s_strategies_run_in_their_own_process_and_are_counted_by_the_proxy(tmp_path):
    server = ScriptedServer()
    saved: list[list[tuple[str, int, int]]] = []
    try:
        records = peers.run_peers_bench(frameworks=("tokenomy-react", "tokenomy-rewoo"), quick=True,
                                        server=server.url, model="m", task_timeout=120, log_dir=tmp_path,
                                        python=peers.sys.executable,
                                        on_record=lambda rs: saved.append([(r.framework, r.tasks, r.planned)
                                                                           for r in rs]))
    finally:
        server.close()
    # after every task (the framework so far, marked with the tasks it set out to ask), and after each framework
    assert saved[:6] == [[("tokenomy-react", n, 6)] for n in range(1, 6)] + [[("tokenomy-react", 6, 0)]]
    assert saved[6:] == [[("tokenomy-react", 6, 0), ("tokenomy-rewoo", n, 6)] for n in range(1, 6)] + \
        [[("tokenomy-react", 6, 0), ("tokenomy-rewoo", 6, 0)]]
    by = {r.framework: r for r in records}
    for name in ("tokenomy-react", "tokenomy-rewoo"):
        r = by[name]
        assert r.tasks == 6 and len(r.rows) == 6 and r.calls >= 6
        assert r.prompt_tokens == 120 * r.calls and r.cached_tokens == 96 * r.calls  # the server's counts
        assert r.accuracy == 0.0  # the scripted server answers "four" to everything
    assert by["tokenomy-react"].diff_vs_baseline is not None
    log = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert {row["tag"].split("--")[0] for row in log} == {"tokenomy-react", "tokenomy-rewoo"}


@pytest.mark.timeout(300)
def test_a_prose_corpus_s_questions_go_to_the_framework_process_with_the_corpus(tmp_path):
    server = ScriptedServer()
    try:
        records = peers.run_peers_bench(frameworks=("tokenomy-rewoo",), quick=True, server=server.url, model="m",
                                        task_timeout=120, log_dir=tmp_path, python=peers.sys.executable,
                                        corpus=PROSE / "corpus", questions=PROSE / "questions.jsonl")
    finally:
        server.close()
    (r,) = records
    tasks = peers.prose_tasks(PROSE / "corpus", PROSE / "questions.jsonl", quick=True)
    assert [row["task"] for row in r.rows] == [t.id for t in tasks]
    assert all(row["error_kind"] is None for row in r.rows), r.rows  # every task answered, none crashed
    assert r.calls >= 6 and r.prompt_tokens == 120 * r.calls
    with pytest.raises(ValueError, match="both"):
        peers.run_peers_bench(frameworks=("tokenomy-rewoo",), server=server.url, model="m", corpus=PROSE)


def test_bench_peers_on_prose_needs_both_the_corpus_and_its_questions(capsys):
    from tokenomy.cli import main

    assert main(["bench", "peers", "--corpus", str(PROSE / "corpus")]) != 0
    assert "--questions" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_a_task_past_its_deadline_is_a_timeout_and_the_next_task_gets_a_fresh_process(tmp_path):
    server = ScriptedServer()
    try:
        from tokenomy.benchmarks.referee import RecordingProxy

        with RecordingProxy(server.url) as proxy:
            runner = peers._Runner("tokenomy-react", f"http://127.0.0.1:{proxy.port}", "slow",
                                   python=peers.sys.executable, seed=0, obs_tokens=20, log=tmp_path / "stderr.txt")
            try:
                first = runner.ask("t1", "What is the population of Velmora?", timeout=3)
                assert first["error_kind"] == "timeout" and runner.proc is None
                runner.cmd[runner.cmd.index("slow")] = "m"
                second = runner.ask("t2", "What is the population of Velmora?", timeout=60)
                assert second["tag"] == "t2" and second.get("error_kind") is None
            finally:
                runner.close()
    finally:
        server.close()


def test_merge_scores_the_stored_answers_again(tmp_path, capsys):
    """Sittings scored before the scorer learnt a rule are reported as it scores now, and a sitting of other tasks
    is refused rather than scored against the wrong gold answers."""
    from tokenomy.cli import main

    held = Path(__file__).parent / "prose_heldout"
    corpus, questions = held / "corpus", held / "questions.jsonl"
    tasks = peers.question_tasks(questions)  # no index is built to score answers
    mayor = next(t for t in tasks if t.answer == "Petra Lunde")
    rows = [{"tag": f"x--{t.id}", "answer": f"{t.answer} is the mayor of Brannock." if t is mayor else "?"}
            for t in tasks]
    rec = peers.summarize("langgraph", tasks, rows, [])
    assert rec.rows[tasks.index(mayor)]["correct"]  # today's scorer reads the name in the sentence
    rec.rows[tasks.index(mayor)]["correct"] = False  # as a sitting scored before the name rule stored it
    rec.correct[tasks.index(mayor)] = False
    rec.accuracy = 0.0
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"records": [rec.to_json()]}))
    out = tmp_path / "merged.json"
    assert main(["bench", "peers", "--merge", str(path), "--corpus", str(corpus), "--questions", str(questions),
                 "--json", str(out)]) == 0
    assert "langgraph: 1 answer(s) scored differently now" in capsys.readouterr().err
    again = json.loads(out.read_text())["records"][0]
    assert again["accuracy"] == round(1 / len(tasks), 3) and sum(again["correct"]) == 1
    # the planning world's tasks are not these: refused, naming the file
    with pytest.raises(ValueError, match="old.json.*not one of these tasks"):
        peers.load_records([path], peers.peer_tasks())
    assert main(["bench", "peers", "--merge", str(path)]) != 0


def test_rescoring_recounts_tool_failures_where_the_rows_keep_them():
    tasks = peers.peer_tasks(quick=True)[:2]
    rows = [{"tag": f"x--{t.id}", "answer": "?", "tool_errors": 1} for t in tasks]
    rec = peers.summarize("dspy", tasks, rows, [])
    assert rec.failures == {"tool": 2}
    rec.rows[0]["answer"] = tasks[0].answer  # as if the scorer now reads it right
    assert peers.rescore(rec, tasks) == 1
    assert rec.failures == {"tool": 1} and rec.correct == [True, False] and rec.accuracy == 0.5


@pytest.mark.timeout(120)
def test_a_runner_stopped_at_the_end_closes_the_corpus_index(tmp_path):
    """The framework's process gets the end of its input and closes the prose index: no -wal or -shm is left
    beside it (a process killed at a deadline still leaves them; SQLite replays them on the next open)."""
    import shutil
    import time

    corpus = tmp_path / "corpus"
    shutil.copytree(PROSE / "corpus", corpus, ignore=shutil.ignore_patterns(".tokenomy-index*"))
    runner = peers._Runner("tokenomy-rewoo", "http://127.0.0.1:9", "m", python=peers.sys.executable, seed=0,
                           obs_tokens=20, log=tmp_path / "stderr.txt",
                           prose=(str(corpus), str(PROSE / "questions.jsonl")))
    runner.proc = runner._start()
    deadline = time.monotonic() + 60
    while not (corpus / ".tokenomy-index.sqlite-wal").exists():
        assert time.monotonic() < deadline and runner.proc.poll() is None, (tmp_path / "stderr.txt").read_text()
        time.sleep(0.1)
    runner.close(grace=30)
    assert (corpus / ".tokenomy-index.sqlite").exists()
    assert not list(corpus.glob(".tokenomy-index.sqlite-*")), (tmp_path / "stderr.txt").read_text()


def _sitting(name: str, tasks: list, answers: list[str], tokens: int, *, planned: int = 0) -> peers.PeerRecord:
    """A sitting's record, with the proxy's counts: ``tokens`` prompt tokens, one call and one tool call per task."""
    rows = [{"tag": f"{name}--{t.id}", "answer": a, "wall_s": 1.5, "tool_calls": 1,
             "own_usage": {"prompt_tokens": tokens - 1, "completion_tokens": 2}} for t, a in zip(tasks, answers,
                                                                                                  strict=True)]
    rec = peers.summarize(name, tasks, rows, [r for t in tasks for r in _records(f"{name}--{t.id}",
                                                                                  (tokens, tokens // 2, 3))])
    rec.planned = planned
    return rec


def test_sittings_of_one_framework_join_by_task_with_totals_from_the_rows_kept():
    tasks = peers.peer_tasks(quick=True)
    first = _sitting("dspy", tasks[:4], [tasks[0].answer, "?", "?", tasks[3].answer], 100, planned=6)
    second = _sitting("dspy", tasks[4:], [tasks[4].answer, "?"], 200, planned=6)
    whole = peers.join([first, second], tasks)
    assert whole.tasks == 6 and whole.planned == 0  # every task asked: no longer cut off
    assert [row["task"] for row in whole.rows] == [t.id for t in tasks]
    assert whole.correct == [True, False, False, True, True, False] and whole.accuracy == 0.5
    assert (whole.prompt_tokens, whole.cached_tokens, whole.completion_tokens) == (800, 400, 18)
    assert (whole.calls, whole.tool_calls, whole.failed_requests, whole.wall_s) == (6, 6, 0, 9.0)
    assert (whole.own_prompt_tokens, whole.own_completion_tokens) == (4 * 99 + 2 * 199, 12)
    # a task asked again: the later row wins, and the first sitting's totals lose that row's counts
    again = _sitting("dspy", tasks[1:2], [tasks[1].answer], 1000)
    fixed = peers.join([first, second, again], tasks)
    assert fixed.correct == [True, True, False, True, True, False] and fixed.tasks == 6
    assert fixed.prompt_tokens == 800 - 100 + 1000 and fixed.calls == 6
    assert fixed.rows[1]["prompt_tokens"] == 1000
    # the order the tasks were first asked in, without the run's tasks; still cut off if fewer than planned
    part = peers.join([second, first])
    assert [row["task"] for row in part.rows] == [t.id for t in tasks[4:] + tasks[:4]]
    assert peers.join([first]).planned == 6 and peers.join([first], planned=4).planned == 0
    # a sitting measured before rows kept their tool calls cannot be split
    for row in first.rows:
        del row["tool_calls"]
    with pytest.raises(ValueError, match="tool_calls"):
        peers.join([first, again])
    assert peers.join([first, second]).tool_calls == 6  # whole sittings add their own totals
    with pytest.raises(ValueError, match="one framework"):
        peers.join([first, _sitting("langgraph", tasks[:1], ["?"], 1)])


def test_merge_joins_a_run_cut_off_with_its_continuation(tmp_path):
    tasks = peers.peer_tasks(quick=True)
    first = _sitting("dspy", tasks[:3], ["?"] * 3, 100, planned=6)
    second = _sitting("dspy", tasks[3:], [t.answer for t in tasks[3:]], 100, planned=6)
    base = _sitting(peers.BASELINE, tasks, [t.answer for t in tasks], 10)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"records": [base.to_json(), first.to_json()]}))
    b.write_text(json.dumps({"records": [second.to_json()]}))
    merged = {r.framework: r for r in peers.load_records([a, b], peers.peer_tasks())}
    dspy = merged["dspy"]
    assert dspy.tasks == 6 and dspy.planned == 0 and dspy.accuracy == 0.5 and dspy.diff_vs_baseline is not None
    assert "dspy (" not in peers.format_report(list(merged.values()))  # whole again: in the table and the goals


def test_resume_asks_only_the_tasks_not_yet_measured_and_stop_after_cuts_a_sitting(tmp_path, monkeypatch):
    tasks = peers.peer_tasks(quick=True)
    earlier = _sitting("tokenomy-rewoo", tasks[:4], [tasks[0].answer, "?", "?", "?"], 100, planned=6)
    other = _sitting("langgraph", tasks, ["?"] * 6, 50)
    ticks = iter(range(0, 10_000, 100))
    monkeypatch.setattr(peers, "_clock", lambda: next(ticks))
    server = ScriptedServer()
    try:
        # the clock reads 0 at the start and 100 more at each look (before the framework, before each task): with
        # 250 s, one task is asked, then it stops
        cut = peers.run_peers_bench(frameworks=("tokenomy-rewoo", "tokenomy-react"), quick=True, server=server.url,
                                    model="m", task_timeout=120, log_dir=tmp_path, python=peers.sys.executable,
                                    earlier=[earlier, other], stop_after=250)
        by = {r.framework: r for r in cut}
        assert set(by) == {"tokenomy-rewoo", "langgraph"}  # react was not started; langgraph kept as it was
        assert by["tokenomy-rewoo"].tasks == 5 and by["tokenomy-rewoo"].planned == 6
        assert by["langgraph"].total_tokens == other.total_tokens
        log = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
        assert {row["tag"] for row in log} == {f"tokenomy-rewoo--{tasks[4].id}"}  # the first task not measured
        (tmp_path / "requests.jsonl").unlink()
        done = peers.run_peers_bench(frameworks=("tokenomy-rewoo",), quick=True, server=server.url, model="m",
                                     task_timeout=120, log_dir=tmp_path, python=peers.sys.executable, earlier=cut)
    finally:
        server.close()
    rewoo = next(r for r in done if r.framework == "tokenomy-rewoo")
    assert rewoo.tasks == 6 and rewoo.planned == 0 and [row["task"] for row in rewoo.rows] == [t.id for t in tasks]
    assert rewoo.rows[0]["prompt_tokens"] == 100 and rewoo.correct[0]  # the earlier sitting's rows, as they were
    assert rewoo.prompt_tokens == 400 + sum(row["prompt_tokens"] for row in rewoo.rows[4:])
    log = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert {row["tag"] for row in log} == {f"tokenomy-rewoo--{tasks[5].id}"}
    assert earlier.tasks == 4  # the caller's records are left as they were


def test_resume_refuses_a_run_of_other_tasks_and_stop_after_needs_minutes(tmp_path, capsys):
    from tokenomy.cli import main

    held = Path(__file__).parent / "prose_heldout"
    prose = peers.question_tasks(held / "questions.jsonl")[:2]
    path = tmp_path / "prose.json"
    path.write_text(json.dumps({"records": [_sitting("dspy", prose, ["?", "?"], 10).to_json()]}))
    assert main(["bench", "peers", "--quick", "--resume", str(path), "--server", "http://127.0.0.1:9/v1",
                 "--served-model", "m"]) != 0
    err = capsys.readouterr().err
    assert "--resume" in err and "not one of these tasks" in err
    assert main(["bench", "peers", "--quick", "--stop-after", "0"]) != 0
    assert "--stop-after" in capsys.readouterr().err
