"""Batches: many questions through one strategy, on this machine or on a Ray cluster (``tokenomy batch``).

Questions come from a JSON lines file (``{"question": ..., "id": ...}``; ``id`` defaults to the line's number) and
their answers go to another, one line per question **as it finishes** (the order of finishing, each line with its
``id``), flushed at once: a run killed at any point keeps every answer already written. Run again with the same
``--out`` and it resumes: questions already answered are not asked again, a line cut off by the kill is dropped,
questions that failed are tried again, and a question that was cut off half-way goes on from its checkpoint (the
batch keeps one, ``<out>.checkpoints.sqlite`` or ``--checkpoints``, with one thread per question), so not even its
finished model and tool calls run again.

On one machine ``--concurrency N`` questions run at once, their model calls through one shared ``Worker`` (which
batches what arrives together; an OpenAI-compatible server serves them in parallel, the embedded CPU engine one
after another). With ``--ray ADDRESS`` (``auto``, ``ray://host:10001``, or ``local`` for a Ray started here) each
question is a Ray task; each Ray worker process loads the model once (``kernels.registry.shared_engine``) and keeps
it for the questions it gets next. A question's failure is its line's ``error``; the batch goes on.

The summary (stderr, and ``--summary PATH`` as JSON) sums the usage over the batch and says where the time went:
wall time, questions per minute, and the time the questions spent in model calls and in tools.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenomy.errors import MissingExtra, UserError

__all__ = ["Job", "BatchSummary", "read_questions", "done_ids", "run_batch", "answer_one"]


@dataclass(frozen=True)
class Job:
    """How every question of a batch is answered: strategy, model, corpus, tools, checkpoints."""

    strategy: str = "rewoo"
    model: str | None = None
    corpus: str | None = None
    llm_tool: bool = False
    checkpoints: str | None = None
    """A SQLite file or a PostgreSQL URL; ``None``: no checkpoints (a question cut off starts again)."""
    batch_id: str = ""
    """Prefixes each question's thread id in the checkpoints (one batch's threads apart from another's)."""


@dataclass
class BatchSummary:
    questions: int = 0
    already_done: int = 0
    answered: int = 0
    failed: int = 0
    wall_s: float = 0.0
    model_s: float = 0.0
    """Time the questions spent waiting for model calls (summed over questions: concurrent calls overlap)."""
    tool_s: float = 0.0
    usage: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 1
    where: str = "local"

    @property
    def per_minute(self) -> float:
        ran = self.answered + self.failed
        return 60.0 * ran / self.wall_s if self.wall_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "questions_per_minute": round(self.per_minute, 3)}

    def line(self) -> str:
        u = self.usage
        return (f"batch: {self.questions} questions ({self.already_done} already done), {self.answered} answered, "
                f"{self.failed} failed in {self.wall_s:.1f} s ({self.per_minute:.2f}/min, {self.where}, "
                f"concurrency {self.concurrency}); model calls {self.model_s:.1f} s, tools {self.tool_s:.1f} s "
                f"(summed over questions); usage prompt={u.get('prompt_tokens')} "
                f"(cached={u.get('cached_prompt_tokens')}) completion={u.get('completion_tokens')} "
                f"calls={u.get('calls')}")


# -- files -----------------------------------------------------------------------------------------------------


def read_questions(path: str | Path) -> list[tuple[str, str]]:
    """``(id, question)`` of every line of a JSON lines file; a line may also be a bare JSON string. Raises
    ``UserError`` naming the first bad line (not JSON, no question, a repeated id)."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the questions file {path}: {exc}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{path}:{n}: not JSON ({exc})") from exc
        if isinstance(row, str):
            row = {"question": row}
        question = row.get("question") if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{path}:{n}: no question (a line is {{\"question\": \"...\", \"id\": ...}})")
        qid = str(row.get("id", n))
        if qid in seen:
            raise UserError(f"{path}:{n}: the id {qid!r} is used twice")
        seen.add(qid)
        out.append((qid, question))
    return out


def done_ids(out: str | Path) -> set[str]:
    """The ids already answered in an output file, which is rewritten without the lines a kill cut off and
    without failed questions' lines (they are asked again)."""
    path = Path(out)
    if not path.exists():
        return set()
    keep: list[str] = []
    ids: set[str] = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # cut off by a kill
        if isinstance(row, dict) and "id" in row and row.get("error") is None:
            ids.add(str(row["id"]))
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)
    return ids


# -- one question ------------------------------------------------------------------------------------------------


_index_lock = threading.Lock()
_indexes: dict[str | None, Any] = {}


def _tools_for(job: Job, engine: Any) -> list[Any]:
    """The corpus tools over the corpus's index (refreshed once per process and corpus: it is read-only while
    questions run); the ``llm`` tool, where asked for, over ``engine``."""
    from tokenomy.tools import calc, example_corpus_dir, llm_tool, lookup_tool, search_tool
    from tokenomy.tools.builtin import CorpusIndex

    with _index_lock:
        index = _indexes.get(job.corpus)
        if index is None:
            corpus = Path(job.corpus) if job.corpus else example_corpus_dir()
            if not corpus.is_dir():
                raise UserError(f"corpus {corpus} is not a directory (give --corpus DIR with .md or .txt files)")
            index = CorpusIndex(corpus)
            index.refresh()
            _indexes[job.corpus] = index
    tools = [search_tool(index), lookup_tool(index), calc]
    if job.llm_tool:
        tools.append(llm_tool(engine))
    return tools


