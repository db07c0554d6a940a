"""The HTTP API: one Powertools REST resolver, validated by the pydantic models, with the routes
of each capability included from their own module (``jobs``, ``requests``, ``clusters``).

Every write answers 202 with a request id at once; the work happens in a worker. The caller's
identity is the IAM principal API Gateway authenticated (``requestContext.identity.userArn``),
never a field of the request. Errors are answered here, in the one error schema.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn

from broker import __version__
from broker.api import admin, clusters, jobs, requests
from broker.api.common import UnauthenticatedError
from broker.api.errors import broker_error_response, error_response, field_errors
from broker.errors import BrokerError
from broker.observability import logger

app = APIGatewayRestResolver(enable_validation=True)
_TITLE = "hpc-broker API"
_DESCRIPTION = (
    "Asynchronous broker for AWS ParallelCluster clusters and their Slurm jobs. "
    "Writes answer 202 with a request id; poll GET /v1/requests/{request_id}. "
    "Sign every call with AWS SigV4 (service execute-api)."
)
_SECURITY = {"sigv4": APIKey(name="Authorization", in_=APIKeyIn.header, description="AWS SigV4")}
app.enable_swagger(
    path="/v1/docs",
    title=_TITLE,
    version=__version__,
    description=_DESCRIPTION,
    security_schemes=_SECURITY,  # type: ignore[arg-type]
    security=[{"sigv4": []}],
)

# The order of inclusion is the order of the document's operations.
app.include_router(jobs.router)
app.include_router(requests.router)
app.include_router(clusters.router)
app.include_router(admin.router)


@app.get("/v1/openapi.json", include_in_schema=False)
def openapi_document() -> Response[Any]:
    """The OpenAPI document (also at /v1/docs?format=json)."""
    schema = app.get_openapi_json_schema(
        title=_TITLE,
        version=__version__,
        description=_DESCRIPTION,
        security_schemes=_SECURITY,  # type: ignore[arg-type]
        security=[{"sigv4": []}],
    )
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=schema)


def _invalid(error: RequestValidationError) -> Response[Any]:
    fields = field_errors(error.errors())
    if any(f.type == "json_invalid" for f in fields):
        return error_response(HTTPStatus.BAD_REQUEST, "INVALID_JSON", "the body is not valid JSON")
    names = ", ".join(f.field for f in fields)
    return error_response(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "VALIDATION_ERROR",
        f"invalid input: {names}",
        fields=fields,
    )


def _unsupported_media_type(error: RequestUnsupportedContentType) -> Response[Any]:
    # broker.api.guard refuses these first; this keeps a resolver's refusal a 415 too.
    return error_response(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE", "the body must be JSON"
    )


def _unauthenticated(error: UnauthenticatedError) -> Response[Any]:
    return error_response(HTTPStatus.FORBIDDEN, error.code, error.message)


def _broker_error(error: BrokerError) -> Response[Any]:
    if error.transient:
        logger.warning("transient error", extra={"code": error.code, "error": error.message})
    return broker_error_response(error)


@app.not_found
def _not_found(_: Exception) -> Response[Any]:
    return error_response(HTTPStatus.NOT_FOUND, "ROUTE_NOT_FOUND", "no such route")


def _unexpected(error: Exception) -> Response[Any]:
    logger.exception("unexpected error")
    return error_response(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        "INTERNAL_ERROR",
        "unexpected error; safe to retry",
        transient=True,
    )


# Registered by call, not decorator: Powertools' decorator is untyped (mypy --strict).
# Order does not matter: Powertools picks the handler of the most specific class (MRO).
app.exception_handler(RequestValidationError)(_invalid)
app.exception_handler(RequestUnsupportedContentType)(_unsupported_media_type)
app.exception_handler(UnauthenticatedError)(_unauthenticated)
app.exception_handler(BrokerError)(_broker_error)
app.exception_handler(Exception)(_unexpected)


def render(response: Response[Any]) -> dict[str, Any]:
    """A Response as an API Gateway proxy result (for answers made outside the resolver)."""
    headers = {"Content-Type": response.headers.get("Content-Type", "application/json")}
    return {
        "statusCode": response.status_code,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "body": response.body if isinstance(response.body, str) else json.dumps(response.body),
        "isBase64Encoded": False,
    }
