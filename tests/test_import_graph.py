"""The package's import graph, read from the source: no module imports itself back through others (an import circle
works only as long as nothing at import time needs the other half, and makes each half impossible to understand,
test or move alone), and neither the voice engine nor the media gateway, each a process of its own, imports the web
application."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dialbridge

PACKAGE_DIR = Path(dialbridge.__file__).parent
ImportGraph = dict[str, set[str]]


def _module_names() -> dict[str, Path]:
    names: dict[str, Path] = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = [PACKAGE_DIR.name, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's own modules that one import statement names (`from pkg import sub` names `pkg.sub`)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    found = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
    if len(found) < len(node.names) and base in known:
        found.add(base)
    return found


def import_graph() -> ImportGraph:
    """module -> the package's modules it imports, at module level, inside functions and under TYPE_CHECKING alike:
    each is an arrow of the design, whenever it runs."""
    modules = _module_names()
    known = set(modules)
    graph: ImportGraph = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets |= _imported(node, module, is_package, known)
        graph[module] = targets - {module}
    return graph


def cycles(graph: ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, pending = work[-1]
            if pending:
                target = pending.pop()
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, sorted(graph[target])))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    graph: ImportGraph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "dialbridge.sip.transaction" in graph["dialbridge.sip.agent"]  # module level
    assert "dialbridge.engine.calls.webhooks" in graph["dialbridge.engine.calls"]  # a package's own __init__


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    arrows = [f"{a} -> {b}" for component in found for a in component for b in sorted(graph[a]) if b in component]
    assert found == [], "import cycles:\n  " + "\n  ".join(arrows)


@pytest.mark.parametrize("process", ["dialbridge.engine", "dialbridge.gateway"])
def test_a_process_of_its_own_does_not_import_the_web_application(process: str) -> None:
    """The voice engine and the media gateway each run as a process of their own: what they share with the web
    application lives below all three (e.g. `dialbridge.webhook_signing`), never in `dialbridge.web`."""
    graph = import_graph()
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        if module == process or module.startswith(process + ".")
        for target in sorted(targets)
        if target == "dialbridge.web" or target.startswith("dialbridge.web.")
    ]
    assert upward == []
