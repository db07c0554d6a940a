"""Ports: what the domain needs from the outside world, as typing Protocols.

Adapters (``broker.adapters``, ``broker.runners``) implement them with boto3 or subprocess; the
domain and the handlers only ever see these interfaces, so tests can pass fakes explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from broker.agent.protocol import AgentRequest, AgentResponse
from broker.models import ErrorInfo, JobResult, JobSubmitMessage, RequestRecord


@dataclass(frozen=True)
class ClusterTarget:
    """Where a cluster's head-node commands go.

    Attributes:
        name: cluster name.
        mode: ``ssm`` (a ParallelCluster head node reached through AWS Systems Manager) or
            ``local`` (this machine's Slurm, through a subprocess).
        instance_id: EC2 instance id of the head node (``ssm`` mode only).
    """

    name: str
    mode: Literal["ssm", "local"]
    instance_id: str | None = None


class RequestStore(Protocol):
    """Durable request records with conditional, monotonic state changes."""

    def create(self, record: RequestRecord) -> None:
        """Write a new record. Raises ConflictError if the id exists."""

    def get(self, request_id: str) -> RequestRecord:
        """Read a record. Raises NotFoundError."""

    def mark_dispatched(self, request_id: str) -> RequestRecord | None:
        """Move ACCEPTED|DISPATCHED -> DISPATCHED and count an attempt.

        Returns the updated record, or None when the record is already final (nothing to do).
        Raises NotFoundError when there is no such record.
        """

    def record_success(self, request_id: str, result: JobResult) -> bool:
        """Move to SUCCEEDED with the result. Returns False if it was already final."""

    def record_failure(self, request_id: str, error: ErrorInfo) -> bool:
        """Move to FAILED with the error. Returns False if it was already final."""

    def record_retry(self, request_id: str, error: ErrorInfo) -> None:
        """Keep the state, remember the last transient error (visible while retrying)."""


class RequestQueue(Protocol):
    """The queue between the API and the job worker."""

    def send(self, message: JobSubmitMessage) -> None:
        """Enqueue one message. Raises TransientError when the queue cannot take it now."""

    def delay_retry(self, event_source_arn: str, receipt_handle: str, seconds: int) -> None:
        """Make a received message visible again after ``seconds`` (retry back-off)."""


class ClusterDirectory(Protocol):
    """Knows which clusters exist and where their head node is; never chosen by the caller."""

    def resolve(self, cluster: str) -> ClusterTarget:
        """Return where the cluster's commands go. Raises ClusterNotFoundError."""


class CommandRunner(Protocol):
    """Runs the head-node agent with one request and returns its answer."""

    def run(self, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        """Run the agent on the target's head node.

        Raises:
            TransientError: throttling, timeouts (outcome unknown), head node unreachable.
            PermanentError: the command can never work (access denied, agent missing).
        """
