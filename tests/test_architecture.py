"""The shape of the package: one public face, cheap imports, small modules, and imports
that point one way.

The import graph is read from the source with ``ast`` (nothing is imported), so those
checks cost milliseconds. Every import of a ktune module counts, also one inside a
function: a lazy import still ties two modules together (imports under
``if TYPE_CHECKING:`` serve annotations only). The one exception is the lazy re-export in
``ktune/__init__`` (``ktune.run`` loads ``ktune.api`` on first use), which is how
``import ktune`` stays cheap.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ktune

PACKAGE = Path(__file__).resolve().parents[1] / "ktune"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _walk_runtime(node: ast.AST):
    """Every node, less the bodies of ``if TYPE_CHECKING:`` (imports for annotations only)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            yield from (n for c in child.orelse for n in [c, *_walk_runtime(c)])
            continue
        yield child
        yield from _walk_runtime(child)


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ktune modules that ``name`` imports (a name imported from a package counts as
    its submodule when there is one, else as the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if name == "ktune" else list(_walk_runtime(tree))
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ktune"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "ktune":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_is_over_600_lines():
    sizes = {
        str(p.relative_to(PACKAGE.parent)): len(p.read_text(encoding="utf-8").splitlines())
        for p in PACKAGE.rglob("*.py")
    }
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"


def test_the_import_graph_has_no_circle():
    assert _cycles(_import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    # The check above could pass by finding nothing at all: show it finds a known circle.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_lazy_imports():
    graph = _import_graph()
    # cli imports the API inside its command functions; the graph must see those edges.
    assert "ktune.api" in graph["ktune.cli"]
    assert "ktune.storage" in graph["ktune.config"]


def test_search_spaces_and_config_import_no_tensorflow_module_of_ktune():
    """The driver validates configs without TensorFlow: nothing reachable from the config
    may be a ktune module that imports TensorFlow at its top."""
    graph = _import_graph()
    modules = _modules()
    heavy = set()
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n.split(".")[0] in ("tensorflow", "tf_keras") for n in names):
                heavy.add(name)
    assert "ktune.trainables.transformer" in heavy  # the check can see a TF module
    reachable, todo = set(), ["ktune.config"]
    while todo:
        m = todo.pop()
        if m not in reachable:
            reachable.add(m)
            todo.extend(graph[m])
    assert not (reachable & heavy), sorted(reachable & heavy)


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
        "          'ktune.results', 'ktune.tracking', 'ray.tune.tuner', 'mlflow', 'wandb')\n"
        "print(sorted(m for m in driver if m in sys.modules))\n"
        "assert 'tensorflow' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_experiment_folder_is_read_below_the_runner_and_the_export():
    # export.py and experiment.py both read the folder through ktune.experiment_dir; the
    # export never reaches back into the runner, not even inside a function.
    graph = _import_graph()
    assert "ktune.experiment_dir" in graph["ktune.export"]
    assert not graph["ktune.export"] & {"ktune.experiment", "ktune.api", "ktune.results"}
    assert graph["ktune.experiment_dir"] <= {"ktune.errors", "ktune.storage", "ktune.config"}
