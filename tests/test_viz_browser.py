"""``tokenomy viz`` pages in a real browser: Debian's headless Chromium, driven by playwright. The page loads with
no errors and no request but its own file, shows the graph and the token tables, reveals a prompt on a click,
never runs hostile tool output, and leaves screenshots in ``artifacts/viz/``.

The tests install Chromium with apt-get where they can (as root on Debian, as in CI); elsewhere they skip, and in
CI (``CI=true``) a missing browser is a failure."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require
from tests.trace_doubles import HOSTILE, graph_trace, rewoo_trace
from tokenomy.viz import write_html

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "viz"


def _find() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _apt_prefix() -> list[str] | None:
    """How to run apt-get here: directly as root, through passwordless sudo, or not at all."""
    if not shutil.which("apt-get"):
        return None
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive"]
    return None


def _install(prefix: list[str]) -> None:
    """apt-get install chromium, once per machine (a lock keeps parallel test processes from racing)."""
    with open("/tmp/tokenomy-chromium-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _find():
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*prefix, "apt-get", "update", "-q"], env=env, check=False, capture_output=True, timeout=600)
        subprocess.run([*prefix, "apt-get", "install", "-y", "-q", "chromium"], env=env,
                       check=False, capture_output=True, timeout=1200)


# Installing the browser (apt-get update, then install: 600 s and 1200 s at most) falls in the first test's time.
pytestmark = [] if _find() else [pytest.mark.timeout(600 + 1200 + 300)]


@pytest.fixture(scope="module")
def browser():
    path = _find()
    prefix = _apt_prefix() if path is None else None
    if prefix is not None:
        _install(prefix)
        path = _find()
    if path is None:
        require("Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require("playwright (pip install 'tokenomy[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--disable-gpu", "--no-first-run",
                                                          "--disable-background-networking",
                                                          "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


class Page:
    """A page of the viewer opened from its file, with every error and request it caused."""

    def __init__(self, browser, html: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = html.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']", timeout=15000)

    def details(self) -> str:
        return self.page.inner_text("#details-body")

    def close(self) -> None:
        self.page.close()


def test_the_rewoo_page_loads_clean_and_a_click_reveals_the_planner_s_prompt(browser, tmp_path):
    html = write_html(rewoo_trace(tmp_path / "r.jsonl"), tmp_path / "r.html")
    p = Page(browser, html)
    try:
        assert p.errors == [] and p.requests == [p.url]  # nothing else was fetched
        assert p.page.locator(".agent-graph .node").count() == 6
        assert p.page.locator(".plan-dag .step").count() == 6
        assert p.page.locator(".timeline .call").count() == 8
        rows = p.page.locator("table[data-by='agent'] tbody tr")
        assert rows.count() == 2 and rows.nth(0).inner_text().startswith("planner")
        assert p.page.locator("#details pre.prompt").count() == 0

        p.page.click(".node[data-agent='planner']")
        prompts = p.page.locator("#details pre.prompt")
        assert prompts.count() >= 4 and prompts.last.is_visible()
        assert "What is the population of Velmora?" in p.details()
        assert 'e1 = lookup(entity="Velmora", attribute="population")' in p.details()  # its output
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        p.page.screenshot(path=str(ARTIFACTS / "rewoo-planner-clicked.png"), full_page=True)

        p.page.click(".step[data-step='e2'][data-plan='0']")
        assert "boom failed: RuntimeError" in p.details() and "status" in p.details()
        p.page.click(".timeline .call >> nth=0")
        assert "Model call: planner" in p.details()
        assert p.errors == []
    finally:
        p.close()


def test_hostile_tool_output_is_shown_as_text_and_never_runs(browser, tmp_path):
    html = write_html(rewoo_trace(tmp_path / "r.jsonl"), tmp_path / "r.html")
    p = Page(browser, html)
    try:
        p.page.click(".node[data-agent='tool:search']")
        shown = p.page.inner_text("#details pre.result")
        assert HOSTILE in shown  # the exact characters, as text
        assert p.page.evaluate("typeof window.__pwned") == "undefined"
        assert p.page.locator("#details img, #details script").count() == 0
        assert p.errors == [] and p.requests == [p.url]
    finally:
        p.close()


def test_the_graph_page_shows_pruned_parts_and_per_edge_tokens(browser, tmp_path):
    html = write_html(graph_trace(tmp_path / "g.jsonl"), tmp_path / "g.html")
    p = Page(browser, html)
    try:
        assert p.errors == [] and p.requests == [p.url]
        assert p.page.locator(".agent-graph .node.off").count() == 1  # c, pruned
        assert p.page.locator(".agent-graph .edge.off").count() >= 5
        edge_rows = p.page.locator("table[data-by='edge'] tbody tr")
        assert edge_rows.count() == 4 and "a -> b" in edge_rows.all_inner_texts()[0]
        p.page.click(".node[data-agent='b']")
        assert "a's message last round" in p.details() or "a says" in p.details()
        box = p.page.locator(".agent-graph").bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 200  # drawn, not collapsed
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        p.page.screenshot(path=str(ARTIFACTS / "graph-b-clicked.png"), full_page=True)
    finally:
        p.close()
