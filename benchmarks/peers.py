"""`tokenomy bench peers`: tokenomy's strategies against the agent frameworks a user would pick instead, on the
same model, the same tasks and the same tools, counted by one referee that none of them controls.

The referee (``referee.py``) is one OpenAI-compatible server (by default a real ``vllm serve`` of the default
embedded model, started here) behind a recording proxy; each framework runs in a process of its own
(``peer_agents.py``), one task at a time, every task under its own tag on the proxy. Tokens, calls and latency
come from the proxy's log, never from a framework's own accounting (that is reported beside, where a framework
keeps one). Answers are scored by the planning world's normaliser; accuracy gets a bootstrap interval and, beside
``tokenomy-rewoo`` on the same tasks, a paired one.
"""

from __future__ import annotations

import copy
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tokenomy.agents.answers import answer_matches
from tokenomy.benchmarks import plot

from .commands import read_records
from .peer_agents import FRAMEWORKS
from .referee import Record, RecordingProxy, RefereeError, VllmServer, check_model
from .world import Task, World

BASELINE = "tokenomy-rewoo"
PEERS = tuple(f for f in FRAMEWORKS if not f.startswith("tokenomy-"))
IMPORTS = {"langgraph": ("langchain", "langchain_openai"), "langgraph-prompted": ("langchain", "langchain_openai"),
           "smolagents-tool": ("smolagents",),
           "smolagents-code": ("smolagents",), "dspy": ("dspy",),
           "llamaindex-react": ("llama_index.core", "llama_index.llms.openai_like"),
           "llamaindex-function": ("llama_index.core", "llama_index.llms.openai_like")}
"""What each framework's process imports: a framework whose packages are missing is reported, not run."""
_clock = time.monotonic  # what --stop-after reads (a test's clock)


def peer_tasks(*, quick: bool = False, seed: int = 0, per_hop: int = 8) -> list[Task]:
    """The planning world's multi-hop questions: ``per_hop`` of each of 1-4 hops (32 by default), or 6 with
    ``quick`` (two each of 1, 2 and 3 hops)."""
    world = World(seed)
    if quick:
        return [t for h in (1, 2, 3) for t in world.tasks(2, h, salt="peers")]
    return [t for h in (1, 2, 3, 4) for t in world.tasks(per_hop, h, salt="peers")]


def prose_tasks(corpus: str | Path, questions: str | Path, *, quick: bool = False) -> list[Task]:
    """The questions about a prose corpus (``bench planning --corpus``'s), less the one that is tokenomy's worked
    exemplar; the first 6 with ``quick``."""
    from .prose import prose_setting

    tasks = prose_setting(corpus, questions).tasks
    return tasks[:6] if quick else tasks


def question_tasks(questions: str | Path) -> list[Task]:
    """Every question of a prose questions file as a task, without indexing its corpus (to score answers)."""
    from .prose import load_questions, to_task

    return [to_task(q) for q in load_questions(questions)]


