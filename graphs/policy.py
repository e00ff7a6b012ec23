"""Pruning policies: which agents, edges and rounds of an ``AgentGraph`` a question runs on.

A policy scores every candidate of its graph (each edge, each agent, each round after the first) with a logit;
``realize`` turns the scores into a ``Mask``, either deterministically (``threshold``: keep what has p > 0.5, the
default at inference) or by sampling (training), with the log-probability of the sampled decisions. Rounds are a
prefix: round ``k`` runs only if every round before it does. The graph's budget is kept by dropping the least
likely agents, edges and rounds.

* ``StaticPolicy``: a fixed mask.
* ``IndependentLogits``: one free logit per candidate (GPTSwarm, AgentPrune).
* ``LowRank``: spatial and temporal edge logits are ``U V^T`` of rank ``r``, with a nuclear-norm penalty.
* ``GNNPolicy``: a two-layer GCN over the agents (features: the agent's role and prompt, and the question, as
  hashed bag-of-words vectors) gives node embeddings ``Z``; edge logits are bilinear in ``Z``, agent and round
  logits linear; the mask can differ per question (G-Designer, AGP).

Every policy also has magnitude pruning (``prune(rate)``, AgentPrune): the lowest-scoring fraction of the edges
still open is closed for good. ``save`` / ``load`` keep a policy with its graph's signature; loading it for a
graph with other agents or edges is an error.

torch is imported when this module is, not by ``import tokenomy``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .graph import DECISION, AgentGraph, Edge, GraphError, Mask

__all__ = ["EdgePolicy", "StaticPolicy", "IndependentLogits", "LowRank", "GNNPolicy", "Realization", "POLICIES",
           "load_policy", "effective_items", "mask_f1", "hash_embed"]


@dataclass
class Realization:
    mask: Mask
    log_prob: torch.Tensor
    """Log-probability of the sampled decisions that matter (a tensor with gradients)."""
    entropy: torch.Tensor
    """Entropy of those decisions (training can reward it to keep exploring)."""


def hash_embed(text: str, dim: int = 32) -> torch.Tensor:
    """A deterministic bag-of-words vector: each word hashed to a signed bin, the vector L2-normalized."""
    v = torch.zeros(dim)
    for w in re.findall(r"\w+", text.lower()):
        h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        v[h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    n = v.norm()
    return v / n if n > 0 else v


class EdgePolicy(nn.Module):
    """The base of learned policies: candidates, realization, magnitude pruning, save and load."""

    kind: ClassVar[str] = ""
    default_lr: ClassVar[float] = 0.1
    open: torch.Tensor
    agent_init: ClassVar[float] = 2.0
    """Agents start kept (p = 0.88), as AgentPrune starts from the whole graph; edges and rounds start at 0.5."""

    def __init__(self, graph: AgentGraph) -> None:
        super().__init__()
        self.signature = graph.signature()
        self.config: dict[str, Any] = {}
        self.agents: list[str] = list(graph.order)
        self.candidates: list[Edge] = graph.edges()
        self.n_rounds = graph.rounds - 1
        index = {n: i for i, n in enumerate(self.agents)}
        self._src = torch.tensor([index[e.src] for e in self.candidates], dtype=torch.long)
        self._dst = torch.tensor([index.get(e.dst, -1) for e in self.candidates], dtype=torch.long)
        self._kind = [e.kind for e in self.candidates]
        self.register_buffer("open", torch.ones(len(self.candidates)))
        """1 for edges still open to the policy, 0 for edges closed by magnitude pruning."""

    # -- what subclasses provide ---------------------------------------------------------------------------

    def logits(self, question: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edge logits (one per candidate), agent logits (one per agent), round logits (rounds - 1)."""
        raise NotImplementedError

    def penalty(self) -> torch.Tensor:
        """A regularizer added to the training loss."""
        return torch.zeros(())

    # -- realization -------------------------------------------------------------------------------------

    def check(self, graph: AgentGraph) -> None:
        if graph.signature() != self.signature:
            raise GraphError(f"this {self.kind} policy was made for another graph (agents "
                             f"{[a[0] for a in self.signature['agents']]}, {len(self.signature['edges'])} edges, "
                             f"{self.signature['rounds']} rounds); this graph has agents {graph.order}, "
                             f"{len(graph.edges())} edges, {graph.rounds} rounds")

    def realize(self, graph: AgentGraph, question: str, mode: str = "threshold",
                generator: torch.Generator | None = None) -> Realization:
        """The mask for ``question``: ``threshold`` keeps p > 0.5; ``sample`` draws each decision."""
        if mode not in ("threshold", "sample"):
            raise ValueError(f"mode must be threshold or sample, got {mode!r}")
        self.check(graph)
        e_logit, a_logit, r_logit = self.logits(question)
        open_ = self.open.bool()

        def decide(logit: torch.Tensor) -> torch.Tensor:
            if mode == "threshold":
                return (logit > 0).float()
            return torch.bernoulli(torch.sigmoid(logit).detach(), generator=generator)

        ent = torch.zeros(())

        def logp(logit: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            nonlocal ent
            p = torch.sigmoid(logit)
            ent = ent + nn.functional.binary_cross_entropy_with_logits(logit, p, reduction="sum")
            return -nn.functional.binary_cross_entropy_with_logits(logit, x, reduction="sum")

        a_x = decide(a_logit)
        lp = logp(a_logit, a_x)
        rounds = 1
        if self.n_rounds:
            r_x = decide(r_logit)
            for k in range(self.n_rounds):  # rounds are a prefix: the first round dropped ends the run
                lp = lp + logp(r_logit[k:k + 1], r_x[k:k + 1])
                if r_x[k] < 0.5:
                    break
                rounds += 1
        agents = {n for n, x in zip(self.agents, a_x.tolist(), strict=True) if x > 0.5}
        # An edge between agents that do not run (or a temporal edge in a one-round run) changes nothing: it is
        # left out of the mask and of the log-probability (which keeps REINFORCE unbiased and less noisy).
        kept = torch.tensor([self.agents[i] in agents for i in self._src.tolist()])
        kept &= torch.tensor([d < 0 or self.agents[d] in agents for d in self._dst.tolist()])
        if rounds == 1:
            kept &= torch.tensor([k != "temporal" for k in self._kind])
        relevant = kept & open_
        e_x = decide(e_logit) * relevant.float()
        if relevant.any():
            lp = lp + logp(e_logit[relevant], e_x[relevant])
        edges = {e for e, x in zip(self.candidates, e_x.tolist(), strict=True) if x > 0.5}
        mask = self._fit_budget(graph, agents, edges, rounds, a_logit.detach(), e_logit.detach(),
                                r_logit.detach())
        return Realization(mask, lp, ent)

    @torch.no_grad()
    def mask_for(self, graph: AgentGraph, question: str) -> Mask:
        """The deterministic mask for ``question`` (what ``GraphTeam`` runs at inference)."""
        return self.realize(graph, question, mode="threshold").mask

    def _fit_budget(self, graph: AgentGraph, agents: set[str], edges: set[Edge], rounds: int,
                    a_logit: torch.Tensor, e_logit: torch.Tensor, r_logit: torch.Tensor) -> Mask:
        b = graph.budget
        if b.max_rounds is not None:
            rounds = min(rounds, b.max_rounds)
        if b.max_agents is not None and len(agents) > b.max_agents:
            score = dict(zip(self.agents, a_logit.tolist(), strict=True))
            agents = set(sorted(agents, key=lambda n: -score[n])[: b.max_agents])
            edges = {e for e in edges if e.src in agents and (e.dst in agents or e.dst == DECISION)}
        if b.max_edges is not None:
            comm = [e for e in edges if e.kind != "decision"]
            if len(comm) > b.max_edges:
                e_score = dict(zip(self.candidates, e_logit.tolist(), strict=True))
                drop = sorted(comm, key=lambda e: e_score[e])[: len(comm) - b.max_edges]
                edges -= set(drop)
        return Mask(frozenset(agents), frozenset(edges), rounds)

    # -- magnitude pruning ---------------------------------------------------------------------------------

    @torch.no_grad()
    def prune(self, rate: float, questions: Sequence[str] = ("",)) -> int:
        """Close for good the ``rate`` fraction of open edges with the lowest logits (averaged over
        ``questions``); returns how many were closed."""
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        score = torch.stack([self.logits(q)[0] for q in questions]).mean(0)
        open_idx = self.open.nonzero().flatten()
        k = int(math.floor(rate * len(open_idx)))
        if k == 0:
            return 0
        worst = open_idx[score[open_idx].argsort()[:k]]
        self.open[worst] = 0.0
        return k

    # -- persistence ----------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": "tokenomy-policy-1", "kind": self.kind, "config": self.config,
                    "signature": self.signature, "state": self.state_dict()}, p)
        return p


