"""The shape of the package: one public face, cheap imports, no import circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ktune

PACKAGE = Path(ktune.__file__).parent


def test_the_lazy_names_of_ktune_are_the_api():
    # Kept apart on purpose (``import ktune`` must not import ktune.api): kept equal here.
    from ktune import api

    assert list(ktune._API) == list(api.__all__)
    for name in api.__all__:
        assert getattr(ktune, name) is getattr(api, name)
        assert name in ktune.__all__


def test_a_trial_worker_loads_no_driver_side():
    code = (
        "import importlib, pkgutil, sys\n"
        "import ktune.keras, ktune.trainables\n"
        "for m in pkgutil.iter_modules(ktune.trainables.__path__):\n"
        "    importlib.import_module('ktune.trainables.' + m.name)\n"
        "driver = ('ktune.experiment', 'ktune.api', 'ktune.report', 'ktune.tuner',\n"
        "          'ktune.results', 'ray.tune.tuner')\n"
        "print(sorted(m for m in driver if m in sys.modules))\n"
        "assert 'tensorflow' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path], module_level: bool) -> set[str]:
    """The ktune modules ``path`` imports (``from ktune import storage`` -> ktune.storage;
    what only a type checker sees is left out)."""

    def owner(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if module_level and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(child, ast.Import):
                found.update(owner(a.name) for a in child.names if a.name.startswith("ktune"))
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                if child.module.split(".")[0] == "ktune":
                    for a in child.names:
                        full = f"{child.module}.{a.name}"
                        found.add(full if full in modules else owner(child.module))
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_circle():
    modules = _modules()
    graph = {m: _imports(p, modules, module_level=True) - {m} for m, p in modules.items()}
    assert _cycles(graph) == []


def test_the_experiment_folder_is_read_below_the_runner_and_the_export():
    # export.py and experiment.py both read the folder through ktune.experiment_dir; the
    # export never reaches back into the runner, not even inside a function.
    modules = _modules()
    export_imports = _imports(modules["ktune.export"], modules, module_level=False)
    assert "ktune.experiment_dir" in export_imports
    assert not export_imports & {"ktune.experiment", "ktune.api", "ktune.results"}
    below = _imports(modules["ktune.experiment_dir"], modules, module_level=False)
    assert below <= {"ktune.errors", "ktune.storage", "ktune.config"}
