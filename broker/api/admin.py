"""Admin routes: which POSIX user each caller acts as on a cluster (issue 12).

Only the principals named in ``HPCB_ADMIN_PRINCIPALS`` (template parameter ``AdminPrincipals``)
may call them; everyone else gets the answer of a route that does not exist (404
``ROUTE_NOT_FOUND``), whatever the method, parameters or body (:func:`hidden`, which the handler
asks before the body is even validated, and each route again).

The principal is a query parameter, URL-encoded (``?principal=arn%3Aaws%3Aiam%3A%3A…%3Auser%2F
alice``), not a path segment: an IAM ARN holds '/' (user paths, ``assumed-role/Role/session``),
and API Gateway decodes ``%2F`` in a path before it routes, so an encoded ARN in the path never
reaches the function intact. A query string arrives decoded, byte for byte.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Query

from broker.api import services
from broker.api.common import ClusterParam, NextToken, caller, ok
from broker.api.errors import error_response
from broker.api.tokens import page_tokens
from broker.errors import NotFoundError
from broker.users.models import PRINCIPAL_PATTERN, MappingBody, UserMapping, UserMappingList

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ untyped

#: Every admin route starts here (after any repeated '/', which API Gateway keeps).
_ADMIN_PATH = re.compile(r"^/+v1/+admin(/|$)", re.IGNORECASE)

PrincipalParam = Annotated[
    str,
    Query(
        pattern=PRINCIPAL_PATTERN,
        max_length=1000,
        description="The caller's IAM principal ARN, URL-encoded in the query string (e.g. "
        "principal=arn%3Aaws%3Aiam%3A%3A123456789012%3Auser%2Falice or an assumed role's "
        "arn:aws:sts::123456789012:assumed-role/Role/session): exactly the userArn API Gateway "
        "reports for that caller.",
    ),
]


class RouteHiddenError(NotFoundError):
    """An admin route called by someone who is not an administrator: as if it did not exist."""

    code = "ROUTE_NOT_FOUND"


def hidden(event: dict[str, Any]) -> Response[Any] | None:
    """The 404 of a missing route for a non-administrator's call to an admin path, else None.

    Asked by the handler before anything else (the guard's body checks and the resolver's
    validation would otherwise tell a 422 or 415 from a 404, and so that the route exists).
    """
    path = str(event.get("path") or "")
    if not _ADMIN_PATH.match(path):
        return None
    identity = (event.get("requestContext") or {}).get("identity") or {}
    principal = identity.get("userArn")
    if isinstance(principal, str) and services.user_service().is_admin(principal):
        return None
    return error_response(HTTPStatus.NOT_FOUND, "ROUTE_NOT_FOUND", "no such route")


def _admin() -> str:
    """The calling administrator (RouteHiddenError for anyone else)."""
    principal = caller(router.current_event)
    if not services.user_service().is_admin(principal):
        raise RouteHiddenError("no such route")
    return principal


@router.put(
    "/v1/admin/clusters/<cluster>/users/mapping",
    summary="Map a caller to a POSIX user on a cluster",
    description="Administrators only (AdminPrincipals; 404 for anyone else). The caller's "
    "jobs on this cluster run as this user from their next submission on; a PUT replaces the "
    "caller's previous user there (jobs already accepted keep theirs). Never root; the head "
    "node's agent refuses uids below 1000 and users it does not know, at every call.",
    tags=["admin"],
    responses=ok(UserMapping, "The mapping as written."),
)
def put_mapping(
    cluster: ClusterParam,
    principal: PrincipalParam,
    body: Annotated[MappingBody, Body(description="The POSIX user (and uid, if known).")],
) -> UserMapping:
    """PUT a mapping."""
    return services.user_service().map(cluster, principal, body, by=_admin())


@router.get(
    "/v1/admin/clusters/<cluster>/users/mapping",
    summary="Get a caller's POSIX user on a cluster",
    description="Administrators only (404 for anyone else); 404 NOT_FOUND if not mapped.",
    tags=["admin"],
    responses=ok(UserMapping, "The mapping."),
)
def get_mapping(cluster: ClusterParam, principal: PrincipalParam) -> UserMapping:
    """GET a mapping."""
    _admin()
    return services.user_service().get(cluster, principal)


@router.delete(
    "/v1/admin/clusters/<cluster>/users/mapping",
    summary="Unmap a caller on a cluster",
    description="Administrators only (404 for anyone else). From now on the caller's "
    "submissions, cancels and output reads on this cluster answer 403 NOT_MAPPED; jobs already "
    "accepted run as the user recorded with them. Answers the removed mapping; 404 NOT_FOUND "
    "if there was none.",
    tags=["admin"],
    responses=ok(UserMapping, "The removed mapping."),
)
def delete_mapping(cluster: ClusterParam, principal: PrincipalParam) -> UserMapping:
    """DELETE a mapping."""
    _admin()
    return services.user_service().unmap(cluster, principal)


@router.get(
    "/v1/admin/clusters/<cluster>/users",
    summary="List a cluster's mappings",
    description="Administrators only (404 for anyone else). By principal; pages: pass "
    "next_token from the previous answer.",
    tags=["admin"],
    responses=ok(UserMappingList, "A page."),
)
def list_mappings(
    cluster: ClusterParam,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    next_token: NextToken = None,
) -> UserMappingList:
    """GET a page of a cluster's mappings."""
    admin = _admin()
    query = {"route": "admin_users", "cluster": cluster}
    mappings, token = services.user_service().list(
        cluster, limit=limit, next_token=page_tokens().open(next_token, caller=admin, query=query)
    )
    return UserMappingList(
        mappings=mappings, next_token=page_tokens().seal(token, caller=admin, query=query)
    )