class StaticPolicy(EdgePolicy):
    """A fixed mask (nothing to train): ``realize`` returns it for every question."""

    kind = "static"
    _e: torch.Tensor
    _a: torch.Tensor
    _r: torch.Tensor

    def __init__(self, graph: AgentGraph, mask: Mask | None = None) -> None:
        super().__init__(graph)
        m = mask or graph.mask()
        graph.apply(m)  # the mask must fit the graph and its budget
        self.fixed = m
        big = 20.0
        self.register_buffer("_e", torch.tensor([big if e in m.edges else -big for e in self.candidates]))
        self.register_buffer("_a", torch.tensor([big if a in m.agents else -big for a in self.agents]))
        self.register_buffer("_r", torch.tensor([big if k + 1 < m.rounds else -big for k in range(self.n_rounds)]))
        self.config = {"mask": m.to_json()}

    def logits(self, question: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._e, self._a, self._r


class IndependentLogits(EdgePolicy):
    """One free logit per candidate edge, agent and round (GPTSwarm / AgentPrune); all start at p = 0.5."""

    kind = "independent"

    def __init__(self, graph: AgentGraph) -> None:
        super().__init__(graph)
        self.edge = nn.Parameter(torch.zeros(len(self.candidates)))
        self.agent = nn.Parameter(torch.full((len(self.agents),), self.agent_init))
        self.round = nn.Parameter(torch.zeros(self.n_rounds))

    def logits(self, question: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.edge, self.agent, self.round


class _PairLogits(EdgePolicy):
    """Shared by the policies that score an edge from its two endpoints."""

    def _pair_index(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sp = torch.tensor([k == "spatial" for k in self._kind])
        tm = torch.tensor([k == "temporal" for k in self._kind])
        dc = torch.tensor([k == "decision" for k in self._kind])
        return sp, tm, dc

    def _edge_logits(self, s_mat: torch.Tensor, t_mat: torch.Tensor, d_vec: torch.Tensor) -> torch.Tensor:
        sp, tm, dc = self._pair_index()
        out = torch.zeros(len(self.candidates))
        src, dst = self._src, self._dst.clamp(min=0)
        out = torch.where(sp, s_mat[src, dst], out)
        out = torch.where(tm, t_mat[src, dst], out)
        return torch.where(dc, d_vec[src], out)


class LowRank(_PairLogits):
    """Spatial and temporal edge logits of rank ``rank`` (``U V^T``), with a nuclear-norm penalty."""

    kind = "lowrank"

    def __init__(self, graph: AgentGraph, rank: int = 2, nuclear: float = 1e-3, seed: int = 0) -> None:
        super().__init__(graph)
        n = len(self.agents)
        g = torch.Generator().manual_seed(seed)
        self.config = {"rank": rank, "nuclear": nuclear, "seed": seed}
        self.us = nn.Parameter(0.1 * torch.randn(n, rank, generator=g))
        self.vs = nn.Parameter(0.1 * torch.randn(n, rank, generator=g))
        self.ut = nn.Parameter(0.1 * torch.randn(n, rank, generator=g))
        self.vt = nn.Parameter(0.1 * torch.randn(n, rank, generator=g))
        self.dec = nn.Parameter(torch.zeros(n))
        self.bias = nn.Parameter(torch.zeros(2))  # spatial, temporal: lets U V^T keep one edge and drop the rest
        self.agent = nn.Parameter(torch.full((n,), self.agent_init))
        self.round = nn.Parameter(torch.zeros(self.n_rounds))
        self.nuclear = nuclear

    def logits(self, question: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.us @ self.vs.T + self.bias[0]
        t = self.ut @ self.vt.T + self.bias[1]
        return self._edge_logits(s, t, self.dec), self.agent, self.round

    def penalty(self) -> torch.Tensor:
        nuc = torch.linalg.matrix_norm(self.us @ self.vs.T, ord="nuc") + torch.linalg.matrix_norm(
            self.ut @ self.vt.T, ord="nuc")
        return self.nuclear * nuc


class GNNPolicy(_PairLogits):
    """A two-layer graph network over the agents, conditioned on the question (G-Designer / AGP style)."""

    kind = "gnn"
    default_lr = 0.05
    roles: torch.Tensor
    adj: torch.Tensor

    def __init__(self, graph: AgentGraph, dim: int = 32, hidden: int = 16, bound: float = 0.0, seed: int = 0) -> None:
        super().__init__(graph)
        n = len(self.agents)
        g = torch.Generator().manual_seed(seed)
        self.config = {"dim": dim, "hidden": hidden, "bound": bound, "seed": seed}
        self.bound = bound
        self.dim = dim
        roles = torch.stack([hash_embed(f"{a[0]} {a[1]} {a[2]}", dim) for a in self.signature["agents"]])
        self.register_buffer("roles", roles)
        adj = torch.eye(n)
        for e in self.candidates:
            if e.kind != "decision":
                i, j = self.agents.index(e.src), self.agents.index(e.dst)
                adj[i, j] = adj[j, i] = 1.0
        d = adj.sum(1).rsqrt()
        self.register_buffer("adj", d[:, None] * adj * d[None, :])

        def lin(i: int, o: int, scale: float = 1.0) -> nn.Parameter:
            return nn.Parameter(scale * torch.randn(i, o, generator=g) / math.sqrt(i))

        # Each layer adds the agent's own transform to its neighbours' (a plain GCN over a full mesh would give
        # every agent the same embedding).
        # A learned identity per agent (hashed role features alone are a weak signal for REINFORCE).
        self.ident = nn.Parameter(0.1 * torch.randn(n, dim, generator=g))
        self.w1, self.w1n = lin(3 * dim, hidden), lin(3 * dim, hidden)
        self.w2, self.w2n = lin(hidden, hidden), lin(hidden, hidden)
        self.ms, self.mt = lin(hidden, hidden, 0.1), lin(hidden, hidden, 0.1)
        self.wd, self.wa, self.wr = lin(hidden, 1, 0.1), lin(hidden, 1, 0.1), lin(hidden, max(1, self.n_rounds), 0.1)
        # spatial, temporal, decision, agent, round
        self.bias = nn.Parameter(torch.tensor([0.0, 0.0, 0.0, self.agent_init, 0.0]))

    def logits(self, question: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = hash_embed(question, self.dim).expand(len(self.agents), -1)
        x = torch.cat([self.roles, self.ident, q], dim=1)
        h = torch.relu(x @ self.w1 + self.adj @ x @ self.w1n)
        z = h @ self.w2 + self.adj @ h @ self.w2n
        s = z @ self.ms @ z.T + self.bias[0]
        t = z @ self.mt @ z.T + self.bias[1]
        d = (z @ self.wd).squeeze(1) + self.bias[2]
        a = (z @ self.wa).squeeze(1) + self.bias[3]
        r = (z.mean(0) @ self.wr)[: self.n_rounds] + self.bias[4]
        e = self._edge_logits(s, t, d)
        if self.bound:  # logits in (-bound, bound): shared weights cannot make every decision certain at once
            e, a, r = (self.bound * torch.tanh(v / self.bound) for v in (e, a, r))
        return e, a, r


POLICIES: dict[str, type[EdgePolicy]] = {"independent": IndependentLogits, "lowrank": LowRank, "gnn": GNNPolicy}


def load_policy(path: str | Path, graph: AgentGraph) -> EdgePolicy:
    """A saved policy, for ``graph`` (which must have the agents and edges it was trained for)."""
    p = Path(path)
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GraphError(f"no policy file at {p}") from None
    except Exception as exc:
        raise GraphError(f"{p} is not a tokenomy policy file (it does not load: {type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != "tokenomy-policy-1":
        raise GraphError(f"{p} is not a tokenomy policy file")
    kind = data.get("kind")
    if kind == "static":
        policy: EdgePolicy = StaticPolicy(graph, Mask.from_json(data["config"]["mask"]))
    elif kind in POLICIES:
        policy = POLICIES[kind](graph, **data.get("config", {}))
    else:
        raise GraphError(f"{p}: unknown policy kind {kind!r}")
    if data.get("signature") != graph.signature():
        saved = data.get("signature") or {}
        raise GraphError(f"{p} was trained for another graph (agents {[a[0] for a in saved.get('agents', [])]}, "
                         f"{len(saved.get('edges', []))} edges, {saved.get('rounds')} rounds); this graph has agents "
                         f"{graph.order}, {len(graph.edges())} edges, {graph.rounds} rounds")
    try:
        policy.load_state_dict(data["state"])
    except (RuntimeError, KeyError) as exc:
        raise GraphError(f"{p}: its weights do not fit a {kind} policy of this graph ({exc})") from exc
    return policy


# -- comparing masks ---------------------------------------------------------------------------------------------


def effective_items(graph: AgentGraph, mask: Mask) -> set[str]:
    """What a mask really runs: the agents that make a call and the edges that insert text (plus the rounds)."""
    sched = graph.apply(mask).schedule()
    items = {f"agent:{a}" for a in sched.agents}
    items |= {f"edge:{e}" for e, _ in sched.edge_uses()}
    items |= {f"round:{k}" for k in range(1, sched.rounds)}
    return items


def mask_f1(graph: AgentGraph, mask: Mask, target: Mask) -> float:
    """F1 of what ``mask`` runs against what ``target`` runs (agents, edges and rounds)."""
    got, want = effective_items(graph, mask), effective_items(graph, target)
    if not got and not want:
        return 1.0
    tp = len(got & want)
    if tp == 0:
        return 0.0
    precision, recall = tp / len(got), tp / len(want)
    return 2 * precision * recall / (precision + recall)
