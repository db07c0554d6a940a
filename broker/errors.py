"""The broker's small error taxonomy.

Every error the domain raises is a ``BrokerError``. The edges map them to the outside world:
the API turns each class into an HTTP status and a stable ``code``; workers re-raise
``TransientError`` (SQS retries it, then the DLQ path records it) and record
``PermanentError`` as a FAILED request (never retried).
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every error the broker raises on purpose.

    Attributes:
        code: stable, machine-readable error code (UPPER_SNAKE_CASE); part of the public API.
        message: what happened, in words a person can act on.
        transient: whether trying again later may succeed.
    """

    code = "BROKER_ERROR"
    transient = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class NotFoundError(BrokerError):
    """The thing does not exist, or is not visible to the caller (never reveal which)."""

    code = "NOT_FOUND"


class ClusterNotFoundError(NotFoundError):
    """No cluster of that name is known to the broker."""

    code = "CLUSTER_NOT_FOUND"


class NotMappedError(BrokerError):
    """The caller has no POSIX user on that cluster (default deny): 403 at the API, a permanent
    failure in a worker (the mapping was removed since the request was accepted)."""

    code = "NOT_MAPPED"


class ConflictError(BrokerError):
    """The write conflicts with the current state (exists already, invalid transition)."""

    code = "CONFLICT"


class ValidationError(BrokerError):
    """Input the broker cannot accept; the caller must change it."""

    code = "VALIDATION_ERROR"


class InvalidNextTokenError(ValidationError):
    """A ``next_token`` this API did not issue, or issued to another caller or query."""

    code = "INVALID_NEXT_TOKEN"


class PayloadTooLargeError(ValidationError):
    """A body or script is larger than the documented limit."""

    code = "PAYLOAD_TOO_LARGE"


class PermanentError(BrokerError):
    """Trying again will not help: the scheduler rejected the job, access was denied, ..."""

    code = "PERMANENT_ERROR"


class TransientError(BrokerError):
    """Trying again later may succeed: throttling, timeouts, scheduler or head node unreachable."""

    code = "TRANSIENT_ERROR"
    transient = True


class RunnerTimeoutError(TransientError):
    """The head-node command did not finish in time; its outcome is unknown.

    Safe to retry: the agent de-duplicates submissions by token, so a retry never makes a
    second Slurm job.
    """

    code = "RUNNER_TIMEOUT"


class ThrottledError(TransientError):
    """An AWS API or the scheduler asked us to slow down."""

    code = "THROTTLED"


class BackpressureError(TransientError):
    """A backlog or in-flight limit is reached: slow down (HTTP 429 with Retry-After)."""

    code = "TOO_MANY_REQUESTS"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClusterNotReadyError(ConflictError):
    """Jobs were sent to a cluster the broker manages that cannot run them yet (or any more)."""

    code = "CLUSTER_NOT_READY"

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message)
        self.status = status
