"""Fixtures of the integration tests: two real, non-root Linux users jobs run as.

``hpcbtest-a`` and ``hpcbtest-b`` are normal users (uid >= 1000, homes under /home, mode 700),
created once by scripts/local-user.sh (idempotent) and left for the next run.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USER_A = "hpcbtest-a"
USER_B = "hpcbtest-b"


@pytest.fixture(scope="session")
def test_users(slurm: dict[str, str]) -> tuple[str, str]:
    """The two users (created if missing: needs root, as the local Slurm does)."""
    subprocess.run([str(ROOT / "scripts" / "local-user.sh"), USER_A, USER_B], check=True)
    return USER_A, USER_B


@pytest.fixture(autouse=True)
def _traversable_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Let the jobs' users reach the directories tests open to them (``chmod 0o777``) under
    pytest's temp root: pytest makes /tmp/pytest-of-root and pytest-N private (0700), and jobs no
    longer run as root. 0711: searchable, not listable. Before every test, not once: another
    pytest run starting on the machine makes /tmp/pytest-of-root 0700 again (seen: 14 jobs of a
    running suite failed to enter their directories)."""
    base = tmp_path_factory.getbasetemp()
    # Only pytest's own directories: with --basetemp=/tmp/x the parent is /tmp itself, which
    # must stay 1777 (a run made it 0711 once, and every job writing /tmp/slurm-N.out failed).
    ours = [base.parent] if base.parent.name.startswith("pytest-of-") else []
    for directory in (*ours, base):
        directory.chmod(0o711)


def make_user_dir(user: str) -> Path:
    """A fresh directory in ``user``'s home, owned by that user, mode 700."""
    entry = pwd.getpwnam(user)
    path = Path(entry.pw_dir) / "hpcb-tests" / uuid.uuid4().hex[:12]
    for directory in (path.parent, path):
        directory.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(directory, entry.pw_uid, entry.pw_gid)
    return path


@pytest.fixture
def dir_a(test_users: tuple[str, str]) -> Iterator[Path]:
    """A directory of user A's (removed afterwards)."""
    path = make_user_dir(USER_A)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def dir_b(test_users: tuple[str, str]) -> Iterator[Path]:
    """A directory of user B's (removed afterwards)."""
    path = make_user_dir(USER_B)
    yield path
    shutil.rmtree(path, ignore_errors=True)
