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
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from broker.agent.protocol import AgentRequest
from broker.errors import BrokerError, NotFoundError
from broker.events import JobEvent, RequestEvent
from broker.jobs import JobRecord, JobState, observe
from broker.models import utcnow
from broker.observability import logger

if TYPE_CHECKING:
    from broker.cluster_service import ClusterFollower
    from broker.ports import ClusterDirectory, CommandRunner, JobStore, Notifier, Store

#: A pending event younger than this is left to the writer that is publishing it right now.
REANNOUNCE_AFTER = timedelta(seconds=60)


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


class Sweeper:
    """One pass over the attention index; see the module docstring."""

    def __init__(
        self,
        store: JobStore,
        clusters: ClusterDirectory,
        runner_for: Callable[[Literal["ssm", "local"]], CommandRunner],
        announcer: Announcer,
        now: Callable[[], datetime] = utcnow,
        *,
        follower: ClusterFollower | None = None,
    ) -> None:
        self._store = store
        self._clusters = clusters
        self._runner_for = runner_for
        self._announce = announcer
        self._now = now
        self._follower = follower

    def sweep(self) -> SweepReport:
        """Reconcile every active job with Slurm, and publish overdue events."""
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
        return report

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
