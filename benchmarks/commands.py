"""``tokenomy bench NAME``: each benchmark is a ``Benchmark``, a subcommand with its own flags, and the CLI loops
over ``BENCHMARKS`` (``add_to``). A benchmark's module is imported when it runs, so ``tokenomy --help`` and the
other commands do not load torch and every benchmark's dependencies."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tokenomy.errors import UserError

__all__ = ["BENCHMARKS", "Benchmark", "Command", "add_to"]


@runtime_checkable
class Benchmark(Protocol):
    """One ``tokenomy bench`` subcommand."""

    @property
    def name(self) -> str:
        """Its word after ``tokenomy bench``."""

    @property
    def help(self) -> str:
        """One line on what it measures."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Its flags."""

    def run(self, args: argparse.Namespace) -> int:
        """Run it with the parsed flags; the exit code."""


@dataclass(frozen=True)
class Command:
    """A ``Benchmark`` made of two functions."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        self.arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        return self.main(args)


# -- shared flags and output ---------------------------------------------------------------------------------


def _output(p: argparse.ArgumentParser, *, quick: bool = True, plot: bool = True) -> None:
    if quick:
        p.add_argument("--quick", action="store_true", help="a smaller workload")
    p.add_argument("--json", default=None, metavar="PATH", help="write the records to this file")
    if plot:
        p.add_argument("--plot", default=None, metavar="PATH", help="also draw the results as a PNG here")


def _model(p: argparse.ArgumentParser, what: str = "the engine spec") -> None:
    p.add_argument("--model", default="embedded", help=f"{what} (default: embedded)")


def _seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="the seed")


def _prose(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--corpus", default=None, metavar="DIR", help=f"a prose corpus instead of the synthetic world "
                                                                 f"(with --questions); {what}")
    p.add_argument("--questions", default=None, metavar="FILE", help="the corpus's questions (JSON lines with "
                                                                     "question, answer, hops, support)")


def _progress(tag: str) -> Callable[[str], None]:
    return lambda m: print(f"[{tag}] {m}" if tag else m, file=sys.stderr, flush=True)


def _spec(args: argparse.Namespace) -> str | None:
    return None if args.model == "embedded" else args.model


def write_records(path: str, records: Sequence[Any], goals: Sequence[tuple[str, str, bool]], quiet: bool = False,
                  **extra: Any) -> None:
    """A benchmark's JSON: its records, anything extra, and each goal with what was measured."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"records": [r.to_json() for r in records], **extra,
                   "goals": [{"goal": g, "measured": m, "met": ok} for g, m, ok in goals]}, f, indent=2)
    if not quiet:
        print(f"\nwrote {path}")


