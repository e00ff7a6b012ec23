"""``GNNPolicy`` gives each question its own mask, and a team with it runs each question on that question's mask
(the README: "a two-layer graph network over role and question features, a mask per question")."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from tokenomy.graphs import GraphTeam, Simulator  # noqa: E402
from tokenomy.graphs.policy import GNNPolicy, IndependentLogits  # noqa: E402


def _edges_used(result):
    return frozenset(result.by_edge)


def test_gnn_masks_differ_per_question_and_each_question_runs_on_its_own():
    sim = Simulator.team()
    graph = sim.graph("mesh", rounds=2)
    questions = [q.question for q in sim.questions(6)]
    policy = GNNPolicy(graph, seed=0)
    masks = {q: policy.mask_for(graph, q) for q in questions}
    assert len(set(masks.values())) >= 2  # the question features change the mask
    # The same question always gets the same mask (deterministic at inference).
    assert all(policy.mask_for(graph, q) == m for q, m in masks.items())
    team = GraphTeam(graph, sim.engine(), policy=policy)
    used = set()
    for q in questions:
        result = team.run(q)
        assert result.mask == masks[q] and team.realize(q).mask() == masks[q]
        # What ran is what that mask runs when given explicitly, call for call and edge for edge.
        explicit = GraphTeam(graph, sim.engine()).run(q, mask=masks[q])
        assert [(c["agent"], c["round"]) for c in result.calls] == [(c["agent"], c["round"]) for c in explicit.calls]
        assert result.by_edge == explicit.by_edge and result.total == explicit.total
        used.add(_edges_used(result))
    assert len(used) >= 2  # different questions did run on different graphs


def test_a_policy_without_question_features_gives_one_mask_for_every_question():
    sim = Simulator.team()
    graph = sim.graph("mesh", rounds=2)
    questions = [q.question for q in sim.questions(6)]
    flat = IndependentLogits(graph)
    assert len({flat.mask_for(graph, q) for q in questions}) == 1
