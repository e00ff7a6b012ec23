"""``tokenomy bench batch``: questions per minute of ``tokenomy batch`` with 1, 2 and 4 questions at once against
one engine, and where the time goes.

The questions are the held-out prose set's (``tests/prose_heldout``: a corpus no one tuned the tools to), answered
by ``rewoo`` with the corpus tools. The engine is one real ``vllm serve`` (started here; ``--server URL`` to use
one already running) through the ``openai:`` engine, which serves concurrent requests together; with
``--model embedded`` it is the embedded engine behind one shared ``Worker`` instead (on a CPU it decodes one
request after another, so concurrency buys nothing there: the rows say so).

Per level: wall time, questions per minute and the speedup over one at a time, accuracy (the one answer
normaliser), usage, and the time split: what the questions spent waiting for model calls and in tools, summed
over questions (at concurrency N the sum exceeds the wall time by the overlap), and the rest (the strategy's own
work, parsing and checkpoints). Each level starts from an empty output and no checkpoints.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["BatchRecord", "run_batch_bench", "format_table", "goals", "LEVELS"]

LEVELS = (1, 2, 4)
ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "prose_heldout" / "corpus"
QUESTIONS = ROOT / "tests" / "prose_heldout" / "questions.jsonl"


@dataclass
class BatchRecord:
    concurrency: int
    questions: int
    answered: int
    correct: int
    wall_s: float
    per_minute: float
    speedup: float
    model_s: float
    tool_s: float
    prompt_tokens: int
    completion_tokens: int
    calls: int
    engine: str

    @property
    def accuracy(self) -> float:
        return self.correct / self.questions if self.questions else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": round(self.accuracy, 3)}


def _questions(n: int, path: Path) -> tuple[list[dict[str, Any]], Path]:
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:n]
    out = Path(tempfile.mkdtemp(prefix="tokenomy-bench-batch-")) / "questions.jsonl"
    out.write_text("".join(json.dumps({"id": r["id"], "question": r["question"]}) + "\n" for r in rows))
    return rows, out


def run_batch_bench(*, spec: str = "vllm", n: int = 8, levels: Sequence[int] = LEVELS, server: str | None = None,
                    served_model: str | None = None, corpus: Path = CORPUS, questions: Path = QUESTIONS,
                    progress: Callable[[str], None] = lambda _m: None) -> list[BatchRecord]:
    """Every level of concurrency over the same ``n`` questions. ``spec``: ``vllm`` (a ``vllm serve`` of the
    default embedded model, started here unless ``server`` is given) or an engine spec (``embedded`` ...)."""
    import contextlib
    import json

    from tokenomy.agents.answers import answer_matches
    from tokenomy.planners.batch import Job, run_batch

    rows, qfile = _questions(n, questions)
    gold = {r["id"]: r["answer"] for r in rows}
    with contextlib.ExitStack() as stack:
        if spec == "vllm":
            if server is None:
                from tokenomy.kernels.embedded import default_embedded
                from tokenomy.kernels.serving import VllmServer, model_dir_of

                model_dir, name = model_dir_of(f"embedded:{default_embedded()}")
                progress(f"starting vllm serve for {name}")
                srv = stack.enter_context(VllmServer(model_dir, served_name=name))
                model = f"openai:{name}@{srv.base_url}"
            else:
                model = f"openai:{served_model or 'default'}@{server}"
        else:
            model = spec
        records: list[BatchRecord] = []
        for level in levels:
            out = qfile.with_name(f"answers-{level}.jsonl")
            summary = run_batch(qfile, out, Job(model=model, corpus=str(corpus), checkpoints=None,
                                                batch_id=f"bench-{level}"), concurrency=level)
            answers = [json.loads(line) for line in out.read_text().splitlines()]
            correct = sum(1 for a in answers if a.get("error") is None
                          and answer_matches(a.get("answer"), gold[str(a["id"])], a.get("question")))
            u = summary.usage
            base = records[0].per_minute if records else summary.per_minute
            rec = BatchRecord(level, len(rows), summary.answered, correct, summary.wall_s,
                              round(summary.per_minute, 3), round(summary.per_minute / base, 3) if base else 0.0,
                              summary.model_s, summary.tool_s, u.get("prompt_tokens") or 0,
                              u.get("completion_tokens") or 0, u.get("calls") or 0, model.split("@")[0])
            progress(f"concurrency {level}: {rec.per_minute:.2f} questions/min, {rec.correct}/{rec.questions} "
                     f"right, model calls {rec.model_s:.0f} s, tools {rec.tool_s:.1f} s, wall {rec.wall_s:.0f} s")
            records.append(rec)
    return records


def goals(records: Sequence[BatchRecord]) -> list[tuple[str, str, bool]]:
    """Not a goal of BENCHMARKS.md: what the issue asks measured, and that concurrency does not cost answers."""
    if not records:
        return []
    first, best = records[0], max(records, key=lambda r: r.per_minute)
    return [(f"questions/minute grows with concurrency ({best.concurrency} at once vs 1)",
             f"{best.per_minute:.2f} vs {first.per_minute:.2f} ({best.speedup:.2f}x)", best.speedup > 1.0),
            ("the same accuracy at every level", ", ".join(f"{r.concurrency}: {r.correct}/{r.questions}"
                                                         for r in records),
             len({r.correct for r in records}) == 1)]


def format_table(records: Sequence[BatchRecord]) -> str:
    rows = [("at once", "questions", "right", "wall s", "q/min", "speedup", "model s", "tools s", "other s",
             "tokens", "calls")]
    for r in records:
        other = max(0.0, r.wall_s * r.concurrency - r.model_s - r.tool_s) / r.concurrency
        rows.append((str(r.concurrency), str(r.questions), str(r.correct), f"{r.wall_s:.1f}", f"{r.per_minute:.2f}",
                     f"{r.speedup:.2f}x", f"{r.model_s:.1f}", f"{r.tool_s:.1f}", f"{other:.1f}",
                     str(r.prompt_tokens + r.completion_tokens), str(r.calls)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append("model s, tools s: summed over questions (overlapping at concurrency > 1); other s: per lane, the "
                 "rest of the wall time (the strategy's own work)")
    return "\n".join(lines)
