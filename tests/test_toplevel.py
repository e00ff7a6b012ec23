"""The repository's folders never shadow installed packages of the same name (kernels, agents, tools, ...).

Every way of running Python from the repository root puts the root on ``sys.path``: ``python -c``, ``python -``,
a REPL, pytest with ``tests/__init__.py`` (this suite). transformers imports Hugging Face's ``kernels`` package,
which the project's ``kernels/`` folder used to shadow there.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tokenomy._toplevel import FOLDERS

ROOT = Path(__file__).resolve().parent.parent

# Prints, for each folder name, what `import name` gives: the module's file (None for a namespace package) and
# whether tokenomy's code ran under that name, or the error's type and message; then what transformers' probe
# for an optional package says of the name.
PROBE = textwrap.dedent("""
    import importlib, json, sys
    from transformers.utils.import_utils import _is_package_available
    seen = {}
    for name in sys.argv[1:]:
        probe = list(_is_package_available(name, return_version=True))
        try:
            module = importlib.import_module(name)
            ours = (module.__doc__ or "").startswith("tokenomy.")  # every folder's docstring starts so
            seen[name] = ["module", getattr(module, "__file__", None), ours, probe]
        except ImportError as exc:
            seen[name] = [type(exc).__name__, str(exc), probe]
    print(json.dumps(seen))
""")


def _python(*args: str, cwd: Path = ROOT, input: str | None = None, pythonpath: Path | None = None,
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, *args], cwd=cwd, input=input, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _probe(cwd: Path, pythonpath: Path | None = None) -> dict[str, list[str]]:
    out = _python("-c", PROBE, *FOLDERS, cwd=cwd, pythonpath=pythonpath)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fake_packages(where: Path) -> None:
    """A package of every folder's name, as another distribution would install it, with a submodule."""
    for name in FOLDERS:
        (where / name).mkdir(parents=True)
        (where / name / "__init__.py").write_text(f"WHO = 'installed {name}'\n")
        (where / name / "sub.py").write_text("VALUE = 42\n")


def test_from_the_root_an_installed_package_wins_over_the_folder(tmp_path):
    _fake_packages(tmp_path / "site")
    seen = _probe(ROOT, pythonpath=tmp_path / "site")
    for name in FOLDERS:
        assert seen[name][:3] == ["module", str(tmp_path / "site" / name / "__init__.py"), False], name
    # Submodules come from the installed package too, and so do its attributes.
    code = "import kernels.sub, agents; print(kernels.sub.VALUE, agents.WHO)"
    out = _python("-c", code, pythonpath=tmp_path / "site")
    assert out.returncode == 0 and out.stdout.split() == ["42", "installed", "agents"], out.stderr


def test_an_installed_namespace_package_wins_too(tmp_path):
    (tmp_path / "tools").mkdir()  # a namespace portion (no __init__), as some distributions ship
    (tmp_path / "tools" / "sub.py").write_text("VALUE = 7\n")
    out = _python("-c", "import tools, tools.sub; print(tools.sub.VALUE, list(tools.__path__))", pythonpath=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(maxsplit=1) == ["7", f"[{str(tmp_path / 'tools')!r}]\n"]


def test_from_the_root_imports_as_from_anywhere_else(tmp_path):
    """Differential: what `import kernels` etc. give in the root is what they give in another folder (the real
    Hugging Face `kernels` where transformers installed it), and what transformers' probe for an optional package
    says too. Where nothing is installed, the root gives what Python gives for any folder without an __init__
    there: an empty namespace package (transformers 5.16 imports it to probe, and crashed on an ImportError)."""
    elsewhere = _probe(tmp_path)
    at_root = _probe(ROOT)
    for name in FOLDERS:
        assert at_root[name][-1] == elsewhere[name][-1], name  # transformers' probe: installed or not, the same
        if elsewhere[name][0] == "module":
            assert at_root[name] == elsewhere[name], name
        else:  # not installed: at the root, an empty namespace package (a folder's), never tokenomy's code
            assert elsewhere[name][0] == "ModuleNotFoundError"
            assert at_root[name][:3] == ["module", None, False], at_root[name]
    code = "import agents\ntry:\n    agents.Agent\nexcept AttributeError as exc:\n    print(exc)\n"
    out = _python("-c", code)
    if elsewhere["agents"][0] != "module":
        assert "import it so" in out.stdout and "tokenomy.agents" in out.stdout, out.stdout + out.stderr
    # tokenomy's own sub-packages are unaffected.
    out = _python("-c", "import tokenomy.kernels, tokenomy.planners as p; print(sorted(p.STRATEGIES))")
    assert out.returncode == 0 and "rewoo" in out.stdout, out.stderr


@pytest.mark.parametrize("how", ["-c", "stdin", "repl"])
def test_transformers_imports_from_the_root(how):
    """The issue's failure: transformers imports `kernels`, and got the project's folder."""
    code = ("import tokenomy\nfrom transformers import LlamaConfig\nimport transformers.activations\n"
            "import kernels, sys\nprint('kernels from', getattr(kernels, '__file__', None))\n")
    if how == "-c":
        out = _python("-c", code)
    elif how == "stdin":  # `python - <<EOF`, as .ci/setup used to run
        out = _python("-", input=code)
    else:
        out = _python("-q", "-i", input=code)
    assert out.returncode == 0, out.stderr
    assert "kernels from" in out.stdout and str(ROOT / "kernels") not in out.stdout, out.stdout


def test_in_this_suite_the_root_is_on_sys_path_and_kernels_is_not_the_folder():
    assert any(Path(p or ".").resolve() == ROOT for p in sys.path)  # pytest put it there (tests/__init__.py)
    module = importlib.import_module("kernels")
    assert not (module.__doc__ or "").startswith("tokenomy.kernels")  # not tokenomy.kernels' code
    file = getattr(module, "__file__", None)
    assert file is None or not Path(file).resolve().is_relative_to(ROOT / "kernels")


def test_a_failing_installed_package_fails_as_itself(tmp_path):
    (tmp_path / "graphs").mkdir()
    (tmp_path / "graphs" / "__init__.py").write_text("raise RuntimeError('broken install')\n")
    code = ("import sys\ntry:\n    import graphs\nexcept RuntimeError as exc:\n    print('raised', exc)\n"
            "print('left', 'graphs' in sys.modules)\nimport tokenomy.graphs\nprint('ok')\n")
    out = _python("-c", code, pythonpath=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["raised broken install", "left False", "ok"]