def read_records(path: str | Path, from_json: Callable[[dict[str, Any]], Any], what: str) -> list[Any]:
    """The records of a file ``write_records`` wrote, each read by ``from_json``; a file that cannot be read or is
    not such a JSON is a ``ValueError`` naming it and ``what`` it should have been."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return [from_json(r) for r in data["records"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a {what} ({type(e).__name__}: {e})") from e


def _write_json(path: str, data: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2))
    print(f"\nwrote {path}")


def _plot(args: argparse.Namespace, draw: Callable[[Any, str], Any], records: Any) -> None:
    if args.plot:
        print(f"wrote {draw(records, args.plot)}")


def _names(text: str | None, known: Sequence[str], flag: str) -> tuple[str, ...]:
    """A comma-separated choice from ``known`` (all of them when ``text`` is empty)."""
    if not text:
        return tuple(known)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UserError(f"{flag}: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(known)}")
    return names


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"expected comma-separated numbers, got {text!r}") from None


# -- prefix, plans -------------------------------------------------------------------------------------------


def _prefix_args(p: argparse.ArgumentParser) -> None:
    _output(p)
    p.add_argument("--model", default="embedded", help="embedded, embedded:NAME or hf:<dir> (default: embedded)")
    p.add_argument("--workload", action="append", choices=["agents", "rewoo", "sc"], help="one workload (repeat)")
    p.add_argument("--no-vllm", action="store_true", help="skip vLLM even if it is installed")
    p.add_argument("--dtypes", default="float32,bfloat16",
                   help="CPU speed of the model in these dtypes, side by side ('' to skip)")
    p.add_argument("--served", action="store_true",
                   help="instead: the workloads (default agents and rewoo) through real vllm serve, one replica "
                        "against --replicas behind vllm-router (cache_aware and round_robin); --model default "
                        "embedded:qwen2.5-coder-0.5b")
    p.add_argument("--replicas", type=int, default=2, help="with --served: the replicas behind the router")


def _prefix(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import prefix
    from tokenomy.kernels.registry import parse_spec

    if args.served:
        spec = args.model if args.model != "embedded" else "embedded:qwen2.5-coder-0.5b"
        served = prefix.run_served_prefix_bench(quick=args.quick, spec=spec, workloads=args.workload or None,
                                                replicas=args.replicas)
        print(prefix.format_table(served))
        met = prefix.served_goals(served)
        for goal, measured, ok in met:
            print(f"{'MET' if ok else 'NOT MET'}: {goal}: {measured}")
        if args.json:
            _write_json(args.json, {"records": prefix.to_json(served), "model": spec, "replicas": args.replicas,
                                    "goals": [{"goal": g, "measured": m, "met": ok} for g, m, ok in met]})
        _plot(args, prefix.plot_records, served)
        return 0
    records = prefix.run_prefix_bench(quick=args.quick, spec=args.model, with_vllm=False if args.no_vllm else None,
                                      workloads=args.workload or None)
    dtype_records = []
    dtypes = [d for d in args.dtypes.split(",") if d] if args.dtypes else []
    if dtypes and parse_spec(args.model)[0] in ("embedded", "hf"):  # the transformers engine's dtypes
        from tokenomy.benchmarks.dtype import format_dtype_table, run_dtype_bench

        print(f"dtypes on the CPU: {', '.join(dtypes)}")
        dtype_records = run_dtype_bench(args.model, dtypes, new_tokens=16 if args.quick else 32)
    print()
    print(prefix.format_table(records))
    if dtype_records:
        print()
        print(format_dtype_table(dtype_records))
    if args.json:
        _write_json(args.json, {"records": prefix.to_json(records), "dtypes": [r.to_json() for r in dtype_records]})
    _plot(args, prefix.plot_records, records)
    return 0


def _plans_args(p: argparse.ArgumentParser) -> None:
    _output(p)
    _model(p)


def _plans(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import plans

    records = plans.run_plans_bench(_spec(args), plans.QUESTIONS[:3] if args.quick else None)
    print(plans.format_table(records))
    if args.json:
        _write_json(args.json, plans.to_json(records))
    _plot(args, plans.plot_records, records)
    return 0


# -- planning ------------------------------------------------------------------------------------------------


def _planning_args(p: argparse.ArgumentParser) -> None:
    _output(p)
    _model(p)
    _seed(p)
    _prose(p, "the strategies run on it with the real search/lookup/calc tools and its gold programs")
    p.add_argument("--no-live", action="store_true", help="no model runs (oracle replay only)")
    p.add_argument("--tasks", type=int, default=0, help="tasks per hop count (oracle)")
    p.add_argument("--live-tasks", type=int, default=0, help="live tasks per hop count")
    p.add_argument("--live-hops", default="", help="the hop counts of the live tasks, e.g. 1,2,3")
    p.add_argument("--live-only", action="store_true", help="only the live runs (no oracle replay)")
    p.add_argument("--transcripts", default=None, metavar="FILE", help="write every live task's question, gold and "
                   "given answer and its model and tool calls here (JSON lines)")
    p.add_argument("--exemplars", type=int, default=1, help="exemplar tasks in every prompt (K)")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="--corpus: live-run only the first N questions")
    p.add_argument("--strategies", default=None, metavar="LIST", help="the strategies, comma-separated (default all)")


def _transcripts(args: argparse.Namespace) -> Callable[[dict[str, Any]], None] | None:
    """``--transcripts FILE``: one JSON line per live task (question, gold, answer, every call), written as it
    ends so a long run can be read while it goes."""
    if not args.transcripts:
        return None
    path = Path(args.transcripts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")

    def write(row: dict[str, Any]) -> None:
        with path.open("a") as f:
            f.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")

    return write


def _planning(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import planning

    strategies = _names(args.strategies, planning.STRATEGIES, "--strategies")
    if args.corpus or args.questions:
        return _planning_prose(args, strategies)
    live_hops = () if args.no_live else (
        _int_list(args.live_hops) if args.live_hops else ((1, 2) if args.quick else (1, 2, 3, 4)))
    records = planning.run_planning_bench(
        hops=(1, 2, 4) if args.quick else (1, 2, 3, 4, 5, 6), tasks_per_hop=args.tasks or (3 if args.quick else 5),
        seed=args.seed, k_exemplars=args.exemplars, live_hops=live_hops,
        live_tasks=args.live_tasks or (1 if args.quick else 2), strategies=strategies,
        modes=("live",) if args.live_only else ("oracle", "live"), spec=args.model, progress=_progress("planning"),
        transcript=_transcripts(args))
    print(planning.format_report(records))
    if args.json:
        write_records(args.json, records, planning.goals(records), growth=planning.growth(records))
    _plot(args, planning.plot_records, records)
    return 0


def _planning_prose(args: argparse.Namespace, strategies: tuple[str, ...]) -> int:
    from tokenomy.benchmarks import prose

    if not (args.corpus and args.questions):
        raise UserError("bench planning on prose needs both --corpus DIR and --questions FILE")
    report = prose.run_prose_bench(args.corpus, args.questions, live=not args.no_live, strategies=strategies,
                                   limit=args.limit, k_exemplars=args.exemplars, spec=_spec(args),
                                   progress=_progress("planning"), transcript=_transcripts(args))
    print(prose.format_prose_report(report))
    if args.json:
        _write_json(args.json, report.to_json())
    return 0


# -- graph, collab -------------------------------------------------------------------------------------------


def _graph_args(p: argparse.ArgumentParser) -> None:
    _output(p)
    _model(p)
    _seed(p)
    p.add_argument("--no-live", action="store_true", help="the simulator only (no model runs)")
    p.add_argument("--tasks", type=int, default=0, help="simulator evaluation questions")
    p.add_argument("--iterations", type=int, default=50, help="training iterations of each policy on the simulator")
    p.add_argument("--no-simulator", action="store_true", help="the live rows only")
    p.add_argument("--live-questions", type=int, default=0, help="live evaluation questions (default 12; --quick 4)")
    p.add_argument("--live-iterations", type=int, default=0,
                   help="live training iterations of the pruned graph's policy (default 24; --quick 3)")
    p.add_argument("--topologies", default=None, metavar="LIST",
                   help="live: only these, comma-separated, of mesh, chain, star, layered, debate, single, pruned "
                        "(default all; the rows are compared with the mesh, of this sitting or one joined by "
                        "--merge)")
    p.add_argument("--merge", default=None, metavar="A.json,B.json",
                   help="report the records of earlier --json files as one run (sittings on the same questions "
                        "and model; a later file's row of a topology wins)")


def _graph(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import graph

    if args.merge:
        try:
            records = graph.load_records([p.strip() for p in args.merge.split(",") if p.strip()])
        except ValueError as e:
            raise UserError(f"--merge: {e}") from e
    else:
        if args.no_live and args.no_simulator:
            raise UserError("bench graph: --no-live and --no-simulator leave nothing to run")
        topologies = _names(args.topologies, graph.LIVE_TOPOLOGIES, "--topologies") if args.topologies else None

        def save(rows: list[Any]) -> None:  # after every row: a run cut off keeps what it measured
            if args.json:
                write_records(args.json, rows, graph.goals(rows), quiet=True)

        records = graph.run_graph_bench(quick=args.quick, live=not args.no_live, seed=args.seed,
                                        iterations=args.iterations, questions=args.tasks, spec=_spec(args),
                                        simulator=not args.no_simulator, live_questions=args.live_questions,
                                        live_iterations=args.live_iterations, topologies=topologies,
                                        on_record=save, progress=_progress("graph"))
    print(graph.format_report(records))
    if args.json:
        write_records(args.json, records, graph.goals(records))
    _plot(args, graph.plot_records, records)
    return 0


def _collab_args(p: argparse.ArgumentParser) -> None:
    _output(p)
    _seed(p)
    p.add_argument("--tasks", type=int, default=0, help="ladder items")
    p.add_argument("--long", default=None, help="the long model (default embedded:qwen2.5-coder-1.5b)")
    p.add_argument("--short", default=None, help="the short model (default embedded:qwen2.5-coder-0.5b)")
    p.add_argument("--record", default=None, metavar="PATH", help="store the sampled pools here (JSON)")
    p.add_argument("--replay", default=None, metavar="PATH", help="score the stopping rules on a stored record, "
                                                                  "no model")


def _collab(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import collab

    if args.replay:
        pools, gold, routing = collab.load_record(args.replay)
        records = collab.replay_sampling(pools, gold, k=max(len(p) for p in pools), seed=args.seed)
        records += collab.replay_routing(routing) if routing else []
        for r in records:
            print(f"{r.policy:<24} accuracy {r.accuracy:.3f}  samples {r.samples:.2f}  tokens {r.tokens:.1f}  "
                  f"{'; '.join(r.notes)}")
        if args.json:
            write_records(args.json, records, [])
        _plot(args, collab.plot_records, records)
        return 0
    report = collab.run_collab_bench(quick=args.quick, long_spec=args.long, short_spec=args.short, seed=args.seed,
                                     items=args.tasks, record=args.record, progress=_progress("collab"))
    print(collab.format_report(report))
    if args.json:
        write_records(args.json, report.records, collab.goals(report), calibration=report.scores,
                      kept=report.kept, note=report.note, long=report.long, short=report.short,
                      training=report.training)
    _plot(args, collab.plot_records, report.records)
    return 0


def _batch_args(p: argparse.ArgumentParser) -> None:
    _output(p, quick=True, plot=False)
    p.add_argument("--model", default="vllm", help="vllm (a vllm serve of the default embedded model, started "
                                                   "here; default) or an engine spec (embedded ...)")
    p.add_argument("--server", default=None, metavar="URL", help="with --model vllm: a server already running")
    p.add_argument("--served-model", default=None, metavar="NAME", help="the model's name on --server")
    p.add_argument("--questions", type=int, default=0, help="how many of the prose questions (default 8; --quick 3)")
    p.add_argument("--levels", default="1,2,4", help="questions at once, comma-separated (default 1,2,4)")


def _batch(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import batch

    records = batch.run_batch_bench(spec=args.model, n=args.questions or (3 if args.quick else 8),
                                    levels=_int_list(args.levels), server=args.server, served_model=args.served_model,
                                    progress=_progress("batch"))
    print(batch.format_table(records))
    met = batch.goals(records)
    for goal, measured, ok in met:
        print(f"{'MET' if ok else 'NOT MET'}: {goal}: {measured}")
    if args.json:
        write_records(args.json, records, met)
    return 0


def _speculative_args(p: argparse.ArgumentParser) -> None:
    _output(p, plot=False)
    _seed(p)
    p.add_argument("--long", default="embedded:qwen2.5-coder-1.5b", help="the model that decodes (default "
                                                                        "embedded:qwen2.5-coder-1.5b)")
    p.add_argument("--draft", default="embedded:qwen2.5-coder-0.5b", help="the model that proposes its tokens "
                                                                         "(default embedded:qwen2.5-coder-0.5b)")
    p.add_argument("--requests", type=int, default=0, help="requests per workload (default 8; --quick 2)")
    p.add_argument("--workloads", default=None, help="comma-separated: planner, solver, ladder (default all)")
    p.add_argument("--draft-k", type=int, default=4, help="proposals per check to start from (it adapts)")


def _speculative(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import speculative

    records = speculative.run_speculative_bench(
        long_spec=args.long, draft_spec=args.draft, n=args.requests or (2 if args.quick else 8),
        workloads=_names(args.workloads, speculative.WORKLOADS, "--workloads"), draft_k=args.draft_k,
        seed=args.seed, progress=_progress("speculative"))
    print(speculative.format_table(records))
    met = speculative.goals(records)
    for goal, measured, ok in met:
        print(f"{'MET' if ok else 'NOT MET'}: {goal}: {measured}")
    if args.json:
        write_records(args.json, records, met, long=args.long, draft=args.draft)
    return 0


# -- rag, gpu ------------------------------------------------------------------------------------------------


def _rag_args(p: argparse.ArgumentParser) -> None:
    _output(p)
    _model(p, "the model of --extract model/both")
    _seed(p)
    _prose(p, "ingested and asked instead")
    p.add_argument("--tasks", type=int, default=0, help="questions per hop count")
    p.add_argument("--extract", choices=["rules", "model", "both"], default="rules", help="the triplet extractor")


def _rag(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import rag

    result = rag.run_rag_bench(quick=args.quick, seed=args.seed, questions=args.tasks, progress=_progress(""),
                               corpus=args.corpus, questions_file=args.questions, extract=args.extract,
                               model=args.model)
    print(rag.format_rag_report(result))
    if args.json:
        _write_json(args.json, {"records": [r.to_json() for r in result["records"]], "goal": result["goal"],
                                "ingest": result["ingest"], "questions": result["questions"]})
    _plot(args, rag.plot_records, result["records"])
    return 0


def _gpu_args(p: argparse.ArgumentParser) -> None:
    _output(p)
    p.add_argument("--arch", default="llama-3-8b", help="the architecture (random weights): llama-3-8b or "
                                                        "qwen2.5-1.5b")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU (tests the code only)")
    p.add_argument("--variants", default=None, metavar="LIST", help="the variants, comma-separated (default all: "
                   "plain, generate, batch, radix, radix+kernel, and kernel, the sweep)")
    p.add_argument("--profile", default=None, metavar="PATH", help="also profile the fast paths (torch profiler "
                                                                   "tables per kernel) into this file")


def _gpu(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import gpu

    if args.smoke:
        cfg = gpu.GpuConfig.smoke()
    else:
        import torch

        if not torch.cuda.is_available():
            print("tokenomy: bench gpu needs a CUDA GPU (--smoke runs a tiny version on the CPU, to test the code)",
                  file=sys.stderr)
            return 2
        cfg = gpu.GpuConfig(arch=args.arch, **({"batch": 8, "prefix": 1024, "new": 32} if args.quick else {}))

    def save(records: list[Any]) -> None:  # after every record: a run cut off keeps what it measured
        if args.json:
            write_records(args.json, records, gpu.goals(records), config=cfg.__dict__, quiet=True)

    names = [n.strip() for n in args.variants.split(",")] if args.variants else [*gpu.VARIANTS, "kernel"]
    unknown = sorted(set(names) - {*gpu.VARIANTS, "kernel"})
    if unknown:
        print(f"tokenomy: unknown gpu variants {', '.join(unknown)}; known: {', '.join(gpu.VARIANTS)}, kernel",
              file=sys.stderr)
        return 2
    records = gpu.run_gpu_bench(cfg, progress=_progress(""), on_record=save, profile=args.profile,
                                variants=[n for n in gpu.VARIANTS if n in names], kernel="kernel" in names)
    print(gpu.format_gpu_table(records))
    if args.json:
        write_records(args.json, records, gpu.goals(records), config=cfg.__dict__)
    _plot(args, gpu.plot_records, records)
    return 0


# -- peers, faults -------------------------------------------------------------------------------------------


def _peers_args(p: argparse.ArgumentParser) -> None:
    _output(p)
    _seed(p)
    _prose(p, "every framework runs on it with the real search/lookup/calc tools")
    p.add_argument("--model", default="embedded", help="embedded or embedded:NAME: the model vllm serve serves")
    p.add_argument("--frameworks", default=None, metavar="LIST", help="the frameworks, comma-separated (default all)")
    p.add_argument("--server", default=None, metavar="URL", help="an OpenAI base URL already serving the model "
                                                                 "(default: start vllm serve)")
    p.add_argument("--served-model", default=None, metavar="NAME", help="the model's name on --server")
    p.add_argument("--merge", default=None, metavar="A.json,B.json",
                   help="report the records of earlier --json files as one run (sittings on the same server "
                        "and tasks; a framework's rows are joined by task, a later file's row for a task wins), "
                        "their stored answers scored again; give the run's own --quick, --seed or "
                        "--corpus/--questions")
    p.add_argument("--resume", default=None, metavar="FILE",
                   help="continue the run of an earlier --json file: each framework asks only the tasks it has no "
                        "row for there, and --json gets the earlier records joined with this sitting's")
    p.add_argument("--stop-after", type=float, default=None, metavar="MIN",
                   help="start no task after this many minutes: the framework being run is recorded cut off "
                        "(continue it with --resume) and the frameworks after it are not started")
    p.add_argument("--task-timeout", type=float, default=600.0, metavar="S",
                   help="seconds a framework may take for one task")
    p.add_argument("--logs", default=None, metavar="DIR", help="write the proxy's request log and each framework's "
                                                               "stderr here")


def _peers(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import peers

    if bool(args.corpus) != bool(args.questions):
        raise UserError("bench peers on prose needs both --corpus DIR and --questions FILE")

    def tasks() -> list[Any]:  # the run's tasks, to score stored answers against
        return (peers.question_tasks(args.questions) if args.questions
                else peers.peer_tasks(quick=args.quick, seed=args.seed))

    if args.merge:
        paths = [p.strip() for p in args.merge.split(",") if p.strip()]
        try:
            records = peers.load_records(paths, tasks(), say=_progress("peers"))
        except ValueError as e:
            raise UserError(f"--merge: {e}") from e
        found: dict[str, str] = {}
        for path in paths:
            found.update(json.loads(Path(path).read_text(encoding="utf-8")).get("versions") or {})
    else:
        names = _names(args.frameworks, peers.FRAMEWORKS, "--frameworks")
        if args.stop_after is not None and args.stop_after <= 0:
            raise UserError("--stop-after needs a positive number of minutes")
        earlier: list[Any] = []
        if args.resume:
            try:
                earlier = peers.load_records([args.resume], tasks())  # a run of other tasks is refused here
            except ValueError as e:
                raise UserError(f"--resume: {e}") from e
        found = peers.versions(peers.peers_python(setup=False))
        if args.resume:  # the earlier sitting's versions, where this one does not say
            found = {**(json.loads(Path(args.resume).read_text(encoding="utf-8")).get("versions") or {}), **found}

        def save(records: list[Any]) -> None:  # after every framework: a run cut off keeps what it measured
            if args.json:
                write_records(args.json, records, peers.goals(records), versions=found, quiet=True)

        records = peers.run_peers_bench(
            frameworks=names, quick=args.quick, seed=args.seed, server=args.server, model=args.served_model,
            embedded=args.model.removeprefix("embedded:") if args.model.startswith("embedded:") else None,
            task_timeout=args.task_timeout, log_dir=args.logs, on_record=save, corpus=args.corpus,
            questions=args.questions, progress=_progress("peers"), earlier=earlier,
            stop_after=None if args.stop_after is None else args.stop_after * 60)
    print(peers.format_report(records, found))
    if args.json:
        write_records(args.json, records, peers.goals(records), versions=found)
    _plot(args, peers.plot_records, records)
    return 0


def _faults_args(p: argparse.ArgumentParser) -> None:
    _output(p, quick=False, plot=False)


def _faults(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import faults

    results = faults.run_faults(progress=_progress("faults"))
    print(faults.format_report(results))
    if args.json:
        _write_json(args.json, faults.to_json(results))
    return 0 if all(r.outcome == "handled" for r in results) else 1


BENCHMARKS: tuple[Benchmark, ...] = (
    Command("prefix", "KV-cache reuse of shared prompt prefixes (and the model's dtypes on the CPU)", _prefix_args,
            _prefix),
    Command("plans", "the planner's valid-plan rate, with and without the decoding grammar", _plans_args, _plans),
    Command("planning", "tokens, calls and accuracy of each strategy on multi-hop tasks (or a prose corpus)",
            _planning_args, _planning),
    Command("graph", "preset and pruned agent communication graphs, on the simulator and live", _graph_args, _graph),
    Command("collab", "long/short policies, routers, budgets and early-stopping sampling on a difficulty ladder",
            _collab_args, _collab),
    Command("batch", "questions per minute of tokenomy batch at 1, 2 and 4 questions at once, and where the time goes",
            _batch_args, _batch),
    Command("speculative", "the long model's decoding alone and with a draft model proposing its tokens",
            _speculative_args, _speculative),
    Command("rag", "context tokens and answers per retriever and compressor", _rag_args, _rag),
    Command("gpu", "the fast paths on one CUDA GPU, random weights", _gpu_args, _gpu),
    Command("peers", "tokenomy against LangGraph, smolagents, DSPy and LlamaIndex on one vllm serve, every request "
                     "counted by a recording proxy", _peers_args, _peers),
    Command("faults", "hostile requests, plans, tools, files, processes and servers: each handled alone",
            _faults_args, _faults),
)


def add_to(subparsers: Any) -> None:
    """Add every benchmark as a subcommand of ``subparsers`` (an ``add_subparsers()`` result), each with its
    flags and ``fn`` set to its ``run``."""
    for bench in BENCHMARKS:
        p = subparsers.add_parser(bench.name, help=bench.help, description=bench.help)
        bench.add_arguments(p)
        p.set_defaults(fn=bench.run)
