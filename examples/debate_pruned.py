"""A small debate team, trained on a few tasks to talk less, pruned and drawn.

    python examples/debate_pruned.py [--iterations N] [--mermaid FILE]

Three agents debate over two rounds (LLM-Debate: each answers, then reads everyone's last answer; a vote
decides). A pruning policy (one logit per agent, edge and round) is trained by REINFORCE on four reading tasks,
rewarding right answers and charging for tokens; the pruned team then answers two new questions beside the full
debate, and both are drawn. The model is ``$TOKENOMY_MODEL`` or the default embedded model (Qwen2.5-Coder-1.5B-Instruct;
``TOKENOMY_EMBEDDED=smollm2-135m`` for the fast tiny one): the point here is the token ledger.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenomy import Engine, load_engine
from tokenomy.agents import Agent
from tokenomy.graphs import AgentGraph, GraphTeam, TeamTask, TrainConfig, evaluate, to_ascii, to_mermaid, train_policy
from tokenomy.graphs.policy import IndependentLogits

TRAIN = [
    TeamTask("Orvel is a town of 8,200 people on the river Sima. How many people live in Orvel?", "8200"),
    TeamTask("The mayor of Brisk is Ana Toll. Brisk lies on the coast. Who is the mayor of Brisk?", "Ana Toll"),
    TeamTask("Kettle Works was founded in 1921 by Ivo Marr. Who founded Kettle Works?", "Ivo Marr"),
    TeamTask("The river Lume is 310 kilometres long. How long is the river Lume in kilometres?", "310"),
]
TEST = [
    TeamTask("Pell is a village of 640 people. Its mayor is Ruth Oda. How many people live in Pell?", "640"),
    TeamTask("Dovecraft was founded in 1988 by Lin Abe. Who founded Dovecraft?", "Lin Abe"),
]


def team() -> list[Agent]:
    return [Agent(name="reader", prompt="Answer from the text. Reply with the answer only.", max_tokens=24),
            Agent(name="skeptic", prompt="Check the answers against the text. Reply with the right answer only.",
                  max_tokens=24),
            Agent(name="judge", role="critic", max_tokens=24)]


def main(iterations: int = 3, mermaid: str | None = None, engine: Engine | None = None) -> dict[str, float]:
    engine = engine or load_engine()
    debate = AgentGraph.debate(team(), rounds=2)
    policy = IndependentLogits(debate)
    report = train_policy(policy, GraphTeam(debate, engine), TRAIN,
                          TrainConfig(iterations=iterations, batch=2, rollouts=2, lam=0.5),
                          on_iteration=lambda r: print(f"iteration {r.iteration}: reward {r.reward:+.2f}, "
                                                       f"accuracy {r.accuracy:.0%}, {r.tokens:.0f} tokens/run"))
    print(f"training: {report.runs} runs, {report.tokens} tokens (counted apart)\n")

    full = evaluate(GraphTeam(debate, engine), TEST, "debate")
    pruned_team = GraphTeam(debate, engine, policy=policy)
    pruned = evaluate(pruned_team, TEST, "pruned")
    for rep in (full, pruned):
        print(f"{rep.topology:7s} accuracy {rep.accuracy:.0%}  tokens/question {rep.mean_tokens:.0f}  "
              f"calls/question {rep.mean_calls:.1f}")
    saved = 1 - pruned.mean_tokens / full.mean_tokens if full.mean_tokens else 0.0
    print(f"the pruned team spends {saved:.0%} fewer tokens\n")

    realized = pruned_team.realize(TEST[0].question)
    result = pruned_team.run(TEST[0].question)
    print(to_ascii(realized, result, show_pruned=False))
    if mermaid:
        Path(mermaid).write_text(to_mermaid(realized, result))
        print(f"wrote {mermaid}")
    return {"debate_tokens": full.mean_tokens, "pruned_tokens": pruned.mean_tokens, "saved": saved}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--mermaid", default=None, help="also write the pruned graph as Mermaid to this file")
    args = p.parse_args()
    main(args.iterations, args.mermaid)
