"""``AgentGraph``: a team of agents and who hears whom, on networkx.

Agents are nodes; one more node, ``DECISION``, turns the last round into the answer. Three kinds of edges:

* **spatial** ``a -> b``: within a round, ``b`` reads what ``a`` said this round (so ``a`` runs first);
* **temporal** ``a ~> b``: ``b`` reads what ``a`` said in the round before (``a ~> a`` is an agent's own memory);
* **decision** ``a => decision``: ``a``'s last-round message goes to the decision node, which takes a majority
  vote (``vote``), the last input's answer (``final``) or asks a solver agent (``solver``).

A round runs the agents in one explicit order: the topological order of the spatial edges, ties broken by the
order the agents were given in (never by the order edges were added). Spatial edges must not form a cycle: a
graph that has one is an error, not something silently broken. An agent (in a round) with no path to the decision
node does not run: nobody would read what it says.

Every edge and agent stays in the graph when it is pruned, marked inactive, so pictures can show what was cut;
``graph.apply(mask)`` gives the same graph with another ``Mask`` (active agents, edges and the number of rounds),
and ``graph.schedule()`` the calls a run makes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field

from tokenomy.agents import Agent
from tokenomy.errors import UserError

__all__ = ["AgentGraph", "Budget", "Call", "DECISION", "Edge", "GraphError", "Mask", "Schedule", "PRESETS",
           "DecisionKind", "EdgeKind"]

DECISION = "decision"
"""The name of the decision node (no agent may take it)."""

EdgeKind = Literal["spatial", "temporal", "decision"]
DecisionKind = Literal["vote", "final", "solver"]
_KIND_ORDER = {"spatial": 0, "temporal": 1, "decision": 2}
_ARROW = {"spatial": "->", "temporal": "~>", "decision": "=>"}


class GraphError(UserError):
    """A graph that cannot run as given (a spatial cycle, an edge to a missing agent, a budget it breaks...)."""


@dataclass(frozen=True)
class Edge:
    """A directed edge; ``kind`` is ``spatial``, ``temporal`` or ``decision`` (then ``dst`` is ``DECISION``)."""

    src: str
    dst: str
    kind: str = "spatial"

    def __post_init__(self) -> None:
        if self.kind not in _KIND_ORDER:
            raise GraphError(f"edge {self.src}->{self.dst}: kind must be spatial, temporal or decision, "
                             f"got {self.kind!r}")
        if (self.kind == "decision") != (self.dst == DECISION):
            raise GraphError(f"edge {self.src}->{self.dst}: only decision edges end at {DECISION!r}, and they "
                             "all do")

    def __str__(self) -> str:
        return f"{self.src} {_ARROW[self.kind]} {self.dst}"

    @classmethod
    def parse(cls, text: str) -> Edge:
        """``"a -> b"`` (spatial), ``"a ~> b"`` (temporal) or ``"a => decision"``."""
        for kind, arrow in _ARROW.items():
            if arrow in text:
                src, _, dst = text.partition(arrow)
                return cls(src.strip(), dst.strip(), kind)
        raise GraphError(f"{text!r} is not an edge: write 'a -> b', 'a ~> b' or 'a => decision'")


class Budget(BaseModel):
    """Limits on a realized graph: agents that run, communication edges (spatial and temporal), rounds, and the
    tokens (prompt plus completion) of one run. ``None``: no limit."""

    model_config = ConfigDict(frozen=True)

    max_agents: int | None = Field(default=None, ge=1)
    max_edges: int | None = Field(default=None, ge=0)
    max_rounds: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class Mask:
    """What is active: agents, edges (any kind) and the number of rounds."""

    agents: frozenset[str]
    edges: frozenset[Edge]
    rounds: int

    def to_json(self) -> dict[str, Any]:
        return {"agents": sorted(self.agents), "edges": sorted(str(e) for e in self.edges), "rounds": self.rounds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mask:
        try:
            return cls(frozenset(data["agents"]), frozenset(Edge.parse(e) for e in data["edges"]), int(data["rounds"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise GraphError(f"not a mask: {exc!r}") from exc


@dataclass(frozen=True)
class Call:
    """One model call of a run: ``agent`` in ``round``, reading the spatial inputs of this round and the
    temporal inputs of the round before (names of agents, in the graph's order)."""

    agent: str
    round: int
    spatial: tuple[str, ...]
    temporal: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.agent}@{self.round}"


