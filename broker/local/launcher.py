"""Run the local stack as a child process (what ``make demo`` and ``make bench`` do).

The stack runs in its own process, as it does under ``make up``, so clients measure it over
real HTTP without sharing an interpreter (or its GIL) with it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def launched_stack(slurm_env: Path, log_path: Path, timeout: float = 60) -> Iterator[str]:
    """Start ``python -m broker.local up`` on a free port; yield its base URL; stop it.

    Raises:
        RuntimeError: the stack exited or did not answer within ``timeout`` seconds.
    """
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "broker.local",
        "up",
        "--api-port",
        str(port),
        "--slurm-env",
        str(slurm_env),
        "--no-state-file",
    ]
    with log_path.open("wb") as log:
        stack = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, stack, timeout)
        yield url
    finally:
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stack.kill()
            stack.wait(timeout=10)


def _wait_until_up(url: str, stack: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.poll() is not None:
            raise RuntimeError(f"the local stack exited with code {stack.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v1/openapi.json", timeout=2):  # noqa: S310
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"the local stack did not answer within {timeout}s")
