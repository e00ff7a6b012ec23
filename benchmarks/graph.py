"""``tokenomy bench graph``: what a pruned communication graph spends against fair baselines (BENCHMARKS.md,
"graph").

* **simulator**: the ``Simulator.team()`` scenario (five simulated agents and a verifying solver, a known best
  mask), run through the real runtime on the scripted engine (tokens are UTF-8 bytes and follow the simulator's
  formula, which the bench checks on every topology). Presets (full mesh over two rounds, chain, star, layered,
  debate, each single agent) and the graphs pruned by each learned policy (trained 50 iterations by REINFORCE on
  questions disjoint from the evaluation ones), with the mask-recovery F1 of every iteration.
* **live**: a team of four agents on an embedded model (``LIVE_SPEC``, SmolLM2-135M-Instruct, unless --model
  says otherwise) answering reading questions from the seeded world, every token from the engine's usage; the
  pruned graph's policy is trained live on other questions and its training tokens are reported apart.

Accuracy differences against the mesh come with a 95% paired-bootstrap interval (non-inferior: its lower end is
at least -1.5 points).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tokenomy.agents import Agent
from tokenomy.benchmarks import plot
from tokenomy.graphs import AgentGraph, GraphTeam, Simulator
from tokenomy.graphs.policy import POLICIES, EdgePolicy, StaticPolicy, effective_items
from tokenomy.graphs.train import EvalReport, TeamTask, TrainConfig, TrainReport, evaluate, train_policy

from .commands import read_records
from .world import World

__all__ = ["GraphRecord", "run_graph_bench", "run_simulator", "run_live", "goals", "format_report", "live_tasks",
           "live_team", "paired_bootstrap", "bootstrap_interval", "plot_records", "load_records", "tasks_digest"]

NON_INFERIOR = -0.015


@dataclass
class GraphRecord:
    setting: str
    """``simulator`` or ``live``."""
    topology: str
    tokens: float
    """Mean prompt plus completion tokens per question."""
    accuracy: float
    calls: float
    questions: int
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    reduction: float | None = None
    """1 - tokens / the mesh's tokens."""
    diff_ci: tuple[float, float] | None = None
    """95% paired-bootstrap interval of (accuracy - the mesh's accuracy)."""
    train_tokens: int = 0
    train_runs: int = 0
    f1: float | None = None
    """Mask-recovery F1 of the final mask (simulator, learned policies)."""
    f1_at: int | None = None
    """The first iteration from which F1 >= 0.9 held."""
    f1_curve: list[float] = field(default_factory=list)
    mask: dict[str, Any] | None = None
    formula_ok: bool | None = None
    """Simulator: measured tokens equal the simulator's formula on the questions checked."""
    correct: list[bool] = field(default_factory=list, repr=False)
    """Per evaluation question, in order: kept in the JSON so that sittings can be paired (``load_records``)."""
    wall_s: float = 0.0
    model: str | None = None
    """The engine's spec (live rows)."""
    tasks_id: str | None = None
    """A digest of the evaluation questions and their answers: rows are paired only on the same questions."""
    train_config: dict[str, Any] | None = None
    """The learned policy's ``TrainConfig`` (live rows; the simulator's is in ``run_simulator``)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GraphRecord:
        """A record from its ``to_json``; an unknown key is a ``ValueError``."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        d = dict(data)
        if d.get("diff_ci") is not None:
            d["diff_ci"] = tuple(d["diff_ci"])
        return cls(**d)


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(a) - mean(b) over the same questions, by resampling questions."""
    import numpy as np

    x = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def bootstrap_interval(a: Sequence[bool], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of mean(a), by resampling questions."""
    import numpy as np

    x = np.asarray(a, dtype=float)
    if not len(x):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def tasks_digest(tasks: Sequence[TeamTask]) -> str:
    """What ``GraphRecord.tasks_id`` holds: a short digest of the questions and answers, in order."""
    text = json.dumps([[t.question, t.answer] for t in tasks])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _record(setting: str, topology: str, rep: EvalReport, wall_s: float, tasks: Sequence[TeamTask],
            model: str | None = None) -> GraphRecord:
    n = max(len(rep.correct), 1)
    return GraphRecord(setting, topology, rep.mean_tokens, rep.accuracy, rep.mean_calls, len(rep.correct),
                       prompt_tokens=(rep.usage.prompt_tokens or 0) / n,
                       completion_tokens=(rep.usage.completion_tokens or 0) / n, correct=list(rep.correct),
                       wall_s=wall_s, model=model, tasks_id=tasks_digest(tasks))


