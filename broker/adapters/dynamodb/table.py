"""The one table every DynamoDB store shares: keys, item layout, and the calls that write it.

Items (single table; the capability modules say what each condition on them means):
    request  pk "REQ#<id>", sk "REQ"; gsi1 "OWNER#<owner>" / "REQ#<created>#<id>"
    job      pk "JOB#<id>", sk "JOB"; gsi1 "JOBS#<owner>#<cluster>" / "<created>#<id>"
    alias    pk "SLURM#<cluster>#<slurm id>", sk "ALIAS" -> job_id (a job by its Slurm id)
    chunk    pk "CHUNK#<batch id>#<n>", sk "CHUNK": a worker started the batch's chunk n; with
             ``lost``, the sweep claimed it was never delivered (``reap_done``: its items failed);
             a sweep chunk's ``arrays`` (key -> JSON ``SweepArray``), ``shared``, ``cluster``
             and ``pending`` (key -> JSON ``PendingFields``) are its submitted items' record
             (``broker.batches.arrays``)
    counter  pk "COUNT#CLUSTER|OWNER#<name>", sk "COUNT": submissions not yet in Slurm
    cluster  pk "CLUSTER#<name>", sk "CLUSTER"; gsi1 "CLUSTERS#<owner>" / "<name>"
The sparse index gsi2 ("ACTIVE#<cluster>" / "REQ#<id>" | "JOB#<id>" | "CLUSTER#<name>" |
"CHUNK#<batch id>#<n>") holds exactly the items that need attention: not final yet, or final
with their notification still to publish (a chunk: some of its items read from its arrays).
The sweep reads only that index, so its cost follows active work, not history.

This module is the only one of the package that calls the client or meets botocore's errors:
every call goes through :class:`Table`, which turns a failed condition into a plain answer
(None, or the indexes of the refused transaction items) and every other error into a broker
error through the one translator (``broker.adapters.aws.translate``).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from broker.adapters.aws import condition_failures, error_code, translate
from broker.batches.arrays import PendingFields, SharedFields, SubmittedChunk, SweepArray
from broker.errors import ConflictError, InvalidNextTokenError, NotFoundError
from broker.jobs.records import JobRecord
from broker.requests.models import RequestRecord
from broker.schema import dump

_SER = TypeSerializer()
_DESER = TypeDeserializer()

#: Records expire (DynamoDB TTL) this long after creation.
RETENTION = timedelta(days=90)
_KEYS = ("pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk", "expires_at")

# -- keys ---------------------------------------------------------------------------------


def request_key(request_id: str) -> dict[str, Any]:
    """The DynamoDB key of a request."""
    return {"pk": {"S": f"REQ#{request_id}"}, "sk": {"S": "REQ"}}


def job_key(job_id: str) -> dict[str, Any]:
    """The DynamoDB key of a job."""
    return {"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}}


def alias_key(cluster: str, slurm_job_id: str) -> dict[str, Any]:
    """The DynamoDB key of the item that maps a Slurm id to a broker job id."""
    return {"pk": {"S": f"SLURM#{cluster}#{slurm_job_id}"}, "sk": {"S": "ALIAS"}}


def chunk_key(batch_id: str, chunk: int) -> dict[str, Any]:
    """The DynamoDB key of the marker saying a batch chunk is being submitted."""
    return {"pk": {"S": f"CHUNK#{batch_id}#{chunk}"}, "sk": {"S": "CHUNK"}}


def counter_key(kind: str, name: str) -> dict[str, Any]:
    """Key of a backlog counter: submissions not yet in Slurm, per cluster or per owner."""
    return {"pk": {"S": f"COUNT#{kind}#{name}"}, "sk": {"S": "COUNT"}}


def cluster_key(name: str) -> dict[str, Any]:
    """The DynamoDB key of a cluster's record."""
    return {"pk": {"S": f"CLUSTER#{name}"}, "sk": {"S": "CLUSTER"}}


# -- items --------------------------------------------------------------------------------


