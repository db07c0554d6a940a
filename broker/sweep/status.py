"""The status sweep: one pass over the "needs attention" index.

The sweep groups active jobs by cluster and makes ONE head-node command per cluster per sweep
(the agent's ``status`` op: squeue + sacct/scontrol), so its cost follows the number of
clusters with active work, never the number of clients polling or of jobs. Only real
transitions are written, conditionally, so overlapping sweeps cannot write twice or move a job
backwards. Pending events older than ``REANNOUNCE_AFTER`` are published again
(``broker.notifications.announcer``); accepted cluster operations are followed
(``broker.sweep.clusters``); accepts cut short are repaired (``broker.sweep.repairs``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from broker.agent.protocol import AgentRequest, SlurmJobStatus
from broker.batches.arrays import PendingFields, SubmittedChunk, submitted_items
from broker.batches.items import chunk_item_ids
from broker.errors import BrokerError
from broker.jobs.records import JobRecord, is_sweep_task, observe
from broker.notifications.announcer import REANNOUNCE_AFTER, Announcer
from broker.observability import logger
from broker.ports import (
    AttentionIndex,
    ClusterDirectory,
    CommandRunner,
    JobStore,
    RequestQueue,
)
from broker.schema import utcnow
from broker.sweep.clusters import ClusterFollower
from broker.sweep.repairs import (
    BATCH_LOST_AFTER,
    REQUEUE_AFTER,
    REQUEUE_LIMIT,
    RepairedRecords,
    Repairs,
)
from broker.sweep.report import SweepReport

#: Slurm ids per status command: the agent's limit (hpcb_agent.MAX_JOB_IDS; a test keeps them
#: equal).
STATUS_SLICE = 5000


class SweptRecords(AttentionIndex, JobStore, RepairedRecords, Protocol):
    """What the sweep reads and writes: the attention index, jobs, and the repairs' records."""


