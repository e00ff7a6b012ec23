"""The package's layering, read from its sources with ``ast``: nothing of tokenomy is imported, nothing runs.

Each rule is a function over ``{repo-relative path: source}``, so that the tests at the end can plant faults:

1. Floors, low to high: kernels < tools < planners < agents < graphs < the trace < benchmarks < the root modules
   (``tokenomy/*.py``: the CLI, the viewer, the public API). The trace (``tokenomy/trace.py``, the run's event
   file: its writer and reader) is a floor of its own below the benchmarks, which read what they ran from it;
   the viewer draws from the trace and the benchmarks' plots, so it sits on the roof. A module imports its own
   floor and the floors below; the ``LEAVES`` are importable from every floor and import only leaves. Imports
   inside functions count too, except in notebook display hooks (``DISPLAY_HOOKS``: a ``_repr_html_`` may draw
   with a renderer of a higher floor, on demand).
2. No import cycle through module-level imports (imports inside functions or under ``if TYPE_CHECKING:`` run
   later or never). ``import tokenomy.x.y`` runs ``tokenomy/x/__init__`` first, so it is an edge to that too,
   unless the importer is inside ``tokenomy.x`` (already running); a submodule taking names from its own
   package's ``__init__`` is an edge to it, and a cycle where that ``__init__`` imports the submodule.
3. No private name (``_x``) imported from another package; private *modules* (``tokenomy._threads``) are fine.
4. ``__all__`` names nothing twice and only names that the module binds (the lazy names its ``__getattr__``
   serves count); a package's ``__init__`` lists every public name it binds, except submodules and the names
   it imports from outside tokenomy (``Path``, ``Any``: implementation details, not the package's API).
5. Tools call no model: of kernels they import only ``MODEL_FREE_KERNELS``, but the explicit ``llm`` tool.
"""

from __future__ import annotations

import ast
import functools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("leaf modules", "kernels", "tools", "planners", "agents", "graphs", "the trace", "benchmarks", "root modules")
ROOT_FLOORS = {"tokenomy.trace": "the trace"}  # root modules below the roof
LEAVES = {  # importable from every floor; each imports nothing of tokenomy today, and rule 1 keeps it so
    "tokenomy.errors": "the exception types that every floor raises",
    "tokenomy.events": "event kinds and context, the OTel message helpers: every floor emits events",
    "tokenomy.svg": "the SVG primitives of the drawings (planners/render, graphs/render, viz)",
    "tokenomy._threads": "a daemon thread per blocking call, for the asyncio callers in kernels and tools",
    "tokenomy._toplevel": "every folder's __init__ calls it when imported under a top-level name",
}
DISPLAY_HOOKS = frozenset({"_repr_html_", "_repr_svg_", "_repr_png_", "_repr_mimebundle_"})


