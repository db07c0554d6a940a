"""The BatchStore port on DynamoDB: batch requests, their chunks' markers, the backlog counters.

Owns three kinds of item (layout in ``table``):
    chunk    a worker started the batch's chunk n (``start_chunk``); with ``lost``, the sweep
             claimed it was never delivered (``reap_chunk``), and ``reap_done`` once its items
             have their outcome. The two claims exclude each other by their conditions. A sweep
             chunk's marker also holds its recorded arrays (``record_arrays``) and is in the
             attention index while some of their tasks have no record (``settle_chunk``).
    counter  submissions accepted but not yet in Slurm, per cluster and per owner: the
             back-pressure limits. Every write that accepts or ends a submission moves them in
             the same transaction (:func:`count_item`; the job store's moves use it too).
    batch counts  ``counts.SUBMITTED`` / ``counts.FAILED`` / ``counts.CANCELLED`` on the batch's
             request item, moved with the outcomes they count.

A batch item has no record of its own until its outcome is written (``record_batch_outcomes``);
until then it is read from its batch (``broker.batches.unrecorded_item``). A sweep chunk's
submitted items are recorded on its marker, by their arrays (``record_arrays``), and read from
there until the status sweep writes their own records (``broker.batches.arrays``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any, Final

from broker.adapters.dynamodb.clusters import not_ready_error, ready_check
from broker.adapters.dynamodb.markers import arrays_update, pending_update
from broker.adapters.dynamodb.table import (
    RETENTION,
    Table,
    TableStore,
    alias_item,
    array_alias_item,
    chunk_key,
    counter_key,
    job_item,
    job_key,
    job_of,
    request_item,
    request_key,
    submitted_chunk_of,
    value_of,
)
from broker.batches.arrays import PendingFields, SharedFields, SubmittedChunk, SweepArray
from broker.batches.items import chunk_item_ids
from broker.errors import (
    BackpressureError,
    ConflictError,
    NotFoundError,
    ThrottledError,
    TransientError,
)
from broker.jobs.records import JobRecord, JobState, is_sweep_task
from broker.ports import Limits
from broker.requests.models import RequestRecord
from broker.schema import utcnow

#: How often one outcome transaction is sent again when DynamoDB cancelled it for a conflict or
#: throttling (nothing written), and the first back-off in seconds (doubled each time, jittered).
OUTCOME_RETRIES: Final = 4
OUTCOME_BACKOFF_S: Final = 0.05

#: A chunk marker's attributes (placeholders: expressions never meet a reserved word).
_MARKER_NAMES = {"#l": "lost", "#d": "reap_done"}


#: Items a DynamoDB transaction may hold. An outcome transaction holds, per job, its record and
#: (but for a sweep's item: its array has one alias for all its tasks) its Slurm id's alias,
#: plus three: two backlog counters and the batch's counts.
MAX_TRANSACTION_ITEMS = 100
COUNT_ITEMS = 3
#: Arrays one marker write records: each adds about 60 characters to its update and condition
#: expressions, which DynamoDB bounds at 4 KB. A chunk of 5,000 items is 5 arrays at Slurm's
#: default MaxArraySize (1,001); a cluster with MaxArraySize 20 makes 250, in 13 writes. (At
#: MaxArraySize 1, 5,000 one-task arrays would pass DynamoDB's 400 KB item: not supported.)
ARRAYS_PER_WRITE = 25


class DynamoBatchStore(TableStore):
    """BatchStore on DynamoDB."""

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
            {"Put": {"TableName": self._table.name, "Item": request_item(request),
                     "ConditionExpression": "attribute_not_exists(pk)"}},
        ]  # fmt: skip
        if limits is not None:
            items.append(
                count_item(self._table, "CLUSTER", request.cluster, count, limits.cluster_backlog)
            )
            items.append(
                count_item(self._table, "OWNER", request.owner, count, limits.owner_inflight)
            )
        ready_at = len(items) if ready_cluster else -1
        if ready_cluster:
            items.append(ready_check(self._table, request.cluster))
        failed = self._table.transact(items, "write batch")
        if ready_at in failed:
            raise not_ready_error(self._table, request.cluster)
        if limits is not None and failed & {1, 2}:
            raise BackpressureError(
                f"accepting {count} more submissions would pass a backlog limit "
                f"(cluster {limits.cluster_backlog}, caller {limits.owner_inflight}); "
                "retry later or send fewer",
                retry_after=limits.retry_after_seconds,
            )
        if failed:
            raise ConflictError(f"request {request.request_id} exists already")

    def jobs_by_id(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """Read jobs by id (BatchGetItem, 100 per call, strongly consistent)."""
        found: dict[str, JobRecord] = {}
        for item in self._table.batch_get([job_key(j) for j in job_ids], {}, "read jobs"):
            job = job_of(item)
            found[job.job_id] = job
        return found

    def job_states(self, job_ids: list[str]) -> dict[str, JobState]:
        """Just the states of the jobs that have a record (a projection: a fraction of the
        bytes of whole records; BatchGetItem, 100 a call, strongly consistent)."""
        projection = {"ProjectionExpression": "pk, #s", "ExpressionAttributeNames": {"#s": "state"}}
        return {
            item["pk"]["S"].removeprefix("JOB#"): JobState(item["state"]["S"])
            for item in self._table.batch_get(
                [job_key(j) for j in job_ids], projection, "read jobs"
            )
        }

    def start_chunk(self, batch_id: str, chunk: int, job_ids: list[str]) -> set[str]:
        """The chunk's marker written (or kept), then its jobs' records read back (strongly
        consistent).

        A cancel of a queued batch job is a transaction that checks this marker is absent, so
        once it is written no job of the chunk can be cancelled as unsubmitted, and one written
        before it shows in the read. The jobs to submit are those without a record (the usual
        case: items get their record with their outcome) or still SUBMITTING (a batch accepted
        when items were recorded at accept), but for a sweep's items its recorded arrays hold
        (``job_ids`` are the chunk's items in position order).

        Why the marker's condition: a worker may update its own marker or another delivery's
        (a redelivery starts the chunk again; what an earlier one recorded stays), but never a
        sweep's claim that the chunk was lost (``reap_chunk``): the sweep is failing those
        items, so nothing is submitted.
        """
        expires = int((utcnow() + RETENTION).timestamp())
        started = self._table.conditional(
            "start chunk", self._table.client.update_item, TableName=self._table.name,
            Key=chunk_key(batch_id, chunk),
            UpdateExpression="SET expires_at = :e, #a = if_not_exists(#a, :none), "
                             "#p = if_not_exists(#p, :none)",
            ConditionExpression="attribute_not_exists(#l)",
            ExpressionAttributeNames={"#l": "lost", "#a": "arrays", "#p": "pending"},
            ExpressionAttributeValues={":e": {"N": str(expires)}, ":none": {"M": {}}},
            ReturnValues="ALL_NEW",
        )  # fmt: skip
        if started is None:
            return set()  # reaped: its items are (being) failed by the sweep
        submitted = submitted_chunk_of(started["Attributes"])
        held = set(submitted.covered(job_ids)) if submitted is not None else set()
        states = self.job_states([j for j in job_ids if j not in held])
        return {
            job_id
            for job_id in job_ids
            if job_id not in held and states.get(job_id, JobState.SUBMITTING) is JobState.SUBMITTING
        }

    def submitted_chunk(self, batch_id: str, chunk: int) -> SubmittedChunk | None:
        """A sweep chunk's recorded arrays (None: none recorded; strongly consistent)."""
        item = self._table.find(chunk_key(batch_id, chunk), f"chunk {chunk} of {batch_id}")
        return None if item is None else submitted_chunk_of(item)

    def record_arrays(
        self, batch: RequestRecord, chunk: int, arrays: list[SweepArray], shared: SharedFields
    ) -> list[SweepArray]:
        """Record a sweep chunk's submitted arrays on its marker: their tasks' record.

        One transaction puts the arrays on the marker (each only if the marker has none under
        its key), puts the marker in the attention index, counts their tasks out of the backlog
        counters and into the batch's SUBMITTED, all or nothing; the arrays' aliases are
        written first (they only map Slurm ids). An array another delivery recorded first is
        left out and the rest sent again, so each task is counted once. Returns the arrays this
        call recorded.

        Raises:
            TransientError: the chunk's marker is gone (no worker started it).
        """
        aliases = [
            {"Put": {"TableName": self._table.name, "Item": array_alias_item(
                batch.cluster, a.slurm_id, batch_id=batch.request_id, chunk=chunk,
                first=a.first, created=batch.created_at)}}
            for a in arrays
        ]  # fmt: skip
        for start in range(0, len(aliases), MAX_TRANSACTION_ITEMS):
            self._table.transact(aliases[start : start + MAX_TRANSACTION_ITEMS], "record arrays")
        recorded: list[SweepArray] = []
        for first in range(0, len(arrays), ARRAYS_PER_WRITE):
            recorded += self._record_group(batch, chunk, arrays[first : first + ARRAYS_PER_WRITE],
                                           shared)  # fmt: skip
        return recorded

    def _record_group(
        self, batch: RequestRecord, chunk: int, arrays: list[SweepArray], shared: SharedFields
    ) -> list[SweepArray]:
        """``record_arrays`` for at most ARRAYS_PER_WRITE arrays: one transaction, sent again
        without the arrays another delivery recorded meanwhile."""
        todo = list(arrays)
        while todo:
            marker = arrays_update(self._table.name, batch, chunk, todo, shared)
            tasks = sum(a.tasks for a in todo)
            items = [{"Update": marker}, *self._count_items(batch, -tasks, {"SUBMITTED": tasks})]
            if not self._transact_outcomes(items):
                return todo
            item = self._table.find(chunk_key(batch.request_id, chunk), "chunk marker")
            if item is None or "lost" in item:
                raise TransientError(f"chunk {chunk} of {batch.request_id} was not started",
                                     code="CHUNK_NOT_STARTED")  # fmt: skip
            current = submitted_chunk_of(item)
            done = {a.key() for a in current.arrays} if current is not None else set()
            if not done & {a.key() for a in todo}:
                raise TransientError(f"the arrays of chunk {chunk} of {batch.request_id} "
                                     "could not be recorded", code="WRITE_CONFLICT")  # fmt: skip
            todo = [a for a in todo if a.key() not in done]
        return []

    def record_pending(self, chunk: SubmittedChunk, pending: dict[str, PendingFields]) -> None:
        """Write what Slurm says of some arrays' pending tasks on their chunk's marker (by
        array key). Unconditional but for the marker's existence: it only describes, and the
        next sweep writes it again if an overlapping one wrote an older word."""
        if pending:
            request = pending_update(self._table.name, chunk.batch_id, chunk.chunk, pending)
            self._table.conditional(
                "record pending tasks", self._table.client.update_item, **request
            )

    def settle_chunk(self, chunk: SubmittedChunk) -> bool:
        """Take a sweep chunk out of the attention index: every item of its arrays has a record
        of its own. Conditional on its arrays being those read (a redelivery may have recorded
        another since, whose items read from the marker). False when they are not."""
        settled = self._table.conditional(
            "settle chunk", self._table.client.update_item, TableName=self._table.name,
            Key=chunk_key(chunk.batch_id, chunk.chunk),
            UpdateExpression="REMOVE #gp, #gs", ConditionExpression="size(#a) = :n",
            ExpressionAttributeNames={"#a": "arrays", "#gp": "gsi2pk", "#gs": "gsi2sk"},
            ExpressionAttributeValues={":n": {"N": str(len(chunk.arrays))}},
        )  # fmt: skip
        return settled is not None

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
            for item in self._table.batch_get(keys, projection, "read chunk markers")
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
        claimed = self._table.conditional(
            "claim lost chunk", self._table.client.put_item, TableName=self._table.name, Item=item,
            ConditionExpression=f"attribute_not_exists(pk) OR ({unfinished})",
            ExpressionAttributeNames=_MARKER_NAMES,
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )  # fmt: skip
        return claimed is not None

    def reap_done(self, batch_id: str, chunk: int) -> None:
        """Mark a lost chunk's reap finished (only a lost claim: never a worker's marker)."""
        self._table.conditional(
            "finish lost chunk", self._table.client.update_item, TableName=self._table.name,
            Key=chunk_key(batch_id, chunk),
            UpdateExpression="SET #d = :t", ConditionExpression="#l = :t",
            ExpressionAttributeNames=_MARKER_NAMES,
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )  # fmt: skip

    def record_batch_outcomes(
        self, batch: RequestRecord, outcomes: list[JobRecord]
    ) -> tuple[list[str], list[str]]:
        """Write the records of batch jobs leaving SUBMITTING, as many jobs per transaction as
        fit (``_groups``), after the aliases of a sweep's arrays.

        Each job's record is put whole, on condition that it has none yet or is still
        SUBMITTING; each transaction also writes the aliases of the submitted jobs, counts the
        jobs out of the backlog counters and into the batch's outcome counts, all or nothing.
        A transaction where some job already moved (an earlier delivery, a cancel) is redone
        without it. Returns the job ids of the moves this call made (submitted, failed).
        """
        done_ok: list[str] = []
        done_failed: list[str] = []
        arrays = [{"Put": {"TableName": self._table.name, "Item": item}}
                  for item in _array_aliases(batch, outcomes)]  # fmt: skip
        for start in range(0, len(arrays), MAX_TRANSACTION_ITEMS):
            self._table.transact(arrays[start : start + MAX_TRANSACTION_ITEMS], "record arrays")
        for group in _groups(outcomes):
            chunk = group
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
                refused = self._transact_outcomes(items)
                if not refused:
                    for job in chunk:
                        submitted = job.slurm_job_id is not None
                        (done_ok if submitted else done_failed).append(job.job_id)
                    break
                # Jobs another writer already moved: send the chunk again without them.
                gone = {owner_of[i] for i in refused if i < len(owner_of)}
                chunk = [job for position, job in enumerate(chunk) if position not in gone]
        return done_ok, done_failed

    def _transact_outcomes(self, items: list[dict[str, Any]]) -> set[int]:
        """One outcome transaction, sent again (a few times, backing off) when DynamoDB cancels
        it for a conflict or throttling.

        Why here: every outcome transaction of a batch moves the same three items (the batch's
        counts and the two backlog counters), so chunks of one batch closed at once conflict on
        them (``TransactionConflict``), and a chunk of 1,000 jobs needs 40 transactions. Left
        to the message, one cancelled transaction in 40 cost the whole delivery, and 8 such
        deliveries sent the chunk to the DLQ (what the chaos run saw). A cancellation writes
        nothing, so sending the same transaction again is safe; an unreachable endpoint is not
        retried here (the write may have happened; the redelivery reads what did).
        """
        for attempt in range(OUTCOME_RETRIES + 1):
            try:
                return self._table.transact(items, "record batch outcomes")
            except TransientError as exc:
                cancelled = isinstance(exc, ThrottledError) or exc.code == "WRITE_CONFLICT"
                if not cancelled or attempt == OUTCOME_RETRIES:
                    raise
                delay = OUTCOME_BACKOFF_S * 2**attempt
                time.sleep(delay + random.uniform(0, delay))  # noqa: S311 - jitter, not crypto
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _outcome_items(self, batch: RequestRecord, job: JobRecord) -> list[dict[str, Any]]:
        """Transaction items writing one batch job's outcome record (no counters)."""
        put = {
            "TableName": self._table.name,
            "Item": job_item(job),
            "ConditionExpression": "attribute_not_exists(pk) OR #state = :c0",
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": {":c0": {"S": JobState.SUBMITTING.value}},
        }
        items: list[dict[str, Any]] = [{"Put": put}]
        if job.slurm_job_id is not None and not is_sweep_task(job):
            alias = alias_item(batch.cluster, job.slurm_job_id, job.job_id, batch.created_at)
            items.append({"Put": {"TableName": self._table.name, "Item": alias}})
        return items

    def _count_items(
        self, batch: RequestRecord, delta: int, outcomes: Mapping[str, int]
    ) -> list[dict[str, Any]]:
        """Backlog counters by ``delta``; the batch's outcome counts up by ``outcomes``."""
        names = {f"#o{i}": name for i, name in enumerate(outcomes)}
        values = {f":o{i}": {"N": str(n)} for i, n in enumerate(outcomes.values())}
        adds = ", ".join(f"counts.{mark} :o{i}" for i, mark in enumerate(names))
        batch_update = {
            "TableName": self._table.name,
            "Key": request_key(batch.request_id),
            "UpdateExpression": f"ADD {adds}",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
        return [
            count_item(self._table, "CLUSTER", batch.cluster, delta, None),
            count_item(self._table, "OWNER", batch.owner, delta, None),
            {"Update": batch_update},
        ]

    def backlog(self, kind: str, name: str) -> int:
        """The current count of a backlog counter (CLUSTER or OWNER)."""
        try:
            item = self._table.get(counter_key(kind, name), f"counter {kind} {name}")
        except NotFoundError:
            return 0
        return int(value_of(item.get("inflight", {"N": "0"})))


def count_item(table: Table, kind: str, name: str, delta: int, limit: int | None) -> dict[str, Any]:
    """A transaction item adding ``delta`` to a counter, never past ``limit``.

    Why the condition: with ``limit`` the counter may only grow while it stays within it, so the
    limit holds exactly however many accepts race; without one (a submission leaving the
    backlog) the counter moves unconditionally, for the transaction that counts a job out is
    conditional on the job's own move, so each job is counted out once.
    """
    update: dict[str, Any] = {
        "TableName": table.name,
        "Key": counter_key(kind, name),
        "UpdateExpression": "ADD inflight :d",
        "ExpressionAttributeValues": {":d": {"N": str(delta)}},
    }
    if limit is not None:
        update["ConditionExpression"] = "attribute_not_exists(inflight) OR inflight <= :room"
        update["ExpressionAttributeValues"][":room"] = {"N": str(limit - delta)}
    return {"Update": update}


def _outcome_of(job: JobRecord) -> str:
    """The batch count a job leaving SUBMITTING goes into."""
    return "SUBMITTED" if job.slurm_job_id is not None else "FAILED"


def _groups(outcomes: list[JobRecord]) -> list[list[JobRecord]]:
    """Outcomes in runs that fill one transaction each (``MAX_TRANSACTION_ITEMS``)."""
    groups: list[list[JobRecord]] = [[]]
    size = COUNT_ITEMS
    for job in outcomes:
        weight = 1 if job.slurm_job_id is None or is_sweep_task(job) else 2
        if size + weight > MAX_TRANSACTION_ITEMS:
            groups.append([])
            size = COUNT_ITEMS
        groups[-1].append(job)
        size += weight
    return [group for group in groups if group]


def _array_aliases(batch: RequestRecord, outcomes: list[JobRecord]) -> list[dict[str, Any]]:
    """One alias item per array the sweep items among ``outcomes`` are tasks of (none for
    other jobs): ``find_job`` reaches an item from ``<array>_<task>`` through it."""
    positions: dict[int, dict[str, int]] = {}
    aliases: dict[str, dict[str, Any]] = {}
    for job in outcomes:
        if not is_sweep_task(job) or job.batch_chunk is None or job.slurm_job_id is None:
            continue
        chunk = job.batch_chunk
        if chunk not in positions:
            ids = chunk_item_ids(batch, chunk)
            positions[chunk] = {job_id: p for p, job_id in enumerate(ids)}
        array, _, task = job.slurm_job_id.partition("_")
        if array not in aliases and job.job_id in positions[chunk]:
            first = positions[chunk][job.job_id] - int(task)
            item = array_alias_item(batch.cluster, array, batch_id=batch.request_id, chunk=chunk,
                                    first=first, created=batch.created_at)  # fmt: skip
            aliases[array] = item
    return list(aliases.values())
