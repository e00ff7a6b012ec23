"""Agent graphs: structure, schedules, the LangGraph runtime, token accounting, pruning policies, training on the
simulator, pictures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tokenomy.agents import Agent
from tokenomy.errors import BudgetExceeded, EngineError
from tokenomy.graphs import (
    DECISION,
    AgentGraph,
    Budget,
    Edge,
    GraphError,
    GraphTeam,
    Mask,
    Simulator,
    to_ascii,
    to_dot,
    to_mermaid,
)
from tokenomy.graphs.runtime import block_text, codified, extract_answer
from tokenomy.kernels import ScriptedEngine

from .update_snapshots import PICTURES, SNAPSHOTS, pictured, render


def echo_engine(answers: dict[str, str] | None = None, **kw) -> ScriptedEngine:
    """Each agent answers ``answer = "<its answer>"`` (default: its own name)."""
    answers = answers or {}
    return ScriptedEngine(lambda r: f'answer = "{answers.get(r.agent, r.agent)}"', prefix_cache=False, **kw)


def calls_by_agent(engine: ScriptedEngine) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in engine.requests:
        out[r.agent] = out.get(r.agent, 0) + 1
    return out


# -- structure -------------------------------------------------------------------------------------------------


def test_presets_have_the_documented_edges():
    names = ["a", "b", "c", "d"]
    mesh = AgentGraph.mesh(names, rounds=2)
    assert len(mesh.edges("spatial")) == 6 and len(mesh.edges("temporal")) == 16 and len(mesh.edges("decision")) == 4
    chain = AgentGraph.chain(names)
    assert [str(e) for e in chain.edges()] == ["a -> b", "b -> c", "c -> d", "d => decision"]
    star = AgentGraph.star(names)
    assert {str(e) for e in star.edges("spatial")} == {"a -> b", "a -> c", "a -> d"}
    assert [e.src for e in star.edges("decision")] == ["b", "c", "d"]
    layered = AgentGraph.layered(names, layers=[1, 2, 1])
    assert {str(e) for e in layered.edges("spatial")} == {"a -> b", "a -> c", "b -> d", "c -> d"}
    debate = AgentGraph.debate(names)
    assert not debate.edges("spatial") and len(debate.edges("temporal")) == 16 and debate.rounds == 2
    single = AgentGraph.single("a")
    assert len(single.schedule().calls) == 1


def test_order_is_topological_with_ties_by_the_given_order_not_by_edge_order():
    one = AgentGraph(["x", "y", "z", "w"], spatial=[("z", "y"), ("w", "x")])
    two = AgentGraph(["x", "y", "z", "w"], spatial=[("w", "x"), ("z", "y")])
    assert one.order == two.order == ["z", "y", "w", "x"]
    assert [c.agent for c in one.schedule().calls] == ["z", "y", "w", "x"]


@pytest.mark.parametrize("build, message", [
    (lambda: AgentGraph(["a", "b", "c"], spatial=[("a", "b"), ("b", "c"), ("c", "a")]), "form a cycle"),
    (lambda: AgentGraph(["a", "b"], spatial=[("a", "ghost")]), "'ghost', which is not an agent"),
    (lambda: AgentGraph(["a", "a"]), "two agents are named 'a'"),
    (lambda: AgentGraph(["decision"]), "decision node's name"),
    (lambda: AgentGraph(["a"], spatial=[("a", "a")]), "loop"),
    (lambda: AgentGraph.mesh(["a", "b", "c"], budget=Budget(max_edges=3)).check_budget(), "over its budget"),
    (lambda: GraphTeam(AgentGraph.mesh(["a", "b"], rounds=3, budget=Budget(max_rounds=2)), echo_engine()).run("q"),
     r"3 rounds \(budget 2\)"),
    (lambda: AgentGraph([]), "at least one agent"),
    (lambda: AgentGraph(["a"], decision="random"), "decision must be"),
])
def test_bad_graphs_are_clear_errors(build, message):
    with pytest.raises(GraphError, match=message):
        build()


def test_a_mask_must_fit_the_graph():
    g = AgentGraph.chain(["a", "b"])
    with pytest.raises(GraphError, match="does not have"):
        g.apply(Mask(frozenset({"a", "b"}), frozenset({Edge("b", "a")}), 1))
    with pytest.raises(GraphError, match="agents this graph does not have"):
        g.apply(Mask(frozenset({"zed"}), frozenset(), 1))
    with pytest.raises(GraphError, match="allows 1 to 1"):
        g.apply(Mask(frozenset({"a"}), frozenset(), 2))


def test_agents_with_no_path_to_the_decision_do_not_run():
    g = AgentGraph(["a", "b", "c", "d"], spatial=[("a", "b"), ("c", "d")], decision_inputs=["b"])
    s = g.schedule()
    assert [c.key for c in s.calls] == ["a@0", "b@0"]
    assert s.dead == {"c", "d"}
    # Over two rounds an agent runs in round 0 only where a temporal edge carries its message on.
    g2 = AgentGraph(["a", "b"], temporal=[("a", "b")], decision_inputs=["b"], rounds=2)
    assert [c.key for c in g2.schedule().calls] == ["a@0", "b@1"]


def test_graph_round_trips_through_json():
    g = AgentGraph.mesh([Agent(name="p", role="planner"), "w"], rounds=2, decision="solver")
    m = Mask(frozenset({"p", "w"}), frozenset({Edge("p", "w"), Edge("w", DECISION, "decision")}), 1)
    back = AgentGraph.from_json(g.apply(m).to_json())
    assert back.signature() == g.signature() and back.mask() == m


# -- messages --------------------------------------------------------------------------------------------------


def test_answers_are_read_from_replies():
    assert extract_answer('thinking\nanswer = "4 821" # sure') == "4 821"
    assert extract_answer("The answer is: Paris.") == "Paris."
    assert extract_answer('answer = "say \\"hi\\""') == 'say "hi"'
    assert extract_answer("  \n") is None
    assert codified('a "b"') == 'answer = "a \\"b\\""'


# -- the runtime -----------------------------------------------------------------------------------------------


def test_a_pruned_agent_makes_no_call_and_a_pruned_edge_inserts_no_text():
    g = AgentGraph.mesh(["a", "b", "c"], rounds=1)
    full_engine = echo_engine()
    full = GraphTeam(g, full_engine).run("q?")
    assert calls_by_agent(full_engine) == {"a": 1, "b": 1, "c": 1}

    # Drop agent b: no call, and nobody's prompt carries its message.
    no_b = g.apply(Mask(frozenset({"a", "c"}), frozenset(e for e in g.edges() if "b" not in (e.src, e.dst)), 1))
    e2 = echo_engine()
    r2 = GraphTeam(no_b, e2).run("q?")
    assert calls_by_agent(e2) == {"a": 1, "c": 1}
    assert all("b says" not in str(r.prompt) for r in e2.requests)
    assert r2.total.calls == 2

    # Drop only the edge a -> c: c's prompt is shorter by exactly that edge's block.
    m = g.mask()
    no_edge = g.apply(Mask(m.agents, m.edges - {Edge("a", "c")}, 1))
    e3 = echo_engine()
    r3 = GraphTeam(no_edge, e3).run("q?")
    block = block_text(Edge("a", "c"), 'answer = "a"')
    assert full.by_edge["a -> c"] == len(block.encode())
    assert "a -> c" not in r3.by_edge
    assert full.total.prompt_tokens - r3.total.prompt_tokens == len(block.encode())
    assert calls_by_agent(e3) == {"a": 1, "b": 1, "c": 1}


def test_tokens_are_accounted_per_call_agent_round_and_edge():
    g = AgentGraph.mesh(["a", "b"], rounds=2)
    r = GraphTeam(g, echo_engine()).run("q?")
    total = r.total
    assert sum(r.by_round.values()).prompt_tokens == total.prompt_tokens
    assert sum(u.prompt_tokens for u in r.by_agent.values()) == total.prompt_tokens
    assert sum(c["usage"]["completion_tokens"] for c in r.calls) == total.completion_tokens
    assert [(c["agent"], c["round"]) for c in r.calls] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert set(r.by_edge) == {"a -> b", "a ~> a", "a ~> b", "b ~> a", "b ~> b"}
    # Edge tokens are the exact blocks (with the scripted engine: UTF-8 bytes), summed over rounds.
    assert r.by_edge["a -> b"] == 2 * len(block_text(Edge("a", "b"), 'answer = "a"').encode())
    assert r.by_edge["b ~> b"] == len(block_text(Edge("b", "b", "temporal"), 'answer = "b"').encode())


def test_decisions_vote_final_and_solver():
    answers = {"a": "7", "b": "7", "c": "9"}
    vote = GraphTeam(AgentGraph(["a", "b", "c"]), echo_engine(answers)).run("q?")
    assert vote.answer == "7"
    final = GraphTeam(AgentGraph(["a", "b", "c"], decision="final"), echo_engine(answers)).run("q?")
    assert final.answer == "9"
    eng = echo_engine({**answers, "judge": "8"})
    solved = GraphTeam(AgentGraph(["a", "b", "c"], decision="solver", solver=Agent(name="judge", role="solver")),
                       eng).run("q?")
    assert solved.answer == "8" and calls_by_agent(eng)["judge"] == 1
    judge_prompt = eng.requests[-1].prompt[-1]["content"]
    assert 'a says: answer = "7"' in judge_prompt and 'c says: answer = "9"' in judge_prompt


def test_codified_agents_pass_on_answer_lines_not_their_prose():
    eng = ScriptedEngine(lambda r: "Let me think... it is twelve.\nanswer: 12" if r.agent == "critic" else "ok")
    g = AgentGraph.chain([Agent(name="critic", role="critic"), Agent(name="w", role="worker")])
    GraphTeam(g, eng).run("q?")
    w_prompt = eng.requests[1].prompt[-1]["content"]
    assert w_prompt.endswith('critic says: answer = "12"')
    assert "Let me think" not in w_prompt
    assert "answer = " in eng.requests[0].prompt[0]["content"]  # told the codified format


def test_a_planner_agent_writes_and_runs_a_plan(tmp_path):
    from tokenomy.tools import tool

    @tool
    def population(city: str) -> int:
        """People living in a city."""
        return {"Velmora": 412000}.get(city, 0)

    def script(req):
        if req.agent == "planner":
            return 'e1 = population(city="Velmora")\nanswer(e1)'
        return 'answer = "ok"'

    eng = ScriptedEngine(script)
    g = AgentGraph.chain([Agent(name="p", role="planner", tools=("population",)), Agent(name="w")])
    r = GraphTeam(g, eng, tools=[population]).run("What is the population of Velmora?")
    w_prompt = eng.requests[-1].prompt[-1]["content"]
    assert 'population(city="Velmora")' in w_prompt and 'answer = "412000"' in w_prompt
    assert r.by_agent["p"].calls >= 1
    with pytest.raises(GraphError, match="names tools that were not given"):
        GraphTeam(g, eng)


def test_an_unavailable_model_is_an_error_naming_the_agent(tmp_path):
    g = AgentGraph([Agent(name="far", model=f"hf:{tmp_path / 'no-model'}")])
    with pytest.raises(GraphError, match="agent 'far' cannot use model"):
        GraphTeam(g, echo_engine())
    with pytest.raises(GraphError, match="cannot use model 'nonsense:x'"):
        GraphTeam(AgentGraph([Agent(name="x", model="nonsense:x")]), echo_engine())


def test_token_budgets():
    g = AgentGraph.chain(["a", "b", "c"], budget=Budget(max_tokens=10))
    with pytest.raises(GraphError, match="no topology meets the token budget"):
        GraphTeam(g, echo_engine()).run("q?")
    g2 = AgentGraph.chain(["a", "b", "c"], budget=Budget(max_tokens=400))
    eng = echo_engine()
    with pytest.raises(BudgetExceeded):
        GraphTeam(g2, eng).run("q?")
    assert 1 <= len(eng.requests) < 3


def test_budgets_flow_along_edges_and_the_graph_budget_caps_replies():
    # A critic that grants 5 tokens: the worker it speaks to answers within them; the graph's own token budget
    # caps every reply at what is left of it.
    eng = ScriptedEngine(lambda r: 'answer = "7"' if r.agent == "boss" else "seven " * 20, prefix_cache=False)
    agents = [Agent(name="boss", role="critic", budget=5), Agent(name="hand", max_tokens=64)]
    g = AgentGraph.chain(agents)
    GraphTeam(g, eng).run("q?")
    boss, hand = eng.requests
    assert boss.params.max_tokens == 64 and hand.params.max_tokens == 5
    assert "budget = 5" in hand.prompt[-1]["content"]
    eng2 = ScriptedEngine(lambda r: "x" * 400, prefix_cache=False)
    solo = AgentGraph.single(Agent(name="solo", max_tokens=1000), budget=Budget(max_tokens=800))
    result = GraphTeam(solo, eng2).run("q?")
    assert result.total.total_tokens <= 800 and eng2.requests[0].params.max_tokens < 800


def test_runs_stream_checkpoint_and_resume_without_repeating_calls(tmp_path):
    db = tmp_path / "graph.sqlite"
    state = {"fail": True}

    def script(req):
        if req.agent == "c" and state["fail"]:
            return EngineError("the engine went away")
        return f'answer = "{req.agent}"'

    eng = ScriptedEngine(script, prefix_cache=False)
    g = AgentGraph.chain(["a", "b", "c"])
    team = GraphTeam(g, eng)
    with pytest.raises(EngineError):
        team.run("q?", thread_id="t1", checkpoints=db)
    assert calls_by_agent(eng) == {"a": 1, "b": 1, "c": 1}
    state["fail"] = False
    r = team.resume("t1", db)
    assert r.answer == "c" and calls_by_agent(eng) == {"a": 1, "b": 1, "c": 2}
    # The compiled graph streams like any LangGraph graph.
    from tokenomy.planners import Checkpoints

    app = GraphTeam(g, echo_engine()).state_graph().compile(checkpointer=Checkpoints().saver)
    steps = list(app.stream({"question": "q?", "strategy": "graph"}, {"configurable": {"thread_id": "s"}}))
    assert [next(iter(s)) for s in steps] == ["a@0", "b@0", "c@0", "decision"]


def test_resume_runs_the_mask_the_run_started_with(tmp_path):
    db = tmp_path / "g.sqlite"
    fail = {"on": True}

    def script(req):
        if req.agent == "b" and fail["on"]:
            return EngineError("down")
        return f'answer = "{req.agent}"'

    eng = ScriptedEngine(script, prefix_cache=False)
    g = AgentGraph.mesh(["a", "b", "c"], rounds=1)
    mask = Mask(frozenset({"a", "b"}), frozenset({Edge("a", "b"), Edge("b", DECISION, "decision")}), 1)
    team = GraphTeam(g, eng)
    with pytest.raises(EngineError):
        team.run("q?", thread_id="m", checkpoints=db, mask=mask)
    fail["on"] = False
    r = team.resume("m", db)
    assert r.mask == mask and "c" not in calls_by_agent(eng)


# -- the simulator ---------------------------------------------------------------------------------------------


def test_simulator_tokens_follow_the_formula_on_every_topology():
    sim = Simulator.team()
    qs = sim.questions(3)
    eng = sim.engine()
    mesh = sim.graph("mesh", rounds=2)
    graphs = [mesh, mesh.apply(sim.best_mask(mesh)), sim.graph("chain"), sim.graph("star"),
              sim.graph("layered"), sim.graph("debate", rounds=2), sim.graph("single", agent=sim.agents[1].agent)]
    for g in graphs:
        for q in qs:
            r = GraphTeam(g, eng).run(q.question)
            want = sim.tokens(g, q.question)
            assert (r.total.prompt_tokens, r.total.completion_tokens, r.total.calls) == (
                want["prompt_tokens"], want["completion_tokens"], want["calls"]), g.name


def test_the_known_best_mask_is_best_among_its_neighbours():
    """Flipping any one agent, edge or round of the known-best mask does not raise the mean reward."""
    from tokenomy.graphs.train import TeamTask, evaluate

    sim = Simulator.team()
    tasks = [TeamTask(q.question, q.answer) for q in sim.questions(24, "nb")]
    eng = sim.engine()
    mesh = sim.graph("mesh", rounds=2)
    best = sim.best_mask(mesh)
    lam = 0.05

    def reward(mask: Mask) -> float:
        rep = evaluate(GraphTeam(mesh.apply(mask), eng), tasks)
        return rep.accuracy - lam * rep.mean_tokens / 1000

    base = reward(best)
    assert base > 0.9
    flips = [Mask(best.agents ^ {a}, best.edges, 1) for a in ("reader", "alpha", "beta", "liar", "echo")]
    flips += [Mask(best.agents | {e.src} | ({e.dst} - {DECISION}), best.edges ^ {e}, 1)
              for e in mesh.edges() if e.kind != "temporal"]
    flips.append(Mask(best.agents, best.edges | {Edge("alpha", "alpha", "temporal")}, 2))
    for m in flips:
        assert reward(m) <= base + 1e-9, m.to_json()


# -- policies --------------------------------------------------------------------------------------------------


def test_policies_realize_masks_with_log_probabilities():
    import torch

    from tokenomy.graphs.policy import POLICIES

    g = AgentGraph.mesh(["a", "b", "c"], rounds=2)
    for kind, cls in POLICIES.items():
        p = cls(g)
        gen = torch.Generator().manual_seed(0)
        real = p.realize(g, "a question", mode="sample", generator=gen)
        g.apply(real.mask)  # fits the graph
        real.log_prob.backward()
        assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in p.parameters()), kind
        det1, det2 = p.realize(g, "a question").mask, p.realize(g, "a question").mask
        assert det1 == det2


def test_policies_keep_the_budget():
    import torch

    from tokenomy.graphs.policy import IndependentLogits

    free = AgentGraph.mesh(["a", "b", "c", "d"], rounds=2)
    p = IndependentLogits(free)
    with torch.no_grad():
        p.edge.fill_(3.0)
        p.agent.fill_(3.0)
        p.round.fill_(3.0)
    tight = AgentGraph.mesh(["a", "b", "c", "d"], rounds=2, budget=Budget(max_agents=2, max_edges=1, max_rounds=1))
    m = p.realize(tight, "q").mask
    assert len(m.agents) == 2 and len([e for e in m.edges if e.kind != "decision"]) <= 1 and m.rounds == 1
    tight.apply(m)


def test_magnitude_pruning_closes_the_lowest_edges_for_good():
    import torch

    from tokenomy.graphs.policy import IndependentLogits

    g = AgentGraph.mesh(["a", "b", "c"], rounds=1)
    p = IndependentLogits(g)
    with torch.no_grad():
        p.edge.copy_(torch.arange(len(p.candidates), dtype=torch.float) - 3)
        p.agent.fill_(5.0)
    assert p.prune(0.5) == len(p.candidates) // 2
    low = set(p.candidates[: len(p.candidates) // 2])
    for _ in range(20):
        m = p.realize(g, "q", mode="sample").mask
        assert not (m.edges & low)


def test_policies_save_load_and_refuse_another_graph(tmp_path):
    from tokenomy.graphs.policy import GNNPolicy, LowRank, StaticPolicy, load_policy

    g = AgentGraph.mesh(["a", "b", "c"], rounds=2)
    for p in (GNNPolicy(g, seed=3), LowRank(g), StaticPolicy(g, AgentGraph.chain(["a", "b", "c"]).mask() and
                                                               Mask(frozenset({"a"}), frozenset(), 1))):
        path = p.save(tmp_path / f"{p.kind}.pt")
        q = load_policy(path, g)
        assert type(q) is type(p)
        assert q.realize(g, "x").mask == p.realize(g, "x").mask
    with pytest.raises(GraphError, match="trained for another graph"):
        load_policy(tmp_path / "gnn.pt", AgentGraph.mesh(["a", "b", "x"], rounds=2))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a policy")
    with pytest.raises(GraphError, match="not a tokenomy policy file"):
        load_policy(bad, g)
    with pytest.raises(GraphError, match="no policy file"):
        load_policy(tmp_path / "missing.pt", g)


def test_training_recovers_the_known_best_mask_on_the_simulator():
    from tokenomy.graphs.policy import IndependentLogits, mask_f1
    from tokenomy.graphs.train import TeamTask, TrainConfig, train_policy

    sim = Simulator.team()
    train = [TeamTask(q.question, q.answer) for q in sim.questions(32, "train")]
    mesh = sim.graph("mesh", rounds=2)
    best = sim.best_mask(mesh)
    policy = IndependentLogits(mesh)
    report = train_policy(policy, GraphTeam(mesh, sim.engine()), train, TrainConfig(iterations=50, lam=0.05),
                          oracle=best)
    assert report.first_iteration_at(0.9) is not None and report.first_iteration_at(0.9) <= 50
    assert mask_f1(mesh, policy.realize(mesh, train[0].question).mask, best) >= 0.9
    assert report.tokens == (report.usage.prompt_tokens or 0) + (report.usage.completion_tokens or 0) > 0
    assert report.runs == 50 * 4 * 4


# -- pictures ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PICTURES))
def test_pictures_match_their_snapshots(name):
    """Compares only: `python -m tests.update_snapshots` rewrites the files when a change is intended."""
    assert render(name) == (SNAPSHOTS / name).read_text(), (
        f"{name} changed; if that is intended, run `python -m tests.update_snapshots` and review the diff")


def test_a_test_run_never_rewrites_a_snapshot(monkeypatch, tmp_path):
    # TOKENOMY_UPDATE_SNAPSHOTS once made the test above write what it drew: a run could never fail then.
    monkeypatch.setenv("TOKENOMY_UPDATE_SNAPSHOTS", "1")
    monkeypatch.setitem(globals(), "SNAPSHOTS", tmp_path)
    (tmp_path / "graph_dot.txt").write_text("an old picture\n")
    with pytest.raises(AssertionError, match="graph_dot.txt changed"):
        test_pictures_match_their_snapshots("graph_dot.txt")
    assert (tmp_path / "graph_dot.txt").read_text() == "an old picture\n"


def test_the_update_command_writes_every_snapshot_and_only_changes(tmp_path):
    (tmp_path / "graph_dot.txt").write_text("an old picture\n")
    (tmp_path / "graph_mermaid.txt").write_text(render("graph_mermaid.txt"))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "tests.update_snapshots", str(tmp_path)], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(line.split()[0] for line in out.stdout.splitlines()) == ["unchanged"] + ["wrote"] * 3
    for name in PICTURES:
        assert (tmp_path / name).read_text() == (SNAPSHOTS / name).read_text()  # what the test compares with


def test_pictures_mark_pruned_and_dead_parts():
    g, result = pictured()
    ascii_ = to_ascii(g, result)
    assert "liar" in ascii_ and "PRUNED" in ascii_ and "reader -> alpha" in ascii_
    assert "pruned" in to_mermaid(g) and "style=dashed" in to_dot(g)
    dead = AgentGraph(["a", "b"], decision_inputs=["a"])
    assert "dead (no path to the decision)" in to_ascii(dead)