def package_dirs() -> dict[str, str]:
    """``{folder: package}`` for every package pyproject.toml installs, e.g. ``"tools/rag": "tokenomy.tools.rag"``
    (a package without a package-dir entry lies in its parent's folder, as setuptools has it)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    where = dict(config.get("package-dir", {}))
    for package in sorted(config["packages"], key=lambda p: p.count(".")):
        parent, _, last = package.rpartition(".")
        where.setdefault(package, f"{where[parent]}/{last}" if parent else package)
    return {where[package]: package for package in config["packages"]}


DIRS = package_dirs()


def package_sources() -> dict[str, str]:
    """The real package: the ``.py`` files of every installed package folder (so not tests/, examples/, build/)."""
    return {f"{d}/{file.name}": file.read_text() for d in DIRS for file in sorted((ROOT / d).glob("*.py"))}


@dataclass(frozen=True)
class Module:
    path: str  # repo-relative, as messages name it
    name: str  # dotted: tokenomy.planners.rewoo
    is_package: bool  # an __init__.py
    tree: ast.Module

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass(frozen=True)
class Import:
    module: Module  # the importer
    line: int
    target: str  # the tokenomy module it loads
    name: str | None  # the name taken from it (``from target import name``); None where a module is imported
    functions: tuple[str, ...]  # the enclosing functions, outermost first; () at module level
    type_checking: bool  # under ``if TYPE_CHECKING:``

    @property
    def where(self) -> str:
        how = f" (inside {self.functions[-1]}())" if self.functions else ""
        how += " (under TYPE_CHECKING)" if self.type_checking else ""
        return f"{self.module.path}:{self.line} imports {self.target}{how}"


def parse(files: dict[str, str]) -> dict[str, Module]:
    modules = {}
    for path, source in files.items():
        folder, _, stem = path.removesuffix(".py").rpartition("/")
        name = DIRS[folder] if stem == "__init__" else f"{DIRS[folder]}.{stem}"
        modules[name] = Module(path, name, stem == "__init__", _tree(path, source))
    return modules


@functools.cache
def _tree(path: str, source: str) -> ast.Module:  # each check parses the package: once is enough
    return ast.parse(source, path)


def _ours(name: str) -> bool:
    return name == "tokenomy" or name.startswith("tokenomy.")


def _type_checking(test: ast.expr) -> bool:
    return getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


def _dead(test: ast.expr) -> bool:
    """Whether an ``if`` body never runs in the installed package: ``TYPE_CHECKING``, ``__name__ != "..."``."""
    return _type_checking(test) or (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
                                    and test.left.id == "__name__" and isinstance(test.ops[0], ast.NotEq))


def _statements(node: ast.AST, functions: tuple[str, ...] = (), type_checking: bool = False) -> Iterator[tuple]:
    """Every import statement under ``node``, with the functions around it and whether TYPE_CHECKING guards it."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, functions, type_checking
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _statements(child, (*functions, child.name), type_checking)
        elif isinstance(child, ast.If) and _type_checking(child.test):
            yield from _statements(ast.Module(child.body, []), functions, True)
            yield from _statements(ast.Module(child.orelse, []), functions, type_checking)
        else:  # the `__name__ != ...` branches of the __init__s import only the leaf _toplevel: kept
            yield from _statements(child, functions, type_checking)


