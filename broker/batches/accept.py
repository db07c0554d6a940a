"""The accept of a burst: validate each item, chunk the valid ones, record the batch, enqueue.

The accept costs one transaction and a few queue calls, however many items: items get their
own records only with their outcomes (``broker.batches.items``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pydantic import ValidationError as PydanticValidationError

from broker.batches.arrays import SubmittedChunk, submitted_item
from broker.batches.items import chunk_item_ids, unrecorded_item
from broker.batches.models import (
    BatchAccepted,
    BatchBody,
    BatchItem,
    BatchItemError,
    BatchItemView,
    JobBatchMessage,
    batch_ids,
    item_id,
)
from broker.batches.outcomes import item_outcome
from broker.batches.sweeps import (
    JobSweepMessage,
    SweepBody,
    as_template,
    packable,
    sweep_chunks,
    validate_parameters,
)
from broker.errors import PayloadTooLargeError, TransientError, ValidationError
from broker.jobs.models import MAX_SCRIPT_BYTES, JobSpec
from broker.jobs.records import JobRecord
from broker.ports import BatchStore, Limits, RequestQueue, RequestStore
from broker.requests.models import QueueMessage, RequestRecord
from broker.requests.states import RequestState
from broker.schema import ErrorInfo, FieldError, utcnow

#: How many item errors an answer lists (the count is always given).
MAX_LISTED_ERRORS = 1000
#: Jobs per batch chunk (one queue message, one agent call), and the chunk's size bound.
CHUNK_ITEMS = 1000
CHUNK_BYTES = 120 * 1024
#: The shortest run of jobs differing only in their environment that ``pack`` makes an array
#: of (a run of one is a plain job).
MIN_PACKED_RUN = 2


class BatchRejectedError(ValidationError):
    """Items of a batch are invalid and the batch cannot be accepted (422, fields listed)."""

    code = "BATCH_REJECTED"

    def __init__(self, message: str, fields: list[FieldError]) -> None:
        super().__init__(message)
        self.fields = fields


class BatchRecords(RequestStore, BatchStore, Protocol):
    """What a batch's accept writes: the batch request, and outcomes of unqueued chunks."""


def chunk_items(items: list[BatchItem]) -> list[list[BatchItem]]:
    """Items in chunks of at most CHUNK_ITEMS and about CHUNK_BYTES of JSON each.

    A chunk is one queue message and one head-node command: bigger chunks mean fewer commands
    (SSM carries any size through S3 staging); the bound keeps a message well under SQS's
    256 KiB and one agent call well inside the runner's timeout (sbatch: ~7-10 ms a job).
    """
    chunks: list[list[BatchItem]] = []
    size = 0
    for item in items:
        length = len(item.model_dump_json())
        if not chunks or len(chunks[-1]) >= CHUNK_ITEMS or size + length > CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += length
    return chunks


def _runs(valid: list[tuple[int, JobSpec]]) -> list[list[tuple[int, JobSpec]]]:
    """Valid items (in index order) in runs of jobs that differ only in their environment
    (``sweeps.packable``): what ``pack`` submits as arrays."""
    runs: list[list[tuple[int, JobSpec]]] = []
    for index, spec in valid:
        if runs and packable(runs[-1][0][1], spec):
            runs[-1].append((index, spec))
        else:
            runs.append([(index, spec)])
    return runs


def _item_fields(index: int, exc: PydanticValidationError) -> list[FieldError]:
    """An item's validation errors, located in the batch body."""
    return [
        FieldError(
            field=".".join(["body", "jobs", str(index), *(str(p) for p in error["loc"])]),
            message=error["msg"],
            type=error["type"],
        )
        for error in exc.errors()
    ]


def _validate(body: BatchBody) -> tuple[list[tuple[int, JobSpec]], list[BatchItemError]]:
    """The valid items' specs by index, and the invalid items' errors."""
    valid: list[tuple[int, JobSpec]] = []
    rejected: list[BatchItemError] = []
    for index, raw in enumerate(body.jobs):
        try:
            spec = JobSpec.model_validate(raw)
            size = len(spec.script.encode("utf-8"))
            if size > MAX_SCRIPT_BYTES:
                raise PayloadTooLargeError(f"the script is {size} bytes")
            valid.append((index, spec))
        except PydanticValidationError as exc:
            rejected.append(BatchItemError(index=index, fields=_item_fields(index, exc)))
        except PayloadTooLargeError as exc:
            error = FieldError(
                field=f"body.jobs.{index}.script", message=exc.message, type="too_large"
            )
            rejected.append(BatchItemError(index=index, fields=[error]))
    return valid, rejected


