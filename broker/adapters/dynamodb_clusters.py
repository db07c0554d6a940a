"""Cluster records in the requests table (same single-table layout as requests and jobs).

Items:
    cluster  pk "CLUSTER#<name>", sk "CLUSTER"; gsi1 "CLUSTERS#<owner>" / "<name>"
While an operation is pending, or a status event is still to publish, the cluster also sits in
the sparse attention index gsi2 ("ACTIVE#<name>" / "CLUSTER#<name>"), which the sweep reads.

Every write puts the whole item, conditional on what the writer read: the same status and the
same pending operation (request id). Two workers, a worker and the sweep, or two sweeps that
read the same record can therefore never both move it, and none can move it on behalf of an
operation that is no longer the cluster's.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.adapters.aws import condition_failures, translate
from broker.adapters.dynamodb import (
    DynamoStore,
    _plain,
    _serialize,
    cluster_key,
    decode_token,
    encode_token,
    request_item,
)
from broker.clusters import ClusterOperation, ClusterRecord, ClusterStatus
from broker.errors import ConflictError, NotFoundError
from broker.models import RequestRecord, dump, utcnow
from broker.states import RequestState

#: A deleted cluster's record is kept this long (DynamoDB TTL), then expires.
DELETED_RETENTION = timedelta(days=90)


def cluster_item(record: ClusterRecord) -> dict[str, Any]:
    """Attribute-value map of a cluster: keys, listing index, attention index while active."""
    plain: dict[str, Any] = {
        "pk": f"CLUSTER#{record.name}",
        "sk": "CLUSTER",
        "gsi1pk": f"CLUSTERS#{record.owner}",
        "gsi1sk": record.name,
        **dump(record),
    }
    if record.pending_request_id is not None or record.notify_pending is not None:
        plain["gsi2pk"] = f"ACTIVE#{record.name}"
        plain["gsi2sk"] = f"CLUSTER#{record.name}"
    if record.status is ClusterStatus.DELETE_COMPLETE:
        plain["expires_at"] = int((record.updated_at + DELETED_RETENTION).timestamp())
    return _serialize(plain)


def cluster_of(item: Mapping[str, Any]) -> ClusterRecord:
    """Domain cluster record of a stored item."""
    return ClusterRecord.model_validate(_plain(item))


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


class DynamoClusterStore(DynamoStore):
    """The ClusterStore port on DynamoDB, plus everything DynamoStore does (one table)."""

    def get_cluster(self, name: str) -> ClusterRecord | None:
        """The cluster's record (strongly consistent), or None."""
        try:
            answer = self._ddb.get_item(
                TableName=self._table, Key=cluster_key(name), ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"read cluster {name}") from exc
        item = answer.get("Item")
        return None if item is None else cluster_of(item)

    def create_cluster(self, request: RequestRecord, cluster: ClusterRecord) -> None:
        """Write the create request and the cluster in one transaction.

        The cluster's condition admits a name that is free or whose cluster was deleted
        (DELETE_COMPLETE): ParallelCluster names are one stack per name and region.
        """
        items = [
            {"Put": {"TableName": self._table, "Item": request_item(request),
                     "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": self._table, "Item": cluster_item(cluster),
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
            {"Put": {"TableName": self._table, "Item": request_item(request),
                     "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": self._table, "Item": cluster_item(updated),
                     "ConditionExpression": condition,
                     "ExpressionAttributeNames": {"#st": "status"},
                     "ExpressionAttributeValues": values}},
        ]  # fmt: skip
        self._write_pair(items, f"cluster {name} changed meanwhile; cannot {operation} it now")

    def _write_pair(self, items: list[dict[str, Any]], conflict: str) -> None:
        try:
            self._ddb.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if condition_failures(exc):
                raise ConflictError(conflict) from exc
            raise translate(exc, "write cluster operation") from exc
        except BotoCoreError as exc:
            raise translate(exc, "write cluster operation") from exc

    def list_clusters(
        self, owner: str, *, limit: int, next_token: str | None
    ) -> tuple[list[ClusterRecord], str | None]:
        """The owner's clusters by name (deleted ones included while their record lives)."""
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": "gsi1",
            "KeyConditionExpression": "gsi1pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": f"CLUSTERS#{owner}"}},
            "Limit": limit,
        }
        if next_token:
            query["ExclusiveStartKey"] = decode_token(next_token)
        try:
            answer = self._ddb.query(**query)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "list clusters") from exc
        token = encode_token(answer["LastEvaluatedKey"]) if "LastEvaluatedKey" in answer else None
        return [cluster_of(item) for item in answer.get("Items", [])], token

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
        written = self._conditional(
            f"update cluster {record.name}", self._ddb.put_item, TableName=self._table,
            Item=cluster_item(updated),
            ConditionExpression=condition, ExpressionAttributeNames={"#st": "status"},
            ExpressionAttributeValues=values,
        )  # fmt: skip
        return None if written is None else updated

    def active_clusters(self) -> list[ClusterRecord]:
        """Clusters in the attention index (operation pending, or event to publish)."""
        clusters: list[ClusterRecord] = []
        start: dict[str, Any] | None = None
        while True:
            scan: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": "gsi2",
                "FilterExpression": "begins_with(pk, :c)",
                "ExpressionAttributeValues": {":c": {"S": "CLUSTER#"}},
            }
            if start:
                scan["ExclusiveStartKey"] = start
            try:
                answer = self._ddb.scan(**scan)
            except (ClientError, BotoCoreError) as exc:
                raise translate(exc, "scan active clusters") from exc
            clusters.extend(cluster_of(item) for item in answer.get("Items", []))
            start = answer.get("LastEvaluatedKey")
            if not start:
                return clusters

    def clear_cluster_notification(self, name: str, status: str) -> bool:
        """The status event is published: forget the mark (and leave the attention index if no
        operation is pending)."""
        record = self.get_cluster(name)
        if record is None or record.notify_pending != status:
            return False
        cleared = record.model_copy(update={"notify_pending": None, "notify_old_status": None})
        condition, values = _as_read(record)
        values[":n"] = {"S": status}
        cleared_item = self._conditional(
            "clear cluster notification", self._ddb.put_item, TableName=self._table,
            Item=cluster_item(cleared), ConditionExpression=f"{condition} AND notify_pending = :n",
            ExpressionAttributeNames={"#st": "status"}, ExpressionAttributeValues=values,
        )  # fmt: skip
        return cleared_item is not None

    def mark_in_progress(self, request_id: str) -> bool:
        """ACCEPTED|DISPATCHED -> IN_PROGRESS (the provider accepted the operation)."""
        return self._move_request(request_id, RequestState.IN_PROGRESS) is not None
