"""The dead-letter worker's side: a message whose deliveries ran out ends its request FAILED.

A single request keeps its last error's words; a batch chunk fails its items still
SUBMITTING (none is left in progress, none keeps its back-pressure reservation).
"""

from __future__ import annotations

from typing import Protocol

from broker.batches.models import JobBatchMessage
from broker.batches.outcomes import finish_batch, item_outcome
from broker.errors import NotFoundError
from broker.jobs.records import JobState
from broker.notifications.announcer import Announcer
from broker.observability import logger
from broker.ports import BatchStore, JobStore, RequestStore
from broker.schema import ErrorInfo


class DeadRecords(RequestStore, JobStore, BatchStore, Protocol):
    """What giving up writes: the request, a submission's job, a chunk's items."""


class DeadLetterService:
    """The DLQ worker's side: a message whose deliveries ran out marks its request FAILED."""

    def __init__(self, store: DeadRecords, announcer: Announcer) -> None:
        self._store = store
        self._announce = announcer

    def give_up_chunk(self, message: JobBatchMessage) -> int:
        """A batch chunk ran out of deliveries: its items still SUBMITTING fail (none is left
        in progress, none keeps its back-pressure reservation); the batch ends if complete.

        Returns:
            How many items this call failed (others had an outcome already).
        """
        try:
            batch = self._store.get(message.request_id)
        except NotFoundError:
            logger.error(
                "dead letter for an unknown batch", extra={"request_id": message.request_id}
            )
            return 0
        last = batch.error
        reason = "retries exhausted" + (
            f"; last error: {last.code}: {last.message}" if last else ""
        )
        failed = [item_outcome(batch, item, message.chunk, reason=reason) for item in message.items]
        _, newly_failed = self._store.record_batch_outcomes(batch, failed)
        for job_id in newly_failed:
            self._announce.job(job_id, JobState.SUBMITTING)
        finish_batch(self._store, self._announce, message.request_id)
        return len(newly_failed)

    def give_up(self, request_id: str) -> bool:
        """Record that retries ran out, keeping the last error's words (and fail its job).

        Returns:
            False when the request was already final (a success that raced the DLQ wins) or
            unknown.
        """
        try:
            record = self._store.get(request_id)
        except NotFoundError:
            logger.error("dead letter for an unknown request", extra={"request_id": request_id})
            return False
        last = record.error
        reason = f"; last error: {last.code}: {last.message}" if last else ""
        failed = self._store.record_failure(
            request_id,
            ErrorInfo(
                code="RETRIES_EXHAUSTED",
                message=f"gave up after {record.attempts} attempts{reason}",
                transient=True,
            ),
        )
        # Even when the request was already final: an earlier delivery of this dead letter may
        # have failed the request, then stopped (throttled) before failing its job, which
        # would stay SUBMITTING for ever. The job's write is conditional on SUBMITTING, so a
        # success that raced the DLQ is never touched.
        job_id = record.job_id if record.kind == "job.submit" else None
        job_failed = bool(job_id) and self._store.record_submit_failed(
            str(job_id), "retries exhausted"
        )
        if job_failed:
            self._announce.job(str(job_id), JobState.SUBMITTING)
        if failed or job_failed:
            self._announce.request(request_id)
        return failed
