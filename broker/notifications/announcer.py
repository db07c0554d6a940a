"""The announcers: publish the pending event of a record once, then mark it published.

Whoever wins a conditional transition to a final state (or a cluster's new status) announces
at once; the record carries ``notify_pending`` until the publish is confirmed, so a crash
between the two is repaired by the next sweep, which re-announces pending events older than
``REANNOUNCE_AFTER``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from broker.clusters.records import ClusterRecord
from broker.errors import BrokerError, NotFoundError
from broker.jobs.records import JobRecord, JobState
from broker.notifications.events import ClusterEvent, JobEvent, RequestEvent
from broker.observability import logger
from broker.ports import ClusterStore, JobStore, Notifier, RequestStore

#: A pending event younger than this is left to the writer that is publishing it right now.
REANNOUNCE_AFTER = timedelta(seconds=60)


class AnnouncedRecords(RequestStore, JobStore, Protocol):
    """What the announcer reads and marks: requests and jobs."""


class Announcer:
    """Publishes the pending event of a job or request once, then marks it published."""

    def __init__(self, store: AnnouncedRecords, notifier: Notifier) -> None:
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


class ClusterAnnouncer:
    """Publishes a cluster's pending status event once, then marks it published."""

    def __init__(self, store: ClusterStore, notifier: Notifier) -> None:
        self._store = store
        self._notifier = notifier

    def publish(self, record: ClusterRecord) -> bool:
        """Publish ``record``'s pending event (as written by the caller's winning transition)."""
        if record.notify_pending is None:
            return False
        try:
            self._notifier.publish(ClusterEvent.of(record))
        except BrokerError as exc:
            logger.warning("cluster event not published; the sweep retries", extra={"e": str(exc)})
            return False
        self._store.clear_cluster_notification(record.name, record.notify_pending)
        return True
