"""Batch items before they have a record of their own (pure logic, no I/O).

Accepting a batch writes one request record, not one record per item: that keeps the accept
O(chunks) instead of O(items) (a 10,000-job batch is one transaction and a few queue calls), and
each item's record is written once, with its outcome (submitted, failed or cancelled). Until
then an item is known from its batch's record alone: its job id is the batch's prefix plus its
index, its chunk follows from ``chunk_starts``, and it is SUBMITTING unless its index was
rejected. Every reader of a job (GET, cancel, dependencies, a batch's item pages) goes through
``unrecorded_item`` when the job has no record. A sweep's items submitted in an array go on
without one: their chunk's arrays are their record until Slurm moves them
(``broker.batches.arrays``).

A chunk whose message was never sent (the API died between its write and its sends) cannot be
sent again: the specs were only in the message. Its items are failed instead (``lost_item``),
by the sweep (``broker.sweep.repairs``), which finds them from the batch record
(``chunk_item_ids``).
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime

from broker.batches.models import PREFIX_CHARS, item_id
from broker.jobs.records import JobRecord, JobState
from broker.requests.models import RequestRecord

#: The index a batch's own request id carries.
BATCH_INDEX = "ffffff"


def batch_id_of(job_id: str) -> str | None:
    """The id of the batch a job id would belong to (None if it cannot be a batch item)."""
    if len(job_id) != PREFIX_CHARS + len(BATCH_INDEX) or job_id.endswith(BATCH_INDEX):
        return None
    return job_id[:PREFIX_CHARS] + BATCH_INDEX


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
        user=batch.user,
        state=JobState.SUBMITTING,
        created_at=batch.created_at,
        updated_at=batch.created_at,
        batch_id=batch.request_id,
        batch_index=index,
        batch_chunk=chunk_of(batch.chunk_starts, index),
    )


def chunk_item_ids(batch: RequestRecord, chunk: int) -> list[str]:
    """The job ids of a batch's chunk ``chunk``, in index order (rejected indexes left out).

    Chunk ``n`` holds the indexes from ``chunk_starts[n]`` up to the next chunk's start (the
    last chunk: up to ``batch_size``). Empty for a batch accepted without ``chunk_starts`` or a
    chunk number it does not have.
    """
    starts = batch.chunk_starts
    if starts is None or not 0 <= chunk < len(starts):
        return []
    end = starts[chunk + 1] if chunk + 1 < len(starts) else (batch.batch_size or 0)
    rejected = set(batch.rejected_items or ())
    return [item_id(batch.request_id, i) for i in range(starts[chunk], end) if i not in rejected]


def lost_item(batch: RequestRecord, job_id: str, reason: str, now: datetime) -> JobRecord:
    """The SUBMIT_FAILED record of a batch item whose chunk was never delivered.

    It is the item's SUBMITTING view (``unrecorded_item``) moved to SUBMIT_FAILED, its event
    pending. Its spec is lost with the message, so the record has no name, tags or paths.

    Raises:
        ValueError: ``job_id`` is not an item of ``batch`` that could lack a record.
    """
    job = unrecorded_item(batch, job_id)
    if job is None:
        raise ValueError(f"{job_id} is not an item of batch {batch.request_id}")
    return job.model_copy(
        update={
            "state": JobState.SUBMIT_FAILED,
            "reason": reason[:1000],
            "notify_pending": JobState.SUBMIT_FAILED.value,
            "updated_at": now,
        }
    )
