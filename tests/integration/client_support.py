"""Helpers for the client and CLI tests: a fault-injecting transport, a recording sleep, Slurm
look-ups and clean-up of the held jobs the tests leave in the shared Slurm."""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.client import ConnectionFailedError, HttpAnswer
from broker.client.transport import UrllibTransport

ALICE = "arn:aws:iam::000000000000:user/alice"
BOB = "arn:aws:iam::000000000000:user/bob"
CLUSTER_CONFIG = """Image:
  Os: alinux2
HeadNode:
  InstanceType: t3.micro
  Ssh:
    KeyName: demo
Scheduling:
  Scheduler: slurm
  SlurmQueues:
  - Name: queue1
    ComputeResources:
    - Name: t3micro
      InstanceType: t3.micro
      MinCount: 0
      MaxCount: 4
"""

#: What a fault does: answer instead of the API ("before"), or drop the connection after the
#: API has answered ("after": the call happened, the caller never hears of it).
Fault = tuple[str, HttpAnswer | None]


def too_many(retry_after: str = "1") -> Fault:
    body = b'{"error": {"code": "TOO_MANY_REQUESTS", "message": "slow down", "transient": true}}'
    return ("before", HttpAnswer(429, {"Retry-After": retry_after}, body))


def unavailable() -> Fault:
    body = b'{"error": {"code": "ENQUEUE_FAILED", "message": "queue down", "transient": true}}'
    return ("before", HttpAnswer(503, {"Retry-After": "1"}, body))


def dropped_after_answer() -> Fault:
    return ("after", None)


@dataclass
class FaultyTransport:
    """A real HTTP transport with scripted faults per request (a fake fault source only)."""

    plan: Callable[[str, str, dict[str, str], int], Fault | None] = lambda *_: None
    calls: Counter[str] = field(default_factory=Counter)
    keys: list[str | None] = field(default_factory=list)
    real: UrllibTransport = field(default_factory=UrllibTransport)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> HttpAnswer:
        route = f"{method} {url.split('?', maxsplit=1)[0]}"
        with self.lock:
            self.calls[route] += 1
            number = self.calls[route]
            self.keys.append(headers.get("Idempotency-Key"))
        fault = self.plan(method, url, headers, number)
        if fault is not None and fault[0] == "before" and fault[1] is not None:
            return fault[1]
        answer = self.real.send(method, url, body, headers)
        if fault is not None and fault[0] == "after":
            raise ConnectionFailedError(f"{route}: connection dropped (injected)")
        return answer

    def count(self, predicate: Callable[[str], bool]) -> int:
        """Calls whose ``METHOD url`` matches."""
        return sum(n for route, n in self.calls.items() if predicate(route))


@dataclass
class RecordingSleep:
    """Records each requested pause and sleeps only a token time (no timing in assertions)."""

    pauses: list[float] = field(default_factory=list)
    real: float = 0.05

    def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        threading.Event().wait(min(seconds, self.real))


def slurm_jobs_named(name: str) -> list[tuple[str, str]]:
    """(Slurm id, comment) of the jobs Slurm holds with this name."""
    out = subprocess.run(
        ["squeue", "-h", "-a", "-t", "all", "-n", name, "-o", "%i|%k"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [tuple(line.split("|", 1)) for line in out.splitlines() if "|" in line]  # type: ignore[misc]


def cancel_named(name: str) -> None:
    """Cancel this test's jobs (by their unique name) so the shared Slurm forgets them."""
    subprocess.run(["scancel", "-n", name], capture_output=True, check=False)
