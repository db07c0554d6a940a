"""The moto servers of this process: started once, reused and reset across local stacks.

This module owns the registry of the moto processes (:mod:`broker.local.moto_process`) this
Python process started, and the reset that empties one between stacks. Handler modules are
imported once per process, and what they build at cold start (boto3 clients, settings) keeps the
endpoint URL it saw. So a second :class:`~broker.local.stack.LocalStack` in the same process (the
next pytest test) must see AWS at the same URL: with port 0, :func:`moto_server` starts one
server on a free port the first time and returns that same server afterwards; the stack then
resets its state (:func:`reset_moto`, ``POST /moto-api/reset``) instead of starting a new one.
Physical names are deterministic, so the resolved environment is identical too.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from typing import Any

from broker.local import moto_process

__all__ = ["moto_cpu_seconds", "moto_server", "reset_moto", "shutdown_moto_servers"]

logger = logging.getLogger(__name__)

_moto_lock = threading.Lock()
_moto_servers: dict[int, Any] = {}


def moto_server(port: int) -> int:
    """A running moto process on 127.0.0.1 (``port`` 0: any existing one, else a free port)."""
    with _moto_lock:
        if port == 0 and _moto_servers:
            existing: int = min(_moto_servers)
            return existing
        if port in _moto_servers:
            return port
        process, actual = moto_process.spawn(port)
        _moto_servers[actual] = process
        logger.info("moto server on http://127.0.0.1:%d (pid %d)", actual, process.pid)
        return actual


def shutdown_moto_servers() -> None:
    """Stop every moto process this process started (they also die with it)."""
    with _moto_lock:
        for process in _moto_servers.values():
            process.terminate()
            process.wait(timeout=10)
        _moto_servers.clear()


def moto_cpu_seconds() -> float:
    """CPU seconds used so far by the moto processes this process started (benchmarks)."""
    with _moto_lock:
        return sum(moto_process.cpu_seconds(p) for p in _moto_servers.values())


def reset_moto(moto_url: str) -> None:
    """Empty the moto server at ``moto_url`` (every service, every resource)."""
    request = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our 127.0.0.1
        response.read()
