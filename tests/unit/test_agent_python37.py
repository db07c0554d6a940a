"""The agent's minimum Python (3.7, Amazon Linux 2's python3) is checked statically by the
``vermin`` line of ``make lint`` on every run, whether or not a 3.7 interpreter exists here.
These tests run that exact line (read from the Makefile), so it cannot silently stop checking."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT = REPO_ROOT / "broker" / "agent" / "hpcb_agent.py"
BIN = REPO_ROOT / ".venv" / "bin"

#: Constructs Python 3.7 cannot run, each as one line appended to a copy of the agent.
TOO_NEW = [
    "if (_n := 1):\n    pass",  # 3.8: assignment expression
    "print('x'.removeprefix('a'))",  # 3.9: str method
    "_T = dict[str, int]",  # 3.9: builtin generic at runtime
    "def _f(a, /):\n    pass",  # 3.8: positional-only parameters
    "import zoneinfo",  # 3.9: module
    "_w = 1  # novm\n_z = (_y := 2)  # novm",  # a suppression comment must not hide it
]


def lint_argv(target: Path) -> list[str]:
    """The Makefile's vermin line, run on ``target`` instead of the agent."""
    (line,) = [
        line.strip()
        for line in (REPO_ROOT / "Makefile").read_text().splitlines()
        if line.strip().startswith("$(BIN)/vermin")
    ]
    argv = shlex.split(line.replace("$(BIN)", str(BIN)))
    assert argv[-1] == "broker/agent/hpcb_agent.py"
    return [*argv[:-1], str(target)]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def test_the_agent_needs_nothing_newer_than_python_37() -> None:
    # GIVEN the agent / WHEN make lint's vermin line checks it / THEN it passes
    completed = run(lint_argv(AGENT))
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.parametrize("line", TOO_NEW)
def test_a_construct_newer_than_python_37_fails_the_lint(tmp_path: Path, line: str) -> None:
    # GIVEN a copy of the agent with one construct Python 3.7 cannot run
    copy = tmp_path / "hpcb_agent.py"
    copy.write_text(AGENT.read_text() + "\n\n" + line + "\n")
    # WHEN make lint's vermin line checks it
    completed = run(lint_argv(copy))
    # THEN it fails and says which version the file would need
    assert completed.returncode != 0
    assert "require" in completed.stdout
