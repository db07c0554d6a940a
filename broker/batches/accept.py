"""The accept of a burst: validate each item, chunk the valid ones, record the batch, enqueue.

The accept costs one transaction and a few queue calls, however many items: items get their
own records only with their outcomes (``broker.batches.items``).
"""

from __future__ import annotations

from typing import Protocol

from pydantic import ValidationError as PydanticValidationError

from broker.batches.items import item_id, unrecorded_item
from broker.batches.models import (
    BatchAccepted,
    BatchBody,
    BatchItem,
    BatchItemError,
    BatchItemView,
    JobBatchMessage,
    batch_ids,
)
from broker.batches.outcomes import item_outcome
from broker.errors import PayloadTooLargeError, TransientError, ValidationError
from broker.jobs.models import MAX_SCRIPT_BYTES, JobSpec
from broker.ports import BatchStore, Limits, RequestQueue, RequestStore
from broker.requests.models import QueueMessage, RequestRecord
from broker.requests.states import RequestState
from broker.schema import ErrorInfo, FieldError, utcnow

#: How many item errors an answer lists (the count is always given).
MAX_LISTED_ERRORS = 1000
#: Jobs per batch chunk (one queue message, one agent call), and the chunk's size bound.
CHUNK_ITEMS = 1000
CHUNK_BYTES = 120 * 1024


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
    if rejected and (body.atomic or not valid):
        raise BatchRejectedError(
            f"{len(rejected)} of {len(body.jobs)} items are invalid"
            + ("; the batch is atomic" if body.atomic else ""),
            [f for item in rejected[:MAX_LISTED_ERRORS] for f in item.fields],
        )
    batch_id, prefix, ids = batch_ids(len(body.jobs))
    chunks = chunk_items([BatchItem(index=i, job_id=ids[i], spec=spec) for i, spec in valid])
    now = utcnow()
    record = RequestRecord(
        request_id=batch_id, kind="job.batch", owner=owner, cluster=cluster, user=user,
        state=RequestState.ACCEPTED, created_at=now, updated_at=now, items=len(valid),
        batch_size=len(body.jobs), chunk_starts=[chunk[0].index for chunk in chunks],
        rejected_items=[item.index for item in rejected] or None,
    )  # fmt: skip
    store.create_batch(record, limits, ready_cluster=ready_cluster)
    messages: list[QueueMessage] = [
        JobBatchMessage(request_id=batch_id, owner=owner, cluster=cluster, user=user,
                        items=chunk, chunk=number)
        for number, chunk in enumerate(chunks)
    ]  # fmt: skip
    unsent = queue.send_many(messages)
    if unsent:
        lost = [
            item_outcome(record, i, m.chunk, reason="could not be queued")
            for m in unsent
            if isinstance(m, JobBatchMessage)
            for i in m.items
        ]
        store.record_batch_outcomes(record, lost)
        if len(unsent) == len(messages):
            store.record_failure(
                batch_id, ErrorInfo(code="ENQUEUE_FAILED", message="the batch could not "
                                    "be queued; send it again", transient=True),
            )  # fmt: skip
            raise TransientError("the batch could not be queued; send it again",
                                 code="ENQUEUE_FAILED")  # fmt: skip
    return BatchAccepted(
        request_id=batch_id,
        location=f"/v1/requests/{batch_id}",
        accepted=len(valid),
        rejected_count=len(rejected),
        rejected=rejected[:MAX_LISTED_ERRORS],
        job_id_prefix=prefix,
    )


def batch_page(
    store: BatchStore, record: RequestRecord, start: int, limit: int
) -> list[BatchItemView]:
    """A page of a batch's items, by index, with their jobs' states (items without a record
    yet are SUBMITTING; rejected items are left out)."""
    ids = [item_id(record.request_id, i) for i in range(start, start + limit)]
    jobs = store.jobs_by_id(ids)
    return [
        BatchItemView(
            index=job.batch_index if job.batch_index is not None else -1,
            job_id=job.job_id,
            state=job.state.value,
            slurm_job_id=job.slurm_job_id,
            reason=job.reason,
        )
        for job_id in ids
        if (job := jobs.get(job_id) or unrecorded_item(record, job_id)) is not None
    ]
