"""Cluster lifecycle services: the API's side, the cluster worker's side, and the sweep's.

The API records and enqueues in milliseconds; the cluster worker calls the provider
(ParallelCluster, or the local simulation) once per operation; the sweep follows accepted
operations with cheap stack reads until they end. Only ports are used here.
"""

from __future__ import annotations

from typing import Literal

from broker.clusters import (
    DELETABLE,
    OPERATION_STATUSES,
    UPDATABLE,
    ClusterFailure,
    ClusterInfo,
    ClusterRecord,
    ClusterStatus,
    ConfigurationRejectedError,
    ensure_can_start,
    ensure_ready,
    outcome_of,
)
from broker.errors import (
    BrokerError,
    ConflictError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from broker.events import ClusterEvent
from broker.models import (
    ClusterCreateBody,
    ClusterKind,
    ClusterMessage,
    ClusterResult,
    ClusterUpdateBody,
    ErrorInfo,
    FleetBody,
    RequestRecord,
    new_request_id,
    utcnow,
)
from broker.observability import logger
from broker.ports import (
    ClusterProvider,
    ClusterQueue,
    ClusterRecords,
    ClusterStore,
    Notifier,
    StackStatusReader,
)
from broker.states import RequestState
from broker.sweep import REANNOUNCE_AFTER, Announcer, SweepReport


class ClusterGate:
    """What job submission asks before accepting jobs for a cluster (409 CLUSTER_NOT_READY)."""

    def __init__(self, records: ClusterRecords) -> None:
        self._records = records

    def ensure_ready(self, cluster: str) -> None:
        """Raise ClusterNotReadyError if the broker manages ``cluster`` and it is not usable."""
        ensure_ready(self._records.get_cluster(cluster))


class ClusterAnnouncer:
    """Publishes a cluster's pending status event once, then marks it published."""

    def __init__(self, store: ClusterStore, notifier: Notifier) -> None:
        self._store = store
        self._notifier = notifier

    def publish(self, record: ClusterRecord) -> bool:
        """Publish ``record``'s pending event (as written by the caller's winning transition)."""
        if record.notify_pending is None:
            return False
        try:
            self._notifier.publish(ClusterEvent.of(record))
        except BrokerError as exc:
            logger.warning("cluster event not published; the sweep retries", extra={"e": str(exc)})
            return False
        self._store.clear_cluster_notification(record.name, record.notify_pending)
        return True


class ClusterService:
    """The API's side: accept cluster operations (record, then enqueue) and read records."""

    def __init__(self, store: ClusterStore, queue: ClusterQueue) -> None:
        self._store = store
        self._queue = queue

    def create(self, owner: str, body: ClusterCreateBody) -> RequestRecord:
        """Accept a create: the cluster is recorded CREATE_IN_PROGRESS at once (so its name is
        taken and jobs sent to it answer 409 CLUSTER_NOT_READY); a dry run records nothing but
        its request.

        Raises:
            ConflictError: a cluster of that name exists (whoever owns it: names are per
                account and region, as ParallelCluster's stacks are).
        """
        record = _request(owner, body.name, "cluster.create")
        existing = self._store.get_cluster(body.name)
        if existing is not None and existing.status is not ClusterStatus.DELETE_COMPLETE:
            raise ConflictError(f"cluster {body.name} exists already ({existing.status.value})")
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

    def update(self, owner: str, name: str, body: ClusterUpdateBody) -> RequestRecord:
        """Accept an update (one operation at a time; 409 while another is in progress).

        Raises:
            NotFoundError: no such cluster of the caller's.
            ConflictError: its status or a pending operation does not allow an update.
        """
        current = self.get(owner, name)
        record = _request(owner, name, "cluster.update")
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
        record = _request(owner, name, "cluster.delete")
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
        record = _request(owner, name, "cluster.fleet")
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
        record = _request(owner, name, "cluster.describe")
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
            _release(self._store, record.cluster, record.request_id, failure=info)
            raise TransientError(
                "the request could not be queued; send it again", code="ENQUEUE_FAILED"
            ) from exc


Outcome = Literal["accepted", "succeeded", "failed", "skipped"]


class ClusterWorker:
    """The cluster worker's side: one provider call per operation, outcome recorded.

    Safe to run twice on the same message: a request already IN_PROGRESS (the provider
    accepted it) or final is skipped, and every cluster write is conditional on the operation
    still being the cluster's pending one.
    """

    def __init__(
        self,
        store: ClusterStore,
        provider: ClusterProvider,
        announcer: Announcer,
        cluster_announcer: ClusterAnnouncer,
        *,
        provider_name: str = "pcluster",
    ) -> None:
        self._store = store
        self._provider = provider
        self._announce = announcer
        self._clusters = cluster_announcer
        self._provider_name = provider_name

    def handle(self, message: ClusterMessage) -> Outcome:
        """Run one cluster operation.

        Returns:
            ``accepted`` (a long operation started; the sweep follows it), ``succeeded``,
            ``failed`` (permanent, recorded) or ``skipped`` (already done).

        Raises:
            TransientError: throttled or unavailable; retried by SQS (last error recorded).
        """
        request_id = message.request_id
        current = self._store.get(request_id)
        if current.state.final or current.state is RequestState.IN_PROGRESS:
            return "skipped"
        if self._store.mark_dispatched(request_id) is None:
            return "skipped"
        try:
            return self._run(message)
        except TransientError as exc:
            self._store.record_retry(request_id, _info(exc))
            raise
        except ConfigurationRejectedError as exc:
            failure = ErrorInfo(
                code=exc.code, message=exc.message, transient=False,
                validation_messages=exc.validation_messages,
            )  # fmt: skip
            self._fail(message, failure)
            return "failed"
        except (PermanentError, NotFoundError, ConflictError) as exc:
            self._fail(message, _info(exc))
            return "failed"

    def give_up(self, message: ClusterMessage) -> bool:
        """Retries ran out (DLQ): the request FAILED with the last error; a create that never
        reached the provider ends CREATE_FAILED, any other operation is released."""
        try:
            record = self._store.get(message.request_id)
        except NotFoundError:
            logger.error("dead letter for an unknown request", extra={"r": message.request_id})
            return False
        last = record.error
        reason = f"; last error: {last.code}: {last.message}" if last else ""
        failure = ErrorInfo(
            code="RETRIES_EXHAUSTED",
            message=f"gave up after {record.attempts} attempts{reason}",
            transient=True,
        )
        return self._fail(message, failure)

    # -- operations ------------------------------------------------------------------------

    def _run(self, message: ClusterMessage) -> Outcome:
        operation = message.operation
        if operation in ("create", "update"):
            call = self._provider.create if operation == "create" else self._provider.update
            answer = call(message)
            if answer.dryrun:
                result = ClusterResult(
                    kind=message.kind, cluster=message.cluster, dryrun=True,
                    message=answer.message, validation_messages=answer.validation_messages,
                    change_set=answer.change_set,
                )  # fmt: skip
                self._succeed(message.request_id, result)
                return "succeeded"
            if answer.info is None:
                raise PermanentError("the provider answered without the cluster")
            return self._accepted(message, answer.info)
        if operation == "delete":
            try:
                info = self._provider.delete(message.cluster, message.region)
            except NotFoundError:
                # Nothing to delete (e.g. a create the validators rejected): it is gone.
                return self._ended(message, ClusterStatus.DELETE_COMPLETE)
            return self._accepted(message, info)
        if operation == "fleet":
            status = self._provider.update_compute_fleet(
                message.cluster, message.fleet_status or "START_REQUESTED", message.region
            )
            self._update_record(message, {"compute_fleet_status": status}, finish=True)
            result = ClusterResult(
                kind=message.kind, cluster=message.cluster, compute_fleet_status=status
            )
            self._succeed(message.request_id, result)
            return "succeeded"
        info = self._provider.describe(message.cluster, message.region)
        record = self._store.get_cluster(message.cluster)
        if record is not None and record.owner == message.owner:
            changes = _info_changes(info)
            if record.pending_request_id is None:
                # No operation of ours in flight: the provider's status is the truth.
                self._store.update_cluster(record, status=info.status, changes=changes)
            else:
                self._store.update_cluster(record, changes=changes)
        result = ClusterResult(
            kind=message.kind, cluster=message.cluster, status=info.status,
            compute_fleet_status=info.compute_fleet_status,
        )  # fmt: skip
        self._succeed(message.request_id, result)
        return "succeeded"

    def _accepted(self, message: ClusterMessage, info: ClusterInfo) -> Outcome:
        """The provider started a long operation: record what it said; the sweep follows."""
        record = self._pending_record(message)
        if record is None:
            raise ConflictError(f"cluster {message.cluster} is no longer this request's")
        started, _, _ = OPERATION_STATUSES[message.operation]
        status = info.status if info.status.in_progress else started
        changes = {**_info_changes(info), "following": True, "provider": self._provider_name}
        updated = self._store.update_cluster(record, status=status, changes=changes)
        if updated is None:
            raise TransientError("the cluster record changed meanwhile", code="CLUSTER_RACE")
        self._clusters.publish(updated)
        self._store.mark_in_progress(message.request_id)
        return "accepted"

    def _ended(self, message: ClusterMessage, status: ClusterStatus) -> Outcome:
        record = self._pending_record(message)
        if record is not None:
            updated = self._store.update_cluster(record, status=status, finish=True)
            if updated is not None:
                self._clusters.publish(updated)
        self._succeed(
            message.request_id,
            ClusterResult(kind=message.kind, cluster=message.cluster, status=status),
        )
        return "succeeded"

    def _fail(self, message: ClusterMessage, failure: ErrorInfo) -> bool:
        failed = self._store.record_failure(message.request_id, failure)
        if failed:
            self._announce.request(message.request_id)
        if not message.dryrun:
            _release(self._store, message.cluster, message.request_id, failure=failure,
                     announcer=self._clusters)  # fmt: skip
        return failed

    def _pending_record(self, message: ClusterMessage) -> ClusterRecord | None:
        record = self._store.get_cluster(message.cluster)
        if record is None or record.pending_request_id != message.request_id:
            return None
        return record

    def _update_record(self, message: ClusterMessage, changes: dict[str, object], *,
                       finish: bool) -> None:  # fmt: skip
        record = self._pending_record(message)
        if record is not None:
            self._store.update_cluster(record, changes=changes, finish=finish)

    def _succeed(self, request_id: str, result: ClusterResult) -> None:
        if self._store.record_success(request_id, result):
            self._announce.request(request_id)


def _release(
    store: ClusterStore,
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


def _info_changes(info: ClusterInfo) -> dict[str, object]:
    """Record fields from what the provider said (only what it did say)."""
    changes: dict[str, object] = {}
    for field in ("region", "version", "scheduler", "head_node_instance_id", "stack_arn",
                  "compute_fleet_status"):  # fmt: skip
        value = getattr(info, field)
        if value is not None:
            changes[field] = value
    if info.failures:
        changes["failures"] = info.failures
    return changes


class ClusterFollower:
    """The sweep's side: follow accepted operations with stack reads until they end.

    Each cluster with an accepted operation costs one DescribeStacks (plus one
    DescribeStackEvents when it failed). A transition is written conditionally; its winner
    finishes the request and publishes ``cluster.state_changed`` (and ``request.finished``).
    """

    def __init__(
        self,
        store: ClusterStore,
        reader: StackStatusReader,
        announcer: Announcer,
        cluster_announcer: ClusterAnnouncer,
    ) -> None:
        self._store = store
        self._reader = reader
        self._announce = announcer
        self._clusters = cluster_announcer

    def follow(self, report: SweepReport) -> None:
        """One pass over the clusters needing attention (adds to ``report``)."""
        stale = utcnow() - REANNOUNCE_AFTER
        for record in self._store.active_clusters():
            if record.notify_pending is not None and record.updated_at < stale:
                report.announced += int(self._clusters.publish(record))
            if record.pending_request_id is None or not record.following:
                continue
            report.clusters_followed += 1
            try:
                self._follow(record, report)
            except BrokerError as exc:
                report.errors[f"cluster:{record.name}"] = str(exc)
                logger.warning("following a cluster failed", extra={"cluster": record.name})

    def _follow(self, record: ClusterRecord, report: SweepReport) -> None:
        seen = self._reader.read(record.name, record.region, record.stack_arn)
        report.stack_reads += 1
        status = seen.status
        if not seen.exists:
            # A stack that is gone was deleted: the end of a delete, a failure of anything else.
            status = (
                ClusterStatus.DELETE_COMPLETE
                if record.operation == "delete"
                else OPERATION_STATUSES[record.operation][2]
            )
        if status is None or status is record.status:
            return
        ended = outcome_of(record.operation, status)
        changes: dict[str, object] = {}
        if seen.version:
            changes["version"] = seen.version
        if ended is False:
            reason = seen.reason or f"the stack ended {seen.stack_status or status.value}"
            changes["failures"] = [ClusterFailure(code="StackFailure", reason=reason)]
        updated = self._store.update_cluster(
            record, status=status, changes=changes, finish=ended is not None
        )
        if updated is None:
            return  # another sweep or a worker moved it first
        report.cluster_transitions += 1
        report.announced += int(self._clusters.publish(updated))
        request_id = record.pending_request_id
        if request_id is None or ended is None:
            return
        kind: ClusterKind = f"cluster.{record.operation}"  # type: ignore[assignment]
        if ended:
            result = ClusterResult(kind=kind, cluster=record.name, status=status)
            moved = self._store.record_success(request_id, result)
        else:
            failure = ErrorInfo(
                code="CLUSTER_" + status.value,
                message=f"cluster {record.name} ended {status.value}: "
                + (seen.reason or seen.stack_status or "see its stack events"),
                transient=False,
            )
            moved = self._store.record_failure(request_id, failure)
        if moved:
            report.announced += int(self._announce.request(request_id))


def _request(owner: str, name: str, kind: ClusterKind) -> RequestRecord:
    now = utcnow()
    return RequestRecord(
        request_id=new_request_id(), kind=kind, owner=owner, cluster=name,
        state=RequestState.ACCEPTED, created_at=now, updated_at=now,
    )  # fmt: skip


def _info(exc: BrokerError) -> ErrorInfo:
    return ErrorInfo(code=exc.code, message=exc.message, transient=exc.transient)
