"""The UserStore port on DynamoDB: caller-to-user mappings in the requests table (one table).

Owns the user item:
    user  pk "USER#<cluster>#<principal>", sk "USER"; gsi1 "USERS#<cluster>" / "<principal>"
A cluster name has no '#' (``[A-Za-z][A-Za-z0-9-]*``), so the key splits one way only. A mapping
never enters the attention index (nothing about it needs sweeping) and never expires: it lives
until an administrator removes it.

Writes are plain puts and deletes: the mapping is the administrator's to set, and the last
write wins (a PUT replaces). Reads are strongly consistent, so a mapping removed is refused at
the very next submission.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.adapters.dynamodb.table import TableStore, plain, serialize
from broker.schema import dump
from broker.users.models import UserMapping


def user_key(cluster: str, principal: str) -> dict[str, Any]:
    """The DynamoDB key of a principal's mapping on a cluster."""
    return {"pk": {"S": f"USER#{cluster}#{principal}"}, "sk": {"S": "USER"}}


def user_item(mapping: UserMapping) -> dict[str, Any]:
    """Attribute-value map of a mapping: key, the cluster's listing index, fields."""
    return serialize(
        {
            "pk": f"USER#{mapping.cluster}#{mapping.principal}",
            "sk": "USER",
            "gsi1pk": f"USERS#{mapping.cluster}",
            "gsi1sk": mapping.principal,
            **dump(mapping),
        }
    )


def mapping_of(item: Mapping[str, Any]) -> UserMapping:
    """Domain mapping of a stored item."""
    return UserMapping.model_validate(plain(item))


class DynamoUserStore(TableStore):
    """UserStore on DynamoDB."""

    def put_mapping(self, mapping: UserMapping) -> None:
        """Put the mapping (replacing the principal's previous one on the cluster)."""
        self._table.conditional(
            f"map {mapping.principal} on {mapping.cluster}", self._table.client.put_item,
            TableName=self._table.name, Item=user_item(mapping),
        )  # fmt: skip

    def get_mapping(self, cluster: str, principal: str) -> UserMapping | None:
        """The mapping (strongly consistent), or None."""
        item = self._table.find(user_key(cluster, principal), f"user of {principal}")
        return None if item is None else mapping_of(item)

    def delete_mapping(self, cluster: str, principal: str) -> UserMapping | None:
        """Delete the mapping; the removed one, or None when there was none."""
        answer = self._table.conditional(
            f"unmap {principal} on {cluster}", self._table.client.delete_item,
            TableName=self._table.name, Key=user_key(cluster, principal),
            ConditionExpression="attribute_exists(pk)", ReturnValues="ALL_OLD",
        )  # fmt: skip
        if answer is None or "Attributes" not in answer:
            return None
        return mapping_of(answer["Attributes"])

    def list_mappings(
        self, cluster: str, *, limit: int, next_token: str | None
    ) -> tuple[list[UserMapping], str | None]:
        """The cluster's mappings by principal, one page at a time."""
        query: dict[str, Any] = {
            "IndexName": "gsi1",
            "KeyConditionExpression": "gsi1pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": f"USERS#{cluster}"}},
            "Limit": limit,
        }
        items, token = self._table.query_page(query, next_token, "list user mappings")
        return [mapping_of(item) for item in items], token
