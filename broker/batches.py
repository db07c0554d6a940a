"""Batch items before they have a record of their own (pure logic, no I/O).

Accepting a batch writes one request record, not one record per item: that keeps the accept
O(chunks) instead of O(items) (a 10,000-job batch is one transaction and a few queue calls), and
each item's record is written once, with its outcome (submitted, failed or cancelled). Until
then an item is known from its batch's record alone: its job id is the batch's prefix plus its
index, its chunk follows from ``chunk_starts``, and it is SUBMITTING unless its index was
rejected. Every reader of a job (GET, cancel, dependencies, a batch's item pages) goes through
``unrecorded_item`` when the job has no record.
"""

from __future__ import annotations

from bisect import bisect_right

from broker.jobs import JobRecord, JobState
from broker.models import RequestRecord

#: Batch ids and their items' ids share their first 23 characters (``models.batch_ids``).
PREFIX_CHARS = 23
#: The index a batch's own request id carries.
BATCH_INDEX = "ffffff"


def batch_id_of(job_id: str) -> str | None:
    """The id of the batch a job id would belong to (None if it cannot be a batch item)."""
    if len(job_id) != PREFIX_CHARS + len(BATCH_INDEX) or job_id.endswith(BATCH_INDEX):
        return None
    return job_id[:PREFIX_CHARS] + BATCH_INDEX


def item_id(batch_id: str, index: int) -> str:
    """The job id of a batch's item ``index``."""
    return f"{batch_id[:PREFIX_CHARS]}{index:06x}"


def chunk_of(chunk_starts: list[int], index: int) -> int:
    """The chunk holding item ``index``, given each chunk's first item index."""
    return max(0, bisect_right(chunk_starts, index) - 1)


def unrecorded_item(batch: RequestRecord, job_id: str) -> JobRecord | None:
    """The SUBMITTING view of a batch item that has no record yet (None: not an item of it).

    Only batches accepted without item records (``chunk_starts`` set) have such items; an index
    past the batch or rejected at accept is not an item.
    """
    if batch.kind != "job.batch" or batch.chunk_starts is None or batch_id_of(job_id) is None:
        return None
    if job_id[:PREFIX_CHARS] != batch.request_id[:PREFIX_CHARS]:
        return None
    try:
        index = int(job_id[PREFIX_CHARS:], 16)
    except ValueError:
        return None
    if index >= (batch.batch_size or 0) or index in (batch.rejected_items or ()):
        return None
    return JobRecord(
        job_id=job_id,
        cluster=batch.cluster,
        owner=batch.owner,
        state=JobState.SUBMITTING,
        created_at=batch.created_at,
        updated_at=batch.created_at,
        batch_id=batch.request_id,
        batch_index=index,
        batch_chunk=chunk_of(batch.chunk_starts, index),
    )
