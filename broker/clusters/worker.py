"""The cluster worker's side: one provider call per operation, its outcome recorded.

A long operation (create, update, delete) ends here ``accepted``: the sweep follows it with
stack reads until it ends (``broker.sweep.clusters``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from broker.clusters.models import ClusterMessage, ClusterResult
from broker.clusters.records import (
    OPERATION_STATUSES,
    ClusterInfo,
    ClusterRecord,
    ClusterStatus,
    ConfigurationRejectedError,
)
from broker.clusters.service import ClusterOperationRecords, release
from broker.errors import BrokerError, ConflictError, NotFoundError, PermanentError, TransientError
from broker.notifications.announcer import Announcer, ClusterAnnouncer
from broker.observability import logger
from broker.ports import ClusterProvider
from broker.requests.states import RequestState
from broker.schema import ErrorInfo

Outcome = Literal["accepted", "succeeded", "failed", "skipped"]

#: How far the provider's clock may be behind ours when telling a stack our create made from one
#: that was there before it.
CLOCK_SKEW = timedelta(minutes=1)


class ClusterWorker:
    """The cluster worker's side: one provider call per operation, outcome recorded.

    Safe to run twice on the same message: a request already IN_PROGRESS (the provider
    accepted it) or final is skipped, and every cluster write is conditional on the operation
    still being the cluster's pending one.
    """

    def __init__(
        self,
        store: ClusterOperationRecords,
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
            try:
                answer = call(message)
            except ConflictError:
                if operation != "create" or message.dryrun:
                    raise
                return self._name_taken(message)
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
            return self._delete(message)
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

    def _delete(self, message: ClusterMessage) -> Outcome:
        if not self._holds_our_stack(message):
            return self._ended(message, ClusterStatus.DELETE_COMPLETE)
        try:
            info = self._provider.delete(message.cluster, message.region)
        except NotFoundError:
            # Nothing to delete (e.g. a create the validators rejected): it is gone.
            return self._ended(message, ClusterStatus.DELETE_COMPLETE)
        return self._accepted(message, info)

    def _name_taken(self, message: ClusterMessage) -> Outcome:
        """The provider refused a create because the name is taken. Either by our own create,
        accepted before this delivery of its message (the worker stopped before recording
        it): then it is accepted now; or by a cluster the broker did not create: the request
        fails, and the broker's record never gains its stack, so nothing done through the
        broker can touch it.

        Ours is a stack created since the request was accepted (its record's ``created_at``).

        Raises:
            ConflictError: ``CLUSTER_EXISTS``, a cluster of that name exists outside the broker.
        """
        record = self._pending_record(message)
        try:
            info = self._provider.describe(message.cluster, message.region)
        except NotFoundError:
            info = None
        if (
            record is not None
            and info is not None
            and info.created_at is not None
            and info.created_at >= record.created_at - CLOCK_SKEW
        ):
            return self._accepted(message, info)
        raise ConflictError(
            f"a cluster named {message.cluster} exists that this broker did not create; "
            "choose another name",
            code="CLUSTER_EXISTS",
        )

    def _holds_our_stack(self, message: ClusterMessage) -> bool:
        """Whether the provider's cluster of that name is the stack this broker created.

        The record keeps the stack the provider answered our create with. Without one, our
        create never reached the provider (or it refused: the name was someone else's), and a
        stack of that name, if any, is not ours; with one that differs from the provider's,
        ours is gone and the name is used again by someone else. Either way: never deleted.
        """
        record = self._store.get_cluster(message.cluster)
        if record is None or record.stack_arn is None:
            return False
        try:
            current = self._provider.describe(message.cluster, message.region)
        except NotFoundError:
            return False
        return current.stack_arn == record.stack_arn

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
            release(self._store, message.cluster, message.request_id, failure=failure,
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


def _info(exc: BrokerError) -> ErrorInfo:
    return ErrorInfo(code=exc.code, message=exc.message, transient=exc.transient)
