"""The suite's own rules. Skips: in CI (CI=true) a run in which anything skipped but a CUDA-only test fails, both by
pytest's exit status (tests/conftest.py) and by `.ci/skips` reading pytest's summary (`.ci/run`). Hangs: every test
has a timeout (pyproject's `timeout`, pytest-timeout), so a hang fails its test instead of stalling CI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import CUDA_ONLY

ROOT = Path(__file__).resolve().parents[1]

PLAIN_SKIP = """
    import pytest

    def test_runs():
        pass

    def test_skips():
        pytest.skip("some package is not installed")
    """
CUDA_SKIP = f"""
    import pytest

    def test_runs():
        pass

    @pytest.mark.skipif(True, reason="{CUDA_ONLY} (run by .ci/gpu-check on the GPU machine)")
    def test_on_a_gpu():
        pass
    """
MODULE_SKIP = """
    import pytest

    pytest.importorskip("a_module_that_is_not_there")

    def test_never_collected():
        pass
    """
FIXTURE_SKIP = """
    import pytest

    @pytest.fixture
    def model():
        pytest.skip("the model is not installed")

    def test_needs_the_model(model):
        pass
    """


def run_pytest(tmp_path: Path, source: str, ci: bool, *options: str) -> subprocess.CompletedProcess[str]:
    """pytest on one generated test file, with the suite's conftest as a plugin, in or out of CI."""
    (tmp_path / "test_generated.py").write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(ROOT)
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           "--rootdir", str(tmp_path), *options, str(tmp_path / "test_generated.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def ci_skips(output: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / ".ci" / "skips")], input=output, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("source", [PLAIN_SKIP, MODULE_SKIP, FIXTURE_SKIP], ids=["test", "module", "fixture"])
def test_in_ci_a_skip_fails_the_run(tmp_path, source):
    out = run_pytest(tmp_path, source, ci=True)
    assert out.returncode == pytest.ExitCode.TESTS_FAILED, out.stdout
    assert "skips fail in CI" in out.stdout and "test_generated.py" in out.stdout.split("skips fail in CI")[1]


def test_in_ci_the_cuda_only_skip_is_allowed(tmp_path):
    out = run_pytest(tmp_path, CUDA_SKIP, ci=True)
    assert out.returncode == 0, out.stdout
    assert "1 passed, 1 skipped" in out.stdout and "skips fail in CI" not in out.stdout


def test_outside_ci_a_skip_is_a_skip(tmp_path):
    out = run_pytest(tmp_path, PLAIN_SKIP, ci=False)
    assert out.returncode == 0, out.stdout
    assert "1 passed, 1 skipped" in out.stdout and "skips fail in CI" not in out.stdout


@pytest.mark.parametrize("source", [PLAIN_SKIP, MODULE_SKIP, FIXTURE_SKIP], ids=["test", "module", "fixture"])
def test_ci_skips_refuses_a_skip_in_pytest_s_summary(tmp_path, source):
    out = run_pytest(tmp_path, source, ci=False)  # pytest itself passes: the summary alone shows the skip
    checked = ci_skips(out.stdout)
    assert checked.returncode == 1 and "refused: SKIPPED [1] test_generated.py:" in checked.stdout, checked.stdout


def test_ci_skips_allows_the_cuda_only_skip(tmp_path):
    out = run_pytest(tmp_path, CUDA_SKIP, ci=False)
    checked = ci_skips(out.stdout)
    assert checked.returncode == 0 and checked.stdout == "", checked.stdout


def test_ci_skips_refuses_skips_the_summary_does_not_list():
    text = "....s\n4 passed, 1 skipped in 0.12s\n"  # run without -ra: no SKIPPED lines
    checked = ci_skips(text)
    assert checked.returncode == 1 and "counted 1 skipped" in checked.stdout
    assert ci_skips("....\n4 passed in 0.12s\n").returncode == 0


def test_every_test_has_a_timeout(pytestconfig):
    assert float(pytestconfig.getini("timeout")) >= 60  # pyproject's default: generous, but finite


def test_a_hanging_test_fails_at_its_timeout(tmp_path):
    hang = """
        import threading

        def test_hangs():
            threading.Event().wait()  # never set
        """
    out = run_pytest(tmp_path, hang, False, "-o", "timeout=2")
    assert out.returncode == pytest.ExitCode.TESTS_FAILED, out.stdout[-3000:]
    assert "Timeout (>2.0s) from pytest-timeout" in out.stdout and "1 failed" in out.stdout, out.stdout[-3000:]


NESTED_RUN = """
    import subprocess, sys, textwrap

    def test_runs_a_pytest_of_its_own(tmp_path):
        (tmp_path / "test_inner.py").write_text(textwrap.dedent('''
            import pytest

            def test_a():
                pass

            def test_b():
                pytest.skip("some package is not installed")

            def test_c():
                assert False
            '''))
        inner = subprocess.run([sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", str(tmp_path)],
                               cwd=tmp_path, capture_output=True, text=True)
        print(inner.stdout)  # captured output, printed from column 0 under the failure
        assert inner.returncode == 0, inner.stdout  # quoted again, behind "E"

    def test_passes():
        pass
    """


def test_ci_reads_each_run_s_own_count_not_a_nested_pytest_s(tmp_path):
    """A test that runs pytest in a subprocess and fails shows that pytest's summary and count lines (a skip, a
    failure) in its failure: the counts and the skip check read the outer run's own closing lines only (a CI run
    once summed 3 failed and 6 skipped from a run of 1 failed and 2 skipped)."""
    out = run_pytest(tmp_path, NESTED_RUN, ci=False)
    assert out.returncode == pytest.ExitCode.TESTS_FAILED
    assert out.stdout.count(" skipped in ") >= 2  # the inner run's count line shows up, and not only once
    log = tmp_path / "pytest.log"
    log.write_text(out.stdout)
    other = tmp_path / "pytest-other.log"
    other.write_text("....s\n===== 4 passed, 1 skipped in 0.12s =====\n")

    def count(what: str, *logs: Path) -> int:
        run = subprocess.run(["bash", str(ROOT / ".ci" / "count"), what, *map(str, logs)], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    assert (count("passed", log), count("failed", log), count("skipped", log), count("error", log)) == (1, 1, 0, 0)
    assert (count("passed", log, other), count("skipped", log, other)) == (5, 1)
    checked = ci_skips(out.stdout)
    assert checked.returncode == 0 and checked.stdout == "", checked.stdout
    checked = subprocess.run(["bash", str(ROOT / ".ci" / "skips"), str(log), str(other)], capture_output=True,
                             text=True, timeout=60)  # the second run's skip is counted but not listed
    assert checked.returncode == 1 and "counted 1 skipped, its summary lists 0" in checked.stdout, checked.stdout


@pytest.mark.parametrize("flag, needs", [("", "about 12 GB"), ("--vllm", "about 6 GB"), ("--peers", "about 4 GB")])
def test_setup_refuses_a_disk_too_small_before_it_installs_anything(tmp_path, flag, needs):
    """A full disk showed as "[Errno 28] No space left on device" at the end of pip's log (a CI machine had too
    little): each environment's setup checks the free space first and says what it needs, creating nothing."""
    (tmp_path / ".ci").mkdir()
    for name in (".ci/setup", "pyproject.toml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_df = bin_dir / "df"  # 1 GB free everywhere
    fake_df.write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
                       "echo '/dev/x 100000000 99000000 1048576 99% /'\n")
    fake_df.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TOKENOMY_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(["bash", str(tmp_path / ".ci/setup"), *filter(None, [flag])], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "not enough disk: 1 GB free here" in done.stderr and needs in done.stderr, done.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".venv")]
