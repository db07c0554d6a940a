"""The announcers: publish the pending event of a record once, then mark it published.

Whoever wins a conditional transition to a final state (or a cluster's new status) announces
at once; the record carries ``notify_pending`` until the publish is confirmed, so a crash
between the two is repaired by the next sweep, which re-announces pending events older than
``REANNOUNCE_AFTER``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Final, Protocol, TypeVar

from broker.clusters.records import ClusterRecord
from broker.errors import BrokerError, NotFoundError, TransientError
from broker.jobs.records import JobRecord, JobState
from broker.notifications.events import ClusterEvent, JobEvent, RequestEvent
from broker.observability import logger
from broker.ports import ClusterStore, JobStore, Notifier, RequestStore

#: A pending event younger than this is left to the writer that is publishing it right now.
REANNOUNCE_AFTER = timedelta(seconds=60)
#: Attempts of the announcer's own reads and marks when AWS fails them transiently, and the
#: first back-off in seconds (doubled each time, jittered).
ATTEMPTS: Final = 4
BACKOFF_S: Final = 0.05

T = TypeVar("T")


def _retried(call: Callable[[], T]) -> T:
    """``call``, attempted again (a few times, backing off) on a transient error.

    Why: the writer that won a final transition is the one that announces it. If its read of
    the record (or the mark after the publish) fails, the message is retried, but a redelivery
    finds the transition made and announces nothing: the event waited for the sweep (a chaos
    run's throttled read left a SUCCEEDED request unannounced), and a mark that failed after
    the publish made the sweep publish it a second time.
    """
    for attempt in range(ATTEMPTS):
        try:
            return call()
        except TransientError:
            if attempt == ATTEMPTS - 1:
                raise
            delay = BACKOFF_S * 2**attempt
            time.sleep(delay + random.uniform(0, delay))  # noqa: S311 - jitter, not crypto
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


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
            job = _retried(lambda: self._store.get_job(job_id))
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
        pending = job.notify_pending
        _retried(lambda: self._store.clear_job_notification(job.job_id, pending))
        return True

    def request(self, request_id: str) -> bool:
        """Publish the request's pending event, if any. False when nothing was published."""
        try:
            record = _retried(lambda: self._store.get(request_id))
        except NotFoundError:
            return False
        if record.notify_pending is None:
            return False
        try:
            self._notifier.publish(RequestEvent.of(record))
        except BrokerError as exc:
            logger.warning("request event not published; retried", extra={"error": str(exc)})
            return False
        pending = record.notify_pending
        _retried(lambda: self._store.clear_request_notification(request_id, pending))
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
