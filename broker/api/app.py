"""Routes of the HTTP API (Powertools REST resolver, validated by the pydantic models).

Every write answers 202 with a request id at once; the work happens in a worker. The caller's
identity is the IAM principal API Gateway authenticated (``requestContext.identity.userArn``),
never a field of the request.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query

from broker import __version__
from broker.api.errors import (
    ERROR_RESPONSES,
    broker_error_response,
    error_response,
    field_errors,
)
from broker.api.idempotency import (
    IDEMPOTENCY_TTL_SECONDS,
    KEY_PATTERN,
    IdempotentCall,
    Route,
    accept_once,
    was_replayed,
)
from broker.api.tokens import page_tokens
from broker.batches.models import MAX_BATCH_ITEMS, BatchAccepted, BatchBody
from broker.clusters.models import (
    ClusterCreateBody,
    ClusterList,
    ClusterUpdateBody,
    ClusterView,
    FleetBody,
)
from broker.errors import BrokerError, ValidationError
from broker.jobs.models import JobSpec, OutputQueryBody
from broker.jobs.records import JobList, JobState, JobView
from broker.observability import logger, metrics
from broker.requests.models import RequestView
from broker.schema import NEXT_TOKEN_PATTERN, AcceptedResponse, DateTimeText, dump
from broker.settings import api_settings
from broker.wiring import cluster_service, request_service

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
_ACCEPTED = {
    HTTPStatus.ACCEPTED: {
        "description": "Accepted; poll the Location.",
        "content": {"application/json": {"model": AcceptedResponse}},
    },
    **ERROR_RESPONSES,
}

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


def caller() -> str:
    """The authenticated principal of the current call.

    Raises:
        _Unauthenticated: no identity in the request context (API not behind IAM auth).
    """
    arn = app.current_event.request_context.identity.user_arn
    if not arn:
        raise _UnauthenticatedError("the call carries no authenticated IAM identity")
    return arn


class _UnauthenticatedError(BrokerError):
    code = "UNAUTHENTICATED"


def _accepted_body(request_id: str) -> AcceptedResponse:
    return AcceptedResponse(request_id=request_id, location=f"/v1/requests/{request_id}")


def _accepted(body: AcceptedResponse | BatchAccepted, *, replayed: bool = False) -> Response[Any]:
    headers = {"Location": body.location}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        status_code=HTTPStatus.ACCEPTED,
        content_type=content_types.APPLICATION_JSON,
        body=body,
        headers=headers,
    )


def _run(call: IdempotentCall) -> AcceptedResponse | BatchAccepted:
    """Perform one accepted write (what an Idempotency-Key protects)."""
    args, service = call.args, request_service()
    if call.route == "submit_batch":
        batch = BatchBody.model_validate(call.body)
        return service.submit_batch(args["owner"], args["cluster"], batch)
    if call.route in ("create_cluster", "update_cluster", "cluster_fleet"):
        return _run_cluster(call)
    if call.route == "submit_job":
        spec = JobSpec.model_validate(call.body)
        record = service.submit_job(args["owner"], args["cluster"], spec)
    elif call.route == "cancel_job":
        record = service.cancel_job(args["owner"], args["cluster"], args["job_id"])
    else:
        query = OutputQueryBody.model_validate(call.body)
        record = service.fetch_output(args["owner"], args["cluster"], args["job_id"], query)
    return _accepted_body(record.request_id)


def _run_cluster(call: IdempotentCall) -> AcceptedResponse:
    """Perform one accepted cluster write."""
    args, clusters = call.args, cluster_service()
    if call.route == "create_cluster":
        record = clusters.create(args["owner"], ClusterCreateBody.model_validate(call.body))
    elif call.route == "update_cluster":
        body = ClusterUpdateBody.model_validate(call.body)
        record = clusters.update(args["owner"], args["cluster"], body)
    else:
        body_fleet = FleetBody.model_validate(call.body)
        record = clusters.fleet(args["owner"], args["cluster"], body_fleet)
    return _accepted_body(record.request_id)


def _write(route: Route, key: str | None, args: dict[str, str], body: Any) -> Response[Any]:
    """Run a write once, or at most once per Idempotency-Key when the caller sent one."""
    owner = caller()
    args = {"owner": owner, **args}
    call = IdempotentCall(scope="", route=route, args=args, body=body)
    if key is None:
        return _accepted(_run(call))
    table = api_settings().idempotency_table
    if not table:
        raise ValidationError("Idempotency-Key is not supported by this deployment")
    model = BatchAccepted if route == "submit_batch" else AcceptedResponse
    answer = accept_once(
        table, _run, owner=owner, key=key, route=route, args=args, body=body, model=model
    )
    return _accepted(answer, replayed=was_replayed())


@app.post(
    "/v1/clusters/<cluster>/jobs",
    summary="Submit a batch job",
    description="Validates and records the job, queues it, and answers 202 at once. No Slurm "
    "call happens in the request. The job's Slurm comment carries the request id.",
    tags=["jobs"],
    status_code=HTTPStatus.ACCEPTED,
    responses=_ACCEPTED,
)
def submit_job(
    cluster: ClusterParam,
    spec: Annotated[JobSpec, Body(description="The job to submit.")],
    idempotency_key: IdempotencyKey = None,
) -> Response[AcceptedResponse]:
    """POST a job: record it, enqueue it, answer 202."""
    answer = _write("submit_job", idempotency_key, {"cluster": cluster}, dump(spec))
    metrics.add_metric(name="JobsAccepted", unit="Count", value=1)
    return answer


@app.post(
    "/v1/clusters/<cluster>/jobs:batch",
    summary="Submit a burst of jobs",
    description="Up to 10,000 jobs (body at most 5 MiB; larger: 413) in one call. Each item is "
    "validated on its own: with atomic=false (default) valid items are accepted and invalid "
    "ones listed with their errors; with atomic=true any invalid item rejects the batch (422). "
    "Item i's job id is job_id_prefix + i in 6 hex digits. Poll the batch's request for counts "
    "and pages of items. Past a backlog limit: 429 with Retry-After.",
    tags=["jobs"],
    status_code=HTTPStatus.ACCEPTED,
    responses={
        HTTPStatus.ACCEPTED: {
            "description": "Accepted (possibly with rejected items listed).",
            "content": {"application/json": {"model": BatchAccepted}},
        },
        **ERROR_RESPONSES,
    },
)
def submit_batch(
    cluster: ClusterParam,
    batch: Annotated[BatchBody, Body(description="The jobs.")],
    idempotency_key: IdempotencyKey = None,
) -> Response[BatchAccepted]:
    """POST a batch: validate each item, record and enqueue the valid ones, answer 202."""
    answer = _write("submit_batch", idempotency_key, {"cluster": cluster}, dump(batch))
    metrics.add_metric(name="BatchesAccepted", unit="Count", value=1)
    return answer


@app.get(
    "/v1/requests/<request_id>",
    summary="Get a request's state",
    tags=["requests"],
    responses={
        HTTPStatus.OK: {
            "description": "The request.",
            "content": {"application/json": {"model": RequestView}},
        },
        **ERROR_RESPONSES,
    },
)
def get_request(
    request_id: Annotated[str, Path(pattern=REQUEST_ID_PATTERN, description="Request id.")],
    items_from: Annotated[
        int, Query(ge=0, le=MAX_BATCH_ITEMS, description="job.batch: first item index.")
    ] = 0,
    items_limit: Annotated[int, Query(ge=0, le=1000, description="job.batch: page size.")] = 100,
) -> RequestView:
    """GET a request (404 if it is not the caller's); a batch with a page of its items."""
    service = request_service()
    record = service.get_request(caller(), request_id)
    view = RequestView.of(record)
    if record.kind == "job.batch" and items_limit:
        size = record.batch_size or 0
        end = min(size, items_from + items_limit)
        view.item_page = service.batch_page(record, items_from, max(0, end - items_from))
        view.next_items_from = end if end < size else None
    return view


@app.get(
    "/v1/clusters/<cluster>/jobs",
    summary="List your jobs",
    description="Your jobs on the cluster, newest first, from the broker's records (never a "
    "live scheduler call). Filters: state (repeatable), name, since/until (creation time). "
    "Pages: pass next_token from the previous answer. A batch's jobs are listed once they "
    "have an outcome; until then its request's item pages show them (SUBMITTING).",
    tags=["jobs"],
    responses={
        HTTPStatus.OK: {
            "description": "A page.",
            "content": {"application/json": {"model": JobList}},
        },
        **ERROR_RESPONSES,
    },
)
def list_jobs(
    cluster: ClusterParam,
    *,
    state: Annotated[list[JobState] | None, Query(description="Only these states.")] = None,
    name: Annotated[
        str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", description="Job name.")
    ] = None,
    since: Annotated[
        DateTimeText | None, Query(description="Created at or after (ISO 8601).")
    ] = None,
    until: Annotated[
        DateTimeText | None, Query(description="Created at or before (ISO 8601).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    next_token: NextToken = None,
) -> JobList:
    """GET the caller's jobs on a cluster."""
    owner, states = caller(), frozenset(state) if state else None
    # A token is good for this caller and these filters only (any page size).
    query = {"route": "jobs", "cluster": cluster, "state": sorted(states or ()), "name": name,
             "since": since, "until": until}  # fmt: skip
    jobs, token = request_service().list_jobs(
        owner,
        cluster,
        states=states,
        name=name,
        since=since,
        until=until,
        limit=limit,
        next_token=page_tokens().open(next_token, caller=owner, query=query),
    )
    token = page_tokens().seal(token, caller=owner, query=query)
    return JobList(jobs=[JobView.of(j, with_tasks=False) for j in jobs], next_token=token)


@app.get(
    "/v1/clusters/<cluster>/jobs/<job_id>",
    summary="Get a job",
    description="State, Slurm's state and reason, exit code, times, and array tasks.",
    tags=["jobs"],
    responses={
        HTTPStatus.OK: {
            "description": "The job.",
            "content": {"application/json": {"model": JobView}},
        },
        **ERROR_RESPONSES,
    },
)
def get_job(cluster: ClusterParam, job_id: JobIdParam) -> JobView:
    """GET one of the caller's jobs (404 if it is someone else's)."""
    return JobView.of(request_service().get_job(caller(), cluster, job_id))


@app.delete(
    "/v1/clusters/<cluster>/jobs/<job_id>",
    summary="Cancel a job",
    description="202 with a request id. A job whose submission is still queued is cancelled "
    "at once and never reaches Slurm; otherwise the worker runs scancel. 409 if it has ended.",
    tags=["jobs"],
    status_code=HTTPStatus.ACCEPTED,
    responses=_ACCEPTED,
)
def cancel_job(cluster: ClusterParam, job_id: JobIdParam) -> Response[AcceptedResponse]:
    """DELETE a job: cancel it (DELETE is idempotent by nature: a second one answers 409)."""
    return _write("cancel_job", None, {"cluster": cluster, "job_id": job_id}, None)


@app.post(
    "/v1/clusters/<cluster>/jobs/<job_id>/output",
    summary="Fetch a job's output",
    description="202 with a request id; its result holds up to 64 KiB per stream (the tail, "
    "or from a byte offset) with offsets for paging. Text larger than fits in a response "
    "comes as a presigned URL instead.",
    tags=["jobs"],
    status_code=HTTPStatus.ACCEPTED,
    responses=_ACCEPTED,
)
def fetch_output(
    cluster: ClusterParam,
    job_id: JobIdParam,
    query: Annotated[OutputQueryBody, Body(description="Which output.")],
    idempotency_key: IdempotencyKey = None,
) -> Response[AcceptedResponse]:
    """POST an output fetch."""
    args = {"cluster": cluster, "job_id": job_id}
    return _write("fetch_output", idempotency_key, args, dump(query))


# -- clusters -----------------------------------------------------------------------------------

_CLUSTER_WRITE = (
    "Answers 202 at once; the cluster worker calls ParallelCluster. Poll the request: it is "
    "IN_PROGRESS while CloudFormation works (minutes), then SUCCEEDED or FAILED (with "
    "ParallelCluster's validator findings in error.validation_messages when it rejected the "
    "configuration). One operation at a time per cluster (409 otherwise)."
)


@app.post(
    "/v1/clusters",
    summary="Create a cluster",
    description=_CLUSTER_WRITE + " The name is taken at once (409 for an existing cluster, "
    "whoever owns it: names are per account and region). With dryrun the configuration is only "
    "validated and the request ends SUCCEEDED with result.dryrun = true.",
    tags=["clusters"],
    status_code=HTTPStatus.ACCEPTED,
    responses=_ACCEPTED,
)
def create_cluster(
    body: Annotated[ClusterCreateBody, Body(description="The cluster to create.")],
    idempotency_key: IdempotencyKey = None,
) -> Response[AcceptedResponse]:
    """POST a cluster: record it CREATE_IN_PROGRESS, enqueue the create, answer 202."""
    answer = _write("create_cluster", idempotency_key, {}, dump(body))
    metrics.add_metric(name="ClusterOperationsAccepted", unit="Count", value=1)
    return answer


@app.get(
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
    owner, query = caller(), {"route": "clusters"}
    page = page_tokens().open(next_token, caller=owner, query=query)
    records, token = cluster_service().list(owner, limit=limit, next_token=page)
    token = page_tokens().seal(token, caller=owner, query=query)
    return ClusterList(clusters=[ClusterView.of(r) for r in records], next_token=token)


@app.get(
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
    service = cluster_service()
    if refresh:
        record = service.refresh(caller(), cluster)
        return _accepted(_accepted_body(record.request_id))
    view = ClusterView.of(service.get(caller(), cluster))
    return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=view)


@app.put(
    "/v1/clusters/<cluster>",
    summary="Update a cluster",
    description=_CLUSTER_WRITE + " force_update applies the update even when ParallelCluster's "
    "update validators object; dryrun lists the changes (result.change_set) and changes nothing.",
    tags=["clusters"],
    status_code=HTTPStatus.ACCEPTED,
    responses=_ACCEPTED,
)
def update_cluster(
    cluster: ClusterParam,
    body: Annotated[ClusterUpdateBody, Body(description="The new configuration.")],
    idempotency_key: IdempotencyKey = None,
) -> Response[AcceptedResponse]:
    """PUT a cluster's configuration: enqueue the update, answer 202."""
    return _write("update_cluster", idempotency_key, {"cluster": cluster}, dump(body))


@app.delete(
    "/v1/clusters/<cluster>",
    summary="Delete a cluster",
    description=_CLUSTER_WRITE + " 404 for a cluster you do not have.",
    tags=["clusters"],
    status_code=HTTPStatus.ACCEPTED,
    responses=_ACCEPTED,
)
def delete_cluster(cluster: ClusterParam) -> Response[AcceptedResponse]:
    """DELETE a cluster (a second delete answers 409 while the first is in progress)."""
    owner = caller()
    record = cluster_service().delete(owner, cluster)
    return _accepted(_accepted_body(record.request_id))


@app.post(
    "/v1/clusters/<cluster>/fleet",
    summary="Start or stop the compute fleet",
    description="202; the request ends SUCCEEDED with result.compute_fleet_status once "
    "ParallelCluster took the request (START_REQUESTED or STOP_REQUESTED).",
    tags=["clusters"],
    status_code=HTTPStatus.ACCEPTED,
    responses=_ACCEPTED,
)
def cluster_fleet(
    cluster: ClusterParam,
    body: Annotated[FleetBody, Body(description="The requested fleet status.")],
    idempotency_key: IdempotencyKey = None,
) -> Response[AcceptedResponse]:
    """POST a fleet status change."""
    return _write("cluster_fleet", idempotency_key, {"cluster": cluster}, dump(body))


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


def _unauthenticated(error: _UnauthenticatedError) -> Response[Any]:
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
app.exception_handler(_UnauthenticatedError)(_unauthenticated)
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
