"""A batch item's outcome record, and the end of a batch once every item has one.

The job worker (a chunk submitted), the dead-letter worker (a chunk out of deliveries), the
accept (chunks that could not be queued) and the sweep (chunks lost at accept) all write item
outcomes and end batches, through these two functions.
"""

from __future__ import annotations

from broker.batches.models import BatchItem, BatchResult
from broker.jobs.records import JobRecord, JobState, new_job
from broker.notifications.announcer import Announcer
from broker.ports import RequestStore
from broker.requests.models import RequestRecord
from broker.schema import utcnow


def item_outcome(
    batch: RequestRecord,
    item: BatchItem,
    chunk: int | None,
    *,
    slurm_job_id: str | None = None,
    reason: str | None = None,
) -> JobRecord:
    """The record of a batch item leaving SUBMITTING: PENDING with its Slurm id, else
    SUBMIT_FAILED with ``reason`` (its notification pending)."""
    job = new_job(item.job_id, batch.owner, batch.cluster, item.spec, batch.created_at,
                  user=batch.user, batch_id=batch.request_id, batch_index=item.index,
                  batch_chunk=chunk)  # fmt: skip
    changes: dict[str, object] = (
        {"state": JobState.PENDING, "slurm_job_id": slurm_job_id}
        if slurm_job_id is not None
        else {"state": JobState.SUBMIT_FAILED, "reason": (reason or "")[:1000],
              "notify_pending": JobState.SUBMIT_FAILED.value}
    )  # fmt: skip
    return job.model_copy(update={**changes, "updated_at": utcnow()})


def finish_batch(store: RequestStore, announcer: Announcer, batch_id: str) -> None:
    """End a batch request (SUCCEEDED, with its counts) once every item has an outcome."""
    batch = store.get(batch_id)
    done = sum(batch.counts.values())
    if batch.items is not None and done >= batch.items and not batch.state.final:
        result = BatchResult(cluster=batch.cluster, items=batch.items, counts=batch.counts)
        if store.record_success(batch_id, result):
            announcer.request(batch_id)
