"""The JobStore port on DynamoDB: job items, their Slurm-id aliases, forward-only job states.

Owns the job item (``JOB#<id>``) and the alias item (``SLURM#<cluster>#<slurm id>``; layout in
``table``). Every change of a job's state is conditional on the state it comes from (the
``broker.jobs`` state table): two deliveries of the same message, overlapping sweeps or a late
retry can never move a job backwards or out of a final state.

The transactions that move a job in or out of SUBMITTING are built here, because the job's move
is the write they exist for; they also move the backlog counters (``batches.count_item``), a
batch's outcome counts and check a chunk marker, all or nothing. That is where one transaction
spans several capabilities' items: the job store owns it, and reuses the batch store's counter
item and the cluster store's readiness check rather than calling those stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from broker.adapters.dynamodb.batches import count_item
from broker.adapters.dynamodb.clusters import not_ready_error, ready_check
from broker.adapters.dynamodb.table import (
    TableStore,
    alias_item,
    alias_key,
    chunk_key,
    job_item,
    job_key,
    job_of,
    record_of,
    request_item,
    request_key,
    submitted_chunk_of,
    value_of,
)
from broker.batches.arrays import submitted_item
from broker.batches.items import batch_id_of, chunk_item_ids, unrecorded_item
from broker.errors import BackpressureError, ConflictError, NotFoundError
from broker.jobs.records import JobRecord, JobState
from broker.ports import Limits
from broker.requests.models import RequestRecord
from broker.schema import dump, utcnow


class DynamoJobStore(TableStore):
    """JobStore on DynamoDB."""

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

        Why ``attribute_not_exists(pk)`` on both records: an id is written once; a second write
        of it (a replayed accept) must neither reset the records nor count the job in again.

        Raises:
            ConflictError: the request exists already.
            BackpressureError: a limit is reached (answer 429).
            ClusterNotReadyError: the cluster cannot take jobs now (answer 409).
        """
        absent = "attribute_not_exists(pk)"
        items: list[dict[str, Any]] = [
            {"Put": {"TableName": self._table.name, "Item": request_item(request),
                     "ConditionExpression": absent}},
            {"Put": {"TableName": self._table.name, "Item": job_item(job),
                     "ConditionExpression": absent}},
        ]  # fmt: skip
        if limits is not None:
            items.append(
                count_item(self._table, "CLUSTER", job.cluster, +1, limits.cluster_backlog)
            )
            items.append(count_item(self._table, "OWNER", job.owner, +1, limits.owner_inflight))
        ready_at = len(items) if ready_cluster else -1
        if ready_cluster:
            items.append(ready_check(self._table, job.cluster))
        failed = self._table.transact(items, "write submission")
        if ready_at in failed:
            raise not_ready_error(self._table, job.cluster)
        if limits is not None and 2 in failed:
            raise BackpressureError(
                f"cluster {job.cluster} has {limits.cluster_backlog} submissions waiting; "
                "retry later",
                retry_after=limits.retry_after_seconds,
            )
        if limits is not None and 3 in failed:
            raise BackpressureError(
                f"you have {limits.owner_inflight} submissions not yet in Slurm; retry later",
                retry_after=limits.retry_after_seconds,
            )
        if failed:
            raise ConflictError(f"request {request.request_id} exists already")

    def get_job(self, job_id: str) -> JobRecord:
        """Read a job by its broker id (a batch item without a record: from its batch)."""
        return self._read_job(job_id)[0]

    def _read_job(self, job_id: str) -> tuple[JobRecord, bool]:
        """The job, and whether it has a record of its own (False: read from its batch)."""
        try:
            return job_of(self._table.get(job_key(job_id), f"job {job_id}")), True
        except NotFoundError:
            batch_id = batch_id_of(job_id)
            if batch_id is None:
                raise
            try:
                batch = record_of(self._table.get(request_key(batch_id), f"request {batch_id}"))
            except NotFoundError:
                raise NotFoundError(f"no job {job_id}") from None
            job = unrecorded_item(batch, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id}") from None
            return self._in_array(batch, job), False

    def _in_array(self, batch: RequestRecord, job: JobRecord) -> JobRecord:
        """An unrecorded item as its chunk's recorded arrays show it (PENDING as a task of one),
        or as it is (SUBMITTING) when none holds it."""
        if job.batch_chunk is None:
            return job
        marker = self._table.find(chunk_key(batch.request_id, job.batch_chunk), "chunk marker")
        chunk = None if marker is None else submitted_chunk_of(marker)
        if chunk is None:
            return job
        ids = chunk_item_ids(batch, job.batch_chunk)
        return submitted_item(batch, job.job_id, chunk, ids) or job

    def find_job(self, cluster: str, ref: str) -> JobRecord:
        """Read a job by broker id, or by Slurm id (``123``, or ``123_4`` -> its array)."""
        if ref.startswith("r"):
            job = self.get_job(ref)
            if job.cluster != cluster:
                raise NotFoundError(f"no job {ref} on {cluster}")
            return job
        base, _, task = ref.partition("_")
        alias = self._table.get(alias_key(cluster, base), f"job {ref}")
        if "first" not in alias:
            return self.get_job(str(value_of(alias["job_id"])))
        # A sweep's array: task t is its chunk's item at position first + t.
        batch_id = str(value_of(alias["batch_id"]))
        try:
            batch = record_of(self._table.get(request_key(batch_id), f"request {batch_id}"))
        except NotFoundError:
            raise NotFoundError(f"no job {ref}") from None
        ids = chunk_item_ids(batch, int(value_of(alias["chunk"])))
        position = int(value_of(alias["first"])) + int(task or -1)
        found = self.get_job(ids[position]) if task and 0 <= position < len(ids) else None
        if found is None or found.slurm_job_id != ref:
            raise NotFoundError(f"no job {ref} on {cluster}")
        return found

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
            low = since.isoformat() if since else "0"  # DynamoDB refuses "" in a key condition
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
            "IndexName": "gsi1",
            "KeyConditionExpression": key,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if filters:
            query["FilterExpression"] = " AND ".join(filters)
        items, token = self._table.query_page(query, next_token, "list jobs")
        return [job_of(item) for item in items], token

    def start_submission(self, job_id: str) -> JobRecord | None:
        """SUBMITTING -> (still SUBMITTING, submit_started); None if no longer SUBMITTING."""
        item = self._table.update(
            job_key(job_id),
            sets={"submit_started": True, "updated_at": utcnow().isoformat()},
            condition="#state = :c0",
            condition_values={":c0": JobState.SUBMITTING.value},
            what="start submission",
        )
        return None if item is None else job_of(item)

    def cancel_unsubmitted(self, job_id: str) -> bool:
        """SUBMITTING, not started -> CANCELLED (the submission will be skipped).

        Why ``submit_started = false`` as well: once a worker has started the submission
        (``start_submission``) it may be talking to Slurm, and a cancel recorded now would lose
        a real job; that cancel goes through Slurm instead. A batch item's chunk marker plays
        the same part (the transaction checks it is absent; ``DynamoBatchStore.start_chunk``).
        """
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
        if job.state is not JobState.SUBMITTING:
            return False  # a sweep item its chunk's arrays hold: submitted already
        now = utcnow().isoformat()
        if recorded:
            spec = self._table.update_spec(
                job_key(job_id),
                sets={**sets, "updated_at": now},
                condition=condition,
                condition_values={":c0": JobState.SUBMITTING.value, **condition_values},
            )
            move: dict[str, Any] = {"Update": spec}
        else:  # a batch item without a record: its first record, unless another writer's
            moved = JobRecord.model_validate({**dump(job), **sets, "updated_at": now})
            move = {"Put": {"TableName": self._table.name, "Item": job_item(moved),
                            "ConditionExpression": "attribute_not_exists(pk)"}}  # fmt: skip
        items: list[dict[str, Any]] = [
            move,
            count_item(self._table, "CLUSTER", job.cluster, -1, None),
            count_item(self._table, "OWNER", job.owner, -1, None),
        ]
        if unless_chunk_started and job.batch_id is not None and job.batch_chunk is not None:
            marker = chunk_key(job.batch_id, job.batch_chunk)
            items.append(
                {
                    "ConditionCheck": {
                        "TableName": self._table.name,
                        "Key": marker,
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            )
        if alias is not None:
            item = alias_item(job.cluster, alias, job_id, job.created_at)
            items.append({"Put": {"TableName": self._table.name, "Item": item}})
        if job.batch_id is not None:
            items.append(
                {
                    "Update": {
                        "TableName": self._table.name,
                        "Key": request_key(job.batch_id),
                        "UpdateExpression": "ADD counts.#o :one",
                        "ExpressionAttributeNames": {"#o": outcome},
                        "ExpressionAttributeValues": {":one": {"N": "1"}},
                    }
                }
            )
        return not self._table.transact(items, "move job out of SUBMITTING")

    def update_job(
        self,
        job: JobRecord,
        new_state: JobState,
        changes: Mapping[str, Any],
        *,
        recorded: bool = True,
    ) -> bool:
        """Write ``changes`` and ``new_state`` if the job is still in ``job.state``.

        Only real changes reach here (the sweep computes them), so unchanged jobs cost no write.
        Why the condition is the state read: the changes were computed from that read; if a
        worker or another sweep moved the job meanwhile, its move stands and the next sweep
        looks again. A job read from its sweep chunk's arrays (``recorded=False``) gets its
        first record, only if it has none yet: the same rule, for a record that did not exist.
        """
        updated = job.model_copy(update={**changes, "state": new_state})
        if not recorded:
            first = updated.model_copy(update={"updated_at": utcnow()})
            if new_state.final and not job.state.final:
                first = first.model_copy(update={"notify_pending": new_state.value})
            written = self._table.conditional(
                "record job", self._table.client.put_item, TableName=self._table.name,
                Item=job_item(first), ConditionExpression="attribute_not_exists(pk)",
            )  # fmt: skip
            return written is not None
        stored = dump(updated)
        sets = {k: stored[k] for k in changes if k in stored}
        remove = tuple(k for k in changes if k not in stored)
        sets["state"] = new_state.value
        sets["updated_at"] = utcnow().isoformat()
        if new_state.final and not job.state.final:
            sets["notify_pending"] = new_state.value
        item = self._table.update(
            job_key(job.job_id),
            sets=sets,
            remove=remove,
            condition="#state = :c0",
            condition_values={":c0": job.state.value},
            what="update job",
        )
        return item is not None

    def clear_job_notification(self, job_id: str, state: str) -> bool:
        """The job's final event is published: it leaves the attention index.

        Conditional on the pending mark still naming ``state``: a later event is not cleared.
        """
        item = self._table.update(
            job_key(job_id),
            remove=("notify_pending", "gsi2pk", "gsi2sk"),
            condition="notify_pending = :c0",
            condition_values={":c0": state},
            what="clear job notification",
        )
        return item is not None
