"""boto3 plumbing shared by the adapters: client factory and error translation.

botocore does retries (standard mode, with back-off and throttling handling) and signing; this
module only chooses the configuration and turns what is left of a ``ClientError`` into the
broker's error taxonomy.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from broker.errors import (
    BrokerError,
    PermanentError,
    ThrottledError,
    TransientError,
)

#: Error codes that mean "slow down" across the AWS APIs we call.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestThrottled",
        "SlowDown",
        "TooManyUpdates",
    }
)
#: Error codes that mean "the service had a problem; try again".
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "TransactionInProgressException",
    }
)

_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
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


def translate(exc: Exception, what: str) -> BrokerError:
    """Turn a botocore exception into a broker error (use as ``raise translate(e, ...) from e``).

    Args:
        exc: the botocore exception.
        what: what we were doing, for the message (e.g. "write request record").
    """
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = f"{what}: {code}: {exc.response.get('Error', {}).get('Message', '')}"
        if code in THROTTLING_CODES:
            return ThrottledError(message)
        if code in TRANSIENT_CODES:
            return TransientError(message, code="AWS_UNAVAILABLE")
        return PermanentError(message, code="AWS_ERROR")
    if isinstance(exc, BotoCoreError):
        # Connection errors, read timeouts, endpoint problems: the network may come back.
        return TransientError(f"{what}: {exc}", code="AWS_UNREACHABLE")
    return PermanentError(f"{what}: {exc}")
