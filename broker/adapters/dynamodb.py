"""DynamoDB request store: one table, conditional writes, monotonic states.

Item layout (single table, shared later with jobs and clusters):
    pk = "REQ#<request_id>", sk = "REQ"
    gsi1pk = "OWNER#<owner>", gsi1sk = "REQ#<created_at>#<request_id>"
    (the GSI lists a caller's requests in creation order)
Every state change is conditional on the states it may come from (``broker.states``), so two
deliveries of the same message, or a late retry, can never move a request backwards or out of a
final state.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict

from broker.adapters.aws import error_code, translate
from broker.errors import ConflictError, NotFoundError
from broker.models import ErrorInfo, JobResult, RequestRecord, dump, utcnow
from broker.states import RequestState, sources_of

_SER = TypeSerializer()
_DESER = TypeDeserializer()

#: Request records expire (DynamoDB TTL) this long after creation.
RETENTION = timedelta(days=90)


class RequestItem(BaseModel):
    """The stored shape of a request record (keys + attributes)."""

    model_config = ConfigDict(extra="ignore")

    pk: str
    sk: str = "REQ"
    gsi1pk: str
    gsi1sk: str
    expires_at: int
    record: dict[str, Any]

    @staticmethod
    def key(request_id: str) -> dict[str, Any]:
        """The DynamoDB key of a request."""
        return {"pk": {"S": f"REQ#{request_id}"}, "sk": {"S": "REQ"}}

    @classmethod
    def of(cls, record: RequestRecord) -> RequestItem:
        """Storage item of a domain record."""
        created = record.created_at.isoformat()
        return cls(
            pk=f"REQ#{record.request_id}",
            gsi1pk=f"OWNER#{record.owner}",
            gsi1sk=f"REQ#{created}#{record.request_id}",
            expires_at=int((record.created_at + RETENTION).timestamp()),
            record=dump(record),
        )

    def to_dynamo(self) -> dict[str, Any]:
        """Attribute-value map: keys plus the record's fields at top level (updatable singly)."""
        flat: dict[str, Any] = {
            "pk": self.pk,
            "sk": self.sk,
            "gsi1pk": self.gsi1pk,
            "gsi1sk": self.gsi1sk,
            "expires_at": self.expires_at,
            **self.record,
        }
        return {k: _SER.serialize(v) for k, v in flat.items()}

    @staticmethod
    def record_from_dynamo(item: dict[str, Any]) -> RequestRecord:
        """Domain record of a stored attribute-value map."""
        plain = {k: _DESER.deserialize(v) for k, v in item.items()}
        for key in ("pk", "sk", "gsi1pk", "gsi1sk", "expires_at"):
            plain.pop(key, None)
        return RequestRecord.model_validate(_plain_numbers(plain))