@dataclass(frozen=True)
class Schedule:
    """The calls of one run in the order they are made (round by round, each round in the graph's order), the
    agents whose last-round messages reach the decision node, and active agents that never run (dead)."""

    calls: tuple[Call, ...]
    decision_inputs: tuple[str, ...]
    rounds: int
    dead: frozenset[str]

    @property
    def agents(self) -> frozenset[str]:
        return frozenset(c.agent for c in self.calls)

    def edge_uses(self) -> list[tuple[Edge, int]]:
        """Every (edge, round) that inserts a message into a prompt (decision edges in the last round)."""
        out: list[tuple[Edge, int]] = []
        for c in self.calls:
            out += [(Edge(a, c.agent, "spatial"), c.round) for a in c.spatial]
            out += [(Edge(a, c.agent, "temporal"), c.round) for a in c.temporal]
        out += [(Edge(a, DECISION, "decision"), self.rounds - 1) for a in self.decision_inputs]
        return out


def _agent(a: Agent | str) -> Agent:
    return a if isinstance(a, Agent) else Agent(name=a)


class AgentGraph:
    """A team of agents and its communication edges.

    Args:
        agents: the agents (``Agent`` or names, which become ``worker`` agents), in the order that breaks ties.
        spatial, temporal: edges as ``(src, dst)`` pairs or ``Edge`` values.
        decision_inputs: agents whose last message goes to the decision node (default: all).
        decision: ``vote`` (majority of the inputs' answers, no model call), ``final`` (the answer of the last
            input in the graph's order) or ``solver`` (one more model call, by ``solver``).
        solver: the solver agent of ``decision="solver"`` (default: ``Agent(name="solver", role="solver")``).
        rounds: how many rounds the agents talk.
        budget: limits the part that runs must keep to (checked when a mask is applied and when a run starts;
            the graph itself may hold more candidates).
        name: for pictures and traces.
    """

    def __init__(self, agents: Sequence[Agent | str], *, spatial: Iterable[Edge | tuple[str, str]] = (),
                 temporal: Iterable[Edge | tuple[str, str]] = (), decision_inputs: Iterable[str] | None = None,
                 decision: DecisionKind = "vote", solver: Agent | None = None, rounds: int = 1,
                 budget: Budget | None = None, name: str = "team") -> None:
        self.name = name
        self.agents: dict[str, Agent] = {}
        for a in map(_agent, agents):
            if a.name in self.agents:
                raise GraphError(f"two agents are named {a.name!r}")
            if a.name == DECISION:
                raise GraphError(f"{DECISION!r} is the decision node's name; call the agent something else")
            self.agents[a.name] = a
        if not self.agents:
            raise GraphError("a graph needs at least one agent")
        if decision not in ("vote", "final", "solver"):
            raise GraphError(f"decision must be vote, final or solver, got {decision!r}")
        if rounds < 1:
            raise GraphError(f"rounds must be >= 1, got {rounds}")
        self.decision: DecisionKind = decision
        self.solver = (solver or Agent(name="solver", role="solver")) if decision == "solver" else None
        if self.solver is not None and self.solver.name in self.agents:
            raise GraphError(f"the solver {self.solver.name!r} is also a member agent; give it another name")
        self.rounds = rounds
        self.budget = budget or Budget()
        g = nx.MultiDiGraph(name=name)
        for a in self.agents.values():
            g.add_node(a.name, kind="agent", agent=a, active=True)
        g.add_node(DECISION, kind="decision", active=True)
        self.graph = g
        edges = [self._edge(e, "spatial") for e in spatial] + [self._edge(e, "temporal") for e in temporal]
        inputs = list(self.agents) if decision_inputs is None else list(decision_inputs)
        edges += [Edge(a, DECISION, "decision") for a in inputs]
        for e in edges:
            for end in (e.src, e.dst):
                if end != DECISION and end not in self.agents:
                    raise GraphError(f"edge {e} names {end!r}, which is not an agent of this graph "
                                     f"(agents: {', '.join(self.agents)})")
            if g.has_edge(e.src, e.dst, key=e.kind):
                raise GraphError(f"edge {e} is given twice")
            if e.kind == "spatial" and e.src == e.dst:
                raise GraphError(f"spatial edge {e} is a loop; an agent's own last message is a temporal edge")
            g.add_edge(e.src, e.dst, key=e.kind, active=True)
        spatial_dag = nx.DiGraph([(e.src, e.dst) for e in edges if e.kind == "spatial"])
        spatial_dag.add_nodes_from(self.agents)
        if not nx.is_directed_acyclic_graph(spatial_dag):
            cycle = " -> ".join(u for u, _ in nx.find_cycle(spatial_dag))
            raise GraphError(f"the spatial edges form a cycle ({cycle} -> {nx.find_cycle(spatial_dag)[0][0]}): "
                             "within a round someone must speak first; make one of them a temporal edge")
        index = {n: i for i, n in enumerate(self.agents)}
        self.order: list[str] = list(nx.lexicographical_topological_sort(spatial_dag, key=index.__getitem__))
        """The order agents run in within a round (explicit: spatial topological order, ties by given order)."""
        self.active_rounds = rounds

    def _edge(self, e: Edge | tuple[str, str], kind: str) -> Edge:
        if isinstance(e, Edge):
            if e.kind != kind:
                raise GraphError(f"edge {e} was given as a {kind} edge")
            return e
        src, dst = e
        return Edge(src, dst, kind)

    # -- what is there ---------------------------------------------------------------------------------------

    def edges(self, kind: str | None = None, *, active_only: bool = False) -> list[Edge]:
        """The graph's edges in a canonical order (kind, then the graph's order of source and target)."""
        pos = {n: i for i, n in enumerate(self.order)}
        pos[DECISION] = len(pos)
        out = [Edge(u, v, k) for u, v, k, d in self.graph.edges(keys=True, data=True)
               if (kind is None or k == kind) and (d["active"] or not active_only)]
        return sorted(out, key=lambda e: (_KIND_ORDER[e.kind], pos[e.src], pos[e.dst]))

    def is_active(self, item: Edge | str) -> bool:
        if isinstance(item, Edge):
            return bool(self.graph.edges[item.src, item.dst, item.kind]["active"])
        return bool(self.graph.nodes[item]["active"])

    @property
    def active_agents(self) -> list[str]:
        return [n for n in self.order if self.graph.nodes[n]["active"]]

    def mask(self) -> Mask:
        """The active part as a ``Mask``."""
        return Mask(frozenset(self.active_agents), frozenset(self.edges(active_only=True)), self.active_rounds)

    def _repr_html_(self) -> str:
        from .render import to_svg

        return to_svg(self)

    def full_mask(self) -> Mask:
        return Mask(frozenset(self.agents), frozenset(self.edges()), self.rounds)

    def apply(self, mask: Mask) -> AgentGraph:
        """A copy whose active part is ``mask`` (which may name only this graph's agents and edges)."""
        unknown_agents = set(mask.agents) - set(self.agents)
        if unknown_agents:
            raise GraphError(f"the mask names agents this graph does not have: {', '.join(sorted(unknown_agents))}")
        all_edges = set(self.edges())
        unknown = [str(e) for e in mask.edges if e not in all_edges]
        if unknown:
            raise GraphError(f"the mask names edges this graph does not have: {', '.join(sorted(unknown))}")
        if not 1 <= mask.rounds <= self.rounds:
            raise GraphError(f"the mask has {mask.rounds} rounds; this graph allows 1 to {self.rounds}")
        out = self.copy()
        for n in out.agents:
            out.graph.nodes[n]["active"] = n in mask.agents
        for e in all_edges:
            out.graph.edges[e.src, e.dst, e.kind]["active"] = e in mask.edges
        out.active_rounds = mask.rounds
        out.check_budget()
        return out

    def copy(self) -> AgentGraph:
        out = object.__new__(AgentGraph)
        out.__dict__.update(self.__dict__)
        out.graph = self.graph.copy()
        out.order = list(self.order)
        return out

    # -- what a run does ---------------------------------------------------------------------------------------

    def schedule(self) -> Schedule:
        """The calls a run makes: active agents in the active rounds that have a path to the decision node."""
        agents = set(self.active_agents)
        on = [e for e in self.edges(active_only=True) if e.src in agents and (e.dst in agents or e.dst == DECISION)]
        sp_in: dict[str, list[str]] = {a: [] for a in agents}
        tm_in: dict[str, list[str]] = {a: [] for a in agents}
        sp_out: dict[str, list[str]] = {a: [] for a in agents}
        tm_out: dict[str, list[str]] = {a: [] for a in agents}
        inputs = []
        for e in on:
            if e.kind == "spatial":
                sp_in[e.dst].append(e.src)
                sp_out[e.src].append(e.dst)
            elif e.kind == "temporal":
                tm_in[e.dst].append(e.src)
                tm_out[e.src].append(e.dst)
            else:
                inputs.append(e.src)
        rounds = self.active_rounds
        live: list[set[str]] = [set() for _ in range(rounds)]
        reverse_order = [a for a in reversed(self.order) if a in agents]
        for r in reversed(range(rounds)):
            later = live[r + 1] if r + 1 < rounds else set()
            for a in reverse_order:  # successors come later in the order, so they are decided already
                if ((r == rounds - 1 and a in inputs) or any(b in later for b in tm_out[a])
                        or any(b in live[r] for b in sp_out[a])):
                    live[r].add(a)
        calls = []
        for r in range(rounds):
            for a in self.order:
                if a in live[r]:
                    calls.append(Call(a, r, tuple(s for s in self.order if s in sp_in[a] and s in live[r]),
                                      tuple(s for s in self.order if r > 0 and s in tm_in[a] and s in live[r - 1])))
        ran = {c.agent for c in calls}
        decision_inputs = tuple(a for a in self.order if a in inputs and a in live[rounds - 1])
        return Schedule(tuple(calls), decision_inputs, rounds, frozenset(agents - ran))

    def check_budget(self) -> None:
        """Raise ``GraphError`` if the active part breaks the budget's agents, edges or rounds (a graph may hold
        more candidates than its budget allows: a policy or a mask picks the part that runs)."""
        b = self.budget
        comm = [e for e in self.edges(active_only=True) if e.kind != "decision"]
        over = []
        if b.max_agents is not None and len(self.active_agents) > b.max_agents:
            over.append(f"{len(self.active_agents)} active agents (budget {b.max_agents})")
        if b.max_edges is not None and len(comm) > b.max_edges:
            over.append(f"{len(comm)} active spatial and temporal edges (budget {b.max_edges})")
        if b.max_rounds is not None and self.active_rounds > b.max_rounds:
            over.append(f"{self.active_rounds} rounds (budget {b.max_rounds})")
        if over:
            raise GraphError(f"graph {self.name!r} is over its budget: {'; '.join(over)}. Prune it (a mask or a "
                             "policy) or raise the budget")

    # -- serialization and identity ----------------------------------------------------------------------------

    def signature(self) -> dict[str, Any]:
        """What a trained policy depends on: the agents (name, role, prompt) and the candidate edges."""
        return {"agents": [[a.name, a.role, a.system_prompt] for a in (self.agents[n] for n in self.order)],
                "edges": [str(e) for e in self.edges()], "rounds": self.rounds, "decision": self.decision}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "agents": [self.agents[n].describe() for n in self.agents],
                "edges": [str(e) for e in self.edges()], "decision": self.decision,
                "solver": self.solver.describe() if self.solver else None, "rounds": self.rounds,
                "budget": self.budget.model_dump(), "mask": self.mask().to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> AgentGraph:
        d = json.loads(data) if isinstance(data, str) else data
        edges = [Edge.parse(e) for e in d["edges"]]
        g = cls([Agent(**a) for a in d["agents"]], spatial=[e for e in edges if e.kind == "spatial"],
                temporal=[e for e in edges if e.kind == "temporal"],
                decision_inputs=[e.src for e in edges if e.kind == "decision"], decision=d.get("decision", "vote"),
                solver=Agent(**d["solver"]) if d.get("solver") else None, rounds=d.get("rounds", 1),
                budget=Budget(**d.get("budget", {})), name=d.get("name", "team"))
        return g.apply(Mask.from_json(d["mask"])) if d.get("mask") else g

    def __repr__(self) -> str:
        s = self.schedule()
        return (f"AgentGraph({self.name!r}, agents={len(self.agents)}, edges={len(self.edges())}, "
                f"rounds={self.active_rounds}/{self.rounds}, decision={self.decision}, calls={len(s.calls)})")

    # -- presets (fair baselines) --------------------------------------------------------------------------------

    @classmethod
    def mesh(cls, agents: Sequence[Agent | str], rounds: int = 2, **kw: Any) -> AgentGraph:
        """Everyone hears everyone: spatial ``i -> j`` for every ``i`` before ``j`` (all N(N-1)/2 that a round
        can hold without a cycle), temporal edges between every pair and each agent and itself, every agent to
        the decision."""
        names = [_agent(a).name for a in agents]
        return cls(agents, spatial=[(a, b) for i, a in enumerate(names) for b in names[i + 1:]],
                   temporal=[(a, b) for a in names for b in names], rounds=rounds, name=kw.pop("name", "mesh"), **kw)

    @classmethod
    def chain(cls, agents: Sequence[Agent | str], rounds: int = 1, **kw: Any) -> AgentGraph:
        """Each agent hears the one before; the last one's answer is the team's; over rounds the last agent's
        message goes back to the first."""
        names = [_agent(a).name for a in agents]
        temporal = [(names[-1], names[0])] if rounds > 1 else []
        kw.setdefault("decision", "final")
        return cls(agents, spatial=list(zip(names, names[1:], strict=False)), temporal=temporal,
                   decision_inputs=[names[-1]], rounds=rounds, name=kw.pop("name", "chain"), **kw)

    @classmethod
    def star(cls, agents: Sequence[Agent | str], rounds: int = 1, **kw: Any) -> AgentGraph:
        """The first agent speaks to all the others, who answer; over rounds they report back to it."""
        names = [_agent(a).name for a in agents]
        hub, rest = names[0], names[1:] or names[:1]
        temporal = [(b, hub) for b in names[1:]] if rounds > 1 else []
        return cls(agents, spatial=[(hub, b) for b in names[1:]], temporal=temporal, decision_inputs=rest,
                   rounds=rounds, name=kw.pop("name", "star"), **kw)

    @classmethod
    def layered(cls, agents: Sequence[Agent | str], layers: int | Sequence[int] = 2, rounds: int = 1,
                **kw: Any) -> AgentGraph:
        """Agents in consecutive layers (``layers`` = how many, or their sizes); every agent hears every agent
        of the layer before; the last layer decides."""
        names = [_agent(a).name for a in agents]
        if isinstance(layers, int):
            if not 1 <= layers <= len(names):
                raise GraphError(f"{layers} layers of {len(names)} agents")
            q, r = divmod(len(names), layers)
            sizes = [q + (i < r) for i in range(layers)]
        else:
            sizes = list(layers)
            if sum(sizes) != len(names) or min(sizes) < 1:
                raise GraphError(f"layer sizes {sizes} do not split {len(names)} agents")
        groups, start = [], 0
        for s in sizes:
            groups.append(names[start:start + s])
            start += s
        spatial = [(a, b) for g1, g2 in zip(groups, groups[1:], strict=False) for a in g1 for b in g2]
        temporal = [(a, a) for a in names] if rounds > 1 else []
        return cls(agents, spatial=spatial, temporal=temporal, decision_inputs=groups[-1], rounds=rounds,
                   name=kw.pop("name", "layered"), **kw)

    @classmethod
    def debate(cls, agents: Sequence[Agent | str], rounds: int = 2, **kw: Any) -> AgentGraph:
        """LLM-Debate: every agent answers alone, then each round reads everyone's last answers; a vote decides."""
        names = [_agent(a).name for a in agents]
        return cls(agents, temporal=[(a, b) for a in names for b in names], rounds=rounds,
                   name=kw.pop("name", "debate"), **kw)

    @classmethod
    def single(cls, agent: Agent | str, **kw: Any) -> AgentGraph:
        """One agent answers alone."""
        kw.setdefault("decision", "final")
        return cls([agent], rounds=1, name=kw.pop("name", "single"), **kw)


PRESETS = ("mesh", "chain", "star", "layered", "debate", "single")
