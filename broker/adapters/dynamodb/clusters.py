"""The ClusterStore port on DynamoDB: cluster records in the requests table (one table).

Owns the cluster item:
    cluster  pk "CLUSTER#<name>", sk "CLUSTER"; gsi1 "CLUSTERS#<owner>" / "<name>"
While an operation is pending, or a status event is still to publish, the cluster also sits in
the sparse attention index gsi2 ("ACTIVE#<name>" / "CLUSTER#<name>"), which the sweep reads.

Every write puts the whole item, conditional on what the writer read: the same status and the
same pending operation (request id). Two workers, a worker and the sweep, or two sweeps that
read the same record can therefore never both move it, and none can move it on behalf of an
operation that is no longer the cluster's.

It also owns the check a submission makes on the cluster's record (:func:`ready_check`, an item
of the job and batch stores' accept transactions), since only this module knows the item.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from broker.adapters.dynamodb.requests import move_request
from broker.adapters.dynamodb.table import (
    Table,
    TableStore,
    cluster_key,
    plain,
    request_item,
    serialize,
    value_of,
)
from broker.clusters import (
    ACCEPTS_JOBS,
    ClusterOperation,
    ClusterRecord,
    ClusterStatus,
    not_ready,
)
from broker.errors import ClusterNotReadyError, ConflictError, NotFoundError
from broker.requests.models import RequestRecord
from broker.requests.states import RequestState
from broker.schema import dump, utcnow

#: A deleted cluster's record is kept this long (DynamoDB TTL), then expires.
DELETED_RETENTION = timedelta(days=90)


def cluster_item(record: ClusterRecord) -> dict[str, Any]:
    """Attribute-value map of a cluster: keys, listing index, attention index while active."""
    item: dict[str, Any] = {
        "pk": f"CLUSTER#{record.name}",
        "sk": "CLUSTER",
        "gsi1pk": f"CLUSTERS#{record.owner}",
        "gsi1sk": record.name,
        **dump(record),
    }
    if record.pending_request_id is not None or record.notify_pending is not None:
        item["gsi2pk"] = f"ACTIVE#{record.name}"
        item["gsi2sk"] = f"CLUSTER#{record.name}"
    if record.status is ClusterStatus.DELETE_COMPLETE:
        item["expires_at"] = int((record.updated_at + DELETED_RETENTION).timestamp())
    return serialize(item)


def cluster_of(item: Mapping[str, Any]) -> ClusterRecord:
    """Domain cluster record of a stored item."""
    return ClusterRecord.model_validate(plain(item))


def _as_read(record: ClusterRecord) -> tuple[str, dict[str, Any]]:
    """The condition "still as ``record`` was read": same status, same pending operation."""
    values: dict[str, Any] = {":st": {"S": record.status.value}}
    condition = "#st = :st"
    if record.pending_request_id is None:
        condition += " AND attribute_not_exists(pending_request_id)"
    else:
        condition += " AND pending_request_id = :pending"
        values[":pending"] = {"S": record.pending_request_id}
    return condition, values


def ready_check(table: Table, cluster: str) -> dict[str, Any]:
    """A transaction item: the cluster has no record, or its record accepts jobs.

    Why "no record" passes: a cluster the broker has no record of is left to the cluster
    directory, as a deleted one is (``clusters.ACCEPTS_JOBS``).
    """
    statuses = sorted(status.value for status in ACCEPTS_JOBS)
    values = {f":r{i}": {"S": status} for i, status in enumerate(statuses)}
    condition = f"attribute_not_exists(pk) OR #rs IN ({', '.join(values)})"
    return {"ConditionCheck": {"TableName": table.name, "Key": cluster_key(cluster),
                               "ConditionExpression": condition,
                               "ExpressionAttributeNames": {"#rs": "status"},
                               "ExpressionAttributeValues": values}}  # fmt: skip


def not_ready_error(table: Table, cluster: str) -> ClusterNotReadyError:
    """The 409 for a cluster whose record refused a submission (its status read back)."""
    try:
        status = value_of(table.get(cluster_key(cluster), "cluster")["status"])
    except (NotFoundError, KeyError):
        status = "unknown"  # deleted or changed since: the client may simply retry
    return not_ready(cluster, str(status))


class DynamoClusterStore(TableStore):
    """ClusterStore on DynamoDB."""

    def get_cluster(self, name: str) -> ClusterRecord | None:
        """The cluster's record (strongly consistent), or None."""
        item = self._table.find(cluster_key(name), f"cluster {name}")
        return None if item is None else cluster_of(item)

    def create_cluster(self, request: RequestRecord, cluster: ClusterRecord) -> None:
        """Write the create request and the cluster in one transaction.

        The cluster's condition admits a name that is free or whose cluster was deleted
        (DELETE_COMPLETE): ParallelCluster names are one stack per name and region.
        """
        items = [
            {"Put": {"TableName": self._table.name, "Item": request_item(request),
                     "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": self._table.name, "Item": cluster_item(cluster),
                     "ConditionExpression": "attribute_not_exists(pk) OR #st = :deleted",
                     "ExpressionAttributeNames": {"#st": "status"},
                     "ExpressionAttributeValues": {
                         ":deleted": {"S": ClusterStatus.DELETE_COMPLETE.value}}}},
        ]  # fmt: skip
        self._write_pair(items, f"cluster {cluster.name} exists already")

    def start_operation(
        self,
        request: RequestRecord,
        name: str,
        operation: ClusterOperation,
        allowed: frozenset[ClusterStatus],
    ) -> None:
        """Write the request and make it the cluster's pending operation, in one transaction."""
        current = self.get_cluster(name)
        if current is None or current.owner != request.owner:
            raise NotFoundError(f"no cluster {name}")
        if current.pending_request_id is not None or current.status not in allowed:
            raise ConflictError(
                f"cluster {name} is {current.status.value}"
                + (" with an operation in progress" if current.pending_request_id else "")
                + f": cannot {operation} it now"
            )
        updated = current.model_copy(
            update={
                "operation": operation,
                "operation_request_id": request.request_id,
                "pending_request_id": request.request_id,
                "following": False,
                "updated_at": request.created_at,
            }
        )
        condition, values = _as_read(current)
        items = [
            {"Put": {"TableName": self._table.name, "Item": request_item(request),
                     "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": self._table.name, "Item": cluster_item(updated),
                     "ConditionExpression": condition,
                     "ExpressionAttributeNames": {"#st": "status"},
                     "ExpressionAttributeValues": values}},
        ]  # fmt: skip
        self._write_pair(items, f"cluster {name} changed meanwhile; cannot {operation} it now")

    def _write_pair(self, items: list[dict[str, Any]], conflict: str) -> None:
        if self._table.transact(items, "write cluster operation"):
            raise ConflictError(conflict)

    def list_clusters(
        self, owner: str, *, limit: int, next_token: str | None
    ) -> tuple[list[ClusterRecord], str | None]:
        """The owner's clusters by name (deleted ones included while their record lives)."""
        query: dict[str, Any] = {
            "IndexName": "gsi1",
            "KeyConditionExpression": "gsi1pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": f"CLUSTERS#{owner}"}},
            "Limit": limit,
        }
        items, token = self._table.query_page(query, next_token, "list clusters")
        return [cluster_of(item) for item in items], token

    def update_cluster(
        self,
        record: ClusterRecord,
        *,
        status: ClusterStatus | None = None,
        changes: Mapping[str, Any] | None = None,
        finish: bool = False,
    ) -> ClusterRecord | None:
        """Put the changed record if the stored one is still as ``record`` was read."""
        update: dict[str, Any] = {**(changes or {}), "updated_at": utcnow()}
        if status is not None and status is not record.status:
            update["status"] = status
            update["notify_pending"] = status.value
            update["notify_old_status"] = record.status
        if finish:
            update["pending_request_id"] = None
            update["following"] = False
        updated = ClusterRecord.model_validate({**record.model_dump(), **update})
        condition, values = _as_read(record)
        written = self._table.conditional(
            f"update cluster {record.name}", self._table.client.put_item,
            TableName=self._table.name,
            Item=cluster_item(updated),
            ConditionExpression=condition, ExpressionAttributeNames={"#st": "status"},
            ExpressionAttributeValues=values,
        )  # fmt: skip
        return None if written is None else updated

    def active_clusters(self) -> list[ClusterRecord]:
        """Clusters in the attention index (operation pending, or event to publish)."""
        items = self._table.scan_index(
            "gsi2", "scan active clusters",
            FilterExpression="begins_with(pk, :c)",
            ExpressionAttributeValues={":c": {"S": "CLUSTER#"}},
        )  # fmt: skip
        return [cluster_of(item) for item in items]

    def clear_cluster_notification(self, name: str, status: str) -> bool:
        """The status event is published: forget the mark (and leave the attention index if no
        operation is pending)."""
        record = self.get_cluster(name)
        if record is None or record.notify_pending != status:
            return False
        cleared = record.model_copy(update={"notify_pending": None, "notify_old_status": None})
        condition, values = _as_read(record)
        values[":n"] = {"S": status}
        cleared_item = self._table.conditional(
            "clear cluster notification", self._table.client.put_item,
            TableName=self._table.name,
            Item=cluster_item(cleared), ConditionExpression=f"{condition} AND notify_pending = :n",
            ExpressionAttributeNames={"#st": "status"}, ExpressionAttributeValues=values,
        )  # fmt: skip
        return cleared_item is not None

    def mark_in_progress(self, request_id: str) -> bool:
        """ACCEPTED|DISPATCHED -> IN_PROGRESS (the provider accepted the operation)."""
        return move_request(self._table, request_id, RequestState.IN_PROGRESS) is not None
