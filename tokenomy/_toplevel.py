"""The repository's folders are sub-packages of tokenomy, never top-level packages, even where Python finds them.

``kernels/``, ``tools/``, ``agents/``, ``graphs/``, ``planners/`` and ``benchmarks/`` install as
``tokenomy.kernels``, ``tokenomy.tools`` and so on. But whenever the repository root is on ``sys.path`` (``python
-c`` or ``python -`` run there, a REPL or a notebook started there, pytest with ``tests/__init__.py``), a plain
``import kernels`` finds the folder before any installed package of that name: Hugging Face's ``kernels``, which
transformers imports, the ``agents`` of the OpenAI Agents SDK, PyPI's ``tools`` or ``graphs``. Each folder's
``__init__`` therefore checks the name it was imported under; imported as a top-level module, it calls
``defer_to_installed``, which loads the installed package in its place or, where there is none, gives an empty
namespace package, as Python does for a folder without an ``__init__``.

This module is a leaf: it imports nothing from tokenomy.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["FOLDERS", "defer_to_installed"]

# The repository's folders that are sub-packages of tokenomy (pyproject.toml's package-dir).
FOLDERS = ("kernels", "tools", "agents", "graphs", "planners", "benchmarks")


def _resolve(entry: str) -> Path | None:
    try:
        return Path(entry or os.getcwd()).resolve()
    except (OSError, RuntimeError):  # a path entry that cannot be resolved (a deleted cwd, a loop)
        return None


def _inside(spec: ModuleSpec, folder: Path) -> bool:
    places = [spec.origin] if spec.has_location and spec.origin else []
    places += list(spec.submodule_search_locations or [])
    resolved = [_resolve(place) for place in places]
    return any(path is not None and path.is_relative_to(folder) for path in resolved)


def _installed_spec(name: str, folder: Path) -> ModuleSpec | None:
    """The spec ``import name`` would find if the repository root were not on ``sys.path``."""
    root = folder.parent
    path = [entry for entry in sys.path if _resolve(entry) != root]
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        if finder is importlib.machinery.PathFinder:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
        else:
            spec = find_spec(name, None)
        if spec is not None and not _inside(spec, folder):
            return spec
    return None


def defer_to_installed(name: str) -> None:
    """Put the installed top-level package ``name`` in ``sys.modules`` in place of the repository's folder.

    Called by a folder's ``__init__`` when it runs under its bare name. The import statement that found the folder
    then returns the installed package (``importlib`` reads the module back from ``sys.modules`` after running
    it). Where no package of that name is installed, it returns what Python gives for a folder without an
    ``__init__``: an empty namespace package (no ``__file__``, no version, no submodules), never tokenomy's code.
    Libraries that probe for an optional package by importing it (transformers does, for ``kernels``) then see
    that it is not installed.
    """
    stand_in = sys.modules[name]
    folder = Path(stand_in.__file__ or "").resolve().parent
    spec = _installed_spec(name, folder)
    if spec is None:
        sys.modules[name] = _empty_namespace(name, folder)
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if spec.loader is None:  # an installed namespace package (Python 3.10): nothing to run
        return
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if sys.modules.get(name) is module:
            sys.modules[name] = stand_in  # the import machinery removes the failed module under its name
        raise


def _empty_namespace(name: str, folder: Path) -> ModuleType:
    module = importlib.util.module_from_spec(ModuleSpec(name, None, is_package=True))

    def __getattr__(attr: str) -> Any:
        # Dunder probes (__file__, __version__, ...) get a plain AttributeError, as on any namespace package.
        hint = "" if attr.startswith("__") else f": the folder {folder} is tokenomy.{name}; import it so"
        raise AttributeError(f"module {name!r} (no package of this name is installed) has no attribute {attr!r}{hint}")

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    return module
