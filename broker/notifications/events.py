"""Notification events published to the SNS topic: versioned JSON plus message attributes.

Subscribers filter with SNS filter policies on the message attributes ``type``, ``cluster``,
``owner`` and ``state`` - for example ``{"owner": ["arn:…:user/alice"], "state": ["FAILED"]}``
delivers only alice's failures. ``version`` changes only for incompatible changes.

Events carry no secrets: never job output nor its presigned URLs (an output read's event keeps
the parts' positions and sizes; the text stays behind the request's link, for its owner), never
a job's environment or script.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from broker.clusters.records import ClusterFailure, ClusterRecord, ClusterStatus
from broker.jobs.models import OutputResult
from broker.jobs.records import JobRecord, JobState
from broker.requests.models import RequestRecord, RequestResult
from broker.requests.states import RequestState
from broker.schema import ErrorInfo, utcnow


class SnsAttributes:
    """One scheme of SNS message attributes for every event, for subscribers' filter policies."""

    if TYPE_CHECKING:  # fields of the pydantic models that use this mixin
        type: str
        cluster: str
        owner: str
        new_state: Enum

    def attributes(self) -> dict[str, str]:
        """``type``, ``cluster``, ``owner`` and ``state`` (the new one)."""
        return {
            "type": self.type,
            "cluster": self.cluster,
            "owner": self.owner,
            "state": self.new_state.value,
        }


class Links(BaseModel):
    """API paths of the resources an event is about."""

    job: str | None = None
    request: str | None = None
    cluster: str | None = None


class JobEvent(SnsAttributes, BaseModel):
    """A job reached a final state."""

    type: Literal["job.state_changed"] = "job.state_changed"
    version: Literal[1] = 1
    job_id: str = Field(description="Broker job id.")
    cluster: str
    owner: str
    name: str | None = None
    old_state: JobState | None = None
    new_state: JobState
    final: bool
    slurm_job_id: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    task_counts: dict[str, int] = Field(default_factory=dict)
    submit_time: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    time: datetime = Field(default_factory=utcnow, description="When the broker saw it (UTC).")
    links: Links

    @classmethod
    def of(cls, job: JobRecord, old_state: JobState | None) -> JobEvent:
        """The event for ``job`` having reached its current state."""
        return cls(
            job_id=job.job_id,
            cluster=job.cluster,
            owner=job.owner,
            name=job.name,
            old_state=old_state,
            new_state=job.state,
            final=job.state.final,
            slurm_job_id=job.slurm_job_id,
            exit_code=job.exit_code,
            signal=job.signal,
            task_counts=job.task_counts,
            submit_time=job.submit_time,
            start_time=job.start_time,
            end_time=job.end_time,
            links=Links(
                job=f"/v1/clusters/{job.cluster}/jobs/{job.job_id}",
                request=f"/v1/requests/{job.job_id}",
            ),
        )


class RequestEvent(SnsAttributes, BaseModel):
    """A request reached a final state."""

    type: Literal["request.finished"] = "request.finished"
    version: Literal[1] = 1
    request_id: str
    kind: str
    cluster: str
    owner: str
    new_state: RequestState
    job_id: str | None = None
    result: RequestResult | None = None
    error: ErrorInfo | None = None
    time: datetime = Field(default_factory=utcnow)
    links: Links

    @classmethod
    def of(cls, record: RequestRecord) -> RequestEvent:
        """The event for ``record`` having reached its current (final) state."""
        job_link = f"/v1/clusters/{record.cluster}/jobs/{record.job_id}" if record.job_id else None
        return cls(
            request_id=record.request_id,
            kind=record.kind,
            cluster=record.cluster,
            owner=record.owner,
            new_state=record.state,
            job_id=record.job_id,
            result=without_content(record.result),
            error=record.error,
            links=Links(request=f"/v1/requests/{record.request_id}", job=job_link),
        )


class ClusterEvent(SnsAttributes, BaseModel):
    """A cluster's status changed (e.g. CREATE_IN_PROGRESS -> CREATE_COMPLETE)."""

    type: Literal["cluster.state_changed"] = "cluster.state_changed"
    version: Literal[1] = 1
    cluster: str
    owner: str
    region: str | None = None
    old_state: ClusterStatus | None = None
    new_state: ClusterStatus
    operation: str = Field(description="The operation that moved it: create, update, delete.")
    request_id: str = Field(description="That operation's request.")
    failures: list[ClusterFailure] = Field(default_factory=list)
    time: datetime = Field(default_factory=utcnow)
    links: Links

    @classmethod
    def of(cls, record: ClusterRecord) -> ClusterEvent:
        """The event for ``record`` having reached its current status."""
        return cls(
            cluster=record.name,
            owner=record.owner,
            region=record.region,
            old_state=record.notify_old_status,
            new_state=record.status,
            operation=record.operation,
            request_id=record.operation_request_id,
            failures=record.failures,
            links=Links(
                cluster=f"/v1/clusters/{record.name}",
                request=f"/v1/requests/{record.operation_request_id}",
            ),
        )


Event = JobEvent | RequestEvent | ClusterEvent


def without_content(result: RequestResult | None) -> RequestResult | None:
    """``result`` as an event may carry it: an output read without its text or URLs."""
    if not isinstance(result, OutputResult):
        return result
    parts = [part.model_copy(update={"data": None, "url": None}) for part in result.parts]
    return result.model_copy(update={"parts": parts})