@dataclass
class PeerRecord:
    """One framework over the tasks: server-counted totals (summed over tasks), its own counts where it keeps
    them, accuracy, and failures by kind."""

    framework: str
    tasks: int
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    failed_requests: int = 0
    wall_s: float = 0.0
    own_prompt_tokens: int | None = None
    own_completion_tokens: int | None = None
    tool_calls: int = 0
    correct: list[bool] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    accuracy: float | None = None
    accuracy_low: float | None = None
    accuracy_high: float | None = None
    diff_vs_baseline: tuple[float, float] | None = None
    missing: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    planned: int = 0
    """How many tasks the run set out to ask (more than ``tasks`` where it was cut off; 0: as many)."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PeerRecord:
        """A record from its ``to_json`` (the computed totals are left out; an unknown key is a ``ValueError``)."""
        names = {f.name for f in fields(cls)}
        derived = {"total_tokens", "uncached_tokens", "per_task"}
        unknown = set(data) - names - derived
        if unknown:
            raise ValueError(f"not a peers record: unknown keys {sorted(unknown)}")
        rec = cls(**{k: v for k, v in data.items() if k in names})
        if rec.diff_vs_baseline is not None:
            rec.diff_vs_baseline = (float(rec.diff_vs_baseline[0]), float(rec.diff_vs_baseline[1]))
        return rec

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def uncached_tokens(self) -> int:
        return self.total_tokens - self.cached_tokens

    def per_task(self, value: float) -> float:
        return value / self.tasks if self.tasks else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(total_tokens=self.total_tokens, uncached_tokens=self.uncached_tokens,
                   per_task={k: round(self.per_task(v), 1) for k, v in (
                       ("prompt_tokens", self.prompt_tokens), ("cached_tokens", self.cached_tokens),
                       ("completion_tokens", self.completion_tokens), ("total_tokens", self.total_tokens),
                       ("uncached_tokens", self.uncached_tokens), ("calls", self.calls), ("wall_s", self.wall_s))})
        return out


def peers_python(*, setup: bool = True) -> Path:
    """The python the frameworks run with: ``$TOKENOMY_PEERS_PYTHON``, else the checkout's ``.venv-peers`` (set
    up here by ``.ci/setup --peers`` when it is missing and ``setup``), else this python."""
    import os

    env = os.environ.get("TOKENOMY_PEERS_PYTHON")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[1]
    venv = root / ".venv-peers" / "bin" / "python"
    script = root / ".ci" / "setup"
    if setup and script.exists():  # idempotent: returns at once when .venv-peers is current
        done = subprocess.run(["bash", str(script), "--peers"], cwd=root)
        if done.returncode != 0:
            raise RefereeError(f"`.ci/setup --peers` failed ({done.returncode}): the frameworks cannot run")
    return venv if venv.exists() else Path(sys.executable)


def missing_packages(framework: str, python: str | Path = sys.executable) -> str | None:
    """Why ``framework`` cannot run with ``python`` (its packages are not installed there), or ``None``."""
    mods = IMPORTS.get(framework, ())
    if not mods:
        return None
    code = "import importlib.util, sys; sys.exit(0 if all(importlib.util.find_spec(m) for m in sys.argv[1:]) else 1)"
    try:
        ok = subprocess.run([str(python), "-c", code, *mods], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{python}: {e}"
    return None if ok else f"{', '.join(mods)} not installed (pip install 'tokenomy[peers]')"


class _Runner:
    """One framework's process (``peer_agents``): a task in, a result out, each within ``timeout`` seconds; a
    process that misses its deadline is killed (its task a timeout) and the next task gets a fresh one."""

    def __init__(self, framework: str, proxy_root: str, model: str, *, python: str | Path, seed: int,
                 obs_tokens: int, log: Path | None, prose: tuple[str, str] | None = None) -> None:
        self.cmd = [str(python), "-m", "tokenomy.benchmarks.peer_agents", framework, "--proxy", proxy_root,
                    "--model", model, "--seed", str(seed), "--obs-tokens", str(obs_tokens)]
        if prose:
            self.cmd += ["--corpus", prose[0], "--questions", prose[1]]
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()

    def _start(self) -> subprocess.Popen[str]:
        err = self.log.open("a") if self.log else subprocess.DEVNULL
        proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        if self.log:
            err.close()  # type: ignore[union-attr]
        self.lines = queue.Queue()
        lines = self.lines

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        return proc

    def ask(self, tag: str, question: str, timeout: float) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None
        start = time.monotonic()
        try:
            self.proc.stdin.write(json.dumps({"tag": tag, "question": question}) + "\n")
            self.proc.stdin.flush()
        except OSError as e:
            self.close()
            return {"tag": tag, "answer": None, "error_kind": "crash", "error": f"the framework's process: {e}"}
        while True:
            left = timeout - (time.monotonic() - start)
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                self.close()
                return {"tag": tag, "answer": None, "error_kind": "timeout",
                        "error": f"no answer in {timeout:.0f} s", "wall_s": round(time.monotonic() - start, 3)}
            if line is None:
                code = self.proc.wait() if self.proc else None
                self.proc = None
                return {"tag": tag, "answer": None, "error_kind": "crash",
                        "error": f"the framework's process exited ({code})"}
            try:
                result = json.loads(line)
            except ValueError:
                continue  # not a result line
            if isinstance(result, dict) and result.get("tag") == tag:
                return result

    def close(self, grace: float = 0.0) -> None:
        """Stop the process: with ``grace``, its input is closed first and it has that long to finish (to close
        its files); then, or at once, its process group is killed."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if grace > 0 and proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(grace)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
        proc.wait(30)


