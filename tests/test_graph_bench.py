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


def test_live_tasks_are_answerable_from_their_text():
    for t in live_tasks(6):
        assert t.answer in t.question.replace(",", "")


@pytest.mark.embedded
def test_bench_graph_live_on_the_embedded_model(embedded_engine):
    records = run_live(quick=True, questions=2, iterations=1, engine=embedded_engine)
    tops = [r.topology for r in records]
    assert tops == ["mesh", "chain", "star", "single", "pruned:independent"]
    mesh = records[0]
    assert all(r.setting == "live" and r.tokens > 0 for r in records)
    assert mesh.calls == 8 and records[3].calls == 1  # 4 agents x 2 rounds (vote: no decision call); one agent
    assert records[-1].train_tokens > 0
