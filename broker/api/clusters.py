"""Cluster routes: create, list, get (or refresh), update and delete your clusters, and start or
stop a compute fleet."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Query

from broker.api import services
from broker.api.common import (
    ACCEPTED,
    ClusterParam,
    IdempotencyKey,
    NextToken,
    accepted,
    accepted_body,
    caller,
)
from broker.api.errors import ERROR_RESPONSES
from broker.api.tokens import page_tokens
from broker.api.writes import (
    ClusterFleet,
    CreateCluster,
    UpdateCluster,
    write,
)
from broker.clusters.models import (
    ClusterCreateBody,
    ClusterList,
    ClusterUpdateBody,
    ClusterView,
    FleetBody,
)
from broker.observability import metrics
from broker.schema import AcceptedResponse

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ untyped


_CLUSTER_WRITE = (
    "Answers 202 at once; the cluster worker calls ParallelCluster. Poll the request: it is "
    "IN_PROGRESS while CloudFormation works (minutes), then SUCCEEDED or FAILED (with "
    "ParallelCluster's validator findings in error.validation_messages when it rejected the "
    "configuration). One operation at a time per cluster (409 otherwise)."
)


@router.post(
    "/v1/clusters",
    summary="Create a cluster",
    description=_CLUSTER_WRITE + " The name is taken at once (409 for an existing cluster, "
    "whoever owns it: names are per account and region). With dryrun the configuration is only "
    "validated and the request ends SUCCEEDED with result.dryrun = true.",
    tags=["clusters"],
    status_code=HTTPStatus.ACCEPTED,
    responses=ACCEPTED,
)
def create_cluster(
    body: Annotated[ClusterCreateBody, Body(description="The cluster to create.")],
    idempotency_key: IdempotencyKey = None,
) -> Response[AcceptedResponse]:
    """POST a cluster: record it CREATE_IN_PROGRESS, enqueue the create, answer 202."""
    owner = caller(router.current_event)
    answer = write(CreateCluster(owner=owner, create=body), idempotency_key)
    metrics.add_metric(name="ClusterOperationsAccepted", unit="Count", value=1)
    return answer


@router.get(
    "/v1/clusters",
    summary="List your clusters",
    description="The clusters you created through the broker, by name, from the broker's "
    "records (never a ParallelCluster call).",
    tags=["clusters"],
    responses={
        HTTPStatus.OK: {
            "description": "A page.",
            "content": {"application/json": {"model": ClusterList}},
        },
        **ERROR_RESPONSES,
    },
)
def list_clusters(
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 50,
    next_token: NextToken = None,
) -> ClusterList:
    """GET the caller's clusters."""
    owner, query = caller(router.current_event), {"route": "clusters"}
    page = page_tokens().open(next_token, caller=owner, query=query)
    records, token = services.cluster_service().list(owner, limit=limit, next_token=page)
    token = page_tokens().seal(token, caller=owner, query=query)
    return ClusterList(clusters=[ClusterView.of(r) for r in records], next_token=token)


@router.get(
    "/v1/clusters/<cluster>",
    summary="Get a cluster",
    description="Status, ParallelCluster version, scheduler, head node, compute fleet, the last "
    "operation and failures, from the broker's record (kept current by the cluster worker and "
    "the sweep). refresh=true instead queues a describe through ParallelCluster and answers "
    "202 with its request: the request's result holds the fresh status, and the record is "
    "updated with it.",
    tags=["clusters"],
    responses={
        HTTPStatus.OK: {
            "description": "The cluster.",
            "content": {"application/json": {"model": ClusterView}},
        },
        HTTPStatus.ACCEPTED: {
            "description": "refresh=true: a describe was queued; poll the Location.",
            "content": {"application/json": {"model": AcceptedResponse}},
        },
        **ERROR_RESPONSES,
    },
)
def get_cluster(
    cluster: ClusterParam,
    refresh: Annotated[bool, Query(description="Queue a describe (202).")] = False,
) -> Response[Any]:
    """GET one of the caller's clusters (404 if it is someone else's)."""
    service = services.cluster_service()
    if refresh:
        record = service.refresh(caller(router.current_event), cluster)
        return accepted(accepted_body(record.request_id))
    view = ClusterView.of(service.get(caller(router.current_event), cluster))
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=view)


@router.put(
    "/v1/clusters/<cluster>",
    summary="Update a cluster",
    description=_CLUSTER_WRITE + " force_update applies the update even when ParallelCluster's "
    "update validators object; dryrun lists the changes (result.change_set) and changes nothing.",
    tags=["clusters"],
    status_code=HTTPStatus.ACCEPTED,
    responses=ACCEPTED,
)
def update_cluster(
    cluster: ClusterParam,
    body: Annotated[ClusterUpdateBody, Body(description="The new configuration.")],
    idempotency_key: IdempotencyKey = None,
) -> Response[AcceptedResponse]:
    """PUT a cluster's configuration: enqueue the update, answer 202."""
    command = UpdateCluster(owner=caller(router.current_event), cluster=cluster, update=body)
    return write(command, idempotency_key)


@router.delete(
    "/v1/clusters/<cluster>",
    summary="Delete a cluster",
    description=_CLUSTER_WRITE + " 404 for a cluster you do not have.",
    tags=["clusters"],
    status_code=HTTPStatus.ACCEPTED,
    responses=ACCEPTED,
)
def delete_cluster(cluster: ClusterParam) -> Response[AcceptedResponse]:
    """DELETE a cluster (a second delete answers 409 while the first is in progress)."""
    owner = caller(router.current_event)
    record = services.cluster_service().delete(owner, cluster)
    return accepted(accepted_body(record.request_id))


@router.post(
    "/v1/clusters/<cluster>/fleet",
    summary="Start or stop the compute fleet",
    description="202; the request ends SUCCEEDED with result.compute_fleet_status once "
    "ParallelCluster took the request (START_REQUESTED or STOP_REQUESTED).",
    tags=["clusters"],
    status_code=HTTPStatus.ACCEPTED,
    responses=ACCEPTED,
)
def cluster_fleet(
    cluster: ClusterParam,
    body: Annotated[FleetBody, Body(description="The requested fleet status.")],
    idempotency_key: IdempotencyKey = None,
) -> Response[AcceptedResponse]:
    """POST a fleet status change."""
    command = ClusterFleet(owner=caller(router.current_event), cluster=cluster, fleet=body)
    return write(command, idempotency_key)
