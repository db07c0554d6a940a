"""Run the local stack as a child process (what ``make demo`` and ``make bench`` do).

The stack runs in its own process, as it does under ``make up``, so clients measure it over
real HTTP without sharing an interpreter (or its GIL) with it. Ports are free ones and the run
file is private, so a developer's own ``make up`` stack is left alone.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Launched:
    """Where a launched stack answers."""

    url: str
    moto_url: str
    region: str
    notifications_queue_url: str | None


@contextmanager
def launched_stack(
    slurm_env: Path,
    log_path: Path,
    timeout: float = 60,
    *,
    principal: str | None = None,
    map_user: str | None = "hpcb-dev",
    env: dict[str, str] | None = None,
    schedules: bool = True,
) -> Iterator[Launched]:
    """Start ``python -m broker.local up`` on free ports; yield where it answers; stop it.

    ``principal`` is the stack's default caller and administrator; it runs as ``map_user``
    on the local clusters (scripts/local-user.sh creates hpcb-dev). ``env``: extra environment
    of the handlers; ``schedules``: False runs no scheduled function (no sweep).

    Raises:
        RuntimeError: the stack exited or did not answer within ``timeout`` seconds.
    """
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run_file = Path(tempfile.mkdtemp(prefix="hpcb-launch-")) / "stack.json"
    command = [sys.executable, "-m", "broker.local", "--run-file", str(run_file), "up"]
    command += ["--api-port", str(port), "--moto-port", "0", "--slurm-env", str(slurm_env)]
    command += ["--principal", principal] if principal else []
    command += ["--map-user", map_user] if map_user else []
    command += [arg for key, value in (env or {}).items() for arg in ("--env", f"{key}={value}")]
    command += [] if schedules else ["--no-schedules"]
    with log_path.open("wb") as log:
        stack = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        info = _wait_until_up(url, stack, timeout, run_file)
        yield Launched(
            url=url,
            moto_url=info["moto_url"],
            region=info["region"],
            notifications_queue_url=info.get("notifications_queue_url"),
        )
    finally:
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stack.kill()
            stack.wait(timeout=10)


def _wait_until_up(
    url: str, stack: subprocess.Popen[bytes], timeout: float, run_file: Path
) -> dict[str, Any]:
    """The run file's data once the API answers and the run file is written: ``up`` writes it
    after the ``--map-user`` mapping, and the API answers before (a caller would be refused)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.poll() is not None:
            raise RuntimeError(f"the local stack exited with code {stack.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v1/openapi.json", timeout=2):  # noqa: S310
                info = json.loads(run_file.read_text())
            if isinstance(info, dict):
                return info
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the local stack did not answer within {timeout}s")