def _compare(records: list[GraphRecord]) -> None:
    """Each record's token reduction and paired accuracy interval against the mesh of its setting (none where
    that setting has no mesh, or the record was measured on other questions)."""
    for setting in dict.fromkeys(r.setting for r in records):
        rows = [r for r in records if r.setting == setting]
        mesh = next((r for r in rows if r.topology == "mesh"), None)
        for r in rows:
            r.reduction = r.diff_ci = None
            if mesh is None:
                continue
            r.reduction = (1 - r.tokens / mesh.tokens) if mesh.tokens else None
            if r is not mesh and len(r.correct) == len(mesh.correct) > 0 and r.tasks_id == mesh.tasks_id:
                r.diff_ci = paired_bootstrap(r.correct, mesh.correct)


def model_id(spec: str | None) -> str | None:
    """The model a spec names, without where it is served: ``openai:NAME@URL`` -> ``openai:NAME`` (sittings of
    one model on servers at other ports are one run); any other spec as it is."""
    if spec and spec.startswith("openai:") and "@" in spec:
        return spec.split("@", 1)[0]
    return spec


def load_records(paths: Sequence[str | Path]) -> list[GraphRecord]:
    """The records of several ``bench graph --json`` files (sittings on the same questions and model, each
    running some topologies) as one run: a later file's row of a setting and topology replaces an earlier one's,
    and every row is compared again with its setting's mesh. A ``ValueError`` names a file that cannot be read or
    a row measured on other questions or another model than the rows before it."""
    merged: dict[tuple[str, str], GraphRecord] = {}
    seen: dict[str, tuple[str | None, str | None, str]] = {}  # setting -> (model, tasks_id, file)
    for path in paths:
        for r in read_records(path, GraphRecord.from_json, "bench graph --json file"):
            if r.setting in seen:
                model, tasks_id, first = seen[r.setting]
                if (model_id(r.model), r.tasks_id) != (model_id(model), tasks_id):
                    what = "model" if model_id(r.model) != model_id(model) else "questions"
                    raise ValueError(f"{path}: the {r.setting} row {r.topology!r} was measured with another "
                                     f"{what} than {first}'s ({r.model or '?'} {r.tasks_id or '?'} against "
                                     f"{model or '?'} {tasks_id or '?'})")
            else:
                seen[r.setting] = (r.model, r.tasks_id, str(path))
            merged[(r.setting, r.topology)] = r
    order = ("mesh", "chain", "star", "layered", "debate", "single")  # the order one sitting runs them in
    out = sorted(merged.values(), key=lambda r: (r.setting != "simulator", r.topology not in order,
                                                 order.index(r.topology) if r.topology in order else 0))
    _compare(out)
    return out


# -- simulator -------------------------------------------------------------------------------------------------


