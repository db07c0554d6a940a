"""The API's side of clusters: accept operations (record, then enqueue) and read records;
and the gate job submission asks before accepting jobs for a cluster.

The API records and enqueues in milliseconds; the cluster worker (``broker.clusters.worker``)
calls the provider once per operation; the sweep (``broker.sweep.clusters``) follows accepted
operations with cheap stack reads until they end.
"""

from __future__ import annotations

from typing import Protocol

from broker.clusters.models import (
    ClusterCreateBody,
    ClusterKind,
    ClusterMessage,
    ClusterUpdateBody,
    FleetBody,
)
from broker.clusters.records import (
    DELETABLE,
    UPDATABLE,
    ClusterFailure,
    ClusterRecord,
    ClusterStatus,
    ensure_can_start,
    ensure_ready,
)
from broker.errors import (
    BrokerError,
    ConflictError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from broker.notifications.announcer import ClusterAnnouncer
from broker.ports import (
    ClusterQueue,
    ClusterRecords,
    ClusterStore,
    RequestStore,
    StackStatusReader,
)
from broker.requests.models import RequestRecord
from broker.requests.states import RequestState
from broker.schema import ErrorInfo, new_request_id, utcnow


class ClusterOperationRecords(RequestStore, ClusterStore, Protocol):
    """What a cluster operation writes: its request and the cluster's record."""


class ClusterGate:
    """What job submission asks before accepting jobs for a cluster (409 CLUSTER_NOT_READY)."""

    def __init__(self, records: ClusterRecords) -> None:
        self._records = records

    def ensure_ready(self, cluster: str) -> None:
        """Raise ClusterNotReadyError if the broker manages ``cluster`` and it is not usable."""
        ensure_ready(self._records.get_cluster(cluster))


class ClusterService:
    """The API's side: accept cluster operations (record, then enqueue) and read records."""

    def __init__(
        self,
        store: ClusterOperationRecords,
        queue: ClusterQueue,
        stacks: StackStatusReader | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._stacks = stacks

    def create(self, owner: str, body: ClusterCreateBody) -> RequestRecord:
        """Accept a create: the cluster is recorded CREATE_IN_PROGRESS at once (so its name is
        taken and jobs sent to it answer 409 CLUSTER_NOT_READY); a dry run records nothing but
        its request.

        Raises:
            ConflictError: a cluster of that name exists (whoever owns it: names are per
                account and region, as ParallelCluster's stacks are).
        """
        record = new_request(owner, body.name, "cluster.create")
        existing = self._store.get_cluster(body.name)
        if existing is not None and existing.status is not ClusterStatus.DELETE_COMPLETE:
            raise ConflictError(f"cluster {body.name} exists already ({existing.status.value})")
        self._ensure_no_stack(body.name, body.region)
        if body.dryrun:
            self._store.create_request(record)
        else:
            cluster = ClusterRecord(
                name=body.name, owner=owner, region=body.region,
                status=ClusterStatus.CREATE_IN_PROGRESS, operation="create",
                operation_request_id=record.request_id, pending_request_id=record.request_id,
                created_at=record.created_at, updated_at=record.created_at,
            )  # fmt: skip
            self._store.create_cluster(record, cluster)
        message = ClusterMessage(
            kind="cluster.create", request_id=record.request_id, owner=owner, cluster=body.name,
            region=body.region, configuration=body.configuration, dryrun=body.dryrun,
            rollback_on_failure=body.rollback_on_failure,
            suppress_validators=body.suppress_validators,
            validation_failure_level=body.validation_failure_level,
        )  # fmt: skip
        self._enqueue(record, message)
        return record

    def _ensure_no_stack(self, name: str, region: str | None) -> None:
        """Refuse a name whose stack the broker did not create (ParallelCluster's stack is named
        as the cluster): the broker must never come to own, and then delete, someone else's
        cluster. The worker checks again, for a stack made after this (``ClusterWorker``).

        Raises:
            ConflictError: ``CLUSTER_EXISTS``.
        """
        if self._stacks is None:
            return
        try:
            exists = self._stacks.read(name, region, None).exists
        except PermanentError as exc:
            if exc.code != "NOT_A_CLUSTER_STACK":
                raise
            exists = True  # another kind of stack has the name: pcluster could not use it either
        if exists:
            raise ConflictError(
                f"a cluster named {name} exists that this broker did not create; "
                "choose another name",
                code="CLUSTER_EXISTS",
            )

    def update(self, owner: str, name: str, body: ClusterUpdateBody) -> RequestRecord:
        """Accept an update (one operation at a time; 409 while another is in progress).

        Raises:
            NotFoundError: no such cluster of the caller's.
            ConflictError: its status or a pending operation does not allow an update.
        """
        current = self.get(owner, name)
        record = new_request(owner, name, "cluster.update")
        if body.dryrun:
            if current.status not in UPDATABLE:
                raise ConflictError(f"cluster {name} is {current.status.value}: cannot update")
            self._store.create_request(record)
        else:
            ensure_can_start(current, "update")
            self._store.start_operation(record, name, "update", UPDATABLE)
        message = ClusterMessage(
            kind="cluster.update", request_id=record.request_id, owner=owner, cluster=name,
            region=body.region or current.region, configuration=body.configuration,
            dryrun=body.dryrun, force_update=body.force_update,
            suppress_validators=body.suppress_validators,
            validation_failure_level=body.validation_failure_level,
        )  # fmt: skip
        self._enqueue(record, message)
        return record

    def delete(self, owner: str, name: str) -> RequestRecord:
        """Accept a delete. Raises NotFoundError (404) or ConflictError (409)."""
        current = self.get(owner, name)
        ensure_can_start(current, "delete")
        record = new_request(owner, name, "cluster.delete")
        self._store.start_operation(record, name, "delete", DELETABLE)
        message = ClusterMessage(
            kind="cluster.delete", request_id=record.request_id, owner=owner, cluster=name,
            region=current.region,
        )  # fmt: skip
        self._enqueue(record, message)
        return record

    def fleet(self, owner: str, name: str, body: FleetBody) -> RequestRecord:
        """Accept a compute-fleet start or stop. Raises NotFoundError or ConflictError."""
        current = self.get(owner, name)
        ensure_can_start(current, "fleet")
        record = new_request(owner, name, "cluster.fleet")
        self._store.start_operation(record, name, "fleet", UPDATABLE)
        message = ClusterMessage(
            kind="cluster.fleet", request_id=record.request_id, owner=owner, cluster=name,
            region=current.region, fleet_status=body.status,
        )  # fmt: skip
        self._enqueue(record, message)
        return record

    def refresh(self, owner: str, name: str) -> RequestRecord:
        """Accept a describe: the worker asks the provider and refreshes the record."""
        current = self.get(owner, name)
        record = new_request(owner, name, "cluster.describe")
        self._store.create_request(record)
        message = ClusterMessage(
            kind="cluster.describe", request_id=record.request_id, owner=owner, cluster=name,
            region=current.region,
        )  # fmt: skip
        self._enqueue(record, message)
        return record

    def get(self, owner: str, name: str) -> ClusterRecord:
        """One of the caller's clusters (NotFoundError if absent or another owner's)."""
        record = self._store.get_cluster(name)
        if record is None or record.owner != owner:
            raise NotFoundError(f"no cluster {name}")
        return record

    def list(
        self, owner: str, *, limit: int = 50, next_token: str | None = None
    ) -> tuple[list[ClusterRecord], str | None]:
        """The caller's clusters, by name."""
        return self._store.list_clusters(owner, limit=limit, next_token=next_token)

    def _enqueue(self, record: RequestRecord, message: ClusterMessage) -> None:
        try:
            self._queue.send_cluster(message)
        except BrokerError as exc:
            info = ErrorInfo(code="ENQUEUE_FAILED", message=exc.message, transient=True)
            self._store.record_failure(record.request_id, info)
            release(self._store, record.cluster, record.request_id, failure=info)
            raise TransientError(
                "the request could not be queued; send it again", code="ENQUEUE_FAILED"
            ) from exc


def release(
    store: ClusterOperationRecords,
    name: str,
    request_id: str,
    *,
    failure: ErrorInfo,
    announcer: ClusterAnnouncer | None = None,
) -> None:
    """End a pending operation that failed before the provider took it: a create's cluster is
    CREATE_FAILED (its name stays taken until deleted, as with pcluster); any other operation
    just ends, leaving the cluster as it was, with the failure recorded."""
    record = store.get_cluster(name)
    if record is None or record.pending_request_id != request_id:
        return
    failures = [ClusterFailure(code=failure.code, reason=failure.message)]
    for finding in failure.validation_messages or []:
        if finding.level == "ERROR":
            failures.append(ClusterFailure(code=finding.type, reason=finding.message))
    status = ClusterStatus.CREATE_FAILED if record.operation == "create" else None
    updated = store.update_cluster(
        record, status=status, changes={"failures": failures}, finish=True
    )
    if updated is not None and announcer is not None:
        announcer.publish(updated)


def new_request(owner: str, name: str, kind: ClusterKind) -> RequestRecord:
    now = utcnow()
    return RequestRecord(
        request_id=new_request_id(), kind=kind, owner=owner, cluster=name,
        state=RequestState.ACCEPTED, created_at=now, updated_at=now,
    )  # fmt: skip