class Sweeper:
    """One pass over the attention index; see the module docstring."""

    def __init__(
        self,
        store: SweptRecords,
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
        #: This sweep's chunks whose items read from their arrays, by (batch id, chunk).
        self._chunks: dict[tuple[str, int], SubmittedChunk] = {}
        self._repairs = Repairs(
            store, announcer, now, queue=queue, requeue_after=requeue_after,
            requeue_limit=requeue_limit, batch_lost_after=batch_lost_after,
        )  # fmt: skip

    def sweep(self) -> SweepReport:
        """Reconcile every active job with Slurm, publish overdue events, re-send lost
        messages, fail the items of batch chunks never sent."""
        report = SweepReport()
        self._chunks = {}
        jobs, requests, chunks = self._store.attention()
        unrecorded = self._unrecorded(chunks)
        jobs = [*jobs, *unrecorded.values()]
        read_from_arrays = set(unrecorded)
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
                self._sweep_cluster(cluster, active, report, read_from_arrays)
            except BrokerError as exc:
                # One cluster's trouble (head node down, throttled) must not stop the others.
                report.errors[cluster] = str(exc)
                logger.warning("sweep of a cluster failed", extra={"cluster": cluster})
        if self._follower is not None:
            # Cluster operations (create/update/delete) accepted by ParallelCluster: one stack
            # read each, no head-node command.
            self._follower.follow(report)
        # Last, so a burst of re-sends never delays the status work above.
        self._repairs.requeue(requests, report)
        self._repairs.reap_lost_chunks(requests, report)
        return report

    def _unrecorded(self, chunks: list[SubmittedChunk]) -> dict[str, JobRecord]:
        """The items of sweep chunks that still read from their arrays (no record of their
        own), by job id; a chunk with none left leaves the attention index."""
        found: dict[str, JobRecord] = {}
        for chunk in chunks:
            try:
                batch = self._store.get(chunk.batch_id)
            except BrokerError:
                logger.warning("sweep chunk without its batch", extra={"batch": chunk.batch_id})
                continue
            ids = chunk_item_ids(batch, chunk.chunk)
            recorded = self._store.job_states([ids[p] for p, _ in chunk.spans(ids)])
            items = submitted_items(batch, chunk, ids, set(recorded))
            if not items:
                self._store.settle_chunk(chunk)
            found.update((job.job_id, job) for job in items)
            self._chunks[(chunk.batch_id, chunk.chunk)] = chunk
        return found

    def _record_pending(self, waiting: dict[tuple[str, int], dict[str, PendingFields]]) -> None:
        """Slurm's word on each array's pending tasks, on its chunk's marker where it changed
        (one write a chunk, none in a steady sweep)."""
        for key, fields in waiting.items():
            chunk = self._chunks[key]
            changed = {k: f for k, f in fields.items() if chunk.pending.get(k) != f}
            self._store.record_pending(chunk, changed)

    def _sweep_cluster(
        self, cluster: str, jobs: list[JobRecord], report: SweepReport, unrecorded: set[str]
    ) -> None:
        target = self._clusters.resolve(cluster)
        # A sweep's items are asked for by their array (the agent answers for every task):
        # 10,000 items of a sweep are 10 ids, not 10,000.
        ids = sorted({j.slurm_job_id.partition("_")[0] if is_sweep_task(j) else j.slurm_job_id
                      for j in jobs if j.slurm_job_id})  # fmt: skip
        statuses: list[SlurmJobStatus] = []
        answered: bool | None = None
        # In slices the agent takes (at most STATUS_SLICE ids a command): one caller's 5,001
        # held jobs must not make the whole cluster's status (everyone's) unreadable.
        for start in range(0, len(ids), STATUS_SLICE):
            report.head_node_commands += 1
            request = AgentRequest(op="status", job_ids=ids[start : start + STATUS_SLICE])
            response = self._runner_for(target.mode).run(target, request)
            if not response.ok:
                message = response.error.message if response.error else "status failed"
                raise BrokerError(message, code=response.error.code if response.error else "AGENT")
            statuses.extend(response.statuses)
            answered = response.accounting if answered is None else answered and response.accounting
        report.accounting[cluster] = answered
        accounting = bool(answered)
        now = self._now()
        # Each job meets only the statuses about it (its id, or its array's): 10,000 jobs against
        # 10,000 statuses each would be 10^8 comparisons a sweep.
        about: dict[str, list[SlurmJobStatus]] = defaultdict(list)
        for status in statuses:
            about[status.job_id].append(status)
            if status.base_id != status.job_id:
                about[status.base_id].append(status)
        waiting: dict[tuple[str, int], dict[str, PendingFields]] = defaultdict(dict)
        for job in jobs:
            mine = about.get(job.slurm_job_id or "", [])
            seen = observe(job, mine, accounting=accounting, now=now)
            recorded = job.job_id not in unrecorded
            if not recorded and (
                seen is None
                or (seen.new_state is job.state and "final_seen_at" not in seen.changes)
            ):
                # A sweep item still pending in its array: its array is its record until Slurm
                # moves it; Slurm's word on its pending tasks is written once for the array.
                self._wait_in_array(job, seen.changes if seen else {}, waiting)
                continue
            if seen is None:
                continue
            changes = dict(seen.changes)
            if (
                seen.new_state.final
                and answered is False
                and changes.get("exit_code", job.exit_code) is None
            ):
                changes.setdefault("reason", "no accounting: exit code unknown")
            if not self._store.update_job(job, seen.new_state, changes, recorded=recorded):
                continue  # another sweep or writer moved it first
            if seen.new_state != job.state:
                report.transitions += 1
            else:
                report.field_updates += 1
            if seen.new_state.final:
                report.announced += int(self._announce.job(job.job_id, job.state))
        self._record_pending(waiting)

    def _wait_in_array(
        self,
        job: JobRecord,
        changes: dict[str, Any],
        waiting: dict[tuple[str, int], dict[str, PendingFields]],
    ) -> None:
        """Note what Slurm says of a pending item as its array's word: the array's first item
        still pending without a record speaks for it (always the same one while it waits, so
        two tasks told apart by Slurm never take turns writing)."""
        key = (job.batch_id or "", job.batch_chunk or 0)
        chunk = self._chunks.get(key)
        array = None if chunk is None else chunk.array_of(job.slurm_job_id or "")
        if array is None or array.key() in waiting[key]:
            return
        fields = {
            name: changes.get(name, getattr(job, name)) for name in PendingFields.model_fields
        }
        waiting[key][array.key()] = PendingFields(**fields)


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