def accept_batch(
    store: BatchRecords,
    queue: RequestQueue,
    owner: str,
    cluster: str,
    body: BatchBody,
    *,
    user: str,
    limits: Limits | None,
    ready_cluster: bool,
) -> BatchAccepted:
    """Accept a burst: validate each item, record the batch, enqueue its valid items in
    chunks (the cluster is known already).

    Raises:
        BatchRejectedError: ``atomic`` and some item is invalid, or no item is valid.
        BackpressureError, ClusterNotReadyError, TransientError: as for one job.
    """
    valid, rejected = _validate(body)
    _refuse_if_invalid(rejected, len(body.jobs), "batch", atomic=body.atomic, any_valid=bool(valid))
    batch_id, prefix, ids = batch_ids(len(body.jobs))
    base = JobBatchMessage(request_id=batch_id, owner=owner, cluster=cluster, user=user,
                           items=[], chunk=0)  # fmt: skip
    messages: list[JobBatchMessage | JobSweepMessage] = []
    plain: list[BatchItem] = []  # jobs not packed, in index order, chunked together

    def flush() -> None:
        messages.extend(
            base.model_copy(update={"items": chunk, "chunk": len(messages) + n})
            for n, chunk in enumerate(chunk_items(plain))
        )
        plain.clear()

    for run in _runs(valid) if body.pack else [valid]:
        if body.pack and len(run) >= MIN_PACKED_RUN:
            flush()
            sweep = JobSweepMessage(request_id=batch_id, owner=owner, cluster=cluster,
                                    user=user, chunk=len(messages), indexes=[], parameters=[],
                                    template=as_template(run[0][1]))  # fmt: skip
            messages.extend(sweep_chunks(sweep, [(i, dict(s.environment or {})) for i, s in run]))
        else:
            plain.extend(BatchItem(index=i, job_id=ids[i], spec=spec) for i, spec in run)
    flush()
    pending = _Pending(batch_id, owner, cluster, user, len(body.jobs), len(valid), rejected)
    _record_and_send(store, queue, pending, messages, limits=limits, ready_cluster=ready_cluster)
    return pending.answer(prefix)


def accept_sweep(
    store: BatchRecords,
    queue: RequestQueue,
    owner: str,
    cluster: str,
    body: SweepBody,
    *,
    user: str,
    limits: Limits | None,
    ready_cluster: bool,
) -> BatchAccepted:
    """Accept a sweep: validate each item's parameters, record the sweep as a batch, enqueue
    its valid items in packed chunks (``broker.batches.sweeps``).

    Raises:
        BatchRejectedError, BackpressureError, ClusterNotReadyError, TransientError: as for
            a batch.
    """
    valid, rejected = validate_parameters(body)
    _refuse_if_invalid(
        rejected, len(body.parameters), "sweep", atomic=body.atomic, any_valid=bool(valid)
    )
    batch_id, prefix, _ = batch_ids(0)
    base = JobSweepMessage(request_id=batch_id, owner=owner, cluster=cluster, user=user,
                           chunk=0, template=body.template, indexes=[], parameters=[])  # fmt: skip
    messages: list[JobBatchMessage | JobSweepMessage] = list(sweep_chunks(base, valid))
    pending = _Pending(batch_id, owner, cluster, user, len(body.parameters), len(valid), rejected)
    _record_and_send(store, queue, pending, messages, limits=limits, ready_cluster=ready_cluster)
    return pending.answer(prefix)


def _refuse_if_invalid(
    rejected: list[BatchItemError], size: int, what: str, *, atomic: bool, any_valid: bool
) -> None:
    """BatchRejectedError (422, the first items' fields) when invalid items sink the whole
    body: it is atomic, or none of its items is valid."""
    if rejected and (atomic or not any_valid):
        raise BatchRejectedError(
            f"{len(rejected)} of {size} items are invalid"
            + (f"; the {what} is atomic" if atomic else ""),
            [f for item in rejected[:MAX_LISTED_ERRORS] for f in item.fields],
        )


