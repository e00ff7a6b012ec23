"""Rewrite the snapshot files of the rendered graphs: ``python -m tests.update_snapshots`` in the repository root.

A test run only compares (tests/test_graphs.py), whatever the environment says: this command is the one way to
change the files, so a changed picture is a diff that someone chose to make and can read in review.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenomy.graphs import GraphTeam, Simulator, to_ascii, to_dot, to_mermaid

SNAPSHOTS = Path(__file__).parent / "snapshots"

PICTURES: dict[str, tuple[Callable[..., str], dict[str, Any]]] = {
    "graph_ascii.txt": (to_ascii, {}),
    "graph_ascii_pruned_hidden.txt": (to_ascii, {"show_pruned": False}),
    "graph_mermaid.txt": (to_mermaid, {}),
    "graph_dot.txt": (to_dot, {}),
}
"""Each snapshot file's name, and how it is drawn from the pictured run."""


def pictured():
    """The graph and the run that the snapshots picture: the simulator's best mask of a 2-round mesh."""
    sim = Simulator.team()
    q = sim.questions(1, "pic")[0]
    mesh = sim.graph("mesh", rounds=2)
    g = mesh.apply(sim.best_mask(mesh))
    return g, GraphTeam(g, sim.engine()).run(q.question)


def render(name: str) -> str:
    draw, kwargs = PICTURES[name]
    g, result = pictured()
    return draw(g, result, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """Write every snapshot into the folder given (default: tests/snapshots); say which changed."""
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else SNAPSHOTS
    folder.mkdir(parents=True, exist_ok=True)
    for name in PICTURES:
        path = folder / name
        text = render(name)
        if path.exists() and path.read_text() == text:
            print(f"unchanged {path}")
        else:
            path.write_text(text)
            print(f"wrote     {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
