"""Repairs of accepts cut short (the API killed between its write and its sends).

A ``job.submit``, ``job.cancel`` or ``job.output`` still ACCEPTED, with no attempt, long after
it was accepted, gets its message sent again, rebuilt from its record (``broker.requests.requeue``).
Batches are not re-sent: their items' specs live only in their messages. Instead, a batch chunk
that no worker started long after its batch was accepted counts as lost: the sweep claims it
(``BatchStore.reap_chunk``, after which no worker can start it), fails its items with a reason
saying to send them again, which releases their back-pressure reservations, and ends the batch
if that was its last chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from broker.batches.items import chunk_item_ids, lost_item
from broker.batches.outcomes import finish_batch
from broker.errors import BrokerError
from broker.jobs.records import JobState
from broker.notifications.announcer import Announcer
from broker.observability import logger
from broker.ports import BatchStore, RequestQueue, RequestStore
from broker.requests.models import RequestRecord
from broker.requests.requeue import due_for_requeue, message_of
from broker.sweep.report import SweepReport

#: A request ACCEPTED this long without a delivery has lost its message (the sweeper's setting
#: ``requeue_after_seconds`` overrides it). Longer than any healthy queue wait, so a message
#: merely waiting in a backlog is rarely sent twice (twice is harmless, only wasteful).
REQUEUE_AFTER = timedelta(seconds=600)
#: At most this many re-sends per sweep: after a long worker outage, every waiting request
#: looks lost; the re-sends then spread over sweeps instead of overrunning the sweep's time.
REQUEUE_LIMIT = 100
#: A batch chunk no worker started this long after its batch was accepted was never sent (the
#: sweeper's setting ``batch_lost_after_seconds`` overrides it). A sent chunk starts within
#: seconds: its first delivery waits for no other message's retries.
BATCH_LOST_AFTER = timedelta(seconds=3600)
#: Why the items of a lost chunk failed (their specs are gone: the caller must send them again).
LOST_CHUNK_REASON = "its chunk was never delivered (lost at accept); send these jobs again"


class RepairedRecords(RequestStore, BatchStore, Protocol):
    """What the repairs claim and write: requests (re-sends) and batches (lost chunks)."""


class Repairs:
    """Re-sends lost messages and fails the items of lost batch chunks (one sweep's part)."""

    def __init__(
        self,
        store: RepairedRecords,
        announcer: Announcer,
        now: Callable[[], datetime],
        *,
        queue: RequestQueue | None,
        requeue_after: timedelta = REQUEUE_AFTER,
        requeue_limit: int = REQUEUE_LIMIT,
        batch_lost_after: timedelta = BATCH_LOST_AFTER,
    ) -> None:
        """Build the repairs.

        Args:
            store, announcer, now: what the repairs read and write, and the clock.
            queue: the requests queue, to re-send lost messages (None: nothing is re-sent).
            requeue_after: how long a request may stay ACCEPTED before its message counts as
                lost, and the least time between two re-sends of it.
            requeue_limit: most re-sends per sweep.
            batch_lost_after: how long after its batch's accept a chunk no worker started
                counts as lost (its items are failed).
        """
        self._store = store
        self._announce = announcer
        self._now = now
        self._queue = queue
        self._requeue_after = requeue_after
        self._requeue_limit = requeue_limit
        self._batch_lost_after = batch_lost_after

    def requeue(self, requests: list[RequestRecord], report: SweepReport) -> None:
        """Send again the message of each request accepted long ago that no worker took."""
        if self._queue is None:
            return
        now = self._now()
        stale = now - self._requeue_after
        lost = [
            (record, message)
            for record in requests
            if due_for_requeue(record, now, self._requeue_after)
            # None for job.batch (not re-sent: its items' specs are only in its messages).
            and (message := message_of(record)) is not None
        ]
        lost.sort(key=lambda pair: pair[0].created_at)
        for record, message in lost[: self._requeue_limit]:
            try:
                if not self._store.claim_requeue(record.request_id, now, stale):
                    continue  # another sweep re-sent it, or a worker took it since the read
                self._queue.send(message)
            except BrokerError as exc:
                # A claim whose send failed stands: the next try is one period later, not at
                # every sweep; and one failure does not stop the other re-sends.
                logger.warning(
                    "lost request message not sent again; retried later",
                    extra={"request_id": record.request_id, "error": str(exc)},
                )
                continue
            report.requeued += 1
            accepted_at = record.created_at.isoformat()
            logger.warning(
                "request message was lost; sent again",
                extra={"request_id": record.request_id, "kind": record.kind, "at": accepted_at},
            )

    def reap_lost_chunks(self, requests: list[RequestRecord], report: SweepReport) -> None:
        """Fail the items of each batch chunk that no worker started long after the accept."""
        now = self._now()
        accepted_before = now - self._batch_lost_after
        for batch in requests:
            if (
                batch.kind != "job.batch"
                or batch.state.final
                or batch.created_at >= accepted_before
            ):
                continue
            try:
                self._reap_batch(batch, now, report)
            except BrokerError as exc:
                # One batch's trouble must not stop the others; a reap cut short is finished
                # by a later sweep (``reap_chunk`` lets an unfinished reap in again).
                report.errors[f"batch {batch.request_id}"] = str(exc)
                logger.warning(
                    "lost chunks of a batch not failed; retried",
                    extra={"request_id": batch.request_id, "error": str(exc)},
                )

    def _reap_batch(self, batch: RequestRecord, now: datetime, report: SweepReport) -> None:
        """Claim each chunk of ``batch`` that no worker started, fail its items, end the batch
        if complete."""
        chunks = len(batch.chunk_starts or ())
        started = self._store.chunks_started(batch.request_id, chunks)
        for chunk in range(chunks):
            if chunk in started or not self._store.reap_chunk(batch.request_id, chunk):
                continue  # a worker has it (or had it), or an earlier reap finished it
            lost = [
                lost_item(batch, job_id, LOST_CHUNK_REASON, now)
                for job_id in chunk_item_ids(batch, chunk)
            ]
            # Items that already have a record (cancelled while queued) are left as they are.
            _, failed = self._store.record_batch_outcomes(batch, lost)
            self._store.reap_done(batch.request_id, chunk)
            report.chunks_lost += 1
            report.items_lost += len(failed)
            logger.warning(
                "batch chunk never delivered; its items failed",
                extra={"request_id": batch.request_id, "chunk": chunk, "items": len(failed),
                       "at": batch.created_at.isoformat()},
            )  # fmt: skip
            for job_id in failed:
                report.announced += int(self._announce.job(job_id, JobState.SUBMITTING))
        # Even when nothing was reaped now: a sweep that died after its last reap_done left
        # a complete batch open (one consistent read; it writes only to end the batch).
        finish_batch(self._store, self._announce, batch.request_id)
