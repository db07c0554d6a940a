"""DynamoDB store of requests and jobs: one table, conditional writes, forward-only states.

Items (single table):
    request  pk "REQ#<id>", sk "REQ"; gsi1 "OWNER#<owner>" / "REQ#<created>#<id>"
    job      pk "JOB#<id>", sk "JOB"; gsi1 "JOBS#<owner>#<cluster>" / "<created>#<id>"
    alias    pk "SLURM#<cluster>#<slurm id>", sk "ALIAS" -> job_id (a job by its Slurm id)
    chunk    pk "CHUNK#<batch id>#<n>", sk "CHUNK": a worker started the batch's chunk n; with
             ``lost``, the sweep claimed it was never delivered (``reap_done``: its items failed)
The sparse index gsi2 ("ACTIVE#<cluster>" / "REQ#<id>" | "JOB#<id>") holds exactly the items
that need attention: not final yet, or final with their notification still to publish. The
sweep reads only that index, so its cost follows active work, not history.

Every state change is conditional on the states it may come from (``broker.states`` for
requests, ``broker.jobs`` ranks for jobs): two deliveries of the same message, overlapping
sweeps or a late retry can never move an item backwards or out of a final state.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from broker.adapters.aws import condition_failed, condition_failures, error_code, translate
from broker.batches import batch_id_of, unrecorded_item
from broker.clusters import ACCEPTS_JOBS, not_ready
from broker.errors import (
    BackpressureError,
    ClusterNotReadyError,
    ConflictError,
    InvalidNextTokenError,
    NotFoundError,
)
from broker.jobs import JobRecord, JobState
from broker.models import ErrorInfo, RequestRecord, RequestResult, dump, utcnow
from broker.ports import Limits
from broker.states import RequestState, sources_of

_SER = TypeSerializer()
_DESER = TypeDeserializer()

#: Records expire (DynamoDB TTL) this long after creation.
RETENTION = timedelta(days=90)
_KEYS = ("pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk", "expires_at")
#: A chunk marker's attributes (placeholders: expressions never meet a reserved word).
_MARKER_NAMES = {"#l": "lost", "#d": "reap_done"}


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


def cluster_key(name: str) -> dict[str, Any]:
    """The DynamoDB key of a cluster's record (``broker.adapters.dynamodb_clusters``)."""
    return {"pk": {"S": f"CLUSTER#{name}"}, "sk": {"S": "CLUSTER"}}


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
    return _serialize(plain)


def _serialize(plain: Mapping[str, Any]) -> dict[str, Any]:
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


def _plain(item: Mapping[str, Any]) -> dict[str, Any]:
    """A stored item as plain Python values, without its keys."""
    values = {k: _plain_numbers(_DESER.deserialize(v)) for k, v in item.items()}
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
    return RequestRecord.model_validate(_plain(item))


def job_of(item: Mapping[str, Any]) -> JobRecord:
    """Domain job record of a stored item."""
    return JobRecord.model_validate(_plain(item))


