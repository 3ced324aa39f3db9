"""Domain apps import one way only: positions < strategies < orders < market; no cycle.

Core modules (models, services, selectors, costing, ticks) import only their own app and the
apps below it; the edges (views, serializers, admin) may use any domain app's core, but no core
module imports an edge; no domain module imports realtime; and the module graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("positions", "strategies", "orders", "market")  # lowest first
EDGE_MODULES = frozenset({"views", "serializers", "admin", "permissions"})


def _domain_imports() -> dict[str, set[str]]:
    """module -> the domain modules it imports (module level, function bodies included)."""
    graph: dict[str, set[str]] = {}
    for app in LAYERS:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            targets: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                targets.update(n for n in names if n.split(".")[0] in (*LAYERS, "realtime"))
            graph[module] = targets
    return graph


def _app(module: str) -> str:
    return module.split(".")[0]


def _is_edge(module: str) -> bool:
    return module.split(".")[-1] in EDGE_MODULES


def test_no_domain_module_imports_realtime():
    offenders = {
        module: sorted(t for t in targets if _app(t) == "realtime")
        for module, targets in _domain_imports().items()
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_core_modules_import_only_their_own_app_and_the_apps_below():
    rank = {app: index for index, app in enumerate(LAYERS)}
    upward = {
        f"{module} -> {target}"
        for module, targets in _domain_imports().items()
        if not _is_edge(module)
        for target in targets
        if _app(target) in rank and rank[_app(target)] > rank[_app(module)]
    }
    assert upward == set()


def test_no_core_module_imports_an_edge_module():
    wrong = {
        f"{module} -> {target}"
        for module, targets in _domain_imports().items()
        if not _is_edge(module)
        for target in targets
        if _is_edge(target)
    }
    assert wrong == set()


def test_the_domain_module_graph_has_no_cycle():
    graph = _domain_imports()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, "import cycle: " + " -> ".join(
            [*visiting[visiting.index(module) :], module]
        )
        visiting.append(module)
        for target in graph.get(module, ()):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
