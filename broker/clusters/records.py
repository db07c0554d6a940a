"""Clusters: ParallelCluster's cluster statuses, the broker's cluster records, and the pure
rules that say which operation may start from which status and how a CloudFormation stack
status reads as a cluster status.

The statuses are ParallelCluster 3's ``clusterStatus`` values, and the stack -> cluster table
is ParallelCluster's own (``pcluster.api.converters.cloud_formation_status_to_cluster_status``),
so the broker reports what ``pcluster describe-cluster`` would, without importing pcluster.

A cluster's life is a graph, not a line (a cluster is updated many times), so "forward only" is
enforced per operation: every write is conditional on the status the writer read *and* on the
operation (request id) it belongs to, and only the moves of ``TRANSITIONS`` are legal.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from broker.errors import ClusterNotReadyError, ConflictError, PermanentError


class ClusterStatus(StrEnum):
    """ParallelCluster's ``clusterStatus``."""

    CREATE_IN_PROGRESS = "CREATE_IN_PROGRESS"
    CREATE_COMPLETE = "CREATE_COMPLETE"
    CREATE_FAILED = "CREATE_FAILED"
    UPDATE_IN_PROGRESS = "UPDATE_IN_PROGRESS"
    UPDATE_COMPLETE = "UPDATE_COMPLETE"
    UPDATE_FAILED = "UPDATE_FAILED"
    DELETE_IN_PROGRESS = "DELETE_IN_PROGRESS"
    DELETE_COMPLETE = "DELETE_COMPLETE"
    DELETE_FAILED = "DELETE_FAILED"

    @property
    def in_progress(self) -> bool:
        """Whether CloudFormation is still working on the cluster."""
        return self.value.endswith("_IN_PROGRESS")

    @property
    def usable(self) -> bool:
        """Whether jobs can run: the head node is up (an update keeps it running, and a failed
        update rolls back to the previous, running, configuration)."""
        return self in _USABLE


_USABLE = frozenset(
    {
        ClusterStatus.CREATE_COMPLETE,
        ClusterStatus.UPDATE_IN_PROGRESS,
        ClusterStatus.UPDATE_COMPLETE,
        ClusterStatus.UPDATE_FAILED,
    }
)
#: Stable statuses from which an update or a fleet change may start (as pcluster requires).
UPDATABLE = frozenset(
    {ClusterStatus.CREATE_COMPLETE, ClusterStatus.UPDATE_COMPLETE, ClusterStatus.UPDATE_FAILED}
)
#: Statuses from which a delete may start.
DELETABLE = frozenset({ClusterStatus.CREATE_FAILED, ClusterStatus.DELETE_FAILED, *UPDATABLE})

#: The one transition table of cluster statuses: from-status -> statuses it may move to.
TRANSITIONS: dict[ClusterStatus, frozenset[ClusterStatus]] = {
    ClusterStatus.CREATE_IN_PROGRESS: frozenset(
        {ClusterStatus.CREATE_COMPLETE, ClusterStatus.CREATE_FAILED}
    ),
    ClusterStatus.CREATE_COMPLETE: frozenset(
        {ClusterStatus.UPDATE_IN_PROGRESS, ClusterStatus.DELETE_IN_PROGRESS}
    ),
    ClusterStatus.CREATE_FAILED: frozenset({ClusterStatus.DELETE_IN_PROGRESS}),
    ClusterStatus.UPDATE_IN_PROGRESS: frozenset(
        {ClusterStatus.UPDATE_COMPLETE, ClusterStatus.UPDATE_FAILED}
    ),
    ClusterStatus.UPDATE_COMPLETE: frozenset(
        {ClusterStatus.UPDATE_IN_PROGRESS, ClusterStatus.DELETE_IN_PROGRESS}
    ),
    ClusterStatus.UPDATE_FAILED: frozenset(
        {ClusterStatus.UPDATE_IN_PROGRESS, ClusterStatus.DELETE_IN_PROGRESS}
    ),
    ClusterStatus.DELETE_IN_PROGRESS: frozenset(
        {ClusterStatus.DELETE_COMPLETE, ClusterStatus.DELETE_FAILED}
    ),
    ClusterStatus.DELETE_FAILED: frozenset({ClusterStatus.DELETE_IN_PROGRESS}),
    # A name whose cluster was deleted may be created again (a new record replaces it).
    ClusterStatus.DELETE_COMPLETE: frozenset(),
}


