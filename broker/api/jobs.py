"""Job routes: submit one job or a burst, list and get your jobs, cancel one, fetch its output."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Query

from broker.api import services
from broker.api.common import (
    ACCEPTED,
    ClusterParam,
    IdempotencyKey,
    JobIdParam,
    NextToken,
    caller,
)
from broker.api.errors import ERROR_RESPONSES
from broker.api.tokens import page_tokens
from broker.api.writes import (
    CancelJob,
    FetchOutput,
    SubmitBatch,
    SubmitJob,
    SubmitSweep,
    write,
)
from broker.batches.models import BatchAccepted, BatchBody
from broker.batches.sweeps import SweepBody
from broker.jobs.models import JobSpec, OutputQueryBody
from broker.jobs.records import JobList, JobState, JobView
from broker.observability import metrics
from broker.schema import AcceptedResponse, DateTimeText

#: The answers of jobs:batch and jobs:sweep.
BULK_ACCEPTED: dict[int, Any] = {
    HTTPStatus.ACCEPTED: {
        "description": "Accepted (possibly with rejected items listed).",
        "content": {"application/json": {"model": BatchAccepted}},
    },
    **ERROR_RESPONSES,
}

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ untyped


@router.post(
    "/v1/clusters/<cluster>/jobs",
    summary="Submit a batch job",
    description="Validates and records the job, queues it, and answers 202 at once. No Slurm "
    "call happens in the request. The job's Slurm comment carries the request id.",
    tags=["jobs"],
    status_code=HTTPStatus.ACCEPTED,
    responses=ACCEPTED,
)
def submit_job(
    cluster: ClusterParam,
    spec: Annotated[JobSpec, Body(description="The job to submit.")],
    idempotency_key: IdempotencyKey = None,
) -> Response[AcceptedResponse]:
    """POST a job: record it, enqueue it, answer 202."""
    command = SubmitJob(owner=caller(router.current_event), cluster=cluster, spec=spec)
    answer = write(command, idempotency_key)
    metrics.add_metric(name="JobsAccepted", unit="Count", value=1)
    return answer


@router.post(
    "/v1/clusters/<cluster>/jobs:batch",
    summary="Submit a burst of jobs",
    description="Up to 10,000 jobs (body at most 5 MiB; larger: 413) in one call. Each item is "
    "validated on its own: with atomic=false (default) valid items are accepted and invalid "
    "ones listed with their errors; with atomic=true any invalid item rejects the batch (422). "
    "Item i's job id is job_id_prefix + i in 6 hex digits. Poll the batch's request for counts "
    "and pages of items. Past a backlog limit: 429 with Retry-After.",
    tags=["jobs"],
    status_code=HTTPStatus.ACCEPTED,
    responses=BULK_ACCEPTED,
)
def submit_batch(
    cluster: ClusterParam,
    batch: Annotated[BatchBody, Body(description="The jobs.")],
    idempotency_key: IdempotencyKey = None,
) -> Response[BatchAccepted]:
    """POST a batch: validate each item, record and enqueue the valid ones, answer 202."""
    command = SubmitBatch(owner=caller(router.current_event), cluster=cluster, batch=batch)
    answer = write(command, idempotency_key)
    metrics.add_metric(name="BatchesAccepted", unit="Count", value=1)
    return answer


@router.post(
    "/v1/clusters/<cluster>/jobs:sweep",
    summary="Submit a parameter sweep",
    description="One job for up to 100,000 parameter sets (body at most 5 MiB): each item is "
    "the template with its own variables added to the environment. Validated, recorded and "
    "answered like jobs:batch (same answer, item ids, request, item pages and counts), but "
    "submitted as Slurm job arrays: about one head-node command and one sbatch per 1,000 items. "
    "Item i's Slurm id is <array>_<task>; GET, cancel, output and dependencies work per item.",
    tags=["jobs"],
    status_code=HTTPStatus.ACCEPTED,
    responses=BULK_ACCEPTED,
)
def submit_sweep(
    cluster: ClusterParam,
    sweep: Annotated[SweepBody, Body(description="The template and the parameter sets.")],
    idempotency_key: IdempotencyKey = None,
) -> Response[BatchAccepted]:
    """POST a sweep: validate each parameter set, record and enqueue the valid ones, 202."""
    command = SubmitSweep(owner=caller(router.current_event), cluster=cluster, sweep=sweep)
    answer = write(command, idempotency_key)
    metrics.add_metric(name="SweepsAccepted", unit="Count", value=1)
    return answer


@router.get(
    "/v1/clusters/<cluster>/jobs",
    summary="List your jobs",
    description="Your jobs on the cluster, newest first, from the broker's records (never a "
    "live scheduler call). Filters: state (repeatable), name, since/until (creation time). "
    "Pages: pass next_token from the previous answer. A batch's jobs are listed once they "
    "have an outcome; until then its request's item pages show them (SUBMITTING). A sweep's "
    "items are listed once Slurm starts them; while pending in their arrays, the sweep's "
    "item pages, GET by id and GET by Slurm id show them.",
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
    owner, states = caller(router.current_event), frozenset(state) if state else None
    # A token is good for this caller and these filters only (any page size).
    query = {"route": "jobs", "cluster": cluster, "state": sorted(states or ()), "name": name,
             "since": since, "until": until}  # fmt: skip
    jobs, token = services.request_service().list_jobs(
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


@router.get(
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
    return JobView.of(
        services.request_service().get_job(caller(router.current_event), cluster, job_id)
    )


@router.delete(
    "/v1/clusters/<cluster>/jobs/<job_id>",
    summary="Cancel a job",
    description="202 with a request id. A job whose submission is still queued is cancelled "
    "at once and never reaches Slurm; otherwise the worker runs scancel. 409 if it has ended.",
    tags=["jobs"],
    status_code=HTTPStatus.ACCEPTED,
    responses=ACCEPTED,
)
def cancel_job(cluster: ClusterParam, job_id: JobIdParam) -> Response[AcceptedResponse]:
    """DELETE a job: cancel it (DELETE is idempotent by nature: a second one answers 409)."""
    owner = caller(router.current_event)
    return write(CancelJob(owner=owner, cluster=cluster, job_id=job_id), None)


@router.post(
    "/v1/clusters/<cluster>/jobs/<job_id>/output",
    summary="Fetch a job's output",
    description="202 with a request id; its result holds up to 64 KiB per stream (the tail, "
    "or from a byte offset) with offsets for paging. Text larger than fits in a response "
    "comes as a presigned URL instead.",
    tags=["jobs"],
    status_code=HTTPStatus.ACCEPTED,
    responses=ACCEPTED,
)
def fetch_output(
    cluster: ClusterParam,
    job_id: JobIdParam,
    query: Annotated[OutputQueryBody, Body(description="Which output.")],
    idempotency_key: IdempotencyKey = None,
) -> Response[AcceptedResponse]:
    """POST an output fetch."""
    owner = caller(router.current_event)
    command = FetchOutput(owner=owner, cluster=cluster, job_id=job_id, query=query)
    return write(command, idempotency_key)
