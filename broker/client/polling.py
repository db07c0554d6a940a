"""Waiting: capped exponential back-off with jitter, Retry-After, and one shared job poller.

Every wait and every retry goes through tenacity (``Retrying`` with the wait below), so there
is one tested loop and not one per method. :class:`JobMonitor` lets many ``wait_for_job`` calls
in one process share a single poller: each round makes one listing call per cluster (final jobs
created since the oldest awaited id, newest first, paged) instead of one GET per job, as
sfapi_client's job monitor does.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import tenacity
from tenacity.wait import wait_base

from broker.client.errors import ApiError, ClientError, WaitTimeoutError, is_retryable
from broker.jobs.records import JobList, JobView

Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Backoff:
    """Delay before poll or retry ``n`` (0-based): ``first * multiplier**n``, capped, with jitter.

    The jitter draws uniformly from ``[delay * (1 - jitter), delay]``, so that many clients
    started together spread out instead of polling in step.
    """

    first: float = 0.25
    cap: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delay(self, n: int, rng: random.Random) -> float:
        """The delay before attempt ``n + 1``, in seconds."""
        base = min(self.cap, self.first * self.multiplier ** min(n, 64))
        return base * (1 - self.jitter * rng.random())


class WaitBackoffOrRetryAfter(wait_base):
    """tenacity wait: the back-off, or the answer's ``Retry-After`` when it asks for longer."""

    def __init__(self, backoff: Backoff, rng: random.Random) -> None:
        self.backoff = backoff
        self.rng = rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        delay = self.backoff.delay(retry_state.attempt_number - 1, self.rng)
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed:
            exc = outcome.exception()
            if isinstance(exc, ApiError) and exc.retry_after is not None:
                return max(delay, exc.retry_after)
        return delay


def retry_after_of(exc: BaseException) -> float | None:
    """The Retry-After an error carries, if any."""
    return exc.retry_after if isinstance(exc, ApiError) else None


def poll_until(
    read: Callable[[], Any],
    done: Callable[[Any], bool],
    *,
    what: str,
    timeout: float,
    backoff: Backoff,
    sleep: Sleep,
    rng: random.Random,
) -> Any:
    """Call ``read`` until ``done(result)``; retryable errors (429, 5xx, drops) are retried.

    Raises:
        WaitTimeoutError: not done within ``timeout`` seconds (``last`` = the last result).
        ApiError: an answer that retrying cannot change (404, 403, …), or the last retryable
            one when the time ran out on errors.
    """

    def give_up(state: tenacity.RetryCallState) -> Any:
        outcome = state.outcome
        if outcome is not None and outcome.failed:
            raise outcome.exception()  # type: ignore[misc]
        last = outcome.result() if outcome is not None else None
        raise WaitTimeoutError(f"{what}: not done after {timeout:g}s", last)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_retryable) | tenacity.retry_if_result(_not(done)),
        wait=WaitBackoffOrRetryAfter(backoff, rng),
        stop=tenacity.stop_after_delay(timeout),
        sleep=sleep,
        retry_error_callback=give_up,
    )
    return retrying(read)


def _not(done: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda result: not done(result)


def id_time(job_id: str) -> datetime | None:
    """Creation time encoded in a broker id (``r`` + 12 hex of ms), None for a Slurm id."""
    if len(job_id) == 29 and job_id.startswith("r"):
        try:
            return datetime.fromtimestamp(int(job_id[1:13], 16) / 1000, UTC)
        except ValueError:
            return None
    return None


@dataclass
class _Waiter:
    cluster: str
    job_id: str
    done: threading.Event = field(default_factory=threading.Event)
    job: JobView | None = None
    error: BaseException | None = None


ListPage = Callable[[str, str | None, datetime | None], JobList]
GetJob = Callable[[str, str], JobView]

#: Slack on ``since``: ids and creation times both come from the API's clock, a record may be
#: written a little after its id was made, never before.
_SINCE_SLACK = timedelta(seconds=2)


class JobMonitor:
    """One poller thread for all the jobs awaited through a client.

    ``list_page(cluster, next_token, since)`` returns a page of the caller's *final* jobs created
    at or after ``since``; ``get_job`` reads one job (used for Slurm ids only, which carry no
    time). The thread runs while someone waits and stops when no one does.
    """

    def __init__(
        self,
        list_page: ListPage,
        get_job: GetJob,
        *,
        backoff: Backoff,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._list_page = list_page
        self._get_job = get_job
        self._backoff = backoff
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._lock = threading.Lock()
        self._waiters: dict[tuple[str, str], list[_Waiter]] = {}
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def wait(self, cluster: str, job_id: str, timeout: float) -> JobView:
        """Block until the job is final; returns its view.

        Raises:
            WaitTimeoutError: not final within ``timeout`` seconds.
            ApiError: the listing failed with an answer retrying cannot change.
        """
        waiter = _Waiter(cluster, job_id)
        with self._lock:
            self._waiters.setdefault((cluster, job_id), []).append(waiter)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hpcb-jobs", daemon=True)
                self._thread.start()
        if not waiter.done.wait(timeout):
            self._forget(waiter)
            raise WaitTimeoutError(f"job {job_id}: not final after {timeout:g}s")
        if waiter.job is None:
            raise waiter.error or ClientError(f"job {job_id}: the poller stopped")
        return waiter.job

    def _forget(self, waiter: _Waiter) -> None:
        with self._lock:
            key = (waiter.cluster, waiter.job_id)
            others = [w for w in self._waiters.get(key, []) if w is not waiter]
            if others:
                self._waiters[key] = others
            else:
                self._waiters.pop(key, None)

    def _resolve(
        self, key: tuple[str, str], job: JobView | None, error: BaseException | None
    ) -> None:
        with self._lock:
            waiters = self._waiters.pop(key, [])
        for waiter in waiters:
            waiter.job, waiter.error = job, error
            waiter.done.set()

    def _run(self) -> None:
        n = 0
        while True:
            with self._lock:
                wanted: dict[str, set[str]] = {}
                for cluster, job_id in self._waiters:
                    wanted.setdefault(cluster, set()).add(job_id)
                if not wanted:
                    self._thread = None
                    return
            delay = self._backoff.delay(n, self._rng)
            for cluster, ids in wanted.items():
                try:
                    self._poll(cluster, ids)
                except ClientError as exc:
                    if not is_retryable(exc):
                        for job_id in ids:
                            self._resolve((cluster, job_id), None, exc)
                    delay = max(delay, retry_after_of(exc) or 0.0)
            self.rounds += 1
            n += 1
            self._sleep(delay)

    def _poll(self, cluster: str, ids: set[str]) -> None:
        times = [t for t in (id_time(i) for i in ids) if t is not None]
        remaining = {i for i in ids if id_time(i) is not None}
        if remaining:
            since = min(times) - _SINCE_SLACK
            token: str | None = None
            while True:
                page = self._list_page(cluster, token, since)
                for job in page.jobs:
                    if job.job_id in remaining:
                        remaining.discard(job.job_id)
                        self._resolve((cluster, job.job_id), job, None)
                token = page.next_token
                if not token or not remaining:
                    break
        for job_id in ids - {i for i in ids if id_time(i) is not None}:
            job = self._get_job(cluster, job_id)
            if job.final:
                self._resolve((cluster, job_id), job, None)