def answer_one(job: Job, qid: str, question: str, model: Any = None) -> dict[str, Any]:
    """One question's output line: the answer, its usage and timings, or its error. ``model``: the engine (or
    ``Worker``) to use; by default this process's shared engine for ``job.model``."""
    from tokenomy.kernels.registry import shared_engine
    from tokenomy.planners import Checkpoints, make_strategy
    from tokenomy.planners.state import to_state

    start = time.perf_counter()
    timing = {"model_s": 0.0, "tool_s": 0.0}

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "model_call":  # emitted as the call returns: its wait, queueing included
            timing["model_s"] += max(0.0, time.time() - float(event.get("start_time") or time.time()))
        elif event.get("event") == "tool_call":
            timing["tool_s"] += float(event.get("duration_s") or 0.0)

    row: dict[str, Any] = {"id": qid, "question": question}
    store = None
    try:
        engine = model if model is not None else shared_engine(job.model)
        tools = _tools_for(job, getattr(engine, "engine", engine))
        strategy = make_strategy(job.strategy, engine, tools, on_event=on_event)
        thread = f"{job.batch_id}:{qid}"
        if job.checkpoints:
            store = Checkpoints(job.checkpoints)
            if store.saver.get_tuple({"configurable": {"thread_id": thread}}) is not None:
                result = strategy.resume(thread, store)  # cut off half-way: go on from its checkpoint
            else:
                result = strategy.run(question, thread_id=thread, checkpoints=store)
        else:
            result = strategy.run(question, thread_id=thread)
        total = result.total
        row.update(answer=to_state(result.answer), plan_valid=result.plan_valid, usage=total.to_dict(),
                   notes=result.notes, error=None)
    except Exception as exc:  # the question's failure is its line; the batch goes on
        row.update(answer=None, usage=None, error=f"{type(exc).__name__}: {exc}"[:2000])
    finally:
        if store is not None:
            store.close()
    row.update(wall_s=round(time.perf_counter() - start, 3), model_s=round(timing["model_s"], 3),
               tool_s=round(timing["tool_s"], 3), pid=os.getpid())
    return row


# -- the batch ---------------------------------------------------------------------------------------------------


def _local(job: Job, todo: Sequence[tuple[str, str]], concurrency: int) -> Iterator[dict[str, Any]]:
    from tokenomy.kernels import Worker
    from tokenomy.kernels.registry import load_engine

    engine = load_engine(job.model)
    worker = Worker(engine)
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tokenomy-batch") as pool:
            pending: set[Future[dict[str, Any]]] = set()
            queue = list(todo)
            while queue or pending:
                while queue and len(pending) < concurrency:
                    qid, question = queue.pop(0)
                    pending.add(pool.submit(answer_one, job, qid, question, worker))
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    yield f.result()
    finally:
        worker.close()
        engine.close()


def _ray_answer(job: Job, qid: str, question: str) -> dict[str, Any]:  # a Ray task (ray.remote below)
    return answer_one(job, qid, question)


def _ray(job: Job, todo: Sequence[tuple[str, str]], address: str, concurrency: int) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError as exc:
        raise MissingExtra("ray", "ray", "tokenomy batch --ray") from exc
    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=concurrency, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("TOKENOMY_")}})
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        task = ray.remote(max_retries=0)(_ray_answer)
        ids = {task.remote(job, qid, question): qid for qid, question in todo}
        refs = list(ids)
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            for ref in ready:
                try:
                    yield ray.get(ref)
                except Exception as exc:  # the task's process died: its question failed, the rest go on
                    yield {"id": ids[ref], "answer": None, "usage": None,
                           "error": f"{type(exc).__name__}: {exc}"[:2000]}
    finally:
        if started:
            ray.shutdown()


def run_batch(questions: str | Path, out: str | Path, job: Job, *, concurrency: int = 1, ray_address: str | None = None,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> BatchSummary:
    """Answer every question of ``questions`` not already answered in ``out``; append each answer to ``out`` as
    it finishes. Returns the summary (usage summed over the questions that ran now)."""
    from tokenomy.kernels import Usage

    if concurrency < 1:
        raise UserError(f"--concurrency must be at least 1, got {concurrency}")
    items = read_questions(questions)
    done = done_ids(out)
    todo = [(qid, q) for qid, q in items if qid not in done]
    summary = BatchSummary(questions=len(items), already_done=len(items) - len(todo), concurrency=concurrency,
                           where=f"ray {ray_address}" if ray_address else "local")
    by_id = dict(todo)
    start = time.perf_counter()
    usages: list[Usage] = []
    rows = _ray(job, todo, ray_address, concurrency) if ray_address else _local(job, todo, concurrency)
    with open(out, "a", encoding="utf-8") as f:
        for row in rows:
            row["question"] = by_id.get(str(row["id"]), row.get("question"))
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            if row.get("error") is None:
                summary.answered += 1
            else:
                summary.failed += 1
            if row.get("usage"):
                usages.append(Usage.from_dict(row["usage"]))
            summary.model_s += row.get("model_s") or 0.0
            summary.tool_s += row.get("tool_s") or 0.0
            if on_row is not None:
                on_row(row)
    summary.wall_s = round(time.perf_counter() - start, 3)
    summary.model_s, summary.tool_s = round(summary.model_s, 3), round(summary.tool_s, 3)
    summary.usage = Usage.sum(usages).to_dict()
    return summary