def can_transition(current: ClusterStatus, new: ClusterStatus) -> bool:
    """Whether ``current -> new`` is a legal move."""
    return new in TRANSITIONS[current]


class ComputeFleetStatus(StrEnum):
    """ParallelCluster's ``computeFleetStatus`` (Slurm: START/STOP; AWS Batch: ENABLE/DISABLE)."""

    START_REQUESTED = "START_REQUESTED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    PROTECTED = "PROTECTED"
    STOP_REQUESTED = "STOP_REQUESTED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    UNKNOWN = "UNKNOWN"
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"


ClusterOperation = Literal["create", "update", "delete", "fleet", "describe"]

#: The status an accepted operation puts the cluster in, and where it ends well or badly.
OPERATION_STATUSES: dict[str, tuple[ClusterStatus, ClusterStatus, ClusterStatus]] = {
    "create": (
        ClusterStatus.CREATE_IN_PROGRESS,
        ClusterStatus.CREATE_COMPLETE,
        ClusterStatus.CREATE_FAILED,
    ),
    "update": (
        ClusterStatus.UPDATE_IN_PROGRESS,
        ClusterStatus.UPDATE_COMPLETE,
        ClusterStatus.UPDATE_FAILED,
    ),
    "delete": (
        ClusterStatus.DELETE_IN_PROGRESS,
        ClusterStatus.DELETE_COMPLETE,
        ClusterStatus.DELETE_FAILED,
    ),
}


def outcome_of(operation: str, status: ClusterStatus) -> bool | None:
    """How ``status`` ends an operation: True (succeeded), False (failed), None (not yet)."""
    statuses = OPERATION_STATUSES.get(operation)
    if statuses is None:
        return None
    _, good, bad = statuses
    if status is good:
        return True
    if status is bad:
        return False
    return None


#: CloudFormation stack statuses that ParallelCluster reports under another cluster status
#: (its own table); every other stack status is the cluster status of the same name.
_STACK_TO_CLUSTER: dict[str, ClusterStatus] = {
    "ROLLBACK_IN_PROGRESS": ClusterStatus.CREATE_FAILED,
    "ROLLBACK_FAILED": ClusterStatus.CREATE_FAILED,
    "ROLLBACK_COMPLETE": ClusterStatus.CREATE_FAILED,
    "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS": ClusterStatus.UPDATE_IN_PROGRESS,
    "UPDATE_ROLLBACK_IN_PROGRESS": ClusterStatus.UPDATE_IN_PROGRESS,
    "UPDATE_ROLLBACK_FAILED": ClusterStatus.UPDATE_FAILED,
    "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS": ClusterStatus.UPDATE_IN_PROGRESS,
    "UPDATE_ROLLBACK_COMPLETE": ClusterStatus.UPDATE_FAILED,
}


def cluster_status_of_stack(stack_status: str) -> ClusterStatus | None:
    """The cluster status a CloudFormation stack status means (None: not a cluster status,
    e.g. ``REVIEW_IN_PROGRESS`` or an import)."""
    if stack_status in _STACK_TO_CLUSTER:
        return _STACK_TO_CLUSTER[stack_status]
    try:
        return ClusterStatus(stack_status)
    except ValueError:
        return None


class ValidationMessage(BaseModel):
    """One finding of ParallelCluster's configuration validators."""

    level: Literal["INFO", "WARNING", "ERROR"] = Field(description="Severity.")
    type: str = Field(description="Which validator, e.g. 'KeyPairValidator'.")
    message: str = Field(description="What it found.")


class ConfigurationRejectedError(PermanentError):
    """ParallelCluster's validators rejected a configuration; their findings are kept."""

    code = "CONFIGURATION_REJECTED"

    def __init__(self, message: str, validation_messages: list[ValidationMessage]) -> None:
        super().__init__(message)
        self.validation_messages = validation_messages


class ClusterFailure(BaseModel):
    """Why a cluster operation failed (pcluster's ``failures``, or the stack's first failed
    resource)."""

    code: str = Field(description="e.g. 'StackFailure', 'HeadNodeBootstrapFailure'.")
    reason: str = Field(description="In words, e.g. the failed resource's status reason.")


