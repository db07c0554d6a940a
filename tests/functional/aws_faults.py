"""A thin fault-injecting wrapper around a real boto3 client (moto cannot throttle, conflict
or fail with a 5xx), and the AWS failures the broker must treat as transient.

``FaultyClient(client)`` passes every call through to the wrapped client, except the calls of
an operation that has faults queued: each raises the next fault instead, *before* reaching
AWS, exactly as a cancelled transaction or a throttled call writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError, EndpointConnectionError

#: What an AWS error message may carry; it must never reach a caller's answer.
AWS_TEXT = "table/hpcb-private-table: the key {pk: REQ#r0} is invalid; arn:aws:iam::1:role/x"


def client_error(
    code: str, *, status: int = 400, reasons: list[str] | None = None, operation: str = "Call"
) -> ClientError:
    """A ClientError as botocore raises it for an AWS error answer."""
    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": AWS_TEXT},
        "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "FAULT"},
    }
    if reasons is not None:
        response["CancellationReasons"] = [{"Code": r, "Message": AWS_TEXT} for r in reasons]
    return ClientError(response, operation)


def cancelled(*reasons: str) -> ClientError:
    """A DynamoDB transaction cancelled with these per-item reasons."""
    return client_error(
        "TransactionCanceledException", reasons=list(reasons), operation="TransactWriteItems"
    )


#: Every kind of transient AWS failure the review named, by a readable id.
TRANSIENT_FAULTS: dict[str, Callable[[], Exception]] = {
    "transaction-conflict": lambda: cancelled("None", "TransactionConflict", "None", "None"),
    "transaction-throttled": lambda: cancelled("None", "None", "ThrottlingError", "None"),
    "transaction-over-capacity": lambda: cancelled("ProvisionedThroughputExceeded", "None"),
    "provisioned-throughput": lambda: client_error("ProvisionedThroughputExceededException"),
    "throttling": lambda: client_error("ThrottlingException"),
    "request-limit": lambda: client_error("RequestLimitExceeded"),
    "internal-server-error": lambda: client_error("InternalServerError", status=500),
    "service-unavailable": lambda: client_error("ServiceUnavailable", status=503),
    "network": lambda: EndpointConnectionError(endpoint_url="http://aws.invalid"),
}


@dataclass(eq=False)  # hashable by identity, as a boto3 client (adapters cache by client)
class FaultyClient:
    """A boto3 client whose named operations fail with queued faults (then work again)."""

    client: Any
    faults: dict[str, list[Exception]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    def fail(self, operation: str, *faults: Exception) -> None:
        """The next ``len(faults)`` calls of ``operation`` (e.g. ``transact_write_items``) raise."""
        self.faults.setdefault(operation, []).extend(faults)

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.client, name)
        if not callable(real) or name not in self.faults:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            queued = self.faults.get(name)
            if queued:
                self.failed.append(name)
                raise queued.pop(0)
            return real(*args, **kwargs)

        return call