def run_simulator(*, quick: bool = False, seed: int = 0, iterations: int = 50, questions: int = 0,
                  policies: Sequence[str] = ("independent", "lowrank", "gnn"),
                  progress: Callable[[str], None] = lambda m: None) -> list[GraphRecord]:
    """Presets, the known-best mask and each policy's pruned graph on ``questions`` evaluation questions
    (default 200, 100 with ``quick``)."""
    sim = Simulator.team(seed)
    eval_q = sim.questions(questions or (100 if quick else 200), "eval")
    train_q = sim.questions(64, "train")
    tasks = [TeamTask(q.question, q.answer) for q in eval_q]
    train = [TeamTask(q.question, q.answer) for q in train_q]
    engine = sim.engine()
    records: list[GraphRecord] = []

    def run(topology: str, graph: AgentGraph, policy: EdgePolicy | None = None) -> GraphRecord:
        t0 = time.perf_counter()
        team = GraphTeam(graph, engine, policy=policy)
        rec = _record("simulator", topology, evaluate(team, tasks, topology), time.perf_counter() - t0, tasks,
                      model="simulator")
        ok = True
        for t in tasks[:3]:  # the measured tokens must be the formula's
            real = graph.apply(policy.realize(graph, t.question).mask) if policy is not None else graph
            res = team.run(t.question)
            want = sim.tokens(real, t.question)
            total = res.total
            ok &= (total.prompt_tokens, total.completion_tokens, total.calls) == (
                want["prompt_tokens"], want["completion_tokens"], want["calls"])
        rec.formula_ok = ok
        progress(f"simulator {topology}: accuracy {rec.accuracy:.0%}, {rec.tokens:.0f} tokens/question")
        return rec

    presets: list[tuple[str, AgentGraph]] = [
        ("mesh", sim.graph("mesh", rounds=2)), ("chain", sim.graph("chain")), ("star", sim.graph("star")),
        ("layered", sim.graph("layered")), ("debate", sim.graph("debate", rounds=2))]
    for name, g in presets:
        records.append(run(name, g))
    singles = [run(f"single:{a.name}", sim.graph("single", agent=a.agent)) for a in sim.agents]
    best_single = max(singles, key=lambda r: (r.accuracy, -r.tokens))
    best_single.topology = "single"
    records.append(best_single)
    mesh = presets[0][1]
    oracle = sim.best_mask(mesh)
    rec = run("known-best mask", mesh, StaticPolicy(mesh, oracle))
    rec.mask = oracle.to_json()
    records.append(rec)
    team = GraphTeam(mesh, engine)
    for kind in policies:
        policy = POLICIES[kind](mesh)
        progress(f"simulator: training the {kind} policy ({iterations} iterations)")
        report = train_policy(policy, team, train, TrainConfig(iterations=iterations, lam=0.05, seed=seed),
                              oracle=oracle)
        rec = run(f"pruned:{kind}", mesh, policy)
        _add_training(rec, report)
        mask = policy.realize(mesh, tasks[0].question).mask
        rec.mask = mask.to_json()
        rec.f1 = report.history[-1].f1
        rec.f1_at = report.first_iteration_at(0.9)
        rec.f1_curve = [round(h.f1 or 0.0, 3) for h in report.history]
        records.append(rec)
    _compare(records)
    return records


def _add_training(rec: GraphRecord, report: TrainReport) -> None:
    rec.train_tokens = report.tokens
    rec.train_runs = report.runs


# -- live --------------------------------------------------------------------------------------------------------


_LIVE_ATTRS = {"population": "How many people live in {}?", "mayor": "Who is the mayor of {}?",
               "river": "Which river flows through {}?"}


def live_tasks(n: int, salt: str = "", seed: int = 0) -> list[TeamTask]:
    """Reading questions: a city's paragraph from the seeded world, and a question about it."""
    w = World(seed)
    cities = [e for e in w.entities.values() if e.type == "city"]
    rng = random.Random(f"graph-live-{seed}-{salt}")
    rng.shuffle(cities)
    attrs = list(_LIVE_ATTRS)
    return [TeamTask(f"{w.paragraph(e)} {_LIVE_ATTRS[attrs[i % 3]].format(e.name)}", str(e.facts[attrs[i % 3]]))
            for i, e in enumerate(cities[:n])]


