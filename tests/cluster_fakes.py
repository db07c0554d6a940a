"""Fakes of the provisioning ports (named as fakes: they provision nothing).

``FakePclusterProvider`` answers like ``pcluster.lib`` would, through the same port the real
adapter implements, from a script of answers or exceptions; ``FakeStackReader`` plays the
CloudFormation stack statuses the sweep reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from broker.clusters import (
    ClusterInfo,
    ClusterStatus,
    ComputeFleetStatus,
    ProviderAnswer,
    StackObservation,
)
from broker.clusters.models import ClusterMessage
from broker.ports import ClusterProvider, StackStatusReader


def info(name: str, status: ClusterStatus = ClusterStatus.CREATE_IN_PROGRESS) -> ClusterInfo:
    """A cluster summary as pcluster returns it from create/update/delete."""
    return ClusterInfo(
        name=name,
        region="us-east-1",
        status=status,
        version="3.16.1",
        scheduler="slurm",
        stack_arn=f"arn:aws:cloudformation:us-east-1:123456789012:stack/{name}/abc",
    )


@dataclass
class FakePclusterProvider:
    """ClusterProvider fake: each call pops the next scripted answer (or raises it)."""

    answers: list[object] = field(default_factory=list)
    calls: list[tuple[str, object]] = field(default_factory=list)

    def _next(self, operation: str, argument: object) -> object:
        self.calls.append((operation, argument))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def create(self, message: ClusterMessage) -> ProviderAnswer:
        answer = self._next("create", message)
        assert isinstance(answer, ProviderAnswer)
        return answer

    def update(self, message: ClusterMessage) -> ProviderAnswer:
        answer = self._next("update", message)
        assert isinstance(answer, ProviderAnswer)
        return answer

    def delete(self, name: str, region: str | None) -> ClusterInfo:
        answer = self._next("delete", name)
        assert isinstance(answer, ClusterInfo)
        return answer

    def describe(self, name: str, region: str | None) -> ClusterInfo:
        answer = self._next("describe", name)
        assert isinstance(answer, ClusterInfo)
        return answer

    def update_compute_fleet(
        self, name: str, status: str, region: str | None
    ) -> ComputeFleetStatus:
        answer = self._next("fleet", status)
        assert isinstance(answer, ComputeFleetStatus)
        return answer

    def list(self, region: str | None) -> list[ClusterInfo]:
        return []


@dataclass
class FakeStackReader:
    """StackStatusReader fake: the stack status of each cluster, set by the test."""

    stacks: dict[str, StackObservation] = field(default_factory=dict)
    reads: int = 0

    def set(self, name: str, status: ClusterStatus, reason: str | None = None) -> None:
        self.stacks[name] = StackObservation(
            exists=True, status=status, stack_status=status.value, reason=reason
        )

    def read(self, name: str, region: str | None, stack_arn: str | None) -> StackObservation:
        self.reads += 1
        return self.stacks.get(name, StackObservation(exists=False))


if TYPE_CHECKING:
    # Each fake implements every member of its port (checked by mypy in ``make lint``).
    _provider: ClusterProvider = FakePclusterProvider()
    _reader: StackStatusReader = FakeStackReader()
