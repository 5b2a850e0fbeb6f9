"""The floors of docs/ARCHITECTURE.md §1, read from the source: the core imports no ``slicer`` and no Qt, the
MRML layer no Qt, and no module of the package takes part in an import cycle at import time."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "RLRegistration"
PACKAGES = ("RLRegistrationLib", "RLRegistrationMRML", "RLRegistrationQt", "RLRegistrationWeb")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(MODULE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (MODULE_DIR / package).rglob("*.py"):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


def _all_imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _import_time_edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports while it is being imported: statements at module level
    (also inside a top-level ``if``/``try``), not those inside functions, which run later."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    edges: set[str] = set()

    def visit(statements) -> None:
        for node in statements:
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    target = ".".join([*anchor, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                if target in modules:
                    edges.add(target)
                for alias in node.names:  # ``from . import submodule``
                    if f"{target}.{alias.name}" in modules:
                        edges.add(f"{target}.{alias.name}")

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    edges.discard(name)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _all_edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of the package ``name`` imports, also inside functions (a deferred import is still a
    dependency: two modules that need each other are one concept split in two)."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            edges.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            anchor = base[: len(base) - (node.level - 1)] if node.level else []
            target = ".".join([*anchor, *([node.module] if node.module else [])])
            if target in modules:
                edges.add(target)
            edges.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules)
    edges.discard(name)
    return edges


def test_no_module_of_the_package_is_in_an_import_cycle():
    modules = _sources()
    assert len(modules) > 80, "the package's modules were not found"
    graph = {name: _import_time_edges(name, path, modules) for name, path in modules.items()}
    assert sum(map(len, graph.values())) > 100, "no import found: the reader is broken"
    assert _cycles(graph) == []


def test_no_two_modules_need_each_other_even_through_deferred_imports():
    modules = _sources()
    graph = {name: _all_edges(name, path, modules) for name, path in modules.items()}
    # the lazy top-level package re-exports its API: every module may name it, it names them
    graph = {n: {t for t in e if t not in PACKAGES} for n, e in graph.items() if n not in PACKAGES}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_library_modules_do_not_import_slicer_or_qt():
    for path in (MODULE_DIR / "RLRegistrationLib").rglob("*.py"):
        for name in _all_imports(ast.parse(path.read_text(encoding="utf-8"))):
            assert name.split(".")[0] not in ("slicer", "qt", "ctk", "vtk", "trame", "trame_slicer"), (
                path,
                name,
            )


def test_mrml_layer_imports_no_qt():
    for path in (MODULE_DIR / "RLRegistrationMRML").rglob("*.py"):
        for name in _all_imports(ast.parse(path.read_text(encoding="utf-8"))):
            assert name.split(".")[0] not in ("qt", "ctk", "PySide6", "PythonQt"), (path, name)
            assert name not in ("slicer.i18n", "slicer.ScriptedLoadableModule"), (path, name)


def test_the_web_app_never_imports_the_slicer_panel():
    for path in (MODULE_DIR / "RLRegistrationWeb").rglob("*.py"):
        for name in _all_imports(ast.parse(path.read_text(encoding="utf-8"))):
            assert name.split(".")[0] not in ("RLRegistration", "RLRegistrationQt", "qt", "ctk"), (path, name)


def test_the_core_and_mrml_layers_never_import_the_qt_layer():
    for package in ("RLRegistrationLib", "RLRegistrationMRML"):
        for path in (MODULE_DIR / package).rglob("*.py"):
            for name in _all_imports(ast.parse(path.read_text(encoding="utf-8"))):
                assert name.split(".")[0] != "RLRegistrationQt", (path, name)