def live_team() -> list[Agent]:
    """Four agents of the standard roles; short replies."""
    return [Agent(name="reader", role="worker", prompt="Find the answer in the text. Reply with the answer only.",
                  max_tokens=24),
            Agent(name="checker", role="worker", prompt="Check the answers you are given against the text. Reply "
                  "with the right answer only.", max_tokens=24),
            Agent(name="critic", role="critic", max_tokens=24),
            Agent(name="solver", role="solver", max_tokens=24)]


LIVE_SPEC = "embedded:smollm2-135m"  # the fast one, as measured in the README; the default embedded model is larger


LIVE_TOPOLOGIES = ("mesh", "chain", "star", "layered", "debate", "single", "pruned")


def run_live(*, quick: bool = False, spec: str | None = None, seed: int = 0, questions: int = 0,
             iterations: int = 0, engine: Any = None, topologies: Sequence[str] | None = None,
             on_record: Callable[[list[GraphRecord]], None] = lambda rs: None,
             progress: Callable[[str], None] = lambda m: None) -> list[GraphRecord]:
    """The presets and a live-trained pruned graph on ``LIVE_SPEC`` (or ``spec``): ``questions`` evaluation
    questions (default 12, 4 with ``quick``), the policy trained ``iterations`` times (default 24, 3 with
    ``quick``) on 2 questions x 2 rollouts, a quarter of the open edges closed every 8 iterations. ``engine``: one
    already loaded (else ``spec`` is loaded).
    ``topologies``: only these of ``LIVE_TOPOLOGIES`` (default all; the others are compared with the mesh, so a
    choice without it is compared only once joined with a sitting that ran it, ``load_records``).
    ``on_record``: called with the rows so far after each one (a run cut off keeps what it measured)."""
    from tokenomy.kernels.registry import load_engine

    wanted = set(topologies or LIVE_TOPOLOGIES)
    unknown = wanted - set(LIVE_TOPOLOGIES)
    if unknown:
        raise ValueError(f"unknown topologies {sorted(unknown)}; choose from {', '.join(LIVE_TOPOLOGIES)}")
    model = model_id(spec or (LIVE_SPEC if engine is None else None))
    engine = engine or load_engine(spec or LIVE_SPEC)
    tasks = live_tasks(questions or (4 if quick else 12), "eval", seed)
    train = live_tasks(4 if quick else 6, "train", seed + 1)
    agents = live_team()
    records: list[GraphRecord] = []

    def run(topology: str, graph: AgentGraph, policy: EdgePolicy | None = None) -> GraphRecord:
        t0 = time.perf_counter()
        rec = _record("live", topology, evaluate(GraphTeam(graph, engine, policy=policy), tasks, topology),
                      time.perf_counter() - t0, tasks, model)
        progress(f"live {topology}: accuracy {rec.accuracy:.0%}, {rec.tokens:.0f} tokens/question, "
                 f"{rec.wall_s:.0f} s")
        return rec

    def add(rec: GraphRecord) -> None:
        records.append(rec)
        _compare(records)
        on_record(records)

    mesh = AgentGraph.mesh(agents, rounds=2)
    for name, g in [("mesh", mesh), ("chain", AgentGraph.chain(agents)), ("star", AgentGraph.star(agents)),
                    ("layered", AgentGraph.layered(agents)), ("debate", AgentGraph.debate(agents, rounds=2)),
                    ("single", AgentGraph.single(agents[0]))]:
        if name not in wanted or (quick and topologies is None and name in ("layered", "debate")):
            continue
        add(run(name, g))
    if "pruned" in wanted:
        policy = POLICIES["independent"](mesh)
        # AgentPrune's schedule: every 8 iterations the lowest-scoring quarter of the open edges is closed. On the
        # simulator at this budget (2 questions x 2 rollouts) 10 iterations cut 72-73% of the mesh's tokens but kept
        # every agent, at 65-77% accuracy; 24 with the schedule cut 81-88% at the mesh's accuracy (a larger learning
        # rate, 0.3, cut more and lost over a third of the answers).
        cfg = TrainConfig(iterations=iterations or (3 if quick else 24), batch=2, rollouts=2, lam=0.5,
                          prune_every=8, seed=seed)
        progress(f"live: training the independent policy ({cfg.iterations} iterations x {cfg.batch} questions x "
                 f"{cfg.rollouts} rollouts, a quarter of the open edges closed every {cfg.prune_every})")
        report = train_policy(policy, GraphTeam(mesh, engine), train, cfg)
        rec = run("pruned:independent", mesh, policy)
        _add_training(rec, report)
        rec.train_config = asdict(cfg)
        rec.mask = policy.realize(mesh, tasks[0].question).mask.to_json()
        add(rec)
    return records


