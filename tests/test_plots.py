"""``tokenomy.benchmarks.plot`` and each benchmark's ``plot_records``: real PNGs from records built with the real
classes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tokenomy.benchmarks import collab, graph, planning, plans, plot, prefix, rag
from tokenomy.benchmarks.collab import CollabRecord
from tokenomy.benchmarks.graph import GraphRecord
from tokenomy.benchmarks.planning import PlanningRecord
from tokenomy.benchmarks.plans import PlanRecord
from tokenomy.benchmarks.prefix import Record
from tokenomy.benchmarks.rag import RagRecord


def _check_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (900, 550)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 20  # drawn, not a blank page


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, kept to look at their artists."""
    kept: list[Any] = []
    save = plot._save

    def keep(fig, path):
        kept.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plot, "_save", keep)
    return kept


def _planning() -> list[PlanningRecord]:
    recs = []
    for strategy, per_hop in (("react", 700), ("rewoo", 120), ("rewoo-parallel", 120)):
        for hops in (1, 2, 4):
            r = PlanningRecord(strategy=strategy, hops=hops, mode="oracle", tasks=2, prompt_tokens=per_hop * hops * 2,
                               completion_tokens=20 * hops, calls=2 * (hops + 1), t_min_tokens=40 * hops)
            r.total_tokens = r.prompt_tokens + r.completion_tokens
            recs.append(r)
    recs.append(PlanningRecord(strategy="react", hops=4, mode="oracle", tasks=2, sweep="obs", total_tokens=10**6))
    return recs


def _graph() -> list[GraphRecord]:
    rows = []
    for setting, scale in (("simulator", 10), ("live", 1)):
        rows += [GraphRecord(setting, "mesh", 1000 * scale, 0.9, 10, 20, reduction=0.0),
                 GraphRecord(setting, "chain", 400 * scale, 0.8, 5, 20),
                 GraphRecord(setting, "star", 400 * scale, 0.8, 5, 20),
                 GraphRecord(setting, "single", 90 * scale, 0.5, 1, 20),
                 GraphRecord(setting, "pruned:independent", 150 * scale, 0.9, 3, 20, reduction=0.85)]
    return rows


def _collab() -> list[CollabRecord]:
    return [CollabRecord("long", "control", 0.6, None, None, 300.0, 4e11),
            CollabRecord("short", "control", 0.3, -0.4, -0.2, 120.0, 5e10),
            CollabRecord("consensus", "policy", 0.55, -0.1, 0.0, 500.0, 2e11, escalation=0.4),
            CollabRecord("probe-router", "policy", 0.5, -0.15, -0.05, 200.0, 1.2e11, escalation=0.3),
            CollabRecord("oracle-router", "router", 0.7, 0.0, 0.2, 250.0, 1.5e11),
            CollabRecord("sc@16", "sampling", 0.45, None, None, 160.0, None, samples=16.0),
            CollabRecord("esc(w=4)", "sampling", 0.44, None, None, 60.0, None, samples=6.0),
            CollabRecord("short-m@k(2,4)", "sampling", 0.4, None, None, 30.0, None, samples=4.0)]


def _rag() -> list[RagRecord]:
    rows = [RagRecord("bm25", "chunks", None, k, 60.0 * k, min(1.0, 0.3 + 0.12 * k), 0.5, 12) for k in (1, 2, 3, 5)]
    for retriever, lift in (("bm25", 0.0), ("hybrid", 0.1)):
        for compressor in ("sentences", "graph"):
            rows += [RagRecord(retriever, compressor, b, 5, 0.9 * b, min(1.0, 0.2 + lift + b / 160), 0.4, 12)
                     for b in (16, 32, 64, 128)]
    return rows


def _prefix() -> list[Record]:
    out = []
    for workload in ("agents", "rewoo", "sc"):
        for cache, computed in (("on", 1100), ("off", 4000)):
            out.append(Record(workload, "embedded", cache, 24, 4000, computed, 1000, round(1000 / computed, 4),
                              round(1 - computed / 4000, 4), 1.5))
    out.append(Record("pressure25", "radix-lru replay (lpm)", "on", 72, 30000, 9000, 8000, 0.889, 0.7, 0.0))
    return out


def _plans() -> list[PlanRecord]:
    return [PlanRecord(mode, f"q{i}", ok, ok or i % 2 == 0, 1 + (not ok), 300, 30, 0.5)
            for mode, fails in (("grammar", 0), ("free", 3)) for i, ok in enumerate([False] * fails + [True] * 5)]


BENCHES = [(planning, _planning), (graph, _graph), (collab, _collab), (rag, _rag), (prefix, _prefix),
           (plans, _plans)]