def request_item(record: RequestRecord) -> dict[str, Any]:
    """Attribute-value map of a request: keys, index keys, then the record's fields."""
    created = f"REQ#{record.created_at.isoformat()}#{record.request_id}"
    active = not record.state.final or record.notify_pending is not None
    return _item(
        "REQ", record.request_id, gsi1pk=f"OWNER#{record.owner}", gsi1sk=created,
        record=record, active=active,
    )  # fmt: skip


def job_item(job: JobRecord) -> dict[str, Any]:
    """Attribute-value map of a job."""
    created = f"{job.created_at.isoformat()}#{job.job_id}"
    active = not job.state.final or job.notify_pending is not None
    return _item(
        "JOB", job.job_id, gsi1pk=f"JOBS#{job.owner}#{job.cluster}", gsi1sk=created,
        record=job, active=active,
    )  # fmt: skip


def alias_item(cluster: str, slurm_job_id: str, job_id: str, created: datetime) -> dict[str, Any]:
    """The item mapping a Slurm id on ``cluster`` to its broker job id (expires with the job)."""
    expires = int(created.timestamp() + RETENTION.total_seconds())
    return {
        **alias_key(cluster, slurm_job_id),
        "job_id": {"S": job_id},
        "expires_at": {"N": str(expires)},
    }


def array_alias_item(
    cluster: str, array_id: str, *, batch_id: str, chunk: int, first: int, created: datetime
) -> dict[str, Any]:
    """The item mapping a sweep's array on ``cluster`` to its chunk: task ``t`` is the chunk's
    item at position ``first + t`` (``broker.batches.items.chunk_item_ids``)."""
    expires = int(created.timestamp() + RETENTION.total_seconds())
    return {
        **alias_key(cluster, array_id),
        "batch_id": {"S": batch_id},
        "chunk": {"N": str(chunk)},
        "first": {"N": str(first)},
        "expires_at": {"N": str(expires)},
    }


def _item(
    kind: str,
    item_id: str,
    *,
    gsi1pk: str,
    gsi1sk: str,
    record: RequestRecord | JobRecord,
    active: bool,
) -> dict[str, Any]:
    """The common layout: key, listing index, TTL, fields; and, while ``active``, the
    sparse attention index (which is what the sweep reads)."""
    plain: dict[str, Any] = {
        "pk": f"{kind}#{item_id}",
        "sk": kind,
        "gsi1pk": gsi1pk,
        "gsi1sk": gsi1sk,
        "expires_at": int((record.created_at + RETENTION).timestamp()),
        **dump(record),
    }
    if active:
        plain["gsi2pk"] = f"ACTIVE#{record.cluster}"
        plain["gsi2sk"] = f"{kind}#{item_id}"
    return serialize(plain)