def run_graph_bench(*, quick: bool = False, live: bool = True, spec: str | None = None, seed: int = 0,
                    iterations: int = 50, questions: int = 0, simulator: bool = True, live_questions: int = 0,
                    live_iterations: int = 0, topologies: Sequence[str] | None = None,
                    on_record: Callable[[list[GraphRecord]], None] = lambda rs: None,
                    progress: Callable[[str], None] = lambda m: None) -> list[GraphRecord]:
    """The simulator's rows, then the live ones; ``on_record`` gets all the rows so far after the simulator and
    after each live row."""
    records = (run_simulator(quick=quick, seed=seed, iterations=iterations, questions=questions, progress=progress)
               if simulator else [])
    if simulator:
        on_record(records)
    if live:
        sim = list(records)
        records = sim + run_live(quick=quick, spec=spec, seed=seed, questions=live_questions,
                                 iterations=live_iterations, topologies=topologies,
                                 on_record=lambda rows: on_record(sim + rows), progress=progress)
    return records


# -- goals and the report -------------------------------------------------------------------------------------------


def _pruned(records: Sequence[GraphRecord], setting: str) -> list[GraphRecord]:
    return [r for r in records if r.setting == setting and r.topology.startswith("pruned:")]


def goals(records: Sequence[GraphRecord]) -> list[tuple[str, str, bool]]:
    out: list[tuple[str, str, bool]] = []
    for setting in ("simulator", "live"):
        rows = [r for r in records if r.setting == setting]
        pruned = _pruned(rows, setting)
        if not pruned:
            continue
        p = max(pruned, key=lambda r: (r.diff_ci is not None and r.diff_ci[0] >= NON_INFERIOR, r.reduction or 0))
        ci = p.diff_ci or (0.0, 0.0)
        non_inf = ci[0] >= NON_INFERIOR
        red = p.reduction or 0.0
        out.append((f"{setting}: >= 80% fewer tokens than the mesh at non-inferior accuracy ({p.topology})",
                    f"{red:.1%} fewer; accuracy {p.accuracy:.1%}, diff vs mesh CI [{ci[0]:+.1%}, {ci[1]:+.1%}]",
                    red >= 0.8 and non_inf))
        out.append((f"{setting}: >= 90% fewer with agent and round pruning ({p.topology})", f"{red:.1%} fewer",
                    red >= 0.9 and non_inf))
        single = next((r for r in rows if r.topology == "single"), None)
        statics = [r for r in rows if r.topology in ("chain", "star")]
        best_static = max(statics, key=lambda r: (r.accuracy, -r.tokens), default=None)
        if single is not None and best_static is not None:
            beats_single = p.accuracy > single.accuracy
            beats_static = p.accuracy >= best_static.accuracy and p.tokens <= best_static.tokens and (
                p.accuracy > best_static.accuracy or p.tokens < best_static.tokens)
            out.append((f"{setting}: beats the single agent and the best static chain/star at <= tokens",
                        f"{p.accuracy:.1%} @ {p.tokens:.0f} tok vs single {single.accuracy:.1%} @ {single.tokens:.0f}, "
                        f"{best_static.topology} {best_static.accuracy:.1%} @ {best_static.tokens:.0f}",
                        beats_single and beats_static))
    sim = [r for r in _pruned(records, "simulator") if r.f1 is not None]
    if sim:
        best = min(sim, key=lambda r: r.f1_at if r.f1_at is not None else 10**9)
        at = ", ".join(f"{r.topology.split(':')[1]} {'never' if r.f1_at is None else r.f1_at} (final {r.f1:.2f})"
                       for r in sim)
        out.append(("simulator: mask-recovery F1 >= 0.9 within 50 iterations", at,
                    best.f1_at is not None and best.f1_at <= 50))
    formula = [r.formula_ok for r in records if r.formula_ok is not None]
    if formula:
        out.append(("simulator: measured tokens equal the formula on every topology",
                    f"{sum(formula)}/{len(formula)} topologies", all(formula)))
    return out


