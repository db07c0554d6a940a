"""Following accepted cluster operations until they end: the sweep's side of clusters.

Each cluster with an accepted operation costs one DescribeStacks (plus one DescribeStackEvents
when it failed). A transition is written conditionally; its winner finishes the request and
publishes ``cluster.state_changed`` (and ``request.finished``).
"""

from __future__ import annotations

from broker.clusters.models import ClusterKind, ClusterResult
from broker.clusters.records import (
    OPERATION_STATUSES,
    ClusterFailure,
    ClusterRecord,
    ClusterStatus,
    outcome_of,
)
from broker.clusters.service import ClusterOperationRecords
from broker.errors import BrokerError
from broker.notifications.announcer import REANNOUNCE_AFTER, Announcer, ClusterAnnouncer
from broker.observability import logger
from broker.ports import StackStatusReader
from broker.schema import ErrorInfo, utcnow
from broker.sweep.report import SweepReport


class ClusterFollower:
    """The sweep's side: follow accepted operations with stack reads until they end.

    Each cluster with an accepted operation costs one DescribeStacks (plus one
    DescribeStackEvents when it failed). A transition is written conditionally; its winner
    finishes the request and publishes ``cluster.state_changed`` (and ``request.finished``).
    """

    def __init__(
        self,
        store: ClusterOperationRecords,
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
