"""X-Ray must never hold what a caller may not see elsewhere: Powertools Tracer records a
decorated function's return value as segment metadata by default, and the API's answers carry job
output (``GET /v1/requests/{id}`` of an output read) and the workers' results name jobs and
files. Every Tracer decoration under broker/ and workers/ must say ``capture_response=False``
(issue 12, "Tracing")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CAPTURING = {"capture_lambda_handler", "capture_method"}


def tracer_decorations(path: Path) -> list[tuple[int, ast.expr]]:
    """(line, decorator) of every ``@tracer.capture_*`` in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(target, ast.Attribute) and target.attr in CAPTURING:
                    found.append((decorator.lineno, decorator))
    return found


def captures_responses(decorator: ast.expr) -> bool:
    """True unless the decorator is called with ``capture_response=False``."""
    if not isinstance(decorator, ast.Call):
        return True
    for keyword in decorator.keywords:
        if keyword.arg == "capture_response":
            return not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False)
    return True


def test_no_tracer_decoration_records_return_values() -> None:
    # GIVEN every module of the Lambda functions
    modules = [*ROOT.joinpath("broker").rglob("*.py"), *ROOT.joinpath("workers").rglob("*.py")]
    # WHEN reading their Tracer decorations
    decorations = {
        f"{path.relative_to(ROOT)}:{line}": decorator
        for path in modules
        for line, decorator in tracer_decorations(path)
    }
    # THEN there are some (the handlers are traced), and none records what it returns
    assert len(decorations) >= 5
    assert [where for where, d in decorations.items() if captures_responses(d)] == []


def test_the_check_sees_a_bare_decoration(tmp_path: Path) -> None:
    # GIVEN a handler decorated the default way (records its response)
    path = tmp_path / "handler.py"
    path.write_text("@tracer.capture_lambda_handler\ndef handler(event, context):\n    pass\n")
    # WHEN read / THEN the check flags it
    ((_, decorator),) = tracer_decorations(path)
    assert captures_responses(decorator)