def format_report(records: Sequence[GraphRecord]) -> str:
    lines: list[str] = []
    for setting, title in (("simulator", "simulator (scripted engine, tokens = UTF-8 bytes; 5 agents + solver)"),
                           ("live", "live ({}, tokens from the engine's usage; 4 agents)")):
        rows = [r for r in records if r.setting == setting]
        if not rows:
            continue
        lines.append(f"{title.format(rows[0].model or 'a model')}, {rows[0].questions} questions:")
        lines.append(f"  {'topology':<22} {'tokens':>8} {'prompt':>8} {'compl':>6} {'calls':>5} {'accuracy':>8} "
                     f"{'vs mesh':>8} {'acc diff 95% CI':>17} {'train tok':>10} {'F1':>5} {'F1>=.9 at':>9}")
        for r in rows:
            ci = f"[{r.diff_ci[0]:+.1%},{r.diff_ci[1]:+.1%}]" if r.diff_ci else "-"
            red = "-" if r.reduction is None else "0.0%" if abs(r.reduction) < 5e-4 else f"{-r.reduction:+.1%}"
            f1 = f"{r.f1:.2f}" if r.f1 is not None else "-"
            at = "-" if r.f1 is None else ("never" if r.f1_at is None else str(r.f1_at))
            train = str(r.train_tokens) if r.train_tokens else "-"
            lines.append(f"  {r.topology:<22} {r.tokens:>8.0f} {r.prompt_tokens:>8.0f} {r.completion_tokens:>6.0f} "
                         f"{r.calls:>5.1f} {r.accuracy:>8.1%} {red:>8} {ci:>17} {train:>10} {f1:>5} {at:>9}")
        lines.append("")
    lines.append("goals (BENCHMARKS.md, graph):")
    for goal, measured, met in goals(records):
        lines.append(f"  [{'met' if met else 'MISSED'}] {goal}: {measured}")
    return "\n".join(lines)


def plot_records(records: Sequence[GraphRecord], path: str | Path) -> Path:
    """A PNG of accuracy against tokens per question (log scale), one point per topology, the pruned graphs
    highlighted; one panel per setting present (simulator, live)."""
    panels = {}
    for setting in ("simulator", "live"):
        rows = [r for r in records if r.setting == setting]
        if rows:
            panels[f"{setting} ({rows[0].questions} questions)"] = [(r.topology, r.tokens, r.accuracy) for r in rows]
    return plot.scatter(panels, path, title="graph: accuracy against tokens per question, per topology",
                        xlabel="tokens per question (prompt + completion)", ylabel="accuracy", logx=True,
                        highlight={r.topology for r in records if r.topology.startswith("pruned:")},
                        highlight_label="pruned")


def effective_summary(graph: AgentGraph, record: GraphRecord) -> list[str]:
    """The items (agents, edges, rounds) a record's mask runs, for the JSON."""
    from tokenomy.graphs import Mask

    return sorted(effective_items(graph, Mask.from_json(record.mask))) if record.mask else []
