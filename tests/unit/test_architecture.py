"""Architecture rules checked on the source, without importing it.

The import graph of ``broker/`` and ``workers/`` has no circle: every ``import`` counts (at
module level, inside a function, or under ``TYPE_CHECKING``), and importing ``a.b.c`` counts as
importing the packages ``a`` and ``a.b`` too (Python runs their ``__init__`` first).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("broker", "workers")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imported_names(module: str, path: Path) -> set[str]:
    """Every module name ``module`` imports (absolute; relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # ``from package import module`` imports the module too.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, with the parent packages each import runs."""
    modules = source_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges: set[str] = set()
        for name in imported_names(module, path):
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                target = ".".join(parts[:end])
                if target in modules and target != module and not module.startswith(target + "."):
                    edges.add(target)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
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
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_circles_in_broker_and_workers() -> None:
    # GIVEN the import graph of broker/ and workers/, read from the source
    graph = import_graph()
    # WHEN looking for modules that import each other, directly or through others
    cycles = find_cycles(graph)
    # THEN there are none
    assert cycles == []


def test_the_circle_finder_reports_modules_that_import_each_other() -> None:
    # GIVEN a graph where a -> b -> c -> a, and d imports a without being imported back
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    # WHEN looking for circles
    cycles = find_cycles(graph)
    # THEN the three modules of the circle are reported together, and d is not
    assert cycles == [["a", "b", "c"]]


def test_an_import_under_type_checking_counts(tmp_path: Path) -> None:
    # GIVEN a module that imports another only for type hints
    path = tmp_path / "mod.py"
    path.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from broker.sweep import x\n"
    )
    # WHEN reading its imports
    names = imported_names("broker.mod", path)
    # THEN that import is an edge of the graph (a circle through it is still a circle)
    assert "broker.sweep" in names


#: Modules over 500 lines. Only the head-node agent: it travels to the head node as one
#: stdlib-only file (inlined in the SSM command), so it cannot be a package.
LONG_MODULES = {"broker/agent/hpcb_agent.py"}


def test_no_other_module_passes_500_lines() -> None:
    # GIVEN every module of broker/ and workers/
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in source_modules().values()
    }
    # WHEN keeping those over 500 lines
    long = {name for name, count in lengths.items() if count > 500}
    # THEN only the agent is
    assert long <= LONG_MODULES
