"""``tokenomy bench collab``: long/short collaboration, routers, budgets and early-stopping sampling on a seeded
difficulty ladder, against the controls of BENCHMARKS.md "collab".

1. **Calibration**: both models answer a few items of every (family, level) of the ladder directly (few-shot);
   the levels where both score between 20% and 80% are kept (if none, the levels where the long model does,
   and the report says so; if still none, every level).
2. **Policies and controls** run on the kept levels' test items with every call counted per model (prefill,
   cached, decode, discarded tokens) and FLOPs (2 x (non-embedding parameters + d x V) per computed token).
   Controls: the long model alone, the short one alone, the long model thinking (its long-thought mode), the
   long model capped at the best policy's mean spend, a random router at each policy's escalation rate and an
   oracle router (both computed from the two models' own answers). Each policy's accuracy is compared with the
   long model's on the same items by a paired bootstrap.
3. **Sampling**: a pool of ``k`` samples per item from the short model, stored (``--record``) and replayed
   (``--replay``, no model) to score self-consistency@k, ESC, Adaptive-Consistency and short-m@k.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokenomy.agents.budget import EntropyRouter, PlanAndBudget, ProbeRouter, TaleBudget, ThinkingCap, Tier
from tokenomy.agents.collab import (
    AlternatingTurns,
    Consensus,
    LongOnly,
    PlanExpand,
    SentenceLead,
    ShortOnly,
    StepRoute,
    ThoughtInject,
)
from tokenomy.agents.consistency import SelfConsistency
from tokenomy.agents.policy import Format, Policy
from tokenomy.agents.replay import replay
from tokenomy.agents.sampling import Sample
from tokenomy.agents.step_router import LearnedStepRoute
from tokenomy.agents.stopping import ESC, AdaptiveConsistency, FixedN, ShortMK, StoppingRule
from tokenomy.benchmarks import plot
from tokenomy.kernels.engine import Engine

from .graph import paired_bootstrap
from .ladder import FAMILIES, LEVELS, Item, check, level_items, normalizer, problem

__all__ = ["CollabRecord", "CollabReport", "run_collab_bench", "replay_sampling", "goals", "format_report",
           "plot_records"]

LONG_SPEC = "embedded:qwen2.5-coder-1.5b"
CAP_GRID = (8, 16, 32, 64, 128, 256)
SHORT_SPEC = "embedded:qwen2.5-coder-0.5b"
"""The pair: one tokenizer and chat template, the long model the stronger one (the 270M/135M pair it replaced had
a long model weaker than the short one)."""
Progress = Callable[[str], None]


@dataclass
class CollabRecord:
    """One policy (or control, or sampling rule) on the evaluation items."""

    policy: str
    kind: str
    """``control``, ``policy``, ``router`` (computed from the controls' answers) or ``sampling``."""
    accuracy: float
    ci_low: float | None
    ci_high: float | None
    """95% paired-bootstrap interval of accuracy minus the long model's (not for sampling rules)."""
    tokens: float
    """Mean tokens per item, every model, prompt and completion (sampling: completion tokens charged)."""
    flops: float | None
    """Mean FLOPs per item."""
    samples: float = 1.0
    n: int = 0
    calls: float = 0.0
    escalation: float = 0.0
    flops_vs_long: float | None = None
    random_router_accuracy: float | None = None
    """A router that escalates the same share of items at random (from the two models' own answers)."""
    capped_long_accuracy: float | None = None
    """The long model capped at this policy's mean spend (rounded up to ``CAP_GRID``)."""
    discarded: float = 0.0
    by_model: dict[str, dict[str, float]] = field(default_factory=dict)
    correct: list[bool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CollabReport:
    records: list[CollabRecord]
    scores: dict[str, dict[str, float]]
    """Calibration accuracy per ``family-level`` per model."""
    kept: list[str]
    note: str
    long: str
    short: str
    training: dict[str, Any] = field(default_factory=dict)
    """What the trained routers learnt from, and what their training data cost (the learned step router's rows,
    long-pays rows, training accuracy and both models' tokens and FLOPs)."""


def _key(family: str, level: int) -> str:
    return f"{family}-{level}"


def _direct_correct(engine: Engine, items: Sequence[Item]) -> list[bool]:
    fmt = Format()
    out = []
    for it in items:
        p = problem(it)
        c = engine.generate(fmt.direct(p), max_tokens=16, stop=p.stop)
        out.append(check(it, c.text))
    return out


def calibrate(long: Engine, short: Engine, n: int, seed: int, progress: Progress,
              families: Sequence[str] = FAMILIES, levels: Sequence[int] = LEVELS) -> dict[str, dict[str, float]]:
    """Direct few-shot accuracy of both models on ``n`` dev items of every (family, level), and ``chance``: what
    always giving the level's most common gold answer would score on them (50% on coin flips)."""
    scores: dict[str, dict[str, float]] = {}
    for fam in families:
        for lvl in levels:
            items = level_items(fam, lvl, n=n, seed=seed, split="dev")
            chance = Counter(it.answer for it in items).most_common(1)[0][1] / n
            s = scores[_key(fam, lvl)] = {
                "long": sum(_direct_correct(long, items)) / n,
                "short": sum(_direct_correct(short, items)) / n,
                "chance": chance,
            }
            progress(f"calibrate {fam}-{lvl}: long {s['long']:.2f} short {s['short']:.2f} chance {chance:.2f}")
    return scores


def keep(scores: dict[str, dict[str, float]], lo: float = 0.2, hi: float = 0.8) -> tuple[list[str], str]:
    """The levels to evaluate on: where both models score in [lo, hi] and above chance (a constant answer);
    failing that, where the long model does; failing that, every level. The note says which rule applied."""
    def fits(s: dict[str, float], model: str) -> bool:
        return lo <= s[model] <= hi and s[model] > s.get("chance", 0.0)

    both = [k for k, s in scores.items() if fits(s, "long") and fits(s, "short")]
    if both:
        return both, f"{len(both)} levels where both models score in [{lo:.0%}, {hi:.0%}] and above chance"
    long_only = [k for k, s in scores.items() if fits(s, "long")]
    if long_only:
        return long_only, (f"no level has both models in [{lo:.0%}, {hi:.0%}] and above chance: kept the "
                           f"{len(long_only)} where the long model is")
    return list(scores), (f"no level has the long model in [{lo:.0%}, {hi:.0%}] and above chance: every level kept "
                          f"(accuracies here are near the floor)")


def _items(kept: Sequence[str], n: int, seed: int) -> list[Item]:
    """``n`` test items spread over the kept levels in turn."""
    per: dict[str, list[Item]] = {}
    for k in kept:
        fam, _, lvl = k.rpartition("-")
        per[k] = level_items(fam, int(lvl), n=max(1, -(-n // len(kept))), seed=seed, split="test")
    out: list[Item] = []
    i = 0
    while len(out) < n and any(per.values()):
        k = kept[i % len(kept)]
        if per[k]:
            out.append(per[k].pop(0))
        i += 1
    return out


def _evaluate(name: str, kind: str, policy: Policy, items: Sequence[Item], progress: Progress) -> CollabRecord:
    t0 = time.perf_counter()
    correct: list[bool] = []
    tokens = flops = calls = escalated = discarded = 0.0
    flops_known = True
    by_model: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for it in items:
        res = policy.run(problem(it))
        correct.append(check(it, res.text))
        tokens += res.tokens
        f = res.flops
        flops_known = flops_known and f is not None
        flops += f or 0.0
        calls += res.usage.calls
        escalated += res.escalated
        for role, cost in res.ledger.models.items():
            d = by_model.setdefault(role, {"prefill": 0.0, "cached": 0.0, "decode": 0.0, "discarded": 0.0})
            d["prefill"] += cost.prefill_tokens
            d["cached"] += cost.cached_tokens
            d["decode"] += cost.decode_tokens
            d["discarded"] += cost.discarded_tokens
            discarded += cost.discarded_tokens
        notes += [n for n in res.notes if n not in notes][:3]
    n = max(len(items), 1)
    for d in by_model.values():
        for k in d:
            d[k] /= n
    rec = CollabRecord(name, kind, sum(correct) / n, None, None, tokens / n, flops / n if flops_known else None,
                       n=len(items), calls=calls / n, escalation=escalated / n, discarded=discarded / n,
                       by_model=by_model, correct=correct, notes=notes[:5], wall_s=time.perf_counter() - t0)
    progress(f"{name}: accuracy {rec.accuracy:.2f}, {rec.tokens:.0f} tokens, escalation {rec.escalation:.2f} "
             f"({rec.wall_s:.0f} s)")
    return rec


def _policies(long: Engine, short: Engine, quick: bool, train: Sequence[Item], progress: Progress,
              training: dict[str, Any] | None = None, wanted: Sequence[str] | None = None
              ) -> list[tuple[str, Policy]]:
    think = 24 if quick else 48
    out: list[tuple[str, Policy]] = [
        ("consensus", Consensus(long, short, think=think, short_think=think // 2)),
        ("step-route", StepRoute(long, short, max_steps=2 if quick else 4, step_tokens=16)),
        ("thought-inject", ThoughtInject(long, short, steps_tokens=think, think=think)),
        ("plan-expand", PlanExpand(long, short, plan_tokens=think // 2, expand_tokens=think)),
        ("sentence-lead", SentenceLead(long, short, lead=3, p=0.5, max_sentences=2 if quick else 4,
                                       sentence_tokens=16)),
        ("alternating", AlternatingTurns(long, short, max_turns=2, turn_tokens=think // 2)),
        ("tale(long)", TaleBudget(long, high=think)),
        ("plan-and-budget(long)", PlanAndBudget(long, budget=think, schedule="cosine")),
        ("thinking-cap(long)", ThinkingCap(long, cap=think // 2)),
    ]
    # The routers learn from the user's own traces: the train split, answered by both models directly.
    router = EntropyRouter(long, short)
    probe = ProbeRouter(long, short, tiers=[Tier("easy", "short"), Tier("hard", "long")])
    if train:
        probs = [problem(it) for it in train]
        short_ok = _direct_correct(short, train)
        rate = 1 - sum(short_ok) / len(short_ok)
        router.calibrate(probs, min(max(rate, 0.0), 1.0))
        probe.fit(probs, [0 if ok else 1 for ok in short_ok])
        progress(f"routers trained on {len(train)} items (short right on {sum(short_ok)}; escalation rate "
                 f"{rate:.2f})")
    out += [("entropy-router", router), ("probe-router", probe)]
    # The learned step router: both models write each step of the train items, each version rolled out and checked.
    if short.capabilities.logprobs and (wanted is None or "learned-step-route" in wanted):
        learned = LearnedStepRoute(long, short, max_steps=2 if quick else 4, step_tokens=16)
        if train:
            rows, cost = learned.collect([problem(it) for it in train],
                                         [lambda text, it=it: check(it, text) for it in train])
            if rows:
                fit = learned.fit(rows, cost=cost).to_dict()
            else:  # the short model wrote no step: untrained, every step goes to the long model
                fit = {"rows": 0, "positives": 0, "accuracy": None, "threshold": learned.threshold,
                       "cost": cost.to_dict()}
            if training is not None:
                training["learned-step-route"] = fit
            progress(f"learned step router: {fit['rows']} steps of {len(train)} items, the long model paid on "
                     f"{fit['positives']}; the data cost {cost.tokens} tokens")
        out.append(("learned-step-route", learned))
    return out


def run_collab_bench(*, quick: bool = False, long_spec: str | None = None, short_spec: str | None = None,
                     seed: int = 0, items: int = 0, calibration: int = 0, samples: int = 16,
                     record: str | None = None, long: Engine | None = None, short: Engine | None = None,
                     policies: Sequence[str] | None = None, families: Sequence[str] = FAMILIES,
                     levels: Sequence[int] = LEVELS, progress: Progress = lambda m: None) -> CollabReport:
    """Run the benchmark; see the module docstring. ``long``/``short``: engines already loaded; ``policies``:
    run only these (the controls always run)."""
    from tokenomy.kernels.registry import load_engine

    long = long or load_engine(long_spec or LONG_SPEC)
    short = short or load_engine(short_spec or SHORT_SPEC)
    scores = calibrate(long, short, calibration or (4 if quick else 10), seed, progress, families, levels)
    kept, note = keep(scores)
    progress(note)
    evals = _items(kept, items or (8 if quick else 40), seed)
    train = _items(kept, 8 if quick else 20, seed + 1)
    records: list[CollabRecord] = []
    think = 24 if quick else 48
    controls: list[tuple[str, Policy]] = [
        ("long", LongOnly(long, short)),
        ("short", ShortOnly(long, short)),
        ("long-think", LongOnly(long, short, think=think)),
    ]
    for name, pol in controls:
        records.append(_evaluate(name, "control", pol, evals, progress))
    base, low = records[0], records[1]
    training: dict[str, Any] = {}
    for name, pol in _policies(long, short, quick, train, progress, training, policies):
        if policies is not None and name not in policies:
            continue
        records.append(_evaluate(name, "policy", pol, evals, progress))
    # The oracle router: the short model where it is right, else the long one (from their own answers).
    rng = random.Random(seed)
    oracle = [s or lg for s, lg in zip(low.correct, base.correct, strict=True)]
    esc = [not s for s in low.correct]
    n = len(evals)
    records.append(CollabRecord(
        "oracle-router", "router", sum(oracle) / max(n, 1), None, None,
        sum(low.tokens if not e else base.tokens for e in esc) / max(n, 1) if n else 0.0,
        _mix(low.flops, base.flops, sum(esc) / max(n, 1)), n=n, escalation=sum(esc) / max(n, 1), correct=oracle))
    for r in records:
        if r.kind == "policy":
            picks = [rng.random() < r.escalation for _ in range(n)]
            r.random_router_accuracy = sum(lg if p else s for p, s, lg in zip(picks, low.correct, base.correct,
                                                                               strict=True)) / max(n, 1)
    # The long model capped at each policy's mean spend (decode tokens of both models, rounded up to a grid so
    # that policies of similar spend share one run of the control).
    capped: dict[int, CollabRecord] = {}
    for r in [r for r in records if r.kind == "policy"]:
        spend = sum(d.get("decode", 0.0) for d in r.by_model.values())
        cap = next((c for c in CAP_GRID if c >= spend), CAP_GRID[-1])
        if cap not in capped:
            pol = LongOnly(long, short, think=max(cap - 8, 0), answer_tokens=min(16, cap))
            capped[cap] = _evaluate(f"long-capped({cap})", "control", pol, evals, progress)
        r.capped_long_accuracy = capped[cap].accuracy
        r.notes.insert(0, f"capped long: {capped[cap].policy}")
    records += [capped[c] for c in sorted(capped)]
    # Sampling: a pool per item from the short model, replayed under each stopping rule.
    sc = SelfConsistency(short, FixedN(samples), normalizer=lambda t: t, temperature=0.7, max_tokens=16,
                         stop=("\n",), seed=seed)
    pools: list[list[Sample]] = []
    for it in evals:
        norm = normalizer(it.family)
        pool = sc.sample(Format().direct(problem(it)), samples)
        pools.append([Sample(s.text, norm(s.text), s.completion_tokens, s.prompt_tokens, s.cached_prompt_tokens,
                             s.seed) for s in pool])
    progress(f"sampled {samples} x {len(evals)} from the short model")
    records += replay_sampling(pools, [it.answer for it in evals], samples, seed)
    # Routing rules replayed on stored per-item outcomes: the short model's surprisal decides who answers.
    router = EntropyRouter(long, short)
    surprise = [router.uncertainty(problem(it)) for it in evals]
    outcomes = {"short_correct": low.correct, "long_correct": base.correct, "surprisal": surprise,
                "short_flops": low.flops, "long_flops": base.flops, "short_tokens": low.tokens,
                "long_tokens": base.tokens}
    records += replay_routing(outcomes)
    if record:  # what --replay scores again without a model
        Path(record).write_text(json.dumps({"items": [asdict(it) for it in evals], "routing": outcomes,
                                            "pools": [[s.to_dict() for s in p] for p in pools]}))
    for r in records:
        if r.kind in ("policy", "control", "router") and r is not base and len(r.correct) == len(base.correct):
            r.ci_low, r.ci_high = paired_bootstrap(r.correct, base.correct, seed=seed)
        if r.kind != "sampling" and r.flops is not None and base.flops:
            r.flops_vs_long = r.flops / base.flops
    return CollabReport(records, scores, kept, note, long.spec, short.spec, training)


def _mix(a: float | None, b: float | None, rate: float) -> float | None:
    return None if a is None or b is None else (1 - rate) * a + rate * b


def replay_sampling(pools: Sequence[Sequence[Sample]], gold: Sequence[str], k: int = 16, seed: int = 0,
                    shuffles: int = 50) -> list[CollabRecord]:
    """Score self-consistency@k and the early-stopping rules on stored pools (no model)."""
    rules: list[StoppingRule] = [FixedN(k), ESC(window=4, max_samples=k), ESC(window=5, max_samples=k),
                                 AdaptiveConsistency(threshold=0.95, max_samples=k), ShortMK(m=2, k=4),
                                 ShortMK(m=3, k=min(8, k)), FixedN(1)]
    out: list[CollabRecord] = []
    reports = [replay(rule, pools, list(gold), shuffles=shuffles, seed=seed) for rule in rules]
    base = reports[0]
    for rep in reports:
        out.append(CollabRecord(rep.rule, "sampling", rep.accuracy or 0.0, None, None, rep.mean_tokens, None,
                                samples=rep.mean_samples, n=len(pools),
                                notes=[f"agreement with the pool's majority {rep.agreement:.3f}",
                                       f"{rep.mean_samples / k:.0%} of the samples of {base.rule}"]))
    return out


def replay_routing(outcomes: dict[str, Any], rates: Sequence[float] = (0.25, 0.5, 0.75)) -> list[CollabRecord]:
    """Entropy routing at several escalation rates, scored on stored outcomes (the short and the long model's
    correctness and the short model's surprisal per item; cost: the short call, plus the long one if escalated)."""
    s_ok, l_ok, sur = outcomes["short_correct"], outcomes["long_correct"], outcomes["surprisal"]
    n = len(sur)
    out = []
    for rate in rates:
        k = round(rate * n)
        order = sorted(range(n), key=lambda i: -sur[i])[:k]
        up = set(order)
        correct = [l_ok[i] if i in up else s_ok[i] for i in range(n)]
        flops = None
        if outcomes.get("short_flops") is not None and outcomes.get("long_flops") is not None:
            flops = outcomes["short_flops"] + outcomes["long_flops"] * k / max(n, 1)
        tokens = outcomes["short_tokens"] + outcomes["long_tokens"] * k / max(n, 1)
        out.append(CollabRecord(f"entropy-replay@{rate:.2f}", "router", sum(correct) / max(n, 1), None, None,
                                tokens, flops, n=n, escalation=k / max(n, 1), correct=correct))
    return out


def load_record(path: str) -> tuple[list[list[Sample]], list[str], dict[str, Any]]:
    """The pools, gold answers and routing outcomes a run stored with ``record=``."""
    from tokenomy.errors import UserError

    try:
        data = json.loads(Path(path).read_text())
        pools = [[Sample.from_dict(d) for d in p] for p in data["pools"]]
        return pools, [it["answer"] for it in data["items"]], dict(data.get("routing") or {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a record of tokenomy bench collab: {exc}") from exc


def goals(report: CollabReport) -> list[tuple[str, str, bool]]:
    recs = report.records
    base = next(r for r in recs if r.policy == "long")
    pols = [r for r in recs if r.kind == "policy"]
    fine = [r for r in pols if r.ci_low is not None and r.ci_low >= -0.01 and r.flops_vs_long is not None]
    cheap = min(fine, key=lambda r: r.flops_vs_long or 0.0) if fine else None
    out = []
    if cheap is not None:
        out.append(("cost at long-model accuracy (non-inferior within 1 point, paired 95% CI) <= 35% of its FLOPs",
                    f"{cheap.policy}: {cheap.accuracy:.2f} vs {base.accuracy:.2f}, CI [{cheap.ci_low:+.2f}, "
                    f"{cheap.ci_high:+.2f}], {cheap.flops_vs_long:.0%} of the long model's FLOPs",
                    (cheap.flops_vs_long or 1.0) <= 0.35))
    else:
        best = max(pols, key=lambda r: r.accuracy) if pols else None
        out.append(("cost at long-model accuracy (non-inferior within 1 point, paired 95% CI) <= 35% of its FLOPs",
                    "no policy is non-inferior to the long model" + (
                        f" (best {best.policy}: {best.accuracy:.2f} vs {base.accuracy:.2f})" if best else ""), False))
    samp = [r for r in recs if r.kind == "sampling"]
    if samp:
        sc = samp[0]
        ok = [r for r in samp[1:] if r.accuracy >= sc.accuracy - 0.01]
        fewest = min(ok, key=lambda r: r.samples) if ok else None
        out.append((f"samples to match {sc.policy} <= 30%",
                    f"{fewest.policy}: {fewest.samples:.1f} samples ({fewest.samples / sc.samples:.0%}), accuracy "
                    f"{fewest.accuracy:.3f} vs {sc.accuracy:.3f}" if fewest else "no rule matches its accuracy",
                    bool(fewest and fewest.samples <= 0.3 * sc.samples)))
    return out


def plot_records(records: Sequence[CollabRecord], path: str | Path) -> Path:
    """A PNG of accuracy against cost per item (log scale), one point per record, the controls highlighted:
    policies, controls and routers against FLOPs (tokens where a record has no FLOPs), and the sampling rules
    in a panel of their own against samples per item. ``records``: a report's, or those ``--replay`` scores."""
    main = [r for r in records if r.kind != "sampling"]
    sampling = [r for r in records if r.kind == "sampling"]
    flops = bool(main) and all(r.flops is not None for r in main)
    panels: dict[str, list[tuple[str, float, float]]] = {}
    xlabels = []
    if main or not sampling:
        panels["policies, controls and routers"] = [(r.policy, (r.flops or 0.0) if flops else r.tokens, r.accuracy)
                                                    for r in main]
        xlabels.append("FLOPs per item" if flops else "tokens per item (prompt + completion)")
    if sampling:
        panels["sampling rules (short model)"] = [(r.policy, r.samples, r.accuracy) for r in sampling]
        xlabels.append("samples per item")
    return plot.scatter(panels, path, title="collab: accuracy against cost per item", xlabel=xlabels,
                        ylabel="accuracy", logx=True, highlight={r.policy for r in main if r.kind == "control"},
                        highlight_label="controls")


def format_report(report: CollabReport) -> str:
    lines = [f"long = {report.long}, short = {report.short}; {report.note}", ""]
    cal = "  ".join(f"{k}: L {v['long']:.2f} S {v['short']:.2f} C {v.get('chance', 0):.2f}"
                    for k, v in report.scores.items())
    lines += ["calibration (direct, dev items): " + cal, ""]
    head = (f"{'policy':<24} {'kind':<8} {'acc':>5} {'CI vs long':>15} {'tokens':>7} {'FLOPs':>9} {'vs L':>6} "
            f"{'esc':>5} {'rand@esc':>8} {'capped L':>8} {'samples':>7}")
    lines += [head, "-" * len(head)]
    for r in report.records:
        ci = f"[{r.ci_low:+.2f},{r.ci_high:+.2f}]" if r.ci_low is not None and r.ci_high is not None else "-"
        fl = f"{r.flops / 1e9:.1f}G" if r.flops is not None else "-"
        vs = f"{r.flops_vs_long:.0%}" if r.flops_vs_long is not None else "-"
        rr = f"{r.random_router_accuracy:.2f}" if r.random_router_accuracy is not None else "-"
        cl = f"{r.capped_long_accuracy:.2f}" if r.capped_long_accuracy is not None else "-"
        lines.append(f"{r.policy:<24} {r.kind:<8} {r.accuracy:>5.2f} {ci:>15} {r.tokens:>7.0f} {fl:>9} {vs:>6} "
                     f"{r.escalation:>5.2f} {rr:>8} {cl:>8} {r.samples:>7.1f}")
    lines += ["tokens: per item, prompt + completion of every model (sampling rows: completion tokens charged); "
              "FLOPs count computed tokens only (cached prompt tokens cost none); CI: accuracy minus the long "
              "model's, paired bootstrap; rand@esc: a random router at the policy's escalation rate;",
              "capped L: the long model capped at the policy's mean decode spend"]
    for name, fit in report.training.items():
        cost = fit.get("cost", {})
        acc = "-" if fit.get("accuracy") is None else f"{fit['accuracy']:.2f}"
        lines.append(f"{name} trained on {fit['rows']} steps ({fit['positives']} where the long model paid), "
                     f"training accuracy {acc}, threshold {fit['threshold']:.2f}; the data cost "
                     f"{cost.get('tokens', 0)} tokens, {(cost.get('flops') or 0) / 1e9:.1f} GFLOPs")
    lines += ["", "goals (BENCHMARKS.md collab):"]
    for g, m, ok in goals(report):
        lines.append(f"  [{'met' if ok else 'MISSED'}] {g}: {m}")
    return "\n".join(lines)
