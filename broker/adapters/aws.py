"""boto3 plumbing shared by the adapters: client factory and the one translation of AWS errors.

Every adapter turns what botocore raises into the broker's taxonomy with :func:`translate` (and,
for transactions, reads cancellation reasons with :func:`condition_failures`), so one table
decides what is transient (throttling, conflicts, 5xx, the network: try again; the API answers
503 with Retry-After, workers re-raise so SQS redelivers) and what is permanent. AWS's own error
message never reaches a caller: it names tables, keys and ARNs. It is logged here, once, and
the broker error carries only what we were doing and AWS's error code.
"""

from __future__ import annotations

from functools import cache
from http import HTTPStatus
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from broker.errors import (
    BrokerError,
    PermanentError,
    ThrottledError,
    TransientError,
)
from broker.observability import logger

#: Error codes that mean "slow down" across the AWS APIs we call (botocore's standard retry
#: mode knows most of them; we see them once its attempts are spent).
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestThrottled",
        "SlowDown",
        "TooManyUpdates",
        "BandwidthLimitExceeded",
        "EC2ThrottledException",
        "KmsThrottled",
        "KMSThrottlingException",
        "LimitExceededException",
    }
)
#: Error codes that mean "the service had a problem, or another writer was in the way; the
#: same call may pass later".
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalServerException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "Unavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "TransactionInProgressException",
        # A single-item write on an item a transaction is writing at that moment.
        "TransactionConflictException",
    }
)
#: Reasons of a cancelled DynamoDB transaction (``TransactionCanceledException``) that say
#: nothing about the data: another transaction held an item, or capacity ran short. Nothing of
#: the transaction was written; the same transaction may pass later.
TRANSIENT_CANCELLATION_REASONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
)
#: Reasons that keep a cancellation's usual meaning: some item's condition failed.
_CONDITION_REASONS = frozenset({"ConditionalCheckFailed", "None"})

# botocore's own retries, for every client the broker builds (this is the one place):
# - "standard" mode: retries throttling codes, 5xx, TransactionInProgress and connection
#   errors with exponential back-off and full jitter, under a client-side retry quota that
#   stops retry storms when a service is down. Not "adaptive": its client-side rate limiter
#   is per process, and our processes are many short-lived Lambda instances, where it mostly
#   adds latency to the first calls after a throttle.
# - 4 attempts in all (3 retries; was 6): back-off of at most 1 + 2 + 4 s, so a throttled
#   DynamoDB or SQS call still answers within the API's 29 s API Gateway limit; what still
#   fails is a TransientError (503 + Retry-After for the API, an SQS redelivery for workers).
# - botocore never retries a cancelled transaction (TransactionCanceledException): whether it
#   may be retried depends on its reasons, which ``translate`` reads.
RETRY_MODE = "standard"
MAX_ATTEMPTS = 4
_CONFIG = Config(
    retries={"mode": RETRY_MODE, "total_max_attempts": MAX_ATTEMPTS},
    connect_timeout=5,
    read_timeout=30,
    tcp_keepalive=True,
)


@cache
def client(service: str) -> Any:
    """A cached boto3 client for ``service`` (endpoint and region from the environment)."""
    return boto3.session.Session().client(service, config=_CONFIG)


@cache
def regional_client(service: str, region: str) -> Any:
    """A cached boto3 client for ``service`` in another region (clusters in other regions)."""
    return boto3.session.Session().client(service, region_name=region, config=_CONFIG)


def error_code(exc: ClientError) -> str:
    """The AWS error code of a ClientError."""
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def cancellation_reasons(exc: ClientError) -> list[str]:
    """The per-item reason codes of a cancelled transaction (``"None"`` for an item that did
    not fail); empty for any other error."""
    reasons = exc.response.get("CancellationReasons") or []
    return [str(reason.get("Code", "None")) for reason in reasons]


def condition_failures(exc: ClientError) -> set[int]:
    """Indexes of the transaction items whose condition failed, when that is the whole story.

    Empty when the transaction was cancelled for anything else as well (a conflict, throttling,
    a validation error): then a failed condition proves nothing about the outcome of a retry,
    and :func:`translate` decides (transient or permanent). Only a reason list of
    ``ConditionalCheckFailed`` and ``None`` keeps its meaning: this write lost to the data.
    """
    reasons = cancellation_reasons(exc)
    if not set(reasons) <= _CONDITION_REASONS:
        return set()
    return {i for i, reason in enumerate(reasons) if reason == "ConditionalCheckFailed"}


def condition_failed(exc: ClientError) -> bool:
    """Whether a single-item write, or a whole transaction, failed only on conditions."""
    return error_code(exc) == "ConditionalCheckFailedException" or bool(condition_failures(exc))


def translate(exc: Exception, what: str) -> BrokerError:
    """Turn a botocore exception into a broker error (use as ``raise translate(e, ...) from e``).

    Transient (may pass later): throttling codes, the transient codes, a transaction cancelled
    for a conflict or throttling, any 5xx or 429, and connection problems. Everything else is
    permanent. AWS's message is logged, never put in the broker error.

    Args:
        exc: the botocore exception.
        what: what we were doing, for the message (e.g. "write request record").
    """
    error = _classify(exc, what)
    logger.warning(
        "AWS call failed",
        extra={
            "doing": what,
            "broker_code": error.code,
            "transient": error.transient,
            "aws_error": _details(exc),
        },
    )
    return error


def _classify(exc: Exception, what: str) -> BrokerError:  # noqa: PLR0911 - one return per kind
    if isinstance(exc, ClientError):
        code = error_code(exc)
        reasons = set(cancellation_reasons(exc))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in THROTTLING_CODES or status == HTTPStatus.TOO_MANY_REQUESTS:
            return ThrottledError(f"{what}: AWS is throttling ({code}); try again later")
        if reasons & {"ThrottlingError", "ProvisionedThroughputExceeded"}:
            return ThrottledError(f"{what}: AWS is throttling (transaction); try again later")
        if reasons & TRANSIENT_CANCELLATION_REASONS:
            return TransientError(
                f"{what}: a concurrent write got in the way; try again", code="WRITE_CONFLICT"
            )
        if code in TRANSIENT_CODES or status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            return TransientError(
                f"{what}: AWS is unavailable ({code}); try again later", code="AWS_UNAVAILABLE"
            )
        return PermanentError(f"{what}: AWS refused the call ({code})", code="AWS_ERROR")
    if isinstance(exc, ParamValidationError):
        # A call we built wrong: a bug, the same on every retry.
        return PermanentError(f"{what}: invalid AWS call parameters", code="AWS_ERROR")
    if isinstance(exc, BotoCoreError):
        # Connection errors, read timeouts, endpoint problems: the network may come back.
        return TransientError(
            f"{what}: AWS is unreachable; try again later", code="AWS_UNREACHABLE"
        )
    return PermanentError(f"{what}: unexpected error ({type(exc).__name__})")


def _details(exc: Exception) -> dict[str, Any]:
    """What AWS said, for the logs only."""
    if isinstance(exc, ClientError):
        metadata = exc.response.get("ResponseMetadata", {})
        return {
            "code": error_code(exc),
            "message": exc.response.get("Error", {}).get("Message", ""),
            "operation": exc.operation_name,
            "status": metadata.get("HTTPStatusCode"),
            "request_id": metadata.get("RequestId"),
            "reasons": cancellation_reasons(exc) or None,
        }
    return {"type": type(exc).__name__, "message": str(exc)}
