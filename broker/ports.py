"""Ports: what the domain needs from the outside world, as typing Protocols.

Adapters (``broker.adapters``, ``broker.runners``) implement them with boto3 or subprocess; the
domain and the handlers only ever see these interfaces, so tests can pass fakes explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from broker.agent.protocol import AgentRequest, AgentResponse
from broker.batches.arrays import PendingFields, SharedFields, SubmittedChunk, SweepArray
from broker.clusters.models import ClusterMessage
from broker.clusters.records import (
    ClusterInfo,
    ClusterOperation,
    ClusterRecord,
    ClusterStatus,
    ComputeFleetStatus,
    ProviderAnswer,
    StackObservation,
)
from broker.jobs.records import JobRecord, JobState
from broker.notifications.events import Event
from broker.requests.models import QueueMessage, RequestRecord, RequestResult
from broker.schema import ErrorInfo
from broker.users.models import UserMapping


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


@dataclass(frozen=True)
class Limits:
    """Back-pressure limits on submissions accepted but not yet in Slurm."""

    cluster_backlog: int
    owner_inflight: int
    retry_after_seconds: int = 10


class RequestStore(Protocol):
    """Durable request records with conditional, monotonic state changes."""

    def create(self, record: RequestRecord) -> None:
        """Write a new record. Raises ConflictError if the id exists."""

    def create_request(self, request: RequestRecord) -> None:
        """Write a request that is not a submission (cancel, output, cluster operations).

        Raises ConflictError if the id exists.
        """

    def get(self, request_id: str) -> RequestRecord:
        """Read a record. Raises NotFoundError."""

    def mark_dispatched(self, request_id: str) -> RequestRecord | None:
        """Move ACCEPTED|DISPATCHED -> DISPATCHED and count an attempt.

        Returns the updated record, or None when the record is already final (nothing to do).
        Raises NotFoundError when there is no such record.
        """

    def record_success(self, request_id: str, result: RequestResult) -> bool:
        """Move to SUCCEEDED with the result. Returns False if it was already final."""

    def record_failure(self, request_id: str, error: ErrorInfo) -> bool:
        """Move to FAILED with the error. Returns False if it was already final."""

    def record_retry(self, request_id: str, error: ErrorInfo) -> None:
        """Keep the state, remember the last transient error (visible while retrying)."""

    def record_cancelled(self, request_id: str) -> bool:
        """Move to CANCELLED (its job was cancelled before submission). False if final."""

    def claim_requeue(self, request_id: str, now: datetime, stale_before: datetime) -> bool:
        """Claim the re-send of a request's lost message: set ``requeued_at`` to ``now``.

        Conditional: only if the request is still ACCEPTED and was never re-sent, or last
        re-sent before ``stale_before``. So however many sweeps overlap, at most one re-sends
        in each period.

        Returns:
            True when this caller holds the claim (and should send); False otherwise
            (dispatched, final, claimed by another sweep, or no such request).
        """

    def clear_request_notification(self, request_id: str, state: str) -> bool:
        """Mark the request's ``state`` event published."""


