"""``tokenomy bench graph``: the records, the goals and the command (the simulator is fast; live is marked)."""

from __future__ import annotations

import json

import pytest

from tokenomy.benchmarks.graph import GraphRecord, goals, live_tasks, paired_bootstrap, run_live
from tokenomy.cli import main


def test_paired_bootstrap_brackets_the_difference():
    lo, hi = paired_bootstrap([True] * 90 + [False] * 10, [True] * 80 + [False] * 20)
    assert lo <= 0.10 <= hi and lo > -0.05
    assert paired_bootstrap([True] * 10, [True] * 10) == (0.0, 0.0)


def test_goals_read_the_records():
    rows = [GraphRecord("simulator", "mesh", 1000, 1.0, 10, 5, correct=[True] * 5, reduction=0.0),
            GraphRecord("simulator", "single", 100, 0.4, 1, 5),
            GraphRecord("simulator", "star", 400, 1.0, 4, 5),
            GraphRecord("simulator", "pruned:independent", 150, 1.0, 3, 5, reduction=0.85, diff_ci=(0.0, 0.0),
                        f1=1.0, f1_at=12)]
    got = {g.split(" (")[0]: ok for g, _, ok in goals(rows)}
    assert got["simulator: >= 80% fewer tokens than the mesh at non-inferior accuracy"]
    assert not got["simulator: >= 90% fewer with agent and round pruning"]
    assert got["simulator: beats the single agent and the best static chain/star at <= tokens"]
    assert got["simulator: mask-recovery F1 >= 0.9 within 50 iterations"]