def summarize(framework: str, tasks: Sequence[Task], rows: Sequence[dict[str, Any]],
              records: Sequence[Record]) -> PeerRecord:
    """A framework's ``PeerRecord`` from its rows (one per task, in order) and the proxy's records."""
    rec = PeerRecord(framework=framework, tasks=len(tasks))
    by_tag: dict[str, list[Record]] = {}
    for r in records:
        by_tag.setdefault(r.tag, []).append(r)
    own_p = own_c = 0
    own_known = True
    for task, row in zip(tasks, rows, strict=True):
        calls = [r for r in by_tag.get(row["tag"], []) if r.path.endswith("/completions")]
        prompt = sum(r.prompt_tokens or 0 for r in calls)
        cached = sum(r.cached_tokens or 0 for r in calls)
        completion = sum(r.completion_tokens or 0 for r in calls)
        failed = sum(1 for r in calls if r.status != 200)
        correct = answer_matches(row.get("answer"), task.answer, task.question)
        rec.prompt_tokens += prompt
        rec.cached_tokens += cached
        rec.completion_tokens += completion
        rec.calls += len(calls)
        rec.failed_requests += failed
        rec.wall_s += float(row.get("wall_s") or 0.0)
        rec.tool_calls += int(row.get("tool_calls") or 0)
        rec.correct.append(correct)
        own = row.get("own_usage")
        if isinstance(own, dict) and own.get("prompt_tokens") is not None:
            own_p += int(own.get("prompt_tokens") or 0)
            own_c += int(own.get("completion_tokens") or 0)
        else:
            own_known = False
        rec.rows.append({"task": task.id, "hops": task.hops, "gold": task.answer, "answer": row.get("answer"),
                         "correct": correct, "error_kind": row.get("error_kind"), "error": row.get("error"),
                         "tool_errors": int(row.get("tool_errors") or 0),
                         "tool_calls": int(row.get("tool_calls") or 0), "failed_requests": failed,
                         "calls": len(calls), "prompt_tokens": prompt, "cached_tokens": cached,
                         "completion_tokens": completion, "own_usage": own, "wall_s": row.get("wall_s")})
    if own_known and rows:
        rec.own_prompt_tokens, rec.own_completion_tokens = own_p, own_c
    rec.failures = _failures(rec.rows)
    rec.wall_s = round(rec.wall_s, 3)
    _score(rec)
    return rec


