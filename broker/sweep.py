"""The status sweep and the announcer.

The sweep reads only the "needs attention" index, groups active jobs by cluster and makes ONE
head-node command per cluster per sweep (the agent's ``status`` op: squeue + sacct/scontrol),
so its cost follows the number of clusters with active work, never the number of clients
polling or of jobs. Only real transitions are written, conditionally, so overlapping sweeps
cannot write twice or move a job backwards.

The announcer publishes the event of a final transition once. Whoever wins the conditional
transition announces at once; the record carries ``notify_pending`` until the publish is
confirmed, so a crash between the two is repaired by the next sweep (which re-announces
pending events older than ``REANNOUNCE_AFTER``).

The sweep also repairs an accept whose queue message was lost (the API killed between its
write and its send): a ``job.submit``, ``job.cancel`` or ``job.output`` still ACCEPTED, with no
attempt, long after it was accepted, gets its message sent again, rebuilt from its record
(``broker.requeue``). Batches are not re-sent: their items' specs live only in their messages.
Instead, a batch chunk that no worker started long after its batch was accepted counts as lost
(the API died before or while sending its chunks): the sweep claims it (``Store.reap_chunk``,
after which no worker can start it), fails its items with a reason saying to send them again,
which releases their back-pressure reservations, and ends the batch if that was its last chunk.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from broker.agent.protocol import AgentRequest
from broker.batches import chunk_item_ids, lost_item
from broker.errors import BrokerError, NotFoundError
from broker.events import JobEvent, RequestEvent
from broker.jobs import JobRecord, JobState, observe
from broker.models import BatchResult, RequestRecord, utcnow
from broker.observability import logger
from broker.requeue import due_for_requeue, message_of

if TYPE_CHECKING:
    from broker.cluster_service import ClusterFollower
    from broker.ports import ClusterDirectory, CommandRunner, Notifier, RequestQueue, Store

#: A pending event younger than this is left to the writer that is publishing it right now.
REANNOUNCE_AFTER = timedelta(seconds=60)
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


class Announcer:
    """Publishes the pending event of a job or request once, then marks it published."""

    def __init__(self, store: Store, notifier: Notifier) -> None:
        self._store = store
        self._notifier = notifier

    def job(self, job_id: str, old_state: JobState | None) -> bool:
        """Publish the job's pending event, if any. False when nothing was published."""
        try:
            job = self._store.get_job(job_id)
        except NotFoundError:
            return False
        return self.publish_job(job, old_state)

    def publish_job(self, job: JobRecord, old_state: JobState | None) -> bool:
        """Publish ``job``'s pending event (as read), then mark it published."""
        if job.notify_pending is None:
            return False
        try:
            self._notifier.publish(JobEvent.of(job, old_state))
        except BrokerError as exc:
            logger.warning("job event not published; the sweep retries", extra={"error": str(exc)})
            return False
        self._store.clear_job_notification(job.job_id, job.notify_pending)
        return True

    def request(self, request_id: str) -> bool:
        """Publish the request's pending event, if any. False when nothing was published."""
        try:
            record = self._store.get(request_id)
        except NotFoundError:
            return False
        if record.notify_pending is None:
            return False
        try:
            self._notifier.publish(RequestEvent.of(record))
        except BrokerError as exc:
            logger.warning("request event not published; retried", extra={"error": str(exc)})
            return False
        self._store.clear_request_notification(request_id, record.notify_pending)
        return True


@dataclass
class SweepReport:
    """What one sweep did (logged, and asserted on by tests and benchmarks)."""

    clusters: int = 0
    head_node_commands: int = 0
    active_jobs: int = 0
    transitions: int = 0
    field_updates: int = 0
    announced: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    accounting: dict[str, bool | None] = field(default_factory=dict)
    clusters_followed: int = 0
    stack_reads: int = 0
    cluster_transitions: int = 0
    requeued: int = 0
    chunks_lost: int = 0
    items_lost: int = 0


