"""A simulated team, for tests, CI and the ``simulator`` half of ``tokenomy bench graph``.

Simulated agents answer through the normal runtime (``GraphTeam``) on a ``ScriptedEngine`` (the test double,
which counts UTF-8 bytes as tokens), so everything but the model is real: the schedule, the prompts, the
LangGraph graph, the usage. Each agent has a known skill per kind of question, may need to hear another agent to
be good (``needs`` / ``boost``), may check what it heard and keep a right answer (``verify``), may adopt the
majority of what it heard (``adopt``), or may always give the same wrong answer (``adversarial``); its messages
have a fixed length. Draws are seeded per (agent, question), so a run is a pure function of the mask and the
question, and every answer has four digits, so tokens follow a closed formula (``Simulator.tokens``).

``Simulator.team()`` is a scenario whose best mask is known by construction: ``reader -> alpha`` (alpha needs the
reader on kind-A questions), ``alpha => decision`` and ``beta => decision`` (beta is good on kind B) under a
verifying solver, one round; ``liar`` (adversarial) and ``echo`` (adopts what it hears) only cost tokens.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tokenomy.agents import Agent
from tokenomy.kernels import Request, ScriptedEngine
from tokenomy.kernels.scripted import render_chatml

from .graph import DECISION, AgentGraph, Edge, Mask
from .runtime import block_text, prompt_messages

__all__ = ["SimAgent", "SimQuestion", "Simulator"]

_HEARD = re.compile(r"^(?:(\S+) says|Your message last round|(\S+)'s message last round): answer = \"(\d{4})\"")


@dataclass(frozen=True)
class SimAgent:
    """A simulated agent.

    Args:
        skill: probability of a right answer on its own (one number, or one per question kind).
        needs: an agent whose message lifts its skill to ``boost``.
        verify: probability of keeping a right answer it heard (when it heard one).
        adopt: otherwise, probability of taking the majority of the answers it heard.
        adversarial: always answers the same wrong ("decoy") answer.
        length: characters of commentary after its answer (its messages are ``answer = "dddd" # ...``).
    """

    name: str
    skill: float | Mapping[str, float] = 0.5
    needs: str | None = None
    boost: float | Mapping[str, float] = 0.95
    verify: float = 0.0
    adopt: float = 0.0
    adversarial: bool = False
    length: int = 60
    role: str = "worker"

    def p(self, value: float | Mapping[str, float], kind: str) -> float:
        return float(value) if not isinstance(value, Mapping) else float(value.get(kind, 0.0))

    @property
    def agent(self) -> Agent:
        # Its messages are its replies as written (commentary included), whatever its role.
        return Agent(name=self.name, role=self.role, prompt=f"You are {self.name}.", codified=False,
                     max_tokens=max(16, self.length + 32))


@dataclass(frozen=True)
class SimQuestion:
    qid: str
    kind: str
    answer: str

    @property
    def question(self) -> str:
        return f"[{self.qid}] a kind {self.kind} question"


@dataclass
class Simulator:
    """Simulated agents (and an optional simulated solver) and their questions."""

    agents: Sequence[SimAgent]
    solver: SimAgent | None = None
    seed: int = 0
    kinds: tuple[str, ...] = ("A", "B")
    _questions: dict[str, SimQuestion] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name = {a.name: a for a in self.agents}
        if self.solver is not None:
            self.by_name[self.solver.name] = self.solver

    # -- the scenario with a known best mask ----------------------------------------------------------------------

    @classmethod
    def team(cls, seed: int = 0) -> Simulator:
        return cls([
            SimAgent("reader", skill=0.1, length=90),
            SimAgent("alpha", skill={"A": 0.3, "B": 0.1}, needs="reader", boost={"A": 1.0, "B": 0.1}, length=50),
            SimAgent("beta", skill={"A": 0.1, "B": 1.0}, length=50),
            SimAgent("liar", adversarial=True, length=240),
            SimAgent("echo", skill=0.2, adopt=0.9, length=160),
        ], solver=SimAgent("judge", skill=0.1, verify=1.0, length=10, role="solver"), seed=seed)

    def best_mask(self, graph: AgentGraph) -> Mask:
        """The known best mask of ``team()`` over ``graph`` (which must hold its edges)."""
        mask = Mask(frozenset({"reader", "alpha", "beta"}),
                    frozenset({Edge("reader", "alpha"), Edge("alpha", DECISION, "decision"),
                               Edge("beta", DECISION, "decision")}), 1)
        graph.apply(mask)  # an error if the graph lacks one of them
        return mask

    def graph(self, preset: str = "mesh", **kw: object) -> AgentGraph:
        """A preset over the simulated agents (decided by the simulated solver, if there is one)."""
        agents = [a.agent for a in self.agents]
        if self.solver is not None and preset != "single":
            kw.setdefault("decision", "solver")
            kw.setdefault("solver", self.solver.agent)
        build = getattr(AgentGraph, preset)
        if preset == "single":
            return AgentGraph.single(agents[0] if "agent" not in kw else kw.pop("agent"), **kw)  # type: ignore[arg-type]
        return build(agents, **kw)  # type: ignore[no-any-return]

    def engine(self) -> ScriptedEngine:
        """The engine the simulated agents speak through (no prefix cache: every prompt token is computed)."""
        return ScriptedEngine(self.reply, prefix_cache=False)

    # -- questions ------------------------------------------------------------------------------------------------

    def questions(self, n: int, salt: str = "") -> list[SimQuestion]:
        """``n`` questions, kinds in turn; different ``salt`` -> disjoint questions."""
        rng = random.Random(f"sim-q-{self.seed}-{salt}")
        out = []
        for i in range(n):
            q = SimQuestion(f"{salt}q{i}", self.kinds[i % len(self.kinds)], str(rng.randint(1000, 8999)))
            self._questions[q.qid] = q
            out.append(q)
        return out

    # -- answering ------------------------------------------------------------------------------------------------

    def answer(self, agent: str, qid: str, heard: Sequence[tuple[str, str]]) -> str:
        """What ``agent`` answers to question ``qid`` having heard ``(sender, answer)`` pairs."""
        a, q = self.by_name[agent], self._questions[qid]
        gold = q.answer
        if a.adversarial:
            return str(9999 - int(gold))
        rng = random.Random(f"sim-{self.seed}-{agent}-{qid}")
        u_own, u_verify, u_adopt = rng.random(), rng.random(), rng.random()
        senders = {s for s, _ in heard}
        p = a.p(a.boost, q.kind) if a.needs and a.needs in senders else a.p(a.skill, q.kind)
        own = gold
        while u_own >= p and own == gold:
            own = str(rng.randint(1000, 9999))
        answers = [ans for _, ans in heard]
        if a.verify and gold in answers and u_verify < a.verify:
            return gold
        if a.adopt and answers and u_adopt < a.adopt:
            return Counter(answers).most_common(1)[0][0]
        return own

    def message(self, agent: str, answer: str) -> str:
        return f'answer = "{answer}" # ' + "." * self.by_name[agent].length

    def reply(self, req: Request) -> str:
        user = str(req.prompt[-1]["content"])  # type: ignore[index]
        m = re.match(r"Question: \[(\w+)\]", user)
        if m is None or req.agent not in self.by_name:
            raise ValueError(f"the simulator got a request it did not make: agent={req.agent!r}")
        heard = []
        for line in user.splitlines()[1:]:
            h = _HEARD.match(line)
            if h:
                heard.append((h.group(1) or h.group(2) or req.agent, h.group(3)))
        return self.message(req.agent, self.answer(req.agent, m.group(1), heard))

    # -- the token formula ----------------------------------------------------------------------------------------

    def _base(self, agent: Agent, question: str) -> int:
        return len(render_chatml(prompt_messages(agent, question, [])).encode())

    def _msg_len(self, agent: str) -> int:
        return len(self.message(agent, "0000").encode())

    def _block_len(self, e: Edge) -> int:
        return len(block_text(e, self.message(e.src, "0000")).encode())

    def tokens(self, graph: AgentGraph, question: str) -> dict[str, int]:
        """Prompt and completion tokens of one run of ``graph`` (its active part), from the formula:
        per call, the agent's base prompt plus every inserted block, and its fixed-length message."""
        sched = graph.schedule()
        prompt = completion = 0
        for c in sched.calls:
            agent = graph.agents[c.agent]
            prompt += self._base(agent, question)
            prompt += sum(self._block_len(Edge(s, c.agent, "spatial")) for s in c.spatial)
            prompt += sum(self._block_len(Edge(s, c.agent, "temporal")) for s in c.temporal)
            completion += self._msg_len(c.agent)
        if graph.decision == "solver" and sched.decision_inputs and graph.solver is not None:
            prompt += self._base(graph.solver, question)
            prompt += sum(self._block_len(Edge(s, DECISION, "decision")) for s in sched.decision_inputs)
            completion += self._msg_len(graph.solver.name)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "calls": len(sched.calls)
                + int(graph.decision == "solver" and bool(sched.decision_inputs))}
