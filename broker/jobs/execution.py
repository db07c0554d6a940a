"""What every job worker operation shares: the agent's errors read as broker errors, the
accounting lookback, dependencies resolved to Slurm ids, and how a request ends.

Used by the job worker's single requests (``broker.jobs.dispatch``), its batch chunks
(``broker.batches.dispatch``) and the dead-letter worker (``broker.jobs.dead_letters``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Literal, Protocol

from broker.agent.protocol import AgentErrorInfo
from broker.batches.models import BatchResult
from broker.errors import (
    BrokerError,
    ClusterNotFoundError,
    ConflictError,
    NotFoundError,
    NotMappedError,
    PermanentError,
    TransientError,
)
from broker.jobs.models import CancelResult, JobResult, JobSpec, JobSubmitMessage, OutputResult
from broker.jobs.records import JobState
from broker.notifications.announcer import Announcer
from broker.ports import CommandRunner, JobStore, RequestStore
from broker.requests.models import QueueMessage
from broker.schema import ErrorInfo, utcnow

Outcome = Literal["succeeded", "failed", "skipped", "cancelled"]
RunnerFor = Callable[[Literal["ssm", "local"]], CommandRunner]
#: Errors that end a request for good (recorded FAILED): retrying cannot fix them.
PERMANENT = (PermanentError, ClusterNotFoundError, NotFoundError, ConflictError, NotMappedError)

#: Added to a job's age for the agent's accounting search: clock skew between the worker and
#: the head node (both NTP-synced in AWS) is far smaller.
LOOKBACK_MARGIN = timedelta(minutes=10)


def lookback_seconds(accepted_at: datetime) -> int:
    """Seconds of Slurm accounting that can hold a job accepted at ``accepted_at``.

    Its token can only be in a job submitted after it was accepted: the age of the request
    plus a margin, within the agent's bounds (60 s to 90 days).
    """
    age = utcnow() - accepted_at + LOOKBACK_MARGIN
    return max(60, min(90 * 86400, int(age.total_seconds()) + 1))


def error_of(error: AgentErrorInfo | None, code: str, text: str) -> BrokerError:
    """The broker error for an agent-reported error (no details: assume transient)."""
    if error is None:
        return TransientError(text, code=code)
    kind = TransientError if error.transient else PermanentError
    return kind(error.message, code=error.code)


def agent_info(error: AgentErrorInfo) -> ErrorInfo:
    """An agent-reported error as a record's error."""
    return ErrorInfo(code=error.code, message=error.message, transient=error.transient)


def info_of(exc: BrokerError) -> ErrorInfo:
    """A broker error as a record's error."""
    return ErrorInfo(code=exc.code, message=exc.message, transient=exc.transient)


class Dependencies:
    """Turns a spec's dependencies into Slurm's form, broker ids resolved to Slurm ids."""

    def __init__(self, jobs: JobStore) -> None:
        self._jobs = jobs

    def slurm_string(self, owner: str, cluster: str, spec: JobSpec) -> str | None:
        """The ``--dependency`` value for ``spec`` submitted by ``owner`` on ``cluster``.

        Raises:
            PermanentError: a dependency is unknown, not the caller's, or never reached Slurm.
            TransientError: a dependency is still being submitted (retry shortly).
        """
        if not spec.dependency:
            return None
        parts = []
        for condition in spec.dependency:
            ids = [self._slurm_id_of(owner, cluster, ref) for ref in condition.jobs]
            parts.append(":".join([condition.type, *ids]))
        return ",".join(parts)

    def _slurm_id_of(self, owner: str, cluster: str, ref: str) -> str:
        if not ref.startswith("r"):
            return ref  # a Slurm id: Slurm itself rejects an unknown one, with its reason
        try:
            job = self._jobs.get_job(ref)
        except NotFoundError:
            job = None
        if job is None or job.owner != owner or job.cluster != cluster:
            raise PermanentError(
                f"dependency {ref} is not a job of yours on {cluster}",
                code="DEPENDENCY_NOT_FOUND",
            )
        if job.slurm_job_id is not None:
            return job.slurm_job_id
        if job.state.final:
            raise PermanentError(
                f"dependency {ref} never reached Slurm ({job.state}); this job could never start",
                code="DEPENDENCY_FAILED",
            )
        raise TransientError(
            f"dependency {ref} is still being submitted", code="DEPENDENCY_NOT_SUBMITTED"
        )


class EndedRecords(RequestStore, JobStore, Protocol):
    """What ending a request writes: the request, and a submission's job."""


class RequestEnds:
    """Records how a worker's request ends, and announces it when this writer moved it."""

    def __init__(self, store: EndedRecords, announcer: Announcer) -> None:
        self._store = store
        self._announce = announcer

    def succeed(
        self, request_id: str, result: JobResult | CancelResult | OutputResult | BatchResult
    ) -> None:
        """SUCCEEDED with ``result`` (announced if this call moved it)."""
        if self._store.record_success(request_id, result):
            self._announce.request(request_id)

    def fail(self, request_id: str, failure: ErrorInfo) -> None:
        """FAILED with ``failure`` (announced if this call moved it)."""
        if self._store.record_failure(request_id, failure):
            self._announce.request(request_id)

    def fail_job(self, job_id: str, reason: str) -> None:
        """A submission's job SUBMIT_FAILED with ``reason`` (announced if this call moved it)."""
        if self._store.record_submit_failed(job_id, reason):
            self._announce.job(job_id, JobState.SUBMITTING)

    def settle(self, message: QueueMessage, exc: BrokerError) -> Outcome | TransientError:
        """Record how a message ends on an error: a transient one is kept as the request's last
        error (and returned, for its record to fail); a permanent one fails the request."""
        if isinstance(exc, TransientError):
            self._store.record_retry(message.request_id, info_of(exc))
            return exc
        if isinstance(message, JobSubmitMessage):
            self.fail_job(message.request_id, exc.message)
        self.fail(message.request_id, info_of(exc))
        return "failed"


def acting_user(recorded: str | None, carried: str) -> str:
    """The POSIX user a worker acts as: the one recorded with the job (or batch) at accept,
    which the queue message carries too. Never looked up again, never a default.

    Raises:
        PermanentError: ``NOT_MAPPED`` when the record has no user (accepted before users were
            mapped); ``USER_MISMATCH`` when the message names another user than the record.
    """
    if recorded is None:
        raise PermanentError(
            "this request was accepted without a cluster user; ask the broker's administrator "
            "to map you, then send it again",
            code="NOT_MAPPED",
        )
    if recorded != carried:
        raise PermanentError(
            "the queue message names another user than the request's record; not acting on it",
            code="USER_MISMATCH",
        )
    return recorded