@pytest.mark.parametrize(("module", "records"), BENCHES, ids=[m.__name__.rsplit(".", 1)[1] for m, _ in BENCHES])
def test_each_bench_plots_its_records(module, records, tmp_path):
    out = module.plot_records(records(), tmp_path / "sub" / "plot.png")
    assert out == tmp_path / "sub" / "plot.png"
    _check_png(out)


@pytest.mark.parametrize(("module", "records"), BENCHES, ids=[m.__name__.rsplit(".", 1)[1] for m, _ in BENCHES])
def test_each_bench_plots_no_records(module, records, tmp_path):
    _check_png(module.plot_records([], tmp_path / "empty.png"))


def test_empty_input_writes_a_figure_that_says_so(tmp_path, figures):
    _check_png(plot.lines({}, tmp_path / "l.png", title="t", xlabel="x", ylabel="y"))
    _check_png(plot.lines({"a": [], "b": [(1.0, float("nan"))]}, tmp_path / "l2.png", title="t", xlabel="x",
                          ylabel="y", logy=True))
    _check_png(plot.scatter([], tmp_path / "s.png", title="t", xlabel="x", ylabel="y", logx=True))
    _check_png(plot.scatter({}, tmp_path / "s2.png", title="t", xlabel="x", ylabel="y"))
    _check_png(plot.bars([], tmp_path / "b.png", title="t", ylabel="y"))
    _check_png(plot.bars([("planner", {})], tmp_path / "b2.png", title="t", ylabel="y"))
    for fig in figures:
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert texts == ["no data"]
        ax = fig.axes[0]
        assert ax.get_title() == "t" and ax.get_ylabel() == "y"


def test_lines_names_a_series_identical_to_an_earlier_one(tmp_path, figures):
    planning.plot_records(_planning(), tmp_path / "p.png")
    (ax,) = figures[0].axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["react", "rewoo", "rewoo-parallel (= rewoo)"]
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [3, 3, 3]  # the sweep record is not plotted
    assert ax.get_xlabel() == "hops per task" and "total tokens" in ax.get_ylabel()


def test_scatter_panels_highlight_and_log_axis(tmp_path, figures):
    graph.plot_records(_graph(), tmp_path / "g.png")
    fig = figures[0]
    assert [ax.get_title() for ax in fig.axes] == ["simulator (20 questions)", "live (20 questions)"]
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pruned"]
        labels = {t.get_text() for t in ax.texts}
        assert {"mesh", "chain, star", "single", "pruned:independent"} == labels  # one label per position
    collab.plot_records(_collab(), tmp_path / "c.png")
    left, right = figures[1].axes
    assert left.get_xlabel() == "FLOPs per item" and right.get_xlabel() == "samples per item"
    assert {t.get_text() for t in right.texts} == {"sc@16", "esc(w=4)", "short-m@k(2,4)"}


def test_collab_falls_back_to_tokens_without_flops(tmp_path, figures):
    recs = [CollabRecord("long", "control", 0.6, None, None, 300.0, None),
            CollabRecord("consensus", "policy", 0.5, None, None, 200.0, None)]
    collab.plot_records(recs, tmp_path / "c.png")
    (ax,) = figures[0].axes
    assert ax.get_xlabel().startswith("tokens per item")


def test_bars_stacked_and_side_by_side(tmp_path, figures):
    rows = [("planner", {"prompt": 200, "cached": 80, "completion": 22}), ("solver", {"prompt": 150, "completion": 9})]
    _check_png(plot.bars(rows, tmp_path / "stacked.png", title="tokens per agent", ylabel="tokens"))
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["prompt", "cached", "completion"]
    assert max(p.get_y() + p.get_height() for p in ax.patches) == pytest.approx(302)  # stacked, vertical
    _check_png(prefix.plot_records(_prefix(), tmp_path / "prefix.png"))
    ax = figures[1].axes[0]
    assert ax.get_xlabel().startswith("share") and len(ax.get_yticklabels()) == 7  # horizontal: long labels


def test_importing_the_module_is_cheap_and_drawing_never_uses_pyplot(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        import tokenomy.benchmarks.plot as plot
        assert "matplotlib" not in sys.modules, "import tokenomy.benchmarks.plot imported matplotlib"
        plot.lines({{"a": [(1, 2), (2, 3)]}}, {str(tmp_path / "a.png")!r}, title="t", xlabel="x", ylabel="y")
        plot.bars([("a", {{"k": 1}})], {str(tmp_path / "b.png")!r}, title="t", ylabel="y")
        plot.scatter({{"p": [("a", 1, 2)], "q": []}}, {str(tmp_path / "c.png")!r}, title="t", xlabel="x", ylabel="y",
                     logx=True, highlight={{"a"}})
        assert "matplotlib" in sys.modules and "matplotlib.pyplot" not in sys.modules
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