class JobStore(Protocol):
    """Durable job records with conditional, forward-only state changes.

    A final transition also marks the record ``notify_pending`` and keeps it in the
    "needs attention" index until its notification is published (``clear_job_notification``).
    """

    def create_submission(
        self,
        request: RequestRecord,
        job: JobRecord,
        limits: Limits | None = None,
        *,
        ready_cluster: bool = False,
    ) -> None:
        """Write a submit request and its job together (both or neither), within ``limits``,
        and, with ``ready_cluster``, only if the cluster's record (if any) accepts jobs.

        Raises BackpressureError when a limit is reached, ConflictError if the id exists,
        ClusterNotReadyError when the cluster cannot take jobs now.
        """

    def get_job(self, job_id: str) -> JobRecord:
        """Read a job by broker id (a batch item without a record reads as SUBMITTING from its
        batch). Raises NotFoundError."""

    def find_job(self, cluster: str, ref: str) -> JobRecord:
        """Read a job by broker id or Slurm id on ``cluster``. Raises NotFoundError."""

    def list_jobs(
        self,
        owner: str,
        cluster: str,
        *,
        states: frozenset[JobState] | None,
        name: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        next_token: str | None,
    ) -> tuple[list[JobRecord], str | None]:
        """The owner's jobs on a cluster, newest first, one page at a time."""

    def start_submission(self, job_id: str) -> JobRecord | None:
        """Mark a SUBMITTING job as being submitted; None if it is no longer SUBMITTING."""

    def cancel_unsubmitted(self, job_id: str) -> bool:
        """SUBMITTING and not started -> CANCELLED. False if the submission already started.

        A batch item without a record gets one, CANCELLED, unless its chunk has started.
        """

    def record_submitted(self, job_id: str, slurm_job_id: str) -> bool:
        """SUBMITTING -> PENDING with the Slurm id (and its alias). False if not SUBMITTING."""

    def record_submit_failed(self, job_id: str, reason: str) -> bool:
        """SUBMITTING -> SUBMIT_FAILED. False if not SUBMITTING."""

    def update_job(
        self,
        job: JobRecord,
        new_state: JobState,
        changes: Mapping[str, Any],
        *,
        recorded: bool = True,
    ) -> bool:
        """Write ``changes`` (and ``new_state``) if the job is still in ``job.state``; a job
        read from its sweep chunk's arrays (``recorded=False``): its first record, if it has
        none yet."""

    def clear_job_notification(self, job_id: str, state: str) -> bool:
        """Mark the job's ``state`` event published (leaves the attention index if final)."""