def _failures(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Failures by kind over a record's rows: a row's ``error_kind``, else ``tool`` for a wrong answer after a tool
    error."""
    kinds: Counter[str] = Counter()
    for row in rows:
        if row.get("error_kind"):
            kinds[row["error_kind"]] += 1
        elif not row["correct"] and row.get("tool_errors"):
            kinds["tool"] += 1
    return dict(kinds)


def _score(rec: PeerRecord) -> None:
    """``rec``'s accuracy and its bootstrap interval, from ``rec.correct``."""
    rec.accuracy = rec.accuracy_low = rec.accuracy_high = None
    if rec.correct:
        from .graph import bootstrap_interval

        rec.accuracy = round(sum(rec.correct) / len(rec.correct), 3)
        low, high = bootstrap_interval(rec.correct)
        rec.accuracy_low, rec.accuracy_high = round(low, 3), round(high, 3)


def rescore(rec: PeerRecord, tasks: Sequence[Task]) -> int:
    """Score ``rec``'s stored answers again with today's ``answer_matches`` against ``tasks`` (the run's tasks, by
    id): a record measured before the scorer changed reports what it would score now, without running again.
    Failures of kind ``tool`` (a wrong answer after a tool error) are recounted where the rows keep their tool
    errors. The number of answers whose score changed; a row whose task is not among ``tasks`` or whose gold
    differs is a ``ValueError`` (the record was measured on other tasks)."""
    by_id = {t.id: t for t in tasks}
    changed = 0
    for row in rec.rows:
        task = by_id.get(str(row.get("task")))
        if task is None or str(row.get("gold")) != task.answer:
            raise ValueError(f"{rec.framework}: task {row.get('task')!r} is not one of these tasks (or its gold "
                             "answer differs): rescore with the run's own --quick, --seed or --questions")
        ok = answer_matches(row.get("answer"), task.answer, task.question)
        changed += ok != bool(row.get("correct"))
        row["correct"] = ok
    if rec.rows:
        rec.correct = [bool(row["correct"]) for row in rec.rows]
        if all("tool_errors" in row for row in rec.rows):
            rec.failures = _failures(rec.rows)
        _score(rec)
    return changed


_SUMS = ("prompt_tokens", "cached_tokens", "completion_tokens", "calls", "failed_requests", "tool_calls", "wall_s")
"""A record's totals, each the sum of its rows' values of the same name."""


def join(parts: Sequence[PeerRecord], tasks: Sequence[Task] | None = None, planned: int | None = None) -> PeerRecord:
    """One framework's record from the records of several sittings (a run cut off and continued, or tasks asked
    again): a later part's row for a task replaces an earlier part's, and the totals are those of the rows kept.
    A part every row of which is kept adds its own totals; a part only some rows of which are kept adds the sums
    of those rows, which it must keep per row (rows written since ``tool_calls`` and ``failed_requests`` were
    stored per row), else ``ValueError``. ``tasks``: the run's tasks, ordering the rows (without them rows keep the
    order they were first asked in). ``planned``: how many tasks the run sets out to ask (default: the most any
    part set out to ask); the record is cut off while fewer rows are kept. Parts of several frameworks are a
    ``ValueError``."""
    names = {p.framework for p in parts}
    if len(names) != 1:
        raise ValueError(f"join needs the records of one framework, got {sorted(names)}")
    ran = [p for p in parts if p.rows]
    if not ran:
        return parts[-1]
    kept: dict[str, tuple[int, dict[str, Any]]] = {}
    for i, part in enumerate(ran):
        for row in part.rows:
            kept[str(row["task"])] = (i, row)  # a task asked again keeps its first position, the later row
    sources = {i for i, _ in kept.values()}
    if planned is None:
        planned = max(p.planned or p.tasks for p in ran)
    if len(sources) == 1 and len(ran[min(sources)].rows) == len(kept):
        only = ran[min(sources)]
        out = copy.deepcopy(only)
    else:
        out = PeerRecord(framework=ran[0].framework, tasks=0)
        own: list[int] | None = [0, 0]
        for i, part in enumerate(ran):
            rows = [row for j, row in kept.values() if j == i]
            if not rows:
                continue
            if len(rows) == len(part.rows):  # the whole part: its own totals
                for name in _SUMS:
                    setattr(out, name, getattr(out, name) + getattr(part, name))
                mine = (None if part.own_prompt_tokens is None
                        else [part.own_prompt_tokens, part.own_completion_tokens or 0])
                fails: dict[str, int] = dict(part.failures)
            else:
                lacking = [name for name in _SUMS if any(name not in row for row in rows)]
                if lacking:
                    raise ValueError(f"{part.framework}: rows of a sitting in part replaced do not keep "
                                     f"{', '.join(lacking)}; ask all its tasks again or none")
                for name in _SUMS:
                    setattr(out, name, getattr(out, name) + sum(row[name] or 0 for row in rows))
                usage = [row.get("own_usage") for row in rows]
                mine = (None if any(not isinstance(u, dict) or u.get("prompt_tokens") is None for u in usage)
                        else [sum(int(u["prompt_tokens"] or 0) for u in usage if isinstance(u, dict)),
                              sum(int(u.get("completion_tokens") or 0) for u in usage if isinstance(u, dict))])
                fails = _failures(rows)
            own = None if own is None or mine is None else [own[0] + mine[0], own[1] + mine[1]]
            for kind, n in fails.items():
                out.failures[kind] = out.failures.get(kind, 0) + n
        out.own_prompt_tokens, out.own_completion_tokens = (own[0], own[1]) if own is not None else (None, None)
        out.wall_s = round(out.wall_s, 3)
    rows = [row for _, row in kept.values()]
    if tasks is not None:
        order = {t.id: i for i, t in enumerate(tasks)}
        rows.sort(key=lambda row: order.get(str(row["task"]), len(order)))
    out.rows = rows
    out.tasks = len(rows)
    out.correct = [bool(row["correct"]) for row in rows]
    out.planned = planned if planned > len(rows) else 0
    out.diff_vs_baseline = None
    _score(out)
    return out


def run_peers_bench(*, frameworks: Sequence[str] = FRAMEWORKS, quick: bool = False, seed: int = 0,
                    server: str | None = None, model: str | None = None, embedded: str | None = None,
                    python: str | Path | None = None, obs_tokens: int = 20, task_timeout: float = 600.0,
                    log_dir: str | Path | None = None, progress: Callable[[str], None] | None = None,
                    on_record: Callable[[list[PeerRecord]], None] | None = None,
                    corpus: str | Path | None = None, questions: str | Path | None = None,
                    earlier: Sequence[PeerRecord] = (), stop_after: float | None = None) -> list[PeerRecord]:
    """Every framework on the same tasks through one referee. ``server``: an OpenAI base URL already serving
    ``model``; otherwise a ``vllm serve`` of the embedded model ``embedded`` (default: the default one) is
    started here and stopped at the end. The frameworks run with ``python`` (default ``peers_python()``). The
    proxy's log and each framework's stderr go to ``log_dir``. ``on_record`` gets the records so far after each
    framework (a run cut off keeps what it measured). ``corpus`` and ``questions``: a prose corpus and its
    questions (``prose_tasks``) instead of the planning world's tasks, every framework on the corpus's real
    ``search``, ``lookup`` and ``calc`` tools.

    ``earlier``: the records of a run on the same tasks to continue (``--resume``): a framework asks only the tasks
    it has no row for and its record is joined with the earlier one (``join``); a framework not run now is kept
    as it was. ``stop_after``: seconds after which no new task is started; the framework being run is recorded cut
    off (to be continued with ``earlier``) and the frameworks after it are not started."""
    say = progress or (lambda _m: None)
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown:
        raise ValueError(f"unknown frameworks {unknown}; choose from {', '.join(FRAMEWORKS)}")
    if (corpus is None) != (questions is None):
        raise ValueError("a prose corpus needs both corpus and questions")
    prose = (str(Path(corpus).resolve()), str(Path(questions).resolve())) if corpus and questions else None
    tasks = prose_tasks(*prose, quick=quick) if prose else peer_tasks(quick=quick, seed=seed)
    earlier = copy.deepcopy(list(earlier))  # scored below, the caller's left as they are
    for rec in earlier:
        rescore(rec, tasks)  # a record of other tasks is refused before anything runs
    python = python or peers_python()
    logs = Path(log_dir) if log_dir else None
    if logs:
        logs.mkdir(parents=True, exist_ok=True)
    if server:
        if not model:
            raise ValueError("--server needs --served-model: the name the server serves the model under")
        check_model(server, served_name=model)
        return _run_all(frameworks, tasks, server, model, python, seed, obs_tokens, task_timeout, logs, say,
                        on_record, prose, earlier, stop_after)
    from tokenomy.kernels.embedded import default_embedded, ensure_converted

    name = embedded or default_embedded()
    served = model or name
    model_dir = ensure_converted(name=name)
    say(f"starting vllm serve for {name} ({model_dir})")
    with VllmServer(model_dir, served_name=served) as srv:
        say(f"vllm serve answers at {srv.base_url}")
        return _run_all(frameworks, tasks, srv.base_url, served, python, seed, obs_tokens, task_timeout, logs, say,
                        on_record, prose, earlier, stop_after)


def _run_all(frameworks: Sequence[str], tasks: Sequence[Task], server: str, model: str, python: str | Path,
             seed: int, obs_tokens: int, task_timeout: float, logs: Path | None, say: Callable[[str], None],
             on_record: Callable[[list[PeerRecord]], None] | None = None,
             prose: tuple[str, str] | None = None, earlier: Sequence[PeerRecord] = (),
             stop_after: float | None = None) -> list[PeerRecord]:
    before = {r.framework: r for r in earlier}
    out = [r for r in earlier if r.framework not in frameworks]  # the earlier run's others, kept as they were
    deadline = None if stop_after is None else _clock() + stop_after
    stopped = False
    with RecordingProxy(server, log=logs / "requests.jsonl" if logs else None, timeout=task_timeout) as proxy:
        root = f"http://127.0.0.1:{proxy.port}"
        for fw in frameworks:
            if stopped or (deadline is not None and _clock() > deadline):
                stopped = True
                say(f"{fw}: not started: --stop-after passed (continue with --resume)")
                if fw in before:
                    out.append(before[fw])
                continue
            why = missing_packages(fw, python)
            if why:
                say(f"{fw}: not run: {why}")
                out.append(before.get(fw) or PeerRecord(framework=fw, tasks=0, missing=why))
                continue
            old = before.get(fw)
            done = {str(row["task"]) for row in old.rows} if old else set()
            todo = [t for t in tasks if t.id not in done]
            if old and not todo:
                say(f"{fw}: every task is measured already")
                out.append(old)
                continue
            if done:
                say(f"{fw}: {len(done)} task(s) measured already, {len(todo)} to ask")

            def record(asked: Sequence[Task], rows: list[dict[str, Any]], fw: str = fw,
                       old: PeerRecord | None = old) -> PeerRecord:
                now = summarize(fw, asked, rows, proxy.records)
                return join([old, now] if old else [now], tasks, planned=len(tasks))

            runner = _Runner(fw, root, model, python=python, seed=seed, obs_tokens=obs_tokens,
                             log=logs / f"{fw}.stderr.txt" if logs else None, prose=prose)
            rows: list[dict[str, Any]] = []
            try:
                for i, task in enumerate(todo):
                    if deadline is not None and _clock() > deadline:
                        stopped = True
                        say(f"{fw}: --stop-after passed: stopping with {len(done) + i} of {len(tasks)} tasks "
                            "(continue with --resume)")
                        break
                    row = runner.ask(f"{fw}--{task.id}", task.question, task_timeout)
                    rows.append(row)
                    ok = answer_matches(row.get("answer"), task.answer, task.question)
                    say(f"{fw}: task {len(done) + i + 1}/{len(tasks)} ({task.hops} hops) {'right' if ok else 'wrong'}"
                        f"{' [' + row['error_kind'] + ']' if row.get('error_kind') else ''}")
                    if on_record is not None and i + 1 < len(todo):  # a run cut off keeps its tasks so far
                        on_record(_repaired([*out, record(todo[:i + 1], rows)]))
            finally:
                runner.close(grace=10.0)
            if rows:
                out.append(record(todo[:len(rows)], rows))
            elif old:
                out.append(old)
            out = _repaired(out)
            if on_record is not None:
                on_record(out)
    return _repaired(out)


def _pair(records: list[PeerRecord]) -> list[PeerRecord]:
    """Each record's paired interval of accuracy minus ``tokenomy-rewoo``'s, on the tasks both asked (by task id
    where the records have rows, else by position when they asked as many); ``records``, for chaining."""
    base = next((r for r in records if r.framework == BASELINE and r.correct), None)
    if base is None:
        return records
    from .graph import paired_bootstrap

    base_by = {row["task"]: bool(row["correct"]) for row in base.rows}
    for r in records:
        if not r.correct or r is base:
            continue
        if r.rows and base_by:
            pairs = [(bool(row["correct"]), base_by[row["task"]]) for row in r.rows if row["task"] in base_by]
        else:
            pairs = list(zip(r.correct, base.correct, strict=True)) if len(r.correct) == len(base.correct) else []
        if pairs:
            low, high = paired_bootstrap([a for a, _ in pairs], [b for _, b in pairs])
            r.diff_vs_baseline = (round(low, 3), round(high, 3))
    return records


def load_records(paths: Sequence[str | Path], tasks: Sequence[Task] | None = None,
                 say: Callable[[str], None] | None = None) -> list[PeerRecord]:
    """The records of several ``bench peers --json`` files (sittings on the same server and tasks: frameworks run
    apart, or a run cut off and continued later, ``--resume``) as one run: a framework's records are joined
    (``join``: a later file's row for a task replaces an earlier file's, the totals are those of the rows kept),
    and every record is paired again with ``tokenomy-rewoo`` on the tasks both asked. With ``tasks`` (the run's),
    every stored answer is scored again (``rescore``) and ``say`` hears of each record whose score changed. A file
    that is not such a JSON, or a record of other tasks, is a ``ValueError`` naming it."""
    by_name: dict[str, list[PeerRecord]] = {}
    for path in paths:
        for rec in read_records(path, PeerRecord.from_json, "bench peers JSON"):
            rec.diff_vs_baseline = None
            if tasks is not None:
                try:
                    changed = rescore(rec, tasks)
                except ValueError as e:
                    raise ValueError(f"{path}: {e}") from None
                if changed and say is not None:
                    say(f"{rec.framework}: {changed} answer(s) scored differently now, accuracy {rec.accuracy}")
            by_name.setdefault(rec.framework, []).append(rec)
    return _ordered([join(parts, tasks) for parts in by_name.values()])


def _ordered(records: list[PeerRecord]) -> list[PeerRecord]:
    """``records`` in ``FRAMEWORKS`` order, each paired again with ``tokenomy-rewoo``."""
    order = {name: i for i, name in enumerate(FRAMEWORKS)}
    return _repaired(sorted(records, key=lambda r: order.get(r.framework, len(order))))


def _repaired(records: list[PeerRecord]) -> list[PeerRecord]:
    """``records``, each paired again with ``tokenomy-rewoo`` (an interval from fewer rows is dropped first)."""
    for r in records:
        r.diff_vs_baseline = None
    return _pair(records)


# -- report -----------------------------------------------------------------------------------------------------


def goals(records: Sequence[PeerRecord]) -> list[tuple[str, str, bool | None]]:
    """BENCHMARKS.md "peers": rewoo >= 5x fewer total tokens per task than the best peer, at non-inferior
    accuracy (paired interval), and fewer model calls per task than any peer."""
    base = next((r for r in records if r.framework == BASELINE and r.tasks), None)
    peers = [r for r in records if r.framework in PEERS and r.tasks and r.planned <= r.tasks]
    cut = [r.framework for r in records if r.framework in PEERS and r.tasks and r.planned > r.tasks]
    if base is None or not peers:
        return [("rewoo against the peers", "not measured (a side is missing)", None)]
    best = max(peers, key=lambda r: (r.accuracy or 0.0, -r.total_tokens))
    ratio = best.total_tokens / base.total_tokens if base.total_tokens else float("inf")
    diff = best.diff_vs_baseline
    fewest = min(peers, key=lambda r: r.calls)
    # a run cut off asked the first (easiest) tasks only: it is no fair best peer, and each goal says so
    note = f"; left out, cut off before their last task: {', '.join(cut)}" if cut else ""
    return [
        (f"total tokens per task >= 5x fewer than the best peer ({best.framework})",
         f"{base.per_task(base.total_tokens):.0f} vs {best.per_task(best.total_tokens):.0f}: {ratio:.2f}x{note}",
         ratio >= 5),
        (f"accuracy non-inferior to the best peer ({best.framework}): the paired 95% interval of peer - rewoo "
         "does not lie above 0",
         f"{base.accuracy} vs {best.accuracy}; peer - rewoo {diff}{note}", None if diff is None else diff[0] <= 0),
        (f"fewer model calls per task than any peer (fewest: {fewest.framework})",
         f"{base.per_task(base.calls):.2f} vs {fewest.per_task(fewest.calls):.2f}{note}",
         base.calls < fewest.calls),
    ]


def format_report(records: Sequence[PeerRecord], versions: dict[str, str] | None = None) -> str:
    lines = ["| framework | accuracy [95%] | vs rewoo (paired) | total tok/task | uncached | prompt | cached | "
             "completion | calls/task | s/task | own count (prompt/completion) | failures |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r.missing or not r.tasks:
            lines.append(f"| {r.framework} | not run: {r.missing} |" + " |" * 10)
            continue
        own = (f"{r.per_task(r.own_prompt_tokens):.0f} / {r.per_task(r.own_completion_tokens or 0):.0f}"
               if r.own_prompt_tokens is not None else "-")
        diff = f"{r.diff_vs_baseline[0]:+.0%}..{r.diff_vs_baseline[1]:+.0%}" if r.diff_vs_baseline else "-"
        fails = ", ".join(f"{k} {v}" for k, v in sorted(r.failures.items())) or "-"
        cut = f" ({r.tasks} of {r.planned} tasks)" if r.planned > r.tasks else ""
        lines.append(f"| {r.framework}{cut} | {r.accuracy:.0%} [{r.accuracy_low:.0%}, {r.accuracy_high:.0%}] | "
                     f"{diff} | "
                     f"{r.per_task(r.total_tokens):.0f} | {r.per_task(r.uncached_tokens):.0f} | "
                     f"{r.per_task(r.prompt_tokens):.0f} | {r.per_task(r.cached_tokens):.0f} | "
                     f"{r.per_task(r.completion_tokens):.1f} | {r.per_task(r.calls):.2f} | "
                     f"{r.per_task(r.wall_s):.1f} | {own} | {fails} |")
    lines += ["", "goals (BENCHMARKS.md, peers):"]
    for name, value, met in goals(records):
        lines.append(f"- {'met' if met else 'NOT met' if met is False else 'n/a'}: {name}: {value}")
    if versions:
        lines += ["", "versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))]
    return "\n".join(lines)


def versions(python: str | Path = sys.executable) -> dict[str, str]:
    """The installed versions of the frameworks (and of tokenomy, vLLM's client side) in ``python``."""
    code = ("import importlib.metadata as m, json\nout = {}\n"
            "for p in ('tokenomy', 'langchain', 'langgraph', 'langchain-openai', 'smolagents', 'dspy', "
            "'llama-index-core', 'llama-index-llms-openai-like', 'openai', 'litellm'):\n"
            "    try: out[p] = m.version(p)\n    except m.PackageNotFoundError: pass\nprint(json.dumps(out))")
    try:
        run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
        return dict(json.loads(run.stdout))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def plot_records(records: Sequence[PeerRecord], path: str | Path) -> Path:
    """A PNG of accuracy against server-counted tokens per task, one point per framework, tokenomy's highlighted;
    a framework cut off before its last task is labelled with how many it did (as in the table)."""
    points = [(r.framework + (f" ({r.tasks} of {r.planned} tasks)" if r.planned > r.tasks else ""),
               r.per_task(r.total_tokens), r.accuracy) for r in records if r.tasks and r.accuracy is not None]
    return plot.scatter(points, path, title="peers: accuracy against tokens per task (counted by the server)",
                        xlabel="tokens per task (prompt + completion, server-counted)", ylabel="accuracy", logx=True,
                        highlight={r.framework for r in records if r.framework.startswith("tokenomy-")},
                        highlight_label="tokenomy")


__all__ = ["PeerRecord", "RefereeError", "format_report", "goals", "load_records", "peer_tasks", "plot_records",
           "prose_tasks", "run_peers_bench", "summarize", "versions"]