@dataclass
class _Pending:
    """A batch (or sweep) being accepted: what its record and its answer say."""

    batch_id: str
    owner: str
    cluster: str
    user: str
    size: int
    accepted: int
    rejected: list[BatchItemError]

    def answer(self, prefix: str) -> BatchAccepted:
        return BatchAccepted(
            request_id=self.batch_id,
            location=f"/v1/requests/{self.batch_id}",
            accepted=self.accepted,
            rejected_count=len(self.rejected),
            rejected=self.rejected[:MAX_LISTED_ERRORS],
            job_id_prefix=prefix,
        )


def _first_index(message: JobBatchMessage | JobSweepMessage) -> int:
    return message.items[0].index if isinstance(message, JobBatchMessage) else message.indexes[0]


def _record_and_send(
    store: BatchRecords,
    queue: RequestQueue,
    pending: _Pending,
    messages: list[JobBatchMessage | JobSweepMessage],
    *,
    limits: Limits | None,
    ready_cluster: bool,
) -> None:
    """Record the batch (one transaction) and send its chunks; the items of chunks that could
    not be queued fail at once (all of them: the batch fails, transient, send it again)."""
    now = utcnow()
    record = RequestRecord(
        request_id=pending.batch_id, kind="job.batch", owner=pending.owner,
        cluster=pending.cluster, user=pending.user, state=RequestState.ACCEPTED,
        created_at=now, updated_at=now, items=pending.accepted, batch_size=pending.size,
        chunk_starts=[_first_index(m) for m in messages],
        rejected_items=[item.index for item in pending.rejected] or None,
    )  # fmt: skip
    store.create_batch(record, limits, ready_cluster=ready_cluster)
    queued: list[QueueMessage] = list(messages)
    unsent = queue.send_many(queued)
    if unsent:
        chunks = [m.as_batch() if isinstance(m, JobSweepMessage) else m for m in unsent
                  if isinstance(m, JobBatchMessage | JobSweepMessage)]  # fmt: skip
        lost = [item_outcome(record, i, m.chunk, reason="could not be queued")
                for m in chunks for i in m.items]  # fmt: skip
        store.record_batch_outcomes(record, lost)
        if len(unsent) == len(messages):
            store.record_failure(
                pending.batch_id, ErrorInfo(code="ENQUEUE_FAILED", message="the batch could "
                                            "not be queued; send it again", transient=True),
            )  # fmt: skip
            raise TransientError("the batch could not be queued; send it again",
                                 code="ENQUEUE_FAILED")  # fmt: skip


def batch_page(
    store: BatchStore, record: RequestRecord, start: int, limit: int
) -> list[BatchItemView]:
    """A page of a batch's items, by index, with their jobs' states (items without a record
    yet are SUBMITTING, or PENDING in their sweep chunk's recorded arrays; rejected items are
    left out)."""
    ids = [item_id(record.request_id, i) for i in range(start, start + limit)]
    jobs = store.jobs_by_id(ids)
    chunks: dict[int, tuple[SubmittedChunk | None, list[str]]] = {}

    def unrecorded(job_id: str) -> JobRecord | None:
        job = unrecorded_item(record, job_id)
        if job is None or job.batch_chunk is None:
            return job
        if job.batch_chunk not in chunks:
            chunks[job.batch_chunk] = (store.submitted_chunk(record.request_id, job.batch_chunk),
                                       chunk_item_ids(record, job.batch_chunk))  # fmt: skip
        chunk, chunk_ids = chunks[job.batch_chunk]
        held = None if chunk is None else submitted_item(record, job_id, chunk, chunk_ids)
        return held or job

    return [
        BatchItemView(
            index=job.batch_index if job.batch_index is not None else -1,
            job_id=job.job_id,
            state=job.state.value,
            slurm_job_id=job.slurm_job_id,
            reason=job.reason,
        )
        for job_id in ids
        if (job := jobs.get(job_id) or unrecorded(job_id)) is not None
    ]
