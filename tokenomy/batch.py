"""``tokenomy batch``: the command over ``planners.batch`` (answers appended as they finish, resumable, local or on
a Ray cluster; see that module)."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "cmd_batch"]


# -- the command -------------------------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    p = sub.add_parser("batch", help="answer a file of questions (JSON lines), on this machine or a Ray cluster",
                       description="Answer every question of a JSON lines file; each answer is appended to --out "
                                   "as it finishes, and a rerun with the same --out resumes.")
    p.add_argument("questions", help="a JSON lines file: {\"question\": ..., \"id\": ...} per line")
    p.add_argument("--out", required=True, help="the answers, one JSON line per question as it finishes; run "
                                                "again with the same file to resume")
    p.add_argument("--strategy", default="rewoo", help="rewoo (default), rewoo-nl, react or plan-execute")
    p.add_argument("--model", default=None, help="model spec (default: $TOKENOMY_MODEL or 'embedded')")
    p.add_argument("--corpus", default=None, help="a directory of .md/.txt files (default: the bundled example)")
    p.add_argument("--llm-tool", action="store_true", help="give the planner the llm tool too")
    p.add_argument("--concurrency", type=int, default=1, help="questions at once (Ray: CPUs of a local Ray)")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="run each question as a Ray task: auto, "
                                                                  "ray://host:port, or local (a Ray started here)")
    p.add_argument("--checkpoints", default=None, metavar="FILE_OR_URL",
                   help="where each question's checkpoints go (default: <out>.checkpoints.sqlite; a PostgreSQL "
                        "URL for a cluster whose machines share no disk)")
    p.add_argument("--summary", default=None, metavar="PATH", help="also write the summary here as JSON")
    p.set_defaults(fn=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    from tokenomy.planners.batch import Job, run_batch  # here: `tokenomy --help` loads no planner (nor pydantic)

    out = Path(args.out)
    checkpoints = args.checkpoints or str(out.with_name(out.name + ".checkpoints.sqlite"))
    # The batch's id names its threads in the checkpoints: the output file's, so a rerun finds them again.
    batch_id = uuid.uuid5(uuid.NAMESPACE_URL, str(out.resolve())).hex[:12]
    job = Job(strategy=args.strategy, model=args.model, corpus=args.corpus, llm_tool=args.llm_tool,
              checkpoints=checkpoints, batch_id=batch_id)
    def say(row: dict[str, Any]) -> None:
        what = f"error: {row['error']}" if row.get("error") else f"answer: {row.get('answer')}"
        print(f"{row['id']}: {what}", file=sys.stderr, flush=True)

    summary = run_batch(args.questions, out, job, concurrency=args.concurrency, ray_address=args.ray, on_row=say)
    print(summary.line(), file=sys.stderr)
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary.to_json(), indent=2))
    return 0 if summary.failed == 0 else 1