def serialize(plain: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Python values as an attribute-value map."""
    return {k: _SER.serialize(_dynamo_value(v)) for k, v in plain.items()}


def _dynamo_value(value: Any) -> Any:
    """DynamoDB numbers must be Decimal, not float."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _dynamo_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_dynamo_value(v) for v in value]
    return value


def value_of(attribute: Mapping[str, Any]) -> Any:
    """One stored attribute value as a plain Python value."""
    return _plain_numbers(_DESER.deserialize(attribute))


def plain(item: Mapping[str, Any]) -> dict[str, Any]:
    """A stored item as plain Python values, without its keys."""
    values = {k: value_of(v) for k, v in item.items()}
    for key in _KEYS:
        values.pop(key, None)
    return values


def _plain_numbers(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; the models want int (or float)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_numbers(v) for v in value]
    return value


def record_of(item: Mapping[str, Any]) -> RequestRecord:
    """Domain request record of a stored item."""
    return RequestRecord.model_validate(plain(item))


def job_of(item: Mapping[str, Any]) -> JobRecord:
    """Domain job record of a stored item."""
    return JobRecord.model_validate(plain(item))


def submitted_chunk_of(item: Mapping[str, Any]) -> SubmittedChunk | None:
    """A sweep chunk's recorded arrays from its marker (None: no array recorded yet)."""
    arrays = item.get("arrays", {}).get("M", {})
    if not arrays or "cluster" not in item:
        return None
    _, batch_id, chunk = item["pk"]["S"].split("#")
    shared = item.get("shared", {}).get("S")
    pending = item.get("pending", {}).get("M", {})
    return SubmittedChunk(
        batch_id=batch_id,
        chunk=int(chunk),
        cluster=item["cluster"]["S"],
        arrays=sorted((SweepArray.model_validate_json(a["S"]) for a in arrays.values()),
                      key=lambda a: a.first),
        shared=SharedFields.model_validate_json(shared) if shared else SharedFields(),
        pending={k: PendingFields.model_validate_json(v["S"]) for k, v in pending.items()},
    )  # fmt: skip


def instant(moment: datetime) -> str:
    """A time as fixed-width UTC ISO text (milliseconds), so string order is time order."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


# -- paging -------------------------------------------------------------------------------


def encode_token(key: Mapping[str, Any]) -> str:
    """A ``LastEvaluatedKey`` as an opaque ``next_token`` (listings of jobs, requests, clusters)."""
    return base64.urlsafe_b64encode(json.dumps(key, sort_keys=True).encode()).decode()


def decode_token(token: str) -> dict[str, Any]:
    """The ``ExclusiveStartKey`` of a ``next_token`` (InvalidNextTokenError if not one of ours).

    The API checks a token's signature before it gets here (``broker.api.tokens``); this is
    the store's own guard, for callers that are not the API.
    """
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError) as exc:
        raise InvalidNextTokenError("next_token is not a token this API issued") from exc
    if not isinstance(decoded, dict):
        raise InvalidNextTokenError("next_token is not a token this API issued")
    return decoded


# -- calls --------------------------------------------------------------------------------


class Table:
    """The requests table through the low-level client (explicit conditions, explicit keys).

    Every store of this package holds one; a store that implements several ports shares it.
    """

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    def put_new(self, item: dict[str, Any], what: str) -> None:
        """Put an item whose key must not exist yet (``attribute_not_exists``).

        Raises ConflictError when it exists.
        """
        written = self.conditional(
            f"write {what}", self.client.put_item, TableName=self.name, Item=item,
            ConditionExpression="attribute_not_exists(pk)",
        )  # fmt: skip
        if written is None:
            raise ConflictError(f"{what} exists already")

    def conditional(
        self, what: str, write: Callable[..., Any], **request: Any
    ) -> dict[str, Any] | None:
        """One conditional write (``put_item``, ``update_item``); its answer, or None when its
        condition failed (other errors translated)."""
        try:
            return dict(write(**request))
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise translate(exc, what) from exc
        except BotoCoreError as exc:
            raise translate(exc, what) from exc

    def transact(self, items: list[dict[str, Any]], what: str) -> set[int]:
        """Run a transaction; the indexes of items whose condition failed (empty: done).

        Only a cancellation for failed conditions alone is answered this way (the write lost to
        the data); anything else is translated (``condition_failures``).
        """
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            refused = condition_failures(exc)
            if refused:
                return refused
            raise translate(exc, what) from exc
        except BotoCoreError as exc:
            raise translate(exc, what) from exc
        return set()

    def find(self, key: dict[str, Any], what: str) -> dict[str, Any] | None:
        """Read an item (strongly consistent); None when there is none."""
        try:
            answer = self.client.get_item(TableName=self.name, Key=key, ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"read {what}") from exc
        item = answer.get("Item")
        return None if item is None else dict(item)

    def get(self, key: dict[str, Any], what: str) -> dict[str, Any]:
        """Read an item (strongly consistent). Raises NotFoundError when there is none."""
        item = self.find(key, what)
        if item is None:
            raise NotFoundError(f"no {what}")
        return item

    def update(
        self,
        key: dict[str, Any],
        *,
        sets: Mapping[str, Any] | None = None,
        add: Mapping[str, int] | None = None,
        remove: Iterable[str] = (),
        condition: str,
        condition_values: Mapping[str, Any],
        what: str,
    ) -> dict[str, Any] | None:
        """One conditional UpdateItem; the new item, or None when the condition failed."""
        spec = self.update_spec(
            key, sets=sets, add=add, remove=remove, condition=condition,
            condition_values=condition_values,
        )  # fmt: skip
        answer = self.conditional(what, self.client.update_item, **spec, ReturnValues="ALL_NEW")
        return None if answer is None else dict(answer["Attributes"])

    def update_spec(
        self,
        key: dict[str, Any],
        *,
        sets: Mapping[str, Any] | None = None,
        add: Mapping[str, int] | None = None,
        remove: Iterable[str] = (),
        condition: str,
        condition_values: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The parameters of a conditional update (for UpdateItem or a transaction's Update).

        Every attribute name goes through a placeholder (``#a0``…), so reserved words such as
        ``state``, ``name`` or ``error`` need no special care; ``#state`` is always defined.
        """
        names: dict[str, str] = {"#state": "state"}
        values = serialize(condition_values)
        clauses: list[str] = []

        def placeholder(attribute: str) -> str:
            mark = f"#a{len(names)}"
            names[mark] = attribute
            return mark

        set_parts = []
        for i, (attribute, value) in enumerate((sets or {}).items()):
            values[f":v{i}"] = _SER.serialize(_dynamo_value(value))
            set_parts.append(f"{placeholder(attribute)} = :v{i}")
        for i, (attribute, amount) in enumerate((add or {}).items()):
            values[f":n{i}"] = {"N": str(amount)}
            mark = placeholder(attribute)
            set_parts.append(f"{mark} = if_not_exists({mark}, :zero) + :n{i}")
            values[":zero"] = {"N": "0"}
        if set_parts:
            clauses.append("SET " + ", ".join(set_parts))
        removed = [placeholder(attribute) for attribute in remove]
        if removed:
            clauses.append("REMOVE " + ", ".join(removed))
        expression = " ".join(clauses)
        if "#state" not in condition and "#state" not in expression:
            del names["#state"]  # DynamoDB refuses names that no expression uses
        return {
            "TableName": self.name,
            "Key": key,
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    def batch_get(
        self, keys: list[dict[str, Any]], options: dict[str, Any], what: str
    ) -> list[dict[str, Any]]:
        """Items, 100 keys per BatchGetItem call, strongly consistent, unprocessed keys retried."""
        items: list[dict[str, Any]] = []
        for start in range(0, len(keys), 100):
            some = keys[start : start + 100]
            request = {self.name: {"Keys": some, "ConsistentRead": True, **options}}
            for attempt in range(8):
                try:
                    answer = self.client.batch_get_item(RequestItems=request)
                except (ClientError, BotoCoreError) as exc:
                    raise translate(exc, what) from exc
                items.extend(answer.get("Responses", {}).get(self.name, []))
                request = answer.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(min(2.0, 0.05 * 2**attempt))
        return items

    def query_page(
        self, query: dict[str, Any], next_token: str | None, what: str
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a Query (``query`` without TableName), and the token of the next one."""
        request = {"TableName": self.name, **query}
        if next_token:
            request["ExclusiveStartKey"] = decode_token(next_token)
        try:
            answer = self.client.query(**request)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, what) from exc
        token = encode_token(answer["LastEvaluatedKey"]) if "LastEvaluatedKey" in answer else None
        return list(answer.get("Items", [])), token

    def scan_index(self, index: str, what: str, **options: Any) -> Iterator[dict[str, Any]]:
        """Every item of an index, page after page (``options``: a filter, for instance)."""
        start: dict[str, Any] | None = None
        while True:
            scan: dict[str, Any] = {"TableName": self.name, "IndexName": index, **options}
            if start:
                scan["ExclusiveStartKey"] = start
            try:
                answer = self.client.scan(**scan)
            except (ClientError, BotoCoreError) as exc:
                raise translate(exc, what) from exc
            yield from answer.get("Items", [])
            start = answer.get("LastEvaluatedKey")
            if not start:
                return


class TableStore:
    """The base of each capability store: the table it reads and writes.

    Each store builds its own :class:`Table` from a client and a table name; the one object that
    implements several ports (``broker.adapters.dynamodb.store``) inherits this constructor once,
    so its capability stores share one.
    """

    def __init__(self, client: Any, table_name: str) -> None:
        self._table = Table(client, table_name)