def _resolve(module: Module, node: ast.Import | ast.ImportFrom, known: dict[str, Module]) -> list[tuple]:
    """``(alias, target, name)`` per name of an import statement: the tokenomy module it loads (None where it is
    not tokenomy's) and the name taken from it (None where a module is imported)."""
    if isinstance(node, ast.Import):
        return [(alias, alias.name if _ours(alias.name) else None, None) for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: against the importer's package
        package = module.package.split(".")
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    subs = {alias.name: f"{base}.{alias.name}" for alias in node.names}  # `from package import submodule`
    return [(a, None, None) if not _ours(base) else (a, subs[a.name], None) if subs[a.name] in known
            else (a, base, a.name) for a in node.names]


def imports(modules: dict[str, Module]) -> list[Import]:
    return [Import(module, stmt.lineno, target, name, functions, type_checking)
            for module in modules.values() for stmt, functions, type_checking in _statements(module.tree)
            for _, target, name in _resolve(module, stmt, modules) if target]


def floor(module: str) -> int:
    """0 for the leaves, 1 (kernels) to 7 (benchmarks) for the folders and the trace, 8 for ``tokenomy`` and its
    other root modules."""
    sub = module.split(".")[1:2]
    if module in LEAVES:
        return 0
    if module in ROOT_FLOORS:
        return FLOORS.index(ROOT_FLOORS[module])
    return FLOORS.index(sub[0]) if sub and sub[0] in FLOORS else len(FLOORS) - 1


def floor_violations(files: dict[str, str]) -> list[str]:
    """Imports of a floor above the importer's (rule 1)."""
    return list(dict.fromkeys(
        f"{i.where}: {FLOORS[floor(i.module.name)]} may not import {FLOORS[floor(i.target)]} (a floor above)"
        for i in imports(parse(files))
        if floor(i.target) > floor(i.module.name) and not DISPLAY_HOOKS.intersection(i.functions)))


def import_graph(modules: dict[str, Module], lazy: bool = False) -> nx.DiGraph:
    """Module -> the modules its imports run (module-level imports only, unless ``lazy``); edges keep ``where``."""
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for imp in imports(modules):
        parts, importer = imp.target.split("."), imp.module.name
        # the packages above the target that are not running yet, then the target
        for n in range(1, len(parts) + 1) if lazy or not (imp.functions or imp.type_checking) else ():
            target = ".".join(parts[:n])
            running = n < len(parts) and (importer + ".").startswith(target + ".")
            if target in modules and target != importer and not running and not graph.has_edge(importer, target):
                graph.add_edge(importer, target, where=imp.where)
    return graph


def cycle_violations(files: dict[str, str], lazy: bool = False) -> list[str]:
    """One shortest cycle in each strongly connected set of modules (rule 2), each step with its file and line."""
    graph, found = import_graph(parse(files), lazy), []
    for component in sorted(nx.strongly_connected_components(graph), key=min):
        if len(component) > 1:
            sub = graph.subgraph(component)
            cycle = min(([a, *nx.shortest_path(sub, b, a)] for a in sorted(sub) for b in sub.successors(a)), key=len)
            steps = " -> ".join(graph.edges[a, b]["where"] for a, b in zip(cycle, cycle[1:], strict=False))
            found.append(f"import cycle among {len(component)} modules: {steps}")
    return found


def private_violations(files: dict[str, str]) -> list[str]:
    """Private names taken from a module of another package (rule 3)."""
    modules, found = parse(files), []
    for imp in imports(modules):
        home = modules[imp.target].package if imp.target in modules else imp.target.rpartition(".")[0]
        name = imp.name or ""
        if name.startswith("_") and not name.startswith("__") and home != imp.module.package:
            found.append(f"{imp.where}: takes the private name {name}, but {imp.module.package} is not {home}")
    return found


def _strings(node: ast.AST | None, env: dict[str, list[str] | None]) -> list[str] | None:
    """The strings of a static expression (lists, tuples, dict keys, ``+``, ``sorted``, names bound to such,
    one-loop comprehensions over such); None where it is not static."""
    match node:
        case ast.Constant(value=str(text)):
            return [text]
        case ast.List(elts=items) | ast.Tuple(elts=items) | ast.Set(elts=items) | ast.Dict(keys=items):
            parts = [_strings(i.value if isinstance(i, ast.Starred) else i, env) for i in items]
            return None if None in parts else [s for part in parts for s in part or ()]
        case ast.BinOp(op=ast.Add(), left=left, right=right):
            a, b = _strings(left, env), _strings(right, env)
            return None if a is None or b is None else a + b
        case ast.Call(func=ast.Name(id="sorted" | "list" | "tuple" as call), args=[arg]):
            found = _strings(arg, env)
            return sorted(found) if call == "sorted" and found is not None else found
        case ast.Name(id=name):
            return env.get(name)
        case ast.DictComp(key=ast.Name(id=key), generators=[ast.comprehension(target=ast.Name(id=var), iter=it)]):
            return _strings(it, env) if key == var else None
    return None


def _top(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements that run at import time in the installed package, out of their if/try/with blocks."""
    out: list[ast.stmt] = []
    for stmt in body:
        if isinstance(stmt, ast.If):
            out += _top(stmt.orelse if _dead(stmt.test) else stmt.body + stmt.orelse)
        elif isinstance(stmt, ast.Try):
            out += _top(stmt.body + [s for h in stmt.handlers for s in h.body] + stmt.orelse + stmt.finalbody)
        else:
            out += _top(stmt.body) if isinstance(stmt, ast.With) else [stmt]
    return out


def _bindings(module: Module, known: dict[str, Module]) -> tuple[dict[str, tuple[int, str]], dict]:
    """``{name: (line, kind)}`` for the names a module binds at import time, and the static strings of each
    name bound to such (``__all__``, ``_LAZY``), grown by ``+=``, ``.update`` and ``.extend``."""
    bound: dict[str, tuple[int, str]] = {}
    env: dict[str, list[str] | None] = {}
    for stmt in _top(module.tree.body):
        match stmt:
            case ast.Assign(targets=[ast.Name(id=name)], value=value) | ast.AnnAssign(target=ast.Name(id=name),
                                                                                      value=value):
                env[name] = _strings(value, env)
            case ast.AugAssign(target=ast.Name(id=name), value=value) | ast.Expr(ast.Call(
                    func=ast.Attribute(value=ast.Name(id=name), attr="update" | "extend"), args=[value])):
                before, more = env.get(name), _strings(value, env)
                env[name] = None if before is None or more is None else before + more
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound[stmt.name] = (stmt.lineno, "a definition")
        elif isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
            for target in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                names = [n.id for n in ast.walk(target) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
                bound.update((name, (stmt.lineno, "an assignment")) for name in names)
        elif isinstance(stmt, ast.Import | ast.ImportFrom):
            for alias, target, name in _resolve(module, stmt, known):
                kind = ("a foreign import" if target is None else "an import" if name or isinstance(stmt, ast.Import)
                        else "a submodule")
                bound[alias.asname or alias.name.partition(".")[0]] = (stmt.lineno, kind)
    return bound, env


def all_violations(files: dict[str, str]) -> list[str]:
    """``__all__`` against what each module binds (rule 4)."""
    modules, found = parse(files), []
    for module in modules.values():
        bound, env = _bindings(module, modules)
        public = {n: b for n, b in bound.items() if n[0] != "_" and b[1] not in ("a foreign import", "a submodule")}
        if "__all__" not in bound:
            if module.is_package and public:
                found.append(f"{module.path}: binds public names ({', '.join(public)}) but has no __all__")
            continue
        line, names = bound["__all__"][0], env.get("__all__")
        if names is None:
            found.append(f"{module.path}:{line} __all__ is not a static list of strings: it cannot be checked")
            continue
        lazy = {s for f in _top(module.tree.body) if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
                for n in ast.walk(f) if isinstance(n, ast.Name) and n.id != "__all__" for s in env.get(n.id) or ()}
        found += [f"{module.path}:{line} __all__ names {n!r} {k} times" for n, k in Counter(names).items() if k > 1]
        found += [f"{module.path}:{line} __all__ names {n!r}, which {module.name} neither defines nor imports"
                  for n in dict.fromkeys(names) if n not in bound and n not in lazy]
        found += [f"{module.path}:{b[0]} binds the public name {n!r} ({b[1]}) but __all__ does not list it"
                  for n, b in public.items() if module.is_package and n not in names]
    return found


MODEL_FREE_KERNELS = frozenset({"tokenomy.kernels.tokens", "tokenomy.kernels.usage", "tokenomy.kernels.types",
                                "tokenomy.kernels.embedded"})
"""What tools may use of kernels: token counts, usage, the result types, the cache directory; no engine."""
MODEL_TOOLS = frozenset({"tools/builtin/llm.py"})  # the explicit `llm` tool: it calls the model it is given


def model_violations(files: dict[str, str]) -> list[str]:
    """Tools call no model (rule 5): a module of tools/ imports of kernels only ``MODEL_FREE_KERNELS`` (type hints
    under TYPE_CHECKING aside), but the explicit ``llm`` tool; a step that asks a model is a strategy's."""
    return [f"{i.where}: tools call no model; only {', '.join(sorted(MODEL_TOOLS))} may reach an engine"
            for i in imports(parse(files)) if i.module.name.startswith("tokenomy.tools")
            and i.module.path not in MODEL_TOOLS and i.target.startswith("tokenomy.kernels")
            and i.target not in MODEL_FREE_KERNELS and not i.type_checking]


CHECKS = {"floors": floor_violations, "cycles": cycle_violations, "private": private_violations,
          "models": model_violations,
          "__all__": all_violations}


def test_the_package_is_found() -> None:
    modules = parse(package_sources())
    assert {"tokenomy.cli", "tokenomy.kernels.usage", "tokenomy.tools.rag.store", "tokenomy.benchmarks.prefix"} \
        <= set(modules)
    assert set(LEAVES) <= set(modules), "a leaf named in LEAVES is gone: update LEAVES"


@pytest.mark.parametrize("rule", CHECKS)
def test_the_package_keeps_its_layering(rule: str) -> None:
    violations = CHECKS[rule](package_sources())
    assert not violations, f"{len(violations)} {rule} violation(s):\n" + "\n".join(violations)


CLEAN = {  # a small package that keeps every rule; each case of PLANTED replaces one file with a faulty one
    "tokenomy/__init__.py": "",
    "tokenomy/errors.py": "class UserError(Exception): ...\n",
    "tokenomy/_threads.py": "def pool(): ...\n",
    "kernels/__init__.py": "from .usage import Usage\n\n__all__ = ['Usage']\n",
    "kernels/usage.py": "from tokenomy import _threads\nfrom tokenomy.errors import UserError\n\n\nclass Usage: ...\n",
    "planners/__init__.py": "from pathlib import Path\n\nfrom .rewoo import Rewoo\n\n__all__ = ['Rewoo']\n",
    "planners/ast.py": "class Plan: ...\n",
    "planners/rewoo.py": "from tokenomy.kernels.usage import Usage\nfrom tokenomy.planners.ast import Plan\n",
    "agents/__init__.py": "",
    "agents/answers.py": "def normalize(text): ...\n\n\ndef _merge(a, b): ...\n",
}
UP = "planners may not import agents (a floor above)"
LAZY = ("from .usage import Usage\n\n_LAZY = {name: '.train' for name in ('Train', 'fit')}\n"
        "__all__ = ['Usage', *sorted(_LAZY)]\n")
NOT_BOUND = "which tokenomy.kernels neither defines nor imports"
PLANTED = [  # rule, the file replaced, its faulty source, the violations expected
    pytest.param("floors", "planners/rewoo.py",
                 "from tokenomy.agents.answers import normalize\n\n\ndef run():\n    import tokenomy.agents.answers\n",
                 [f"planners/rewoo.py:1 imports tokenomy.agents.answers: {UP}",
                  f"planners/rewoo.py:5 imports tokenomy.agents.answers (inside run()): {UP}"], id="upward"),
    pytest.param("floors", "tokenomy/errors.py", "from tokenomy.kernels import Usage\n",
                 ["tokenomy/errors.py:1 imports tokenomy.kernels: leaf modules may not import kernels (a floor above)"],
                 id="leaf-importing-a-floor"),
    pytest.param("floors", "planners/ast.py",
                 "class Plan:\n    def _repr_html_(self):\n        from tokenomy.agents import answers\n",
                 [], id="display-hook-is-not-flagged"),
    pytest.param("cycles", "planners/ast.py", "import tokenomy.planners.rewoo\n",
                 ["import cycle among 2 modules: planners/ast.py:1 imports tokenomy.planners.rewoo"
                  " -> planners/rewoo.py:2 imports tokenomy.planners.ast"], id="cycle"),
    pytest.param("cycles", "planners/ast.py", "def later():\n    import tokenomy.planners.rewoo\n",
                 [], id="lazy-cycle-is-not-flagged"),
    pytest.param("cycles", "planners/ast.py", "from . import Rewoo\n",
                 ["import cycle among 3 modules: planners/__init__.py:3 imports tokenomy.planners.rewoo -> planners/"
                  "rewoo.py:2 imports tokenomy.planners.ast -> planners/ast.py:1 imports tokenomy.planners"],
                 id="submodule-importing-its-package-init"),
    pytest.param("private", "planners/ast.py", "from tokenomy.agents.answers import _merge, normalize\n",
                 ["planners/ast.py:1 imports tokenomy.agents.answers: takes the private name _merge,"
                  " but tokenomy.planners is not tokenomy.agents"], id="private-name"),
    pytest.param("private", "agents/policy.py", "from .answers import _merge\n", [], id="private-name-in-its-package"),
    pytest.param("models", "tools/search.py", "def rerank():\n    from tokenomy.kernels.registry import load_engine\n",
                 ["tools/search.py:2 imports tokenomy.kernels.registry (inside rerank()): tools call no model; only "
                  "tools/builtin/llm.py may reach an engine"], id="a-tool-loading-a-model"),
    pytest.param("__all__", "kernels/__init__.py",
                 "from .usage import Usage\nfrom .usage import UsageLedger\n\n__all__ = ['Usage', 'Usage', 'Ledger']\n",
                 ["kernels/__init__.py:4 __all__ names 'Usage' 2 times",
                  f"kernels/__init__.py:4 __all__ names 'Ledger', {NOT_BOUND}",
                  "kernels/__init__.py:2 binds the public name 'UsageLedger' (an import) but __all__ does not list it"],
                 id="__all__-duplicate-missing-unlisted"),
    pytest.param("__all__", "kernels/__init__.py", LAZY + "\n\ndef __getattr__(name):\n    return _LAZY.get(name)\n",
                 [], id="__all__-lazy-names-of-getattr"),
    pytest.param("__all__", "kernels/__init__.py", LAZY,
                 [f"kernels/__init__.py:4 __all__ names 'Train', {NOT_BOUND}",
                  f"kernels/__init__.py:4 __all__ names 'fit', {NOT_BOUND}"], id="__all__-lazy-names-without-getattr"),
]


def test_a_clean_package_keeps_every_rule() -> None:
    assert {rule: check(CLEAN) for rule, check in CHECKS.items()} == {rule: [] for rule in CHECKS}


@pytest.mark.parametrize(("rule", "path", "source", "expected"), PLANTED)
def test_a_planted_fault_is_caught(rule: str, path: str, source: str, expected: list[str]) -> None:
    assert CHECKS[rule]({**CLEAN, path: source}) == expected