def _plain_numbers(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; the models want int."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_numbers(v) for v in value]
    return value


def _iso(moment: datetime) -> str:
    return moment.isoformat()


class DynamoRequestStore:
    """RequestStore port on DynamoDB (low-level client, so conditions stay explicit)."""

    def __init__(self, client: Any, table_name: str) -> None:
        self._ddb = client
        self._table = table_name

    def create(self, record: RequestRecord) -> None:
        """Write a new record; the id must not exist (``attribute_not_exists``)."""
        try:
            self._ddb.put_item(
                TableName=self._table,
                Item=RequestItem.of(record).to_dynamo(),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise ConflictError(f"request {record.request_id} exists already") from exc
            raise translate(exc, "write request record") from exc
        except BotoCoreError as exc:
            raise translate(exc, "write request record") from exc

    def get(self, request_id: str) -> RequestRecord:
        """Read a record (strongly consistent: a GET right after a POST sees it)."""
        try:
            answer = self._ddb.get_item(
                TableName=self._table, Key=RequestItem.key(request_id), ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "read request record") from exc
        if "Item" not in answer:
            raise NotFoundError(f"no request {request_id}")
        return RequestItem.record_from_dynamo(answer["Item"])

    def mark_dispatched(self, request_id: str) -> RequestRecord | None:
        """ACCEPTED|DISPATCHED -> DISPATCHED, attempts + 1; None when already final."""
        updated = self._update(
            request_id,
            RequestState.DISPATCHED,
            sets={"attempts": "attempts + :one"},
            values={":one": {"N": "1"}},
        )
        if updated is None:
            current = self.get(request_id)  # raises NotFoundError when absent
            if current.state.final:
                return None
            # Neither final nor a valid source: cannot happen with the table in broker.states.
            raise ConflictError(f"request {request_id} is {current.state}, cannot dispatch")
        return updated

    def record_success(self, request_id: str, result: JobResult) -> bool:
        """-> SUCCEEDED with the result, clearing any retry error; False if already final."""
        updated = self._update(
            request_id,
            RequestState.SUCCEEDED,
            sets={"#result": ":result"},
            values={":result": _SER.serialize(dump(result))},
            remove=("#error",),
        )
        return updated is not None

    def record_failure(self, request_id: str, error: ErrorInfo) -> bool:
        """-> FAILED with the error; False if already final."""
        updated = self._update(
            request_id,
            RequestState.FAILED,
            sets={"#error": ":error"},
            values={":error": _SER.serialize(dump(error))},
        )
        return updated is not None

    def record_retry(self, request_id: str, error: ErrorInfo) -> None:
        """Remember the last transient error while the request is still in progress."""
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key=RequestItem.key(request_id),
                UpdateExpression="SET #error = :error, updated_at = :now",
                ConditionExpression="#state IN (:accepted, :dispatched)",
                ExpressionAttributeNames={"#error": "error", "#state": "state"},
                ExpressionAttributeValues={
                    ":error": _SER.serialize(dump(error)),
                    ":now": {"S": _iso(utcnow())},
                    ":accepted": {"S": RequestState.ACCEPTED.value},
                    ":dispatched": {"S": RequestState.DISPATCHED.value},
                },
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return  # already final: the retry note no longer matters
            raise translate(exc, "record retry") from exc
        except BotoCoreError as exc:
            raise translate(exc, "record retry") from exc

    def _update(
        self,
        request_id: str,
        new_state: RequestState,
        *,
        sets: dict[str, str],
        values: dict[str, Any],
        remove: tuple[str, ...] = (),
    ) -> RequestRecord | None:
        """Conditionally move to ``new_state``; None when the condition fails.

        The condition lists exactly the states ``new_state`` may be reached from, taken from the
        transition table, so the table is the single source of truth for which moves are legal.
        ``sets`` maps attribute (or ``#name``) to value expression; ``remove`` lists attributes.
        """
        sources = sorted(s.value for s in sources_of(new_state))
        placeholders = {f":src{i}": {"S": s} for i, s in enumerate(sources)}
        assignments = ["#state = :new", "updated_at = :now"]
        assignments += [f"{attr} = {expr}" for attr, expr in sets.items()]
        expression = "SET " + ", ".join(assignments)
        if remove:
            expression += " REMOVE " + ", ".join(remove)
        names = {"#state": "state", "#result": "result", "#error": "error"}
        used = {k: v for k, v in names.items() if k in expression}
        condition = f"attribute_exists(pk) AND #state IN ({', '.join(placeholders)})"
        try:
            answer = self._ddb.update_item(
                TableName=self._table,
                Key=RequestItem.key(request_id),
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames=used,
                ExpressionAttributeValues={
                    ":new": {"S": new_state.value},
                    ":now": {"S": _iso(utcnow())},
                    **placeholders,
                    **values,
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise translate(exc, f"move request to {new_state.value}") from exc
        except BotoCoreError as exc:
            raise translate(exc, f"move request to {new_state.value}") from exc
        return RequestItem.record_from_dynamo(answer["Attributes"])
