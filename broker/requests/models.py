"""The request record and its public view, the union of results a request can end with, and the
job queue's message union."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    Field,
    TypeAdapter,
)

from broker.batches.models import BatchItemView, BatchResult, JobBatchMessage
from broker.batches.sweeps import JobSweepMessage
from broker.clusters.models import ClusterKind, ClusterResult
from broker.jobs.models import (
    CancelResult,
    JobCancelMessage,
    JobOutputMessage,
    JobResult,
    JobSpec,
    JobSubmitMessage,
    OutputQueryBody,
    OutputResult,
)
from broker.requests.states import RequestState
from broker.schema import ErrorInfo

RequestResult = Annotated[
    JobResult | CancelResult | OutputResult | BatchResult | ClusterResult,
    Field(discriminator="kind"),
]


RequestKind = Literal["job.submit", "job.cancel", "job.output", "job.batch"] | ClusterKind


class RequestRecord(BaseModel):
    """A broker request: one accepted API write and everything known about its progress."""

    request_id: str = Field(description="Broker request id (also in the job's Slurm comment).")
    kind: RequestKind = Field(description="What the request does.")
    owner: str = Field(description="Authenticated principal (IAM ARN) that made the request.")
    cluster: str = Field(description="Target cluster name.")
    user: str | None = Field(
        default=None,
        description="job.*: the POSIX user it acts as on the cluster (the caller's mapped user "
        "at accept; for a cancel or output read, the job's). Never looked up again.",
    )
    state: RequestState = Field(description="Current state.")
    attempts: int = Field(default=0, ge=0, description="How many times a worker took it.")
    created_at: datetime = Field(description="When the API accepted it (UTC).")
    updated_at: datetime = Field(description="Last state change (UTC).")
    result: RequestResult | None = Field(default=None, description="Set when SUCCEEDED.")
    error: ErrorInfo | None = Field(
        default=None, description="Set when FAILED; while retrying, the last transient error."
    )
    spec: JobSpec | None = Field(default=None, description="The submitted job specification.")
    job_id: str | None = Field(default=None, description="Broker id of the job concerned.")
    query: OutputQueryBody | None = Field(default=None, description="For job.output.")
    notify_pending: str | None = Field(default=None, description="State awaiting its event.")
    requeued_at: datetime | None = Field(
        default=None,
        description="When the sweep last sent the message again (it was still ACCEPTED; "
        "see broker.requeue).",
    )
    items: int | None = Field(default=None, description="job.batch: items accepted.")
    batch_size: int | None = Field(default=None, description="job.batch: items sent.")
    counts: dict[str, int] = Field(
        default_factory=dict, description="job.batch: items by outcome so far."
    )
    chunk_starts: list[int] | None = Field(
        default=None,
        description="job.batch: the first item index of each chunk (its items have no record "
        "until their outcome; see broker.batches).",
    )
    rejected_items: list[int] | None = Field(
        default=None, description="job.batch: indexes of the items rejected at accept."
    )


class RequestView(BaseModel):
    """The API's view of a request (``GET /v1/requests/{id}``)."""

    request_id: str
    kind: RequestKind
    cluster: str
    state: RequestState
    status: RequestState = Field(description="Alias of state, kept for clients that read 'status'.")
    attempts: int
    created_at: datetime
    updated_at: datetime
    job_id: str | None = Field(default=None, description="Broker id of the job concerned.")
    result: RequestResult | None = None
    error: ErrorInfo | None = None
    items: int | None = Field(default=None, description="job.batch: items accepted.")
    counts: dict[str, int] | None = Field(
        default=None,
        description="job.batch: items by outcome so far (SUBMITTED, FAILED, CANCELLED); the "
        "rest are still queued.",
    )
    item_page: list[BatchItemView] | None = Field(
        default=None, description="job.batch: a page of items (see items_from, items_limit)."
    )
    next_items_from: int | None = Field(
        default=None, description="job.batch: items_from of the next page, if any."
    )

    @classmethod
    def of(cls, record: RequestRecord) -> RequestView:
        """Build the public view of a record (the owner and spec stay private)."""
        return cls(
            request_id=record.request_id,
            kind=record.kind,
            cluster=record.cluster,
            state=record.state,
            status=record.state,
            attempts=record.attempts,
            created_at=record.created_at,
            updated_at=record.updated_at,
            job_id=record.job_id,
            result=record.result,
            error=record.error,
            items=record.items,
            counts=record.counts if record.kind == "job.batch" else None,
        )


AnyMessage = (
    JobSubmitMessage | JobCancelMessage | JobOutputMessage | JobBatchMessage | JobSweepMessage
)


QueueMessage = Annotated[AnyMessage, Field(discriminator="kind")]


QUEUE_MESSAGE: TypeAdapter[AnyMessage] = TypeAdapter(QueueMessage)
