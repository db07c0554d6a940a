"""broker.local's modules import one another one way: no module reaches itself through its
imports (read statically; imports under ``if TYPE_CHECKING`` and inside functions are left out,
as they do not run when the module loads)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "broker.local"


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for path in (ROOT / "broker" / "local").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``broker.local`` that ``name`` imports when it loads."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*kept, base] if base else kept)
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t for t in submodules if t in modules] or [base]
        found |= {t for t in targets if t in modules and t != name}
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycles.append([*path[path.index(node) :], node])
            return
        if node in done:
            return
        for target in sorted(graph[node]):
            visit(target, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return cycles


def test_no_module_of_the_local_stack_imports_itself_in_a_circle() -> None:
    # GIVEN every module under broker/local and what each imports when it loads
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert f"{PACKAGE}.template.model" in graph  # the walk sees the subpackages too

    # WHEN the import graph is walked
    cycles = _cycles(graph)

    # THEN it has no circle
    assert cycles == []


def test_starting_the_local_stack_loads_no_handler_module_early() -> None:
    # GIVEN a fresh interpreter / WHEN it loads what `python -m broker.local up` loads before the
    # stack sets the handlers' environment (its CLI, and LocalStack)
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = (
        "import sys, broker.local.__main__, broker.local.stack; "
        "print(sorted(m for m in sys.modules if m in {'broker.observability', 'broker.wiring'}))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT).stdout.strip()  # fmt: skip
    # THEN neither Powertools' objects nor the wiring are loaded yet: loaded then, they would
    # read the process's environment (seen: no metrics namespace, every API call a 502)
    assert loaded == "[]"