class Sweeper:
    """One pass over the attention index; see the module docstring."""

    def __init__(
        self,
        store: Store,
        clusters: ClusterDirectory,
        runner_for: Callable[[Literal["ssm", "local"]], CommandRunner],
        announcer: Announcer,
        now: Callable[[], datetime] = utcnow,
        *,
        follower: ClusterFollower | None = None,
        queue: RequestQueue | None = None,
        requeue_after: timedelta = REQUEUE_AFTER,
        requeue_limit: int = REQUEUE_LIMIT,
        batch_lost_after: timedelta = BATCH_LOST_AFTER,
    ) -> None:
        """Build a sweeper.

        Args:
            store, clusters, runner_for, announcer, now, follower: what the sweep reads and
                writes, and the clock.
            queue: the requests queue, to re-send lost messages (None: nothing is re-sent).
            requeue_after: how long a request may stay ACCEPTED before its message counts as
                lost, and the least time between two re-sends of it.
            requeue_limit: most re-sends per sweep.
            batch_lost_after: how long after its batch's accept a chunk no worker started
                counts as lost (its items are failed).
        """
        self._store = store
        self._clusters = clusters
        self._runner_for = runner_for
        self._announce = announcer
        self._now = now
        self._follower = follower
        self._queue = queue
        self._requeue_after = requeue_after
        self._requeue_limit = requeue_limit
        self._batch_lost_after = batch_lost_after

    def sweep(self) -> SweepReport:
        """Reconcile every active job with Slurm, publish overdue events, re-send lost
        messages, fail the items of batch chunks never sent."""
        report = SweepReport()
        jobs, requests = self._store.attention()
        stale = self._now() - REANNOUNCE_AFTER
        for record in requests:
            if record.notify_pending and record.updated_at < stale:
                report.announced += int(self._announce.request(record.request_id))
        by_cluster: dict[str, list[JobRecord]] = defaultdict(list)
        for job in jobs:
            if job.notify_pending and job.state.final:
                if job.updated_at < stale:
                    report.announced += int(self._announce.job(job.job_id, None))
            elif job.slurm_job_id is not None and not job.state.final:
                by_cluster[job.cluster].append(job)
        for cluster, active in sorted(by_cluster.items()):
            report.clusters += 1
            report.active_jobs += len(active)
            try:
                self._sweep_cluster(cluster, active, report)
            except BrokerError as exc:
                # One cluster's trouble (head node down, throttled) must not stop the others.
                report.errors[cluster] = str(exc)
                logger.warning("sweep of a cluster failed", extra={"cluster": cluster})
        if self._follower is not None:
            # Cluster operations (create/update/delete) accepted by ParallelCluster: one stack
            # read each, no head-node command.
            self._follower.follow(report)
        # Last, so a burst of re-sends never delays the status work above.
        self._requeue(requests, report)
        self._reap_lost_chunks(requests, report)
        return report

    def _requeue(self, requests: list[RequestRecord], report: SweepReport) -> None:
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

    def _reap_lost_chunks(self, requests: list[RequestRecord], report: SweepReport) -> None:
        """Fail the items of each batch chunk that no worker started long after the accept."""
        now = self._now()
        accepted_before = now - self._batch_lost_after
        for batch in requests:
            if (
                batch.kind != "job.batch"
                or batch.state.final
                or batch.chunk_starts is None  # accepted with item records: not this gap
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

    def _sweep_cluster(self, cluster: str, jobs: list[JobRecord], report: SweepReport) -> None:
        target = self._clusters.resolve(cluster)
        ids = sorted({j.slurm_job_id for j in jobs if j.slurm_job_id})
        report.head_node_commands += 1
        response = self._runner_for(target.mode).run(target, AgentRequest(op="status", job_ids=ids))
        if not response.ok:
            message = response.error.message if response.error else "status failed"
            raise BrokerError(message, code=response.error.code if response.error else "AGENT")
        report.accounting[cluster] = response.accounting
        accounting = bool(response.accounting)
        now = self._now()
        for job in jobs:
            seen = observe(job, response.statuses, accounting=accounting, now=now)
            if seen is None:
                continue
            changes = dict(seen.changes)
            if (
                seen.new_state.final
                and response.accounting is False
                and changes.get("exit_code", job.exit_code) is None
            ):
                changes.setdefault("reason", "no accounting: exit code unknown")
            if not self._store.update_job(job, seen.new_state, changes):
                continue  # another sweep or writer moved it first
            if seen.new_state != job.state:
                report.transitions += 1
            else:
                report.field_updates += 1
            if seen.new_state.final:
                report.announced += int(self._announce.job(job.job_id, job.state))


def finish_batch(store: Store, announcer: Announcer, batch_id: str) -> None:
    """End a batch request (SUCCEEDED, with its counts) once every item has an outcome.

    Here rather than in ``broker.service`` (which imports this module): the job worker, the DLQ
    worker and the sweep's reaping of lost chunks all end batches.
    """
    batch = store.get(batch_id)
    done = sum(batch.counts.values())
    if batch.items is not None and done >= batch.items and not batch.state.final:
        result = BatchResult(cluster=batch.cluster, items=batch.items, counts=batch.counts)
        if store.record_success(batch_id, result):
            announcer.request(batch_id)


def sweep_for(
    seconds: float, interval: float, sweep: Callable[[], SweepReport]
) -> list[SweepReport]:
    """Sweep every ``interval`` seconds for ``seconds`` (one scheduled invocation's window)."""
    reports = []
    deadline = time.monotonic() + seconds
    while True:
        started = time.monotonic()
        reports.append(sweep())
        if started + interval > deadline:
            return reports
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
