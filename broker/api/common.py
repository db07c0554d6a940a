"""What every route module shares: the caller's identity, the path, query and header parameters,
the documented answers of a write, and the 202 answer itself."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.openapi.params import Header, Path, Query
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent

from broker.api.errors import ERROR_RESPONSES
from broker.api.idempotency import IDEMPOTENCY_TTL_SECONDS, KEY_PATTERN
from broker.batches.models import BatchAccepted
from broker.errors import BrokerError
from broker.identity import owner_of
from broker.schema import NEXT_TOKEN_PATTERN, AcceptedResponse
from broker.settings import identity_settings

CLUSTER_PATTERN = r"^[A-Za-z][A-Za-z0-9-]{0,59}$"
REQUEST_ID_PATTERN = r"^r[0-9a-f]{28}$"
JOB_ID_PATTERN = r"^(r[0-9a-f]{28}|[0-9]{1,10}(_[0-9]{1,7})?)$"
ClusterParam = Annotated[str, Path(pattern=CLUSTER_PATTERN, description="Cluster name.")]
JobIdParam = Annotated[
    str,
    Path(pattern=JOB_ID_PATTERN, description="Broker job id (r…), or the Slurm job id."),
]
NextToken = Annotated[
    str | None,
    Query(
        pattern=NEXT_TOKEN_PATTERN,
        max_length=2048,
        description="The next_token of the previous page, as the API issued it (422 otherwise).",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        pattern=KEY_PATTERN,
        description="Optional. The same key with the same body within "
        f"{IDEMPOTENCY_TTL_SECONDS // 3600} h returns the original answer (header "
        "Idempotent-Replayed: true) and does nothing again; with another body: 422.",
    ),
]
#: The documented answers of a write: 202 and every error.
ACCEPTED = {
    HTTPStatus.ACCEPTED: {
        "description": "Accepted; poll the Location.",
        "content": {"application/json": {"model": AcceptedResponse}},
    },
    **ERROR_RESPONSES,
}


def ok(model: type[Any], description: str) -> dict[int, Any]:
    """The documented answers of a read: 200 with ``model``, and every error."""
    return {
        HTTPStatus.OK: {
            "description": description,
            "content": {"application/json": {"model": model}},
        },
        **ERROR_RESPONSES,
    }


class UnauthenticatedError(BrokerError):
    """The call carries no authenticated identity (the API is not behind IAM auth)."""

    code = "UNAUTHENTICATED"


def caller(event: BaseProxyEvent) -> str:
    """The owner a call acts as: its authenticated principal (``requestContext.identity.userArn``),
    never a field of the request, with the parts the caller chose removed (``broker.identity``:
    a session name of a role whose sessions anyone may name).

    Raises:
        UnauthenticatedError: no identity in the request context.
    """
    arn: str | None = event.request_context.identity.user_arn  # type: ignore[attr-defined]
    if not arn:
        raise UnauthenticatedError("the call carries no authenticated IAM identity")
    return owner_of(arn, identity_settings().session_name_role_patterns)


def accepted_body(request_id: str) -> AcceptedResponse:
    """The body of a 202 for a request."""
    return AcceptedResponse(request_id=request_id, location=f"/v1/requests/{request_id}")


def accepted(body: AcceptedResponse | BatchAccepted, *, replayed: bool = False) -> Response[Any]:
    """A 202 answer, with the request's Location (and ``Idempotent-Replayed`` on a replay)."""
    headers = {"Location": body.location}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        status_code=HTTPStatus.ACCEPTED,
        content_type=content_types.APPLICATION_JSON,
        body=body,
        headers=headers,
    )
