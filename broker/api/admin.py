"""Admin routes: which POSIX user each caller runs as on a cluster (``broker.users``).

Only the owners named in ``HPCB_ADMIN_PRINCIPALS`` (template parameter ``AdminPrincipals``) may
use them; for everyone else they answer 404 ``ROUTE_NOT_FOUND``, exactly as a path no route
serves. The principal travels in the body or the query, not the path: an ARN holds ``/``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Query

from broker.api import services
from broker.api.common import ClusterParam, NextToken, caller, ok
from broker.api.tokens import page_tokens
from broker.errors import NotFoundError
from broker.settings import identity_settings
from broker.users.models import PRINCIPAL_PATTERN, MappingBody, MappingList, MappingView

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ untyped

_PATH = "/v1/admin/clusters/<cluster>/users"
PrincipalParam = Annotated[
    str,
    Query(pattern=PRINCIPAL_PATTERN, max_length=1100, description="The caller (owner ARN)."),
]


class RouteNotFound(NotFoundError):
    """What a non-admin meets on an admin route: the answer of a path no route serves."""

    code = "ROUTE_NOT_FOUND"


def _admin() -> str:
    """The calling administrator (RouteNotFound for anyone else)."""
    owner = caller(router.current_event)
    if owner not in identity_settings().admin_principal_set:
        raise RouteNotFound("no such route")
    return owner


@router.put(
    _PATH,
    summary="Map a caller to a cluster user",
    description="Admins only. The caller (principal, as the broker names owners) runs jobs, "
    "cancels and output reads on this cluster as this POSIX user; it replaces any mapping the "
    "caller had there. Callers without a mapping get 403 NOT_MAPPED (default deny).",
    tags=["admin"],
    responses=ok(MappingView, "The mapping."),
)
def put_mapping(
    cluster: ClusterParam, body: Annotated[MappingBody, Body(description="Who runs as whom.")]
) -> MappingView:
    """PUT a mapping."""
    admin = _admin()
    return MappingView.of(services.user_admin().put(admin, cluster, body))


@router.get(
    _PATH,
    summary="List a cluster's user mappings",
    description="Admins only. By principal; with principal=..., that caller's mapping alone "
    "(404 if none).",
    tags=["admin"],
    responses=ok(MappingList, "A page."),
)
def list_mappings(
    cluster: ClusterParam,
    principal: Annotated[
        str | None,
        Query(pattern=PRINCIPAL_PATTERN, max_length=1100, description="Only this caller."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 50,
    next_token: NextToken = None,
) -> MappingList:
    """GET the mappings (or one)."""
    admin = _admin()
    if principal is not None:
        return MappingList(mappings=[MappingView.of(services.user_admin().get(cluster, principal))])
    query = {"route": "admin-users", "cluster": cluster}
    page = page_tokens().open(next_token, caller=admin, query=query)
    found, token = services.user_admin().list(cluster, limit=limit, next_token=page)
    token = page_tokens().seal(token, caller=admin, query=query)
    return MappingList(mappings=[MappingView.of(m) for m in found], next_token=token)


@router.delete(
    _PATH,
    summary="Unmap a caller",
    description="Admins only. The caller reaches nothing more on this cluster (403 NOT_MAPPED): "
    "at once at the API. Jobs accepted before run as the user recorded with them.",
    tags=["admin"],
    responses=ok(MappingView, "The mapping removed."),
)
def delete_mapping(cluster: ClusterParam, principal: PrincipalParam) -> Response[MappingView]:
    """DELETE a mapping (404 if none)."""
    _admin()
    admin = services.user_admin()
    removed = MappingView.of(admin.get(cluster, principal))
    admin.delete(cluster, principal)
    return Response(status_code=HTTPStatus.OK, content_type=content_types.APPLICATION_JSON,
                    body=removed)  # fmt: skip
