"""Map broker errors and validation failures to HTTP answers with one error schema."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types

from broker.batches.models import MAX_BATCH_BODY_BYTES
from broker.errors import (
    BackpressureError,
    BrokerError,
    ConflictError,
    NotFoundError,
    NotMappedError,
    PayloadTooLargeError,
    ThrottledError,
    TransientError,
    ValidationError,
)
from broker.jobs.models import MAX_SCRIPT_BYTES
from broker.schema import MAX_BODY_BYTES, MAX_JSON_DEPTH, ErrorDetail, ErrorResponse, FieldError

#: Seconds a client should wait before retrying a 503/429.
RETRY_AFTER_SECONDS = 2

_STATUS: list[tuple[type[BrokerError], HTTPStatus]] = [
    # Most specific first.
    (PayloadTooLargeError, HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
    (ValidationError, HTTPStatus.UNPROCESSABLE_ENTITY),
    (NotMappedError, HTTPStatus.FORBIDDEN),
    (NotFoundError, HTTPStatus.NOT_FOUND),
    (ConflictError, HTTPStatus.CONFLICT),
    (BackpressureError, HTTPStatus.TOO_MANY_REQUESTS),
    (ThrottledError, HTTPStatus.SERVICE_UNAVAILABLE),
    (TransientError, HTTPStatus.SERVICE_UNAVAILABLE),
]


def status_of(error: BrokerError) -> HTTPStatus:
    """HTTP status for a broker error (500 for anything unexpected)."""
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return HTTPStatus.INTERNAL_SERVER_ERROR


def error_response(
    status: HTTPStatus,
    code: str,
    message: str,
    *,
    transient: bool = False,
    fields: Sequence[FieldError] = (),
    retry_after: int = RETRY_AFTER_SECONDS,
    cluster_status: str | None = None,
) -> Response[Any]:
    """A JSON error answer in the documented ErrorResponse schema."""
    body = ErrorResponse(
        error=ErrorDetail(
            code=code, message=message, transient=transient, fields=list(fields),
            cluster_status=cluster_status,
        )
    )  # fmt: skip
    headers = {"Retry-After": str(retry_after)} if transient else None
    return Response(
        status_code=int(status),
        content_type=content_types.APPLICATION_JSON,
        body=body.model_dump_json(exclude_none=True),
        headers=headers,
    )


def broker_error_response(error: BrokerError) -> Response[Any]:
    """The HTTP answer for a broker error."""
    retry_after = getattr(error, "retry_after", RETRY_AFTER_SECONDS)
    fields: Sequence[FieldError] = getattr(error, "fields", ())
    return error_response(
        status_of(error), error.code, error.message, transient=error.transient,
        retry_after=retry_after, fields=fields,
        cluster_status=getattr(error, "status", None),
    )  # fmt: skip


def field_errors(errors: Sequence[Any]) -> list[FieldError]:
    """Pydantic/Powertools validation errors as FieldErrors (``loc`` joined with dots)."""
    result = []
    for err in errors:
        loc = ".".join(str(part) for part in err.get("loc", ()))
        result.append(
            FieldError(field=loc, message=str(err.get("msg", "invalid")), type=str(err.get("type")))
        )
    return result


#: OpenAPI description of the error answers every route may give.
ERROR_RESPONSES: dict[int, Any] = {
    int(status): {
        "description": text,
        "content": {"application/json": {"model": ErrorResponse}},
    }
    for status, text in [
        (
            HTTPStatus.BAD_REQUEST,
            "INVALID_JSON: the body is not UTF-8 JSON, or nests arrays/objects deeper than "
            f"{MAX_JSON_DEPTH} levels.",
        ),
        (
            HTTPStatus.FORBIDDEN,
            "NOT_MAPPED: you have no user on that cluster; the broker's administrator maps "
            "callers to cluster users. UNAUTHENTICATED: the call carries no authenticated "
            "identity. API Gateway's own "
            "refusals (unsigned or badly signed call: MISSING_AUTHENTICATION_TOKEN, "
            "INVALID_SIGNATURE, ACCESS_DENIED, …) have this schema too.",
        ),
        (HTTPStatus.NOT_FOUND, "No such resource visible to the caller."),
        (HTTPStatus.CONFLICT, "Conflicts with the current state (CONFLICT, CLUSTER_NOT_READY, …)."),
        (
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"PAYLOAD_TOO_LARGE: the body is over {MAX_BODY_BYTES} bytes (a batch: "
            f"{MAX_BATCH_BODY_BYTES}), or the script over {MAX_SCRIPT_BYTES} bytes.",
        ),
        (
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE: a body must be application/json (charset utf-8 if given).",
        ),
        (HTTPStatus.UNPROCESSABLE_ENTITY, "Invalid input; `error.fields` lists each bad field."),
        (HTTPStatus.TOO_MANY_REQUESTS, "Backlog limit reached; retry after Retry-After seconds."),
        (HTTPStatus.INTERNAL_SERVER_ERROR, "Unexpected failure; safe to retry."),
        (HTTPStatus.BAD_GATEWAY, "API Gateway: the function failed (DEFAULT_5XX)."),
        (HTTPStatus.SERVICE_UNAVAILABLE, "Try again after Retry-After seconds."),
        (HTTPStatus.GATEWAY_TIMEOUT, "API Gateway: the function timed out (INTEGRATION_TIMEOUT)."),
    ]
}