def test_bench_graph_command_writes_records(tmp_path, capsys):
    out = tmp_path / "graph.json"
    assert main(["bench", "graph", "--no-live", "--iterations", "2", "--tasks", "6", "--json", str(out),
                 "--plot", str(tmp_path / "graph.png")]) == 0
    text = capsys.readouterr().out
    assert "simulator" in text and "goals (BENCHMARKS.md, graph)" in text
    assert (tmp_path / "graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {tmp_path / 'graph.png'}" in text
    data = json.loads(out.read_text())
    tops = [r["topology"] for r in data["records"]]
    assert tops[:5] == ["mesh", "chain", "star", "layered", "debate"]
    assert {"single", "known-best mask", "pruned:independent", "pruned:lowrank", "pruned:gnn"} <= set(tops)
    for r in data["records"]:
        assert r["setting"] == "simulator" and {"tokens", "accuracy", "calls"} <= set(r)
        assert r["formula_ok"] is True
    pruned = next(r for r in data["records"] if r["topology"] == "pruned:independent")
    assert len(pruned["f1_curve"]) == 2 and pruned["train_tokens"] > 0
    assert any(g["goal"].startswith("simulator: measured tokens equal the formula") and g["met"]
               for g in data["goals"])


def test_the_token_formula_against_a_hand_counted_run():
    """An oracle for the simulator's token formula that shares no code with it: ``Simulator.tokens`` is built
    from the runtime's own rendering helpers (``prompt_messages``, ``block_text``, ``render_chatml``), so the
    bench's ``formula_ok`` only says that the formula and the run agree with each other. Here a tiny team's
    prompts are written out literally and their bytes (the scripted engine's tokens) counted by hand."""
    from tokenomy.graphs import GraphTeam
    from tokenomy.graphs.simulator import SimAgent, Simulator
    from tokenomy.kernels.scripted import render_chatml

    sim = Simulator([SimAgent("a", skill=1.0, length=3), SimAgent("b", skill=1.0, length=2)],
                    solver=SimAgent("j", skill=1.0, length=1, role="solver"))
    (q,) = sim.questions(1)
    assert q.question == "[q0] a kind A question"
    graph = sim.graph("chain", rounds=2)  # a -> b (spatial), b ~> a (temporal), b => the solver j
    n = q.answer  # four digits, as every answer is

    def chat(system, user):
        return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"

    question = "Question: [q0] a kind A question"
    want = [  # (agent, prompt, its length counted by hand, the reply's length)
        # 19 (<|im_start|>system\n) + 10 + 11 (<|im_end|>\n) + 17 (<|im_start|>user\n) + 32 + 11 + 22 = 122
        ("a", chat("You are a.", question), 122, 21),  # reply: answer = "dddd" # ... (10 + 4 + 4 + 3)
        # + 30: \n (1) + "a says: " (8) + a's message (21)
        ("b", chat("You are b.", question + f'\na says: answer = "{n}" # ...'), 152, 20),
        # round 2: + 45: \n (1) + "b's message last round: " (24) + b's message (20)
        ("a", chat("You are a.", question + f'\nb\'s message last round: answer = "{n}" # ..'), 167, 21),
        ("b", chat("You are b.", question + f'\na says: answer = "{n}" # ...'), 152, 20),
        # the solver reads the last agent: + 29: \n (1) + "b says: " (8) + b's message (20)
        ("j", chat("You are j.", question + f'\nb says: answer = "{n}" # ..'), 151, 19),
    ]
    for _, text, length, _ in want:
        assert len(text.encode()) == length
    engine = sim.engine()
    result = GraphTeam(graph, engine).run(q.question)
    assert [(r.agent, render_chatml(r.prompt)) for r in engine.requests] == [(a, t) for a, t, _, _ in want]
    hand = {"prompt_tokens": 744, "completion_tokens": 101, "calls": 5}
    assert sum(w[2] for w in want) == 744 and sum(w[3] for w in want) == 101
    assert sim.tokens(graph, q.question) == hand
    total = result.total
    assert (total.prompt_tokens, total.completion_tokens, total.calls) == (744, 101, 5)
    assert result.answer == n


def test_live_tasks_are_answerable_from_their_text():
    for t in live_tasks(6):
        assert t.answer in t.question.replace(",", "")


def test_live_rows_run_as_chosen_and_compare_with_the_mesh_when_it_ran():
    """``--topologies``: the chosen rows only; each is compared with the mesh where the mesh is among them (a
    choice without it is compared once joined with a sitting that ran it); an unknown name is an error before
    anything runs."""
    from tokenomy.kernels.scripted import ScriptedEngine

    engine = ScriptedEngine(lambda request: "Velmora")  # what the agents answer does not matter here
    records = run_live(questions=2, engine=engine, topologies=["star", "single", "mesh"])
    assert [r.topology for r in records] == ["mesh", "star", "single"]
    assert all(r.setting == "live" and r.tokens > 0 for r in records)
    assert records[1].reduction is not None and records[1].diff_ci == (0.0, 0.0)
    alone = run_live(questions=2, engine=engine, topologies=["single"])
    assert [r.topology for r in alone] == ["single"] and alone[0].reduction is None and alone[0].diff_ci is None
    with pytest.raises(ValueError, match="unknown topologies \\['ring'\\]"):
        run_live(questions=2, engine=engine, topologies=["ring"])


def test_the_live_pruned_row_keeps_how_its_policy_was_trained():
    from tokenomy.kernels.scripted import ScriptedEngine

    engine = ScriptedEngine(lambda request: "Velmora")
    (row,) = run_live(questions=2, iterations=2, engine=engine, topologies=["pruned"])
    assert row.topology == "pruned:independent" and row.train_runs == 2 * 2 * 2  # iterations x questions x rollouts
    assert row.train_config is not None and row.train_config["iterations"] == 2
    assert row.train_config["prune_every"] == 8 and row.train_config["lam"] == 0.5
    assert GraphRecord.from_json(json.loads(json.dumps(row.to_json()))).train_config == row.train_config


def _sitting(tmp_path, name, topologies, *extra):
    out = tmp_path / f"{name}.json"
    assert main(["bench", "graph", "--no-simulator", "--model", "scripted", "--live-questions", "3",
                 "--live-iterations", "1", "--topologies", topologies, "--json", str(out), *extra]) == 0
    return out


def test_graph_sittings_join_into_one_run(tmp_path, capsys):
    """A long live run in sittings: each writes its rows (after every row), ``--merge`` joins them, pairs every
    row with the mesh of the first sitting, and refuses a sitting on other questions or another model."""
    a = _sitting(tmp_path, "a", "mesh,single")
    b = _sitting(tmp_path, "b", "star,single")
    rows_b = json.loads(b.read_text())["records"]
    assert [r["topology"] for r in rows_b] == ["star", "single"]
    assert rows_b[0]["reduction"] is None and len(rows_b[0]["correct"]) == 3 and rows_b[0]["model"] == "scripted"
    capsys.readouterr()
    merged = tmp_path / "merged.json"
    assert main(["bench", "graph", "--merge", f"{a},{b}", "--json", str(merged)]) == 0
    text = capsys.readouterr().out
    assert "live (scripted, tokens from the engine's usage; 4 agents), 3 questions:" in text
    rows = {r["topology"]: r for r in json.loads(merged.read_text())["records"]}
    assert list(rows) == ["mesh", "star", "single"]  # in the order one sitting runs them
    star, mesh = rows["star"], rows["mesh"]
    assert star["reduction"] == pytest.approx(1 - star["tokens"] / mesh["tokens"]) and star["diff_ci"] == [0.0, 0.0]
    # another number of questions, then a file that is not a bench graph JSON: each a clear error
    other = _sitting(tmp_path, "c", "chain")
    data = json.loads(other.read_text())
    data["records"][0]["tasks_id"] = "0" * 16
    other.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["bench", "graph", "--merge", f"{a},{other}"]) != 0
    err = capsys.readouterr().err
    assert "--merge" in err and "other questions" in err and str(other) in err
    data["records"][0].update(tasks_id=rows_b[0]["tasks_id"], model="embedded:smollm2-135m")
    other.write_text(json.dumps(data))
    assert main(["bench", "graph", "--merge", f"{a},{other}"]) != 0
    assert "another model" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('{"records": [{"setting": "live"}]')
    assert main(["bench", "graph", "--merge", f"{a},{broken}"]) != 0
    assert "not a bench graph --json file" in capsys.readouterr().err