class ClusterInfo(BaseModel):
    """What the provider (pcluster, or the local simulation) says about a cluster."""

    name: str
    region: str | None = None
    status: ClusterStatus
    version: str | None = Field(default=None, description="ParallelCluster version.")
    scheduler: str | None = Field(default=None, description="e.g. 'slurm'.")
    head_node_instance_id: str | None = None
    stack_arn: str | None = None
    compute_fleet_status: ComputeFleetStatus | None = None
    failures: list[ClusterFailure] = Field(default_factory=list)
    created_at: datetime | None = Field(default=None, description="When its stack was created.")


class ProviderAnswer(BaseModel):
    """What a create/update/delete call returned (a dry run's success is an answer too)."""

    info: ClusterInfo | None = Field(default=None, description="None for a dry run.")
    dryrun: bool = False
    message: str | None = None
    validation_messages: list[ValidationMessage] = Field(default_factory=list)
    change_set: list[dict[str, object]] | None = Field(
        default=None, description="An update's changes, as pcluster lists them (dry run)."
    )


class StackObservation(BaseModel):
    """One read of a cluster's CloudFormation stack (DescribeStacks, and on failure the first
    failed event)."""

    exists: bool
    status: ClusterStatus | None = None
    stack_status: str | None = None
    reason: str | None = Field(default=None, description="First *_FAILED event's reason.")
    version: str | None = None


class ClusterRecord(BaseModel):
    """The broker's record of a cluster (one item per name in the requests table)."""

    name: str
    owner: str = Field(description="The principal that created it through the broker.")
    region: str | None = None
    status: ClusterStatus
    compute_fleet_status: ComputeFleetStatus | None = None
    version: str | None = None
    scheduler: str | None = None
    head_node_instance_id: str | None = None
    stack_arn: str | None = None
    provider: str | None = Field(
        default=None, description="'pcluster', or 'local-simulation' in local mode."
    )
    operation: ClusterOperation = Field(description="The last operation started.")
    operation_request_id: str = Field(description="Its request.")
    pending_request_id: str | None = Field(
        default=None, description="An operation accepted and not finished (one at a time)."
    )
    following: bool = Field(
        default=False, description="The provider accepted it; the sweep follows the stack."
    )
    failures: list[ClusterFailure] = Field(default_factory=list)
    notify_pending: str | None = Field(default=None, description="Status awaiting its event.")
    notify_old_status: ClusterStatus | None = None
    created_at: datetime
    updated_at: datetime


#: Statuses of a cluster record under which jobs are accepted: usable, or deleted (a deleted
#: cluster, like one the broker has no record of, is left to the cluster directory, as before
#: clusters were managed here). The store's submission transactions check the same set.
ACCEPTS_JOBS = _USABLE | {ClusterStatus.DELETE_COMPLETE}


def ensure_ready(record: ClusterRecord | None) -> None:
    """Refuse job submissions to a cluster the broker knows and that cannot run jobs now.

    Raises:
        ClusterNotReadyError: the record says the cluster is not usable (409).
    """
    if record is not None and record.status not in ACCEPTS_JOBS:
        raise not_ready(record.name, record.status.value)


def not_ready(name: str, status: str) -> ClusterNotReadyError:
    """The 409 for jobs sent to cluster ``name`` while it is ``status``."""
    return ClusterNotReadyError(
        f"cluster {name} is {status}; jobs can be submitted once it is CREATE_COMPLETE "
        "(poll GET /v1/clusters/{name})",
        status=status,
    )


def ensure_can_start(record: ClusterRecord, operation: ClusterOperation) -> None:
    """Refuse an operation the cluster's status or a pending operation does not allow (409).

    Raises:
        ConflictError: another operation is pending, or the status does not allow this one.
    """
    if record.pending_request_id is not None:
        raise ConflictError(
            f"cluster {record.name} has an operation in progress "
            f"({record.operation}, request {record.pending_request_id}); retry when it ends"
        )
    allowed = DELETABLE if operation == "delete" else UPDATABLE
    if record.status not in allowed:
        raise ConflictError(
            f"cluster {record.name} is {record.status.value}: cannot {operation} it now"
        )
