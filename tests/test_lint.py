"""The package stays ruff- and mypy-clean (both come with the test extra)."""

import pathlib
import shutil
import subprocess
import sys

from .conftest import require

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tool(name):
    exe = pathlib.Path(sys.executable).with_name(name)
    path = str(exe) if exe.exists() else shutil.which(name)
    if path is None:
        require(f"{name} (pip install 'tokenomy[test]')")
    return path


def test_ruff_clean():
    p = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy_clean():
    p = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