def test_sittings_of_one_served_model_at_other_urls_merge(tmp_path):
    from tokenomy.benchmarks.graph import load_records, model_id

    assert model_id("openai:qwen@http://127.0.0.1:8011/v1") == "openai:qwen" and model_id("embedded") == "embedded"
    assert model_id(None) is None
    rows = [GraphRecord("live", topology, 100.0, 0.5, 4.0, 2, correct=[True, False], model=model, tasks_id="ab" * 8)
            for topology, model in (("mesh", "openai:qwen@http://127.0.0.1:1/v1"), ("star", "openai:qwen"))]
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    for path, rec in ((a, rows[0]), (b, rows[1])):
        path.write_text(json.dumps({"records": [rec.to_json()]}))
    assert [r.topology for r in load_records([a, b])] == ["mesh", "star"]
    c.write_text(json.dumps({"records": [{**rows[1].to_json(), "model": "openai:other@http://127.0.0.1:1/v1"}]}))
    with pytest.raises(ValueError, match="another model"):
        load_records([a, c])


def test_a_graph_record_survives_its_json():
    rec = GraphRecord("live", "star", 120.5, 0.5, 4.0, 2, correct=[True, False], diff_ci=(-0.5, 0.5),
                      model="openai:m@http://127.0.0.1:1/v1", tasks_id="ab" * 8)
    assert GraphRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        GraphRecord.from_json({**rec.to_json(), "colour": "red"})


def test_bench_graph_command_passes_the_live_options(monkeypatch):
    from tokenomy.benchmarks import graph

    seen = {}

    def fake(**kw):
        seen.update(kw)
        return []

    monkeypatch.setattr(graph, "run_graph_bench", fake)
    assert main(["bench", "graph", "--no-simulator", "--topologies", "star,pruned", "--live-questions", "6",
                 "--live-iterations", "4"]) == 0
    assert (seen["simulator"], seen["live"], seen["topologies"], seen["live_questions"], seen["live_iterations"]) == (
        False, True, ("star", "pruned"), 6, 4)
    assert main(["bench", "graph", "--no-simulator", "--no-live"]) != 0  # nothing left to run


def test_bench_graph_command_rejects_an_unknown_topology(capsys):
    assert main(["bench", "graph", "--no-simulator", "--topologies", "mesh,ring"]) != 0
    assert "--topologies: unknown ring" in capsys.readouterr().err


@pytest.mark.embedded
def test_bench_graph_live_on_the_embedded_model(embedded_engine):
    records = run_live(quick=True, questions=2, iterations=1, engine=embedded_engine)
    tops = [r.topology for r in records]
    assert tops == ["mesh", "chain", "star", "single", "pruned:independent"]
    mesh = records[0]
    assert all(r.setting == "live" and r.tokens > 0 for r in records)
    assert mesh.calls == 8 and records[3].calls == 1  # 4 agents x 2 rounds (vote: no decision call); one agent
    assert records[-1].train_tokens > 0