class DynamoStore:
    """RequestStore and JobStore ports on DynamoDB (low-level client: explicit conditions)."""

    def __init__(self, client: Any, table_name: str) -> None:
        self._ddb = client
        self._table = table_name

    # -- requests --------------------------------------------------------------------------

    def create(self, record: RequestRecord) -> None:
        """Write a new request; the id must not exist (``attribute_not_exists``)."""
        self._put(request_item(record), f"request {record.request_id}")

    create_request = create

    def get(self, request_id: str) -> RequestRecord:
        """Read a request (strongly consistent: a GET right after a POST sees it)."""
        return record_of(self._get(request_key(request_id), f"request {request_id}"))

    def mark_dispatched(self, request_id: str) -> RequestRecord | None:
        """ACCEPTED|DISPATCHED -> DISPATCHED, attempts + 1; None when already final."""
        updated = self._move_request(request_id, RequestState.DISPATCHED, add={"attempts": 1})
        if updated is None:
            current = self.get(request_id)  # raises NotFoundError when absent
            if current.state.final:
                return None
            raise ConflictError(f"request {request_id} is {current.state}, cannot dispatch")
        return updated

    def record_success(self, request_id: str, result: RequestResult) -> bool:
        """-> SUCCEEDED with the result, clearing any retry error; False if already final."""
        moved = self._move_request(
            request_id, RequestState.SUCCEEDED, sets={"result": dump(result)}, remove=("error",)
        )
        return moved is not None

    def record_failure(self, request_id: str, error: ErrorInfo) -> bool:
        """-> FAILED with the error; False if already final."""
        moved = self._move_request(request_id, RequestState.FAILED, sets={"error": dump(error)})
        return moved is not None

    def record_cancelled(self, request_id: str) -> bool:
        """-> CANCELLED; False if already final."""
        return self._move_request(request_id, RequestState.CANCELLED) is not None

    def record_retry(self, request_id: str, error: ErrorInfo) -> None:
        """Remember the last transient error while the request is still in progress."""
        self._update(
            request_key(request_id),
            sets={"error": dump(error), "updated_at": utcnow().isoformat()},
            condition="#state IN (:c0, :c1)",
            condition_values={
                ":c0": RequestState.ACCEPTED.value,
                ":c1": RequestState.DISPATCHED.value,
            },
            what="record retry",
        )

    def claim_requeue(self, request_id: str, now: datetime, stale_before: datetime) -> bool:
        """Set ``requeued_at`` if the request is still ACCEPTED and not re-sent since
        ``stale_before``; False when another sweep claimed it, or a worker took it meanwhile.

        Why this condition: the attention index is read eventually consistently and sweeps may
        overlap, so the sweep's own check proves nothing; this write is the one place where
        "still waiting for its first delivery, and nobody re-sent it lately" is decided.
        ``state = ACCEPTED`` also fails on a missing item (no ``state``), so nothing is created.
        Both times are written in one fixed-width UTC form, so comparing strings compares times.
        """
        never_or_long_ago = "attribute_not_exists(requeued_at) OR requeued_at < :c1"
        item = self._update(
            request_key(request_id),
            sets={"requeued_at": _instant(now)},
            condition=f"#state = :c0 AND ({never_or_long_ago})",
            condition_values={":c0": RequestState.ACCEPTED.value, ":c1": _instant(stale_before)},
            what="claim request re-send",
        )
        return item is not None

    def clear_request_notification(self, request_id: str, state: str) -> bool:
        """The request's final event is published: it leaves the attention index."""
        return (
            self._update(
                request_key(request_id),
                remove=("notify_pending", "gsi2pk", "gsi2sk"),
                condition="notify_pending = :c0",
                condition_values={":c0": state},
                what="clear request notification",
            )
            is not None
        )

    def _move_request(
        self,
        request_id: str,
        new: RequestState,
        *,
        sets: Mapping[str, Any] | None = None,
        add: Mapping[str, int] | None = None,
        remove: tuple[str, ...] = (),
    ) -> RequestRecord | None:
        """Conditionally move a request to ``new``; None when the condition fails.

        The condition lists exactly the states ``new`` may come from, taken from the
        transition table, so the table is the single source of truth for which moves are legal.
        A final move also marks the request's notification pending.
        """
        sources = sorted(s.value for s in sources_of(new))
        values = {f":c{i}": s for i, s in enumerate(sources)}
        all_sets: dict[str, Any] = {"state": new.value, "updated_at": utcnow().isoformat()}
        all_sets.update(sets or {})
        if new.final:
            all_sets["notify_pending"] = new.value
        item = self._update(
            request_key(request_id),
            sets=all_sets,
            add=add,
            remove=remove,
            condition=f"attribute_exists(pk) AND #state IN ({', '.join(values)})",
            condition_values=values,
            what=f"move request to {new.value}",
        )
        return None if item is None else record_of(item)

    # -- jobs ------------------------------------------------------------------------------

    def create_submission(
        self,
        request: RequestRecord,
        job: JobRecord,
        limits: Limits | None = None,
        *,
        ready_cluster: bool = False,
    ) -> None:
        """Write a submit request and its job in one transaction (both or neither).

        With ``limits``, the same transaction counts the job into its cluster's backlog and its
        owner's in-flight submissions, and fails whole when either would pass its limit: the
        limit holds exactly, however many API calls race. With ``ready_cluster``, it also
        checks that the cluster's record, if any, accepts jobs (``clusters.ACCEPTS_JOBS``).

        Raises:
            ConflictError: the request exists already.
            BackpressureError: a limit is reached (answer 429).
            ClusterNotReadyError: the cluster cannot take jobs now (answer 409).
        """
        absent = "attribute_not_exists(pk)"
        items: list[dict[str, Any]] = [
            {"Put": {"TableName": self._table, "Item": request_item(request),
                     "ConditionExpression": absent}},
            {"Put": {"TableName": self._table, "Item": job_item(job),
                     "ConditionExpression": absent}},
        ]  # fmt: skip
        if limits is not None:
            items.append(self._count("CLUSTER", job.cluster, +1, limits.cluster_backlog))
            items.append(self._count("OWNER", job.owner, +1, limits.owner_inflight))
        ready_at = len(items) if ready_cluster else -1
        if ready_cluster:
            items.append(self._ready_check(job.cluster))
        try:
            self._ddb.transact_write_items(TransactItems=items)
        except ClientError as exc:
            failed = condition_failures(exc)
            if ready_at in failed:
                raise self._not_ready(job.cluster) from exc
            if limits is not None and 2 in failed:
                raise BackpressureError(
                    f"cluster {job.cluster} has {limits.cluster_backlog} submissions waiting; "
                    "retry later",
                    retry_after=limits.retry_after_seconds,
                ) from exc
            if limits is not None and 3 in failed:
                raise BackpressureError(
                    f"you have {limits.owner_inflight} submissions not yet in Slurm; retry later",
                    retry_after=limits.retry_after_seconds,
                ) from exc
            if failed or condition_failed(exc):
                raise ConflictError(f"request {request.request_id} exists already") from exc
            raise translate(exc, "write submission") from exc
        except BotoCoreError as exc:
            raise translate(exc, "write submission") from exc

    def create_batch(
        self, request: RequestRecord, limits: Limits | None = None, *, ready_cluster: bool = False
    ) -> None:
        """Write a batch request and reserve its items in the backlog counters, in one
        transaction (so the limits hold exactly), checking the cluster accepts jobs if
        ``ready_cluster`` (as ``create_submission``). Its items get their records with their
        outcomes (``record_batch_outcomes``, ``cancel_unsubmitted``), not here.
        """
        count = request.items or 0
        items: list[dict[str, Any]] = [
            {"Put": {"TableName": self._table, "Item": request_item(request),
                     "ConditionExpression": "attribute_not_exists(pk)"}},
        ]  # fmt: skip
        if limits is not None:
            items.append(self._count("CLUSTER", request.cluster, count, limits.cluster_backlog))
            items.append(self._count("OWNER", request.owner, count, limits.owner_inflight))
        ready_at = len(items) if ready_cluster else -1
        if ready_cluster:
            items.append(self._ready_check(request.cluster))
        try:
            self._ddb.transact_write_items(TransactItems=items)
        except ClientError as exc:
            failed = condition_failures(exc)
            if ready_at in failed:
                raise self._not_ready(request.cluster) from exc
            if limits is not None and failed & {1, 2}:
                raise BackpressureError(
                    f"accepting {count} more submissions would pass a backlog limit "
                    f"(cluster {limits.cluster_backlog}, caller {limits.owner_inflight}); "
                    "retry later or send fewer",
                    retry_after=limits.retry_after_seconds,
                ) from exc
            if failed:
                raise ConflictError(f"request {request.request_id} exists already") from exc
            raise translate(exc, "write batch") from exc
        except BotoCoreError as exc:
            raise translate(exc, "write batch") from exc

    def _ready_check(self, cluster: str) -> dict[str, Any]:
        """A transaction item: the cluster has no record, or its record accepts jobs."""
        statuses = sorted(status.value for status in ACCEPTS_JOBS)
        values = {f":r{i}": {"S": status} for i, status in enumerate(statuses)}
        condition = f"attribute_not_exists(pk) OR #rs IN ({', '.join(values)})"
        return {"ConditionCheck": {"TableName": self._table, "Key": cluster_key(cluster),
                                   "ConditionExpression": condition,
                                   "ExpressionAttributeNames": {"#rs": "status"},
                                   "ExpressionAttributeValues": values}}  # fmt: skip

    def _not_ready(self, cluster: str) -> ClusterNotReadyError:
        """The 409 for a cluster whose record refused a submission (its status read back)."""
        try:
            status = _DESER.deserialize(self._get(cluster_key(cluster), "cluster")["status"])
        except (NotFoundError, KeyError):
            status = "unknown"  # deleted or changed since: the client may simply retry
        return not_ready(cluster, str(status))

    def jobs_by_id(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """Read jobs by id (BatchGetItem, 100 per call, strongly consistent)."""
        found: dict[str, JobRecord] = {}
        for item in self._batch_get([job_key(j) for j in job_ids], {}, "read jobs"):
            job = job_of(item)
            found[job.job_id] = job
        return found

    def _job_states(self, job_ids: list[str]) -> dict[str, JobState]:
        """Just the states of jobs (a projection: a fraction of the bytes of whole records)."""
        projection = {"ProjectionExpression": "pk, #s", "ExpressionAttributeNames": {"#s": "state"}}
        return {
            item["pk"]["S"].removeprefix("JOB#"): JobState(item["state"]["S"])
            for item in self._batch_get([job_key(j) for j in job_ids], projection, "read jobs")
        }

    def _batch_get(
        self, keys: list[dict[str, Any]], options: dict[str, Any], what: str
    ) -> list[dict[str, Any]]:
        """Items, 100 keys per BatchGetItem call, strongly consistent, unprocessed keys retried."""
        items: list[dict[str, Any]] = []
        for start in range(0, len(keys), 100):
            some = keys[start : start + 100]
            request = {self._table: {"Keys": some, "ConsistentRead": True, **options}}
            for attempt in range(8):
                try:
                    answer = self._ddb.batch_get_item(RequestItems=request)
                except (ClientError, BotoCoreError) as exc:
                    raise translate(exc, what) from exc
                items.extend(answer.get("Responses", {}).get(self._table, []))
                request = answer.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(min(2.0, 0.05 * 2**attempt))
        return items

    def start_chunk(self, batch_id: str, chunk: int, job_ids: list[str]) -> set[str]:
        """One marker item for the chunk, then its jobs' records read back (strongly consistent).

        A cancel of a queued batch job is a transaction that checks this marker is absent, so
        once it is written no job of the chunk can be cancelled as unsubmitted, and one written
        before it shows in the read. The jobs to submit are those without a record (the usual
        case: items get their record with their outcome) or still SUBMITTING (a batch accepted
        when items were recorded at accept).

        Why the marker's condition: a worker may overwrite its own marker or another delivery's
        (a redelivery starts the chunk again), but never a sweep's claim that the chunk was
        lost (``reap_chunk``): the sweep is failing those items, so nothing is submitted.
        """
        expires = int((utcnow() + RETENTION).timestamp())
        item = {**chunk_key(batch_id, chunk), "expires_at": {"N": str(expires)}}
        started = self._conditional(
            "start chunk", self._ddb.put_item, TableName=self._table, Item=item,
            ConditionExpression="attribute_not_exists(#l)",
            ExpressionAttributeNames={"#l": "lost"},
        )  # fmt: skip
        if started is None:
            return set()  # reaped: its items are (being) failed by the sweep
        states = self._job_states(job_ids)
        return {
            job_id
            for job_id in job_ids
            if states.get(job_id, JobState.SUBMITTING) is JobState.SUBMITTING
        }

    def chunks_started(self, batch_id: str, chunk_count: int) -> set[int]:
        """The chunks whose marker needs no reaping (BatchGetItem of the markers, 100 a call,
        strongly consistent): a worker's marker, or a lost claim whose reap is done."""
        keys = [chunk_key(batch_id, n) for n in range(chunk_count)]
        projection = {
            "ProjectionExpression": "pk, #l, #d",
            "ExpressionAttributeNames": _MARKER_NAMES,
        }
        return {
            int(item["pk"]["S"].rsplit("#", 1)[1])
            for item in self._batch_get(keys, projection, "read chunk markers")
            if "lost" not in item or "reap_done" in item
        }

    def reap_chunk(self, batch_id: str, chunk: int) -> bool:
        """Put the chunk's marker with ``lost = true``, unless a worker's marker, or a finished
        reap's, is there.

        Why this condition: ``attribute_not_exists(pk)`` is the claim itself (no worker started
        the chunk; from now on none can, ``start_chunk`` refuses a lost marker); ``lost`` without
        ``reap_done`` lets a sweep finish a reap that an error or a crash interrupted, rather
        than leaving its items SUBMITTING, with their reservations, for ever.
        """
        expires = int((utcnow() + RETENTION).timestamp())
        item = {
            **chunk_key(batch_id, chunk),
            "expires_at": {"N": str(expires)},
            "lost": {"BOOL": True},
        }
        unfinished = "#l = :t AND attribute_not_exists(#d)"
        claimed = self._conditional(
            "claim lost chunk", self._ddb.put_item, TableName=self._table, Item=item,
            ConditionExpression=f"attribute_not_exists(pk) OR ({unfinished})",
            ExpressionAttributeNames=_MARKER_NAMES,
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )  # fmt: skip
        return claimed is not None

    def reap_done(self, batch_id: str, chunk: int) -> None:
        """Mark a lost chunk's reap finished (only a lost claim: never a worker's marker)."""
        self._conditional(
            "finish lost chunk", self._ddb.update_item, TableName=self._table,
            Key=chunk_key(batch_id, chunk),
            UpdateExpression="SET #d = :t", ConditionExpression="#l = :t",
            ExpressionAttributeNames=_MARKER_NAMES,
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )  # fmt: skip

    def start_submissions(self, job_ids: list[str]) -> set[str]:
        """Mark SUBMITTING jobs as being submitted; return those that were (others moved on).

        Transactions of 100. When some job of a chunk is no longer SUBMITTING (cancelled while
        queued, or recorded by an earlier delivery), the cancellation reasons say which: the
        chunk is sent again without them.
        """
        started: set[str] = set()
        now = utcnow().isoformat()
        for start in range(0, len(job_ids), 100):
            chunk = job_ids[start : start + 100]
            while chunk:
                specs = [{"Update": self._start_spec(job_id, now)} for job_id in chunk]
                refused = self._transact(specs, "start submissions")
                if not refused:
                    started.update(chunk)
                    break
                chunk = [job_id for i, job_id in enumerate(chunk) if i not in refused]
        return started

    def _transact(self, items: list[dict[str, Any]], what: str) -> set[int]:
        """Run a transaction; the indexes of items whose condition failed (empty: done)."""
        try:
            self._ddb.transact_write_items(TransactItems=items)
        except ClientError as exc:
            refused = condition_failures(exc)
            if refused:
                return refused
            raise translate(exc, what) from exc
        except BotoCoreError as exc:
            raise translate(exc, what) from exc
        return set()

    def _start_spec(self, job_id: str, now: str) -> dict[str, Any]:
        return self._update_spec(
            job_key(job_id),
            sets={"submit_started": True, "updated_at": now},
            condition="#state = :c0",
            condition_values={":c0": JobState.SUBMITTING.value},
        )

    def record_batch_outcomes(
        self, batch: RequestRecord, outcomes: list[JobRecord]
    ) -> tuple[list[str], list[str]]:
        """Write the records of batch jobs leaving SUBMITTING, 25 jobs per transaction.

        Each job's record is put whole, on condition that it has none yet or is still
        SUBMITTING; each transaction also writes the aliases of the submitted jobs, counts the
        jobs out of the backlog counters and into the batch's outcome counts, all or nothing.
        A transaction where some job already moved (an earlier delivery, a cancel) is redone
        without it. Returns the job ids of the moves this call made (submitted, failed).
        """
        done_ok: list[str] = []
        done_failed: list[str] = []
        for start in range(0, len(outcomes), 25):
            chunk = outcomes[start : start + 25]
            while chunk:
                items: list[dict[str, Any]] = []
                owner_of: list[int] = []  # transaction item index -> chunk index
                counts: dict[str, int] = {}
                for position, job in enumerate(chunk):
                    moves = self._outcome_items(batch, job)
                    items.extend(moves)
                    owner_of.extend([position] * len(moves))
                    outcome = _outcome_of(job)
                    counts[outcome] = counts.get(outcome, 0) + 1
                items += self._count_items(batch, -len(chunk), counts)
                refused = self._transact(items, "record batch outcomes")
                if not refused:
                    for job in chunk:
                        submitted = job.slurm_job_id is not None
                        (done_ok if submitted else done_failed).append(job.job_id)
                    break
                # Jobs another writer already moved: send the chunk again without them.
                gone = {owner_of[i] for i in refused if i < len(owner_of)}
                chunk = [job for position, job in enumerate(chunk) if position not in gone]
        return done_ok, done_failed

    def _outcome_items(self, batch: RequestRecord, job: JobRecord) -> list[dict[str, Any]]:
        """Transaction items writing one batch job's outcome record (no counters)."""
        put = {
            "TableName": self._table,
            "Item": job_item(job),
            "ConditionExpression": "attribute_not_exists(pk) OR #state = :c0",
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": {":c0": {"S": JobState.SUBMITTING.value}},
        }
        items: list[dict[str, Any]] = [{"Put": put}]
        if job.slurm_job_id is not None:
            expires = int(batch.created_at.timestamp() + RETENTION.total_seconds())
            alias = {**alias_key(batch.cluster, job.slurm_job_id), "job_id": {"S": job.job_id},
                     "expires_at": {"N": str(expires)}}  # fmt: skip
            items.append({"Put": {"TableName": self._table, "Item": alias}})
        return items

    def _count_items(
        self, batch: RequestRecord, delta: int, outcomes: Mapping[str, int]
    ) -> list[dict[str, Any]]:
        """Backlog counters by ``delta``; the batch's outcome counts up by ``outcomes``."""
        names = {f"#o{i}": name for i, name in enumerate(outcomes)}
        values = {f":o{i}": {"N": str(n)} for i, n in enumerate(outcomes.values())}
        adds = ", ".join(f"counts.{mark} :o{i}" for i, mark in enumerate(names))
        batch_update = {
            "TableName": self._table,
            "Key": request_key(batch.request_id),
            "UpdateExpression": f"ADD {adds}",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
        return [
            self._count("CLUSTER", batch.cluster, delta, None),
            self._count("OWNER", batch.owner, delta, None),
            {"Update": batch_update},
        ]

    def backlog(self, kind: str, name: str) -> int:
        """The current count of a backlog counter (CLUSTER or OWNER)."""
        try:
            item = self._get(_counter_key(kind, name), f"counter {kind} {name}")
        except NotFoundError:
            return 0
        return int(_DESER.deserialize(item.get("inflight", {"N": "0"})))

    def _count(self, kind: str, name: str, delta: int, limit: int | None) -> dict[str, Any]:
        """A transaction item adding ``delta`` to a counter, never past ``limit``."""
        update: dict[str, Any] = {
            "TableName": self._table,
            "Key": _counter_key(kind, name),
            "UpdateExpression": "ADD inflight :d",
            "ExpressionAttributeValues": {":d": {"N": str(delta)}},
        }
        if limit is not None:
            update["ConditionExpression"] = "attribute_not_exists(inflight) OR inflight <= :room"
            update["ExpressionAttributeValues"][":room"] = {"N": str(limit - delta)}
        return {"Update": update}

    def get_job(self, job_id: str) -> JobRecord:
        """Read a job by its broker id (a batch item without a record: from its batch)."""
        return self._read_job(job_id)[0]

    def _read_job(self, job_id: str) -> tuple[JobRecord, bool]:
        """The job, and whether it has a record of its own (False: read from its batch)."""
        try:
            return job_of(self._get(job_key(job_id), f"job {job_id}")), True
        except NotFoundError:
            batch_id = batch_id_of(job_id)
            if batch_id is None:
                raise
            try:
                batch = self.get(batch_id)
            except NotFoundError:
                raise NotFoundError(f"no job {job_id}") from None
            job = unrecorded_item(batch, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id}") from None
            return job, False

    def find_job(self, cluster: str, ref: str) -> JobRecord:
        """Read a job by broker id, or by Slurm id (``123``, or ``123_4`` -> its array)."""
        if ref.startswith("r"):
            job = self.get_job(ref)
            if job.cluster != cluster:
                raise NotFoundError(f"no job {ref} on {cluster}")
            return job
        alias = self._get(alias_key(cluster, ref.split("_", 1)[0]), f"job {ref}")
        return self.get_job(str(_DESER.deserialize(alias["job_id"])))

    def list_jobs(
        self,
        owner: str,
        cluster: str,
        *,
        states: frozenset[JobState] | None,
        name: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        next_token: str | None,
    ) -> tuple[list[JobRecord], str | None]:
        """The owner's jobs on a cluster, newest first, filtered, one page at a time."""
        names = {"#pk": "gsi1pk"}
        values: dict[str, Any] = {":pk": {"S": f"JOBS#{owner}#{cluster}"}}
        key = "#pk = :pk"
        if since or until:
            names["#sk"] = "gsi1sk"
            low = since.isoformat() if since else ""
            high = (until.isoformat() if until else "9999") + "~"
            values[":lo"], values[":hi"] = {"S": low}, {"S": high}
            key += " AND #sk BETWEEN :lo AND :hi"
        filters = []
        if states:
            names["#state"] = "state"
            marks = []
            for i, state in enumerate(sorted(states)):
                values[f":s{i}"] = {"S": state.value}
                marks.append(f":s{i}")
            filters.append(f"#state IN ({', '.join(marks)})")
        if name:
            names["#name"] = "name"
            values[":name"] = {"S": name}
            filters.append("#name = :name")
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": "gsi1",
            "KeyConditionExpression": key,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if filters:
            query["FilterExpression"] = " AND ".join(filters)
        if next_token:
            query["ExclusiveStartKey"] = decode_token(next_token)
        try:
            answer = self._ddb.query(**query)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "list jobs") from exc
        token = encode_token(answer["LastEvaluatedKey"]) if "LastEvaluatedKey" in answer else None
        return [job_of(item) for item in answer.get("Items", [])], token

    def start_submission(self, job_id: str) -> JobRecord | None:
        """SUBMITTING -> (still SUBMITTING, submit_started); None if no longer SUBMITTING."""
        item = self._update(
            job_key(job_id),
            sets={"submit_started": True, "updated_at": utcnow().isoformat()},
            condition="#state = :c0",
            condition_values={":c0": JobState.SUBMITTING.value},
            what="start submission",
        )
        return None if item is None else job_of(item)

    def cancel_unsubmitted(self, job_id: str) -> bool:
        """SUBMITTING, not started -> CANCELLED (the submission will be skipped)."""
        sets = {
            "state": JobState.CANCELLED.value,
            "reason": "cancelled before it reached Slurm",
            "notify_pending": JobState.CANCELLED.value,
        }
        return self._leave_submitting(
            job_id, sets, "#state = :c0 AND submit_started = :c1", {":c1": False},
            outcome="CANCELLED", unless_chunk_started=True,
        )  # fmt: skip

    def record_submitted(self, job_id: str, slurm_job_id: str) -> bool:
        """SUBMITTING -> PENDING with the Slurm id, plus the alias item, in one transaction."""
        sets = {"state": JobState.PENDING.value, "slurm_job_id": slurm_job_id}
        return self._leave_submitting(
            job_id, sets, "#state = :c0", {}, alias=slurm_job_id, outcome="SUBMITTED"
        )

    def record_submit_failed(self, job_id: str, reason: str) -> bool:
        """SUBMITTING -> SUBMIT_FAILED (final; its notification pending)."""
        sets = {
            "state": JobState.SUBMIT_FAILED.value,
            "reason": reason[:1000],
            "notify_pending": JobState.SUBMIT_FAILED.value,
        }
        return self._leave_submitting(job_id, sets, "#state = :c0", {}, outcome="FAILED")

    def _leave_submitting(
        self,
        job_id: str,
        sets: dict[str, Any],
        condition: str,
        condition_values: dict[str, Any],
        alias: str | None = None,
        *,
        outcome: str,
        unless_chunk_started: bool = False,
    ) -> bool:
        """Move a job out of SUBMITTING and out of the backlog counters, in one transaction.

        A job of a batch also counts ``outcome`` in its batch's counts, in the same transaction.

        False when the job is no longer SUBMITTING (another writer moved it first): the
        counters then stay as that writer left them, so each job is counted out exactly once.
        """
        job, recorded = self._read_job(job_id)
        now = utcnow().isoformat()
        if recorded:
            spec = self._update_spec(
                job_key(job_id),
                sets={**sets, "updated_at": now},
                condition=condition,
                condition_values={":c0": JobState.SUBMITTING.value, **condition_values},
            )
            move: dict[str, Any] = {"Update": spec}
        else:  # a batch item without a record: its first record, unless another writer's
            moved = JobRecord.model_validate({**dump(job), **sets, "updated_at": now})
            move = {"Put": {"TableName": self._table, "Item": job_item(moved),
                            "ConditionExpression": "attribute_not_exists(pk)"}}  # fmt: skip
        items: list[dict[str, Any]] = [
            move,
            self._count("CLUSTER", job.cluster, -1, None),
            self._count("OWNER", job.owner, -1, None),
        ]
        if unless_chunk_started and job.batch_id is not None and job.batch_chunk is not None:
            marker = chunk_key(job.batch_id, job.batch_chunk)
            items.append(
                {
                    "ConditionCheck": {
                        "TableName": self._table,
                        "Key": marker,
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            )
        if alias is not None:
            expires = int(job.created_at.timestamp() + RETENTION.total_seconds())
            item = {
                **alias_key(job.cluster, alias),
                "job_id": {"S": job_id},
                "expires_at": {"N": str(expires)},
            }
            items.append({"Put": {"TableName": self._table, "Item": item}})
        if job.batch_id is not None:
            items.append(
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": request_key(job.batch_id),
                        "UpdateExpression": "ADD counts.#o :one",
                        "ExpressionAttributeNames": {"#o": outcome},
                        "ExpressionAttributeValues": {":one": {"N": "1"}},
                    }
                }
            )
        try:
            self._ddb.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if condition_failed(exc):
                return False
            raise translate(exc, "move job out of SUBMITTING") from exc
        except BotoCoreError as exc:
            raise translate(exc, "move job out of SUBMITTING") from exc
        return True

    def update_job(self, job: JobRecord, new_state: JobState, changes: Mapping[str, Any]) -> bool:
        """Write ``changes`` and ``new_state`` if the job is still in ``job.state``.

        Only real changes reach here (the sweep computes them), so unchanged jobs cost no write.
        """
        updated = job.model_copy(update={**changes, "state": new_state})
        stored = dump(updated)
        sets = {k: stored[k] for k in changes if k in stored}
        remove = tuple(k for k in changes if k not in stored)
        sets["state"] = new_state.value
        sets["updated_at"] = utcnow().isoformat()
        if new_state.final and not job.state.final:
            sets["notify_pending"] = new_state.value
        item = self._update(
            job_key(job.job_id),
            sets=sets,
            remove=remove,
            condition="#state = :c0",
            condition_values={":c0": job.state.value},
            what="update job",
        )
        return item is not None

    def clear_job_notification(self, job_id: str, state: str) -> bool:
        """The job's final event is published: it leaves the attention index."""
        item = self._update(
            job_key(job_id),
            remove=("notify_pending", "gsi2pk", "gsi2sk"),
            condition="notify_pending = :c0",
            condition_values={":c0": state},
            what="clear job notification",
        )
        return item is not None

    def attention(self) -> tuple[list[JobRecord], list[RequestRecord]]:
        """Every item in the sparse attention index (jobs, then requests)."""
        jobs: list[JobRecord] = []
        requests: list[RequestRecord] = []
        for item in self._scan_index("gsi2"):
            pk = item["pk"]["S"]
            if pk.startswith("JOB#"):
                jobs.append(job_of(item))
            elif pk.startswith("REQ#"):
                requests.append(record_of(item))
        return jobs, requests

    # -- plumbing --------------------------------------------------------------------------

    def _put(self, item: dict[str, Any], what: str) -> None:
        written = self._conditional(
            f"write {what}", self._ddb.put_item, TableName=self._table, Item=item,
            ConditionExpression="attribute_not_exists(pk)",
        )  # fmt: skip
        if written is None:
            raise ConflictError(f"{what} exists already")

    def _conditional(
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

    def _get(self, key: dict[str, Any], what: str) -> dict[str, Any]:
        try:
            answer = self._ddb.get_item(TableName=self._table, Key=key, ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"read {what}") from exc
        if "Item" not in answer:
            raise NotFoundError(f"no {what}")
        return dict(answer["Item"])

    def _update(
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
        spec = self._update_spec(
            key, sets=sets, add=add, remove=remove, condition=condition,
            condition_values=condition_values,
        )  # fmt: skip
        answer = self._conditional(what, self._ddb.update_item, **spec, ReturnValues="ALL_NEW")
        return None if answer is None else dict(answer["Attributes"])

    def _update_spec(
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
        values = _serialize(condition_values)
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
            "TableName": self._table,
            "Key": key,
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    def _scan_index(self, index: str) -> Iterable[dict[str, Any]]:
        start: dict[str, Any] | None = None
        while True:
            scan: dict[str, Any] = {"TableName": self._table, "IndexName": index}
            if start:
                scan["ExclusiveStartKey"] = start
            try:
                answer = self._ddb.scan(**scan)
            except (ClientError, BotoCoreError) as exc:
                raise translate(exc, f"scan {index}") from exc
            yield from answer.get("Items", [])
            start = answer.get("LastEvaluatedKey")
            if not start:
                return


def _instant(moment: datetime) -> str:
    """A time as fixed-width UTC ISO text (milliseconds), so string order is time order."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _counter_key(kind: str, name: str) -> dict[str, Any]:
    """Key of a backlog counter: submissions not yet in Slurm, per cluster or per owner."""
    return {"pk": {"S": f"COUNT#{kind}#{name}"}, "sk": {"S": "COUNT"}}


def _outcome_of(job: JobRecord) -> str:
    """The batch count a job leaving SUBMITTING goes into."""
    return "SUBMITTED" if job.slurm_job_id is not None else "FAILED"


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
