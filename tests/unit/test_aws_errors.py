"""The one translation of AWS errors into the broker's taxonomy (pure: no network).

moto never throttles or conflicts, so each kind is built here as botocore raises it.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError

from broker.adapters.aws import MAX_ATTEMPTS, RETRY_MODE, client, condition_failures, translate
from broker.errors import PermanentError, ThrottledError, TransientError

AWS_TEXT = "arn:aws:dynamodb:us-east-1:123456789012:table/hpcb-private-table key {pk: REQ#r1}"


def client_error(
    code: str, *, status: int = 400, reasons: list[str] | None = None, operation: str = "PutItem"
) -> ClientError:
    """A ClientError as botocore builds it from an AWS answer."""
    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": AWS_TEXT},
        "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "REQ123"},
    }
    if reasons is not None:
        response["CancellationReasons"] = [
            {"Code": reason, "Message": AWS_TEXT} for reason in reasons
        ]
    return ClientError(response, operation)


def cancelled(*reasons: str) -> ClientError:
    return client_error(
        "TransactionCanceledException", reasons=list(reasons), operation="TransactWriteItems"
    )


TRANSIENT_KINDS = {
    "DynamoDB throttling": (client_error("ThrottlingException"), ThrottledError, "THROTTLED"),
    "DynamoDB capacity": (
        client_error("ProvisionedThroughputExceededException"), ThrottledError, "THROTTLED"
    ),
    "EC2 request limit": (client_error("RequestLimitExceeded"), ThrottledError, "THROTTLED"),
    "SNS throttling": (client_error("Throttling"), ThrottledError, "THROTTLED"),
    "SQS throttling": (client_error("RequestThrottled"), ThrottledError, "THROTTLED"),
    "any 429": (client_error("SomethingNew", status=429), ThrottledError, "THROTTLED"),
    "DynamoDB 500": (
        client_error("InternalServerError", status=500), TransientError, "AWS_UNAVAILABLE"
    ),
    "SQS 503": (client_error("ServiceUnavailable", status=503), TransientError, "AWS_UNAVAILABLE"),
    "any 5xx": (client_error("SomethingNew", status=502), TransientError, "AWS_UNAVAILABLE"),
    "item in a transaction": (
        client_error("TransactionConflictException"), TransientError, "AWS_UNAVAILABLE"
    ),
    "transaction conflict": (
        cancelled("None", "TransactionConflict", "None"), TransientError, "WRITE_CONFLICT"
    ),
    "transaction throttled": (cancelled("ThrottlingError", "None"), ThrottledError, "THROTTLED"),
    "transaction over capacity": (
        cancelled("None", "ProvisionedThroughputExceeded"), ThrottledError, "THROTTLED"
    ),
    "conflict beside a failed condition": (
        cancelled("ConditionalCheckFailed", "TransactionConflict"), TransientError, "WRITE_CONFLICT"
    ),
    "network": (
        EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com"),
        TransientError,
        "AWS_UNREACHABLE",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("exc", "kind", "code"), TRANSIENT_KINDS.values(), ids=TRANSIENT_KINDS)
def test_throttling_conflicts_5xx_and_the_network_are_transient(
    exc: Exception, kind: type[TransientError], code: str
) -> None:
    # GIVEN an AWS failure that may pass later / WHEN translated
    error = translate(exc, "write submission")
    # THEN a transient broker error of that kind (API: 503 + Retry-After; workers: retry)
    assert type(error) is kind
    assert (error.code, error.transient) == (code, True)


PERMANENT_KINDS = {
    "access denied": client_error("AccessDeniedException"),
    "bad request": client_error("ValidationException"),
    "unknown code": client_error("SomethingNew"),
    "conditions only": cancelled("ConditionalCheckFailed", "None"),
    "invalid transaction item": cancelled("ValidationError", "None"),
    "a call built wrong": ParamValidationError(report="TableName missing"),
}


@pytest.mark.parametrize("exc", PERMANENT_KINDS.values(), ids=PERMANENT_KINDS)
def test_everything_else_is_permanent(exc: Exception) -> None:
    # GIVEN an AWS failure a retry cannot fix / WHEN translated
    error = translate(exc, "write submission")
    # THEN a permanent broker error (the worker records FAILED, never retried)
    assert isinstance(error, PermanentError)
    assert (error.code, error.transient) == ("AWS_ERROR", False)


@pytest.mark.parametrize(
    "exc", [*TRANSIENT_KINDS.values(), *[(e,) for e in PERMANENT_KINDS.values()]], ids=str
)
def test_aws_text_never_reaches_the_broker_error(exc: tuple[Exception, ...]) -> None:
    # GIVEN an AWS error whose message names a table and a key / WHEN translated
    error = translate(exc[0], "list jobs")
    # THEN the message says what we were doing, and nothing of AWS's text
    assert error.message.startswith("list jobs: ")
    assert "hpcb-private-table" not in error.message
    assert "REQ#" not in error.message


def test_a_cancellation_of_conditions_only_names_the_failed_items() -> None:
    # GIVEN a transaction cancelled because items 0 and 2 failed their conditions
    exc = cancelled("ConditionalCheckFailed", "None", "ConditionalCheckFailed")
    # WHEN its condition failures are read / THEN those items (today's meaning: lost to data)
    assert condition_failures(exc) == {0, 2}


@pytest.mark.parametrize(
    "reasons",
    [
        ("ConditionalCheckFailed", "TransactionConflict"),
        ("ConditionalCheckFailed", "ThrottlingError"),
        ("ConditionalCheckFailed", "ProvisionedThroughputExceeded"),
        ("ConditionalCheckFailed", "ValidationError"),
    ],
)
def test_a_cancellation_with_any_other_reason_names_no_condition_failure(
    reasons: tuple[str, ...],
) -> None:
    # GIVEN a failed condition beside a conflict, throttling or an invalid item
    # WHEN its condition failures are read
    # THEN none: the write did not lose to the data, translate decides (retry or permanent)
    assert condition_failures(cancelled(*reasons)) == set()


def test_clients_use_botocore_standard_retries_with_a_bounded_attempt_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN the client factory (region only; no call is made)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client.cache_clear()
    try:
        # WHEN a client is built
        built = client("dynamodb")
        # THEN botocore's standard retry mode, 4 attempts in all
        retries = built.meta.config.retries
        assert (retries["mode"], retries["total_max_attempts"]) == (RETRY_MODE, MAX_ATTEMPTS)
        assert (RETRY_MODE, MAX_ATTEMPTS) == ("standard", 4)
    finally:
        client.cache_clear()
