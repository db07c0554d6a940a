"""The UserMappings port on DynamoDB: each caller's POSIX user per cluster, in the one table.

    mapping  pk "USERMAP#<cluster>", sk "P#<principal>"

One partition per cluster: a submission reads one item (strongly consistent), an administrator
lists a cluster's mappings with one Query.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.adapters.aws import translate
from broker.adapters.dynamodb.table import TableStore, plain, serialize
from broker.schema import dump
from broker.users.models import UserMapping


def mapping_key(cluster: str, principal: str) -> dict[str, Any]:
    return {"pk": {"S": f"USERMAP#{cluster}"}, "sk": {"S": f"P#{principal}"}}


def mapping_of(item: Mapping[str, Any]) -> UserMapping:
    return UserMapping.model_validate(plain(item))


class DynamoUserMappings(TableStore):
    """UserMappings on DynamoDB."""

    def get_mapping(self, cluster: str, principal: str) -> UserMapping | None:
        item = self._table.find(mapping_key(cluster, principal), f"mapping on {cluster}")
        return None if item is None else mapping_of(item)

    def put_mapping(self, mapping: UserMapping) -> None:
        item = {"pk": f"USERMAP#{mapping.cluster}", "sk": f"P#{mapping.principal}", **dump(mapping)}
        try:
            self._table.client.put_item(TableName=self._table.name, Item=serialize(item))
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"write a mapping on {mapping.cluster}") from exc

    def delete_mapping(self, cluster: str, principal: str) -> bool:
        answer = self._table.conditional(
            f"remove a mapping on {cluster}", self._table.client.delete_item,
            TableName=self._table.name, Key=mapping_key(cluster, principal),
            ConditionExpression="attribute_exists(pk)",
        )  # fmt: skip
        return answer is not None

    def list_mappings(
        self, cluster: str, *, limit: int, next_token: str | None
    ) -> tuple[list[UserMapping], str | None]:
        query = {
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": f"USERMAP#{cluster}"}},
            "ConsistentRead": True,
            "Limit": limit,
        }
        items, token = self._table.query_page(query, next_token, f"mappings of {cluster}")
        return [mapping_of(item) for item in items], token