class BatchStore(Protocol):
    """A batch request, its chunks' markers and its items' outcomes.

    An item has no record of its own until its outcome is written (``record_batch_outcomes``);
    until then it is read from its batch (``broker.batches.unrecorded_item``). A sweep's items
    submitted in an array read from their chunk's arrays until Slurm moves them
    (``record_arrays``; ``broker.batches.arrays``).
    """

    def create_batch(
        self, request: RequestRecord, limits: Limits | None = None, *, ready_cluster: bool = False
    ) -> None:
        """Write a batch request and reserve its items in the backlog counters, within
        ``limits`` (BackpressureError), checking the cluster as ``JobStore.create_submission``
        does. No item gets a record here.
        """

    def jobs_by_id(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """Read many job records at once (ids without a record are left out)."""

    def job_states(self, job_ids: list[str]) -> dict[str, JobState]:
        """The states of the jobs that have a record of their own (the others are left out)."""

    def start_chunk(self, batch_id: str, chunk: int, job_ids: list[str]) -> set[str]:
        """Mark a batch chunk as being submitted; return its jobs still to submit (no record
        yet, or a record still SUBMITTING; for a sweep chunk, none its recorded arrays hold:
        ``job_ids`` are its items in position order).

        After this, none of the chunk's jobs can be cancelled as unsubmitted: a cancel either
        happened before (the job is not returned) or goes through Slurm. A chunk the sweep
        claimed as lost (``reap_chunk``) is never started: the answer is then empty.
        """

    def submitted_chunk(self, batch_id: str, chunk: int) -> SubmittedChunk | None:
        """A sweep chunk's recorded arrays (None: none recorded). Strongly consistent."""

    def record_arrays(
        self, batch: RequestRecord, chunk: int, arrays: list[SweepArray], shared: SharedFields
    ) -> list[SweepArray]:
        """Record a started sweep chunk's submitted arrays, the record of their tasks: counted
        out of the backlog and into the batch's SUBMITTED, each array once however many
        deliveries record it. Returns the arrays this call recorded.

        Raises TransientError when the chunk was not started.
        """

    def record_pending(self, chunk: SubmittedChunk, pending: dict[str, PendingFields]) -> None:
        """Write what Slurm says of some of the chunk's arrays' pending tasks (by array key):
        what its items without a record show while they wait."""

    def settle_chunk(self, chunk: SubmittedChunk) -> bool:
        """Take a sweep chunk out of the attention index (every item of its arrays has a record
        of its own), unless its arrays changed since ``chunk`` was read (then False)."""

    def chunks_started(self, batch_id: str, chunk_count: int) -> set[int]:
        """Which of a batch's chunks ``0 .. chunk_count - 1`` need no reaping: started by a
        worker (``start_chunk``), or lost with their loss recorded (``reap_done``).

        A chunk claimed lost whose reap did not finish (an error, a crash) is left out, so the
        next sweep finishes it. Strongly consistent.
        """

    def reap_chunk(self, batch_id: str, chunk: int) -> bool:
        """Claim a chunk no worker started as lost, so that no worker ever starts it.

        Returns:
            True when the caller is to fail the chunk's items: the chunk had no marker (claimed
            now), or was claimed lost by a reap that did not finish (``reap_done`` not called).
            False when a worker started it, or its loss is recorded already.
        """

    def reap_done(self, batch_id: str, chunk: int) -> None:
        """Record that every item of a chunk claimed lost has its outcome (the reap is over)."""

    def record_batch_outcomes(
        self, batch: RequestRecord, outcomes: list[JobRecord]
    ) -> tuple[list[str], list[str]]:
        """Write the records of batch jobs leaving SUBMITTING: PENDING with their Slurm id, or
        SUBMIT_FAILED with a reason. A job another writer already moved (an earlier delivery,
        a cancel) is left as it is. Returns the job ids this call moved (submitted, failed).
        """


class AttentionIndex(Protocol):
    """The records the sweep must look at (an index of the table in AWS)."""

    def attention(self) -> tuple[list[JobRecord], list[RequestRecord], list[SubmittedChunk]]:
        """Jobs and requests that are not final, or whose notification is pending; sweep
        chunks some of whose items still read from their arrays (no record of their own)."""


class Notifier(Protocol):
    """Publishes notification events (SNS)."""

    def publish(self, event: Event) -> None:
        """Publish one event. Raises TransientError when the topic cannot take it now."""


class ArtifactStore(Protocol):
    """Stores larger outputs and hands out time-limited links to them (S3)."""

    def put_text(self, key: str, text: str) -> str:
        """Store ``text`` under ``key``; return a presigned GET URL."""


class RequestQueue(Protocol):
    """The queue between the API and the job worker."""

    def send(self, message: QueueMessage) -> None:
        """Enqueue one message. Raises TransientError when the queue cannot take it now."""

    def send_many(self, messages: list[QueueMessage]) -> list[QueueMessage]:
        """Enqueue many messages (batched); return those that could not be sent."""

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


class ClusterRecords(Protocol):
    """Reads cluster records (what job submission and the local directory need)."""

    def get_cluster(self, name: str) -> ClusterRecord | None:
        """The cluster's record, or None when the broker has none."""


class ClusterStore(ClusterRecords, Protocol):
    """Durable cluster records; every change is conditional on the status and operation read.

    One operation at a time: ``pending_request_id`` names it until it ends, and only the writer
    holding that request id may move the cluster. A cluster operation's request is written with
    ``RequestStore``, except where it must be written together with the cluster.
    """

    def create_cluster(self, request: RequestRecord, cluster: ClusterRecord) -> None:
        """Write a create request and the new cluster together (both or neither).

        Raises ConflictError when a cluster of that name exists (and is not DELETE_COMPLETE).
        """

    def start_operation(
        self,
        request: RequestRecord,
        name: str,
        operation: ClusterOperation,
        allowed: frozenset[ClusterStatus],
    ) -> None:
        """Write the request and mark it the cluster's pending operation, if the cluster is the
        request owner's, in one of ``allowed``, and has no pending operation.

        Raises ConflictError otherwise (NotFoundError when the cluster is absent).
        """

    def list_clusters(
        self, owner: str, *, limit: int, next_token: str | None
    ) -> tuple[list[ClusterRecord], str | None]:
        """The owner's clusters by name, one page at a time."""

    def update_cluster(
        self,
        record: ClusterRecord,
        *,
        status: ClusterStatus | None = None,
        changes: Mapping[str, Any] | None = None,
        finish: bool = False,
    ) -> ClusterRecord | None:
        """Write ``changes`` (and ``status``) if the cluster is still as ``record`` says (same
        status, same pending operation). ``finish`` ends the pending operation. A status change
        marks its event pending. Returns the new record, or None when the condition failed.
        """

    def active_clusters(self) -> list[ClusterRecord]:
        """Clusters with an operation in progress, or whose event is still to publish."""

    def clear_cluster_notification(self, name: str, status: str) -> bool:
        """Mark the cluster's ``status`` event published."""

    def mark_in_progress(self, request_id: str) -> bool:
        """Move a request to IN_PROGRESS (the provider accepted it). False if it was final."""


class ClusterQueue(Protocol):
    """The queue between the API and the cluster worker (separate from the jobs' queue)."""

    def send_cluster(self, message: ClusterMessage) -> None:
        """Enqueue one cluster operation. Raises TransientError when the queue cannot."""


class ClusterProvider(Protocol):
    """Provisions clusters: ParallelCluster (``pcluster.lib``), or the local simulation.

    Every call raises ConfigurationRejectedError (validators said no, with their findings),
    NotFoundError, ConflictError or PermanentError for what retrying cannot fix, and
    TransientError (ThrottledError) for throttling and limits.
    """

    def create(self, message: ClusterMessage) -> ProviderAnswer:
        """Start creating the cluster (or validate it: ``dryrun``)."""

    def update(self, message: ClusterMessage) -> ProviderAnswer:
        """Start updating the cluster (or validate it and list the changes: ``dryrun``)."""

    def delete(self, name: str, region: str | None) -> ClusterInfo:
        """Start deleting the cluster."""

    def describe(self, name: str, region: str | None) -> ClusterInfo:
        """What the provider says about the cluster now."""

    def update_compute_fleet(
        self, name: str, status: str, region: str | None
    ) -> ComputeFleetStatus:
        """Request START_REQUESTED or STOP_REQUESTED; return the fleet's status."""

    def list(self, region: str | None) -> list[ClusterInfo]:
        """Every cluster in the region."""


class StackStatusReader(Protocol):
    """Reads a cluster's stack status cheaply (CloudFormation DescribeStacks; no pcluster)."""

    def read(self, name: str, region: str | None, stack_arn: str | None) -> StackObservation:
        """The stack's status as a cluster status, and the first failure's reason if failed.

        A stack that does not exist (deleted) answers ``exists=False``.
        """


class UserMappings(Protocol):
    """The broker's record of each caller's POSIX user per cluster (``broker.users``)."""

    def get_mapping(self, cluster: str, principal: str) -> UserMapping | None:
        """The mapping of ``principal`` on ``cluster`` (strongly consistent), or None."""
        ...

    def put_mapping(self, mapping: UserMapping) -> None:
        """Create or replace the mapping of its principal on its cluster."""
        ...

    def delete_mapping(self, cluster: str, principal: str) -> bool:
        """Remove it; False if there was none."""
        ...

    def list_mappings(
        self, cluster: str, *, limit: int, next_token: str | None
    ) -> tuple[list[UserMapping], str | None]:
        """A page of the cluster's mappings, by principal."""
        ...


class UserResolver(Protocol):
    """Who a caller runs as on a cluster."""

    def user_for(self, cluster: str, owner: str) -> str:
        """The POSIX user ``owner`` acts as on ``cluster``.

        Raises:
            NotMappedError: none (default deny: no fallback, never root).
        """
        ...
