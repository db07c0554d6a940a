"""Batch bodies, answers, chunk messages and item views: a burst of jobs for one cluster."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from broker.jobs.models import JobSpec
from broker.schema import POSIX_USER, FieldError, StrictModel, new_request_id


class BatchResult(BaseModel):
    """What a batch submission produced, once every item reached an end."""

    kind: Literal["job.batch"] = "job.batch"
    cluster: str
    items: int = Field(description="Items accepted into the batch.")
    counts: dict[str, int] = Field(description="Items by outcome: SUBMITTED, FAILED, CANCELLED.")


class BatchItemView(BaseModel):
    """One item of a batch, as its job stands."""

    index: int
    job_id: str = Field(description="Broker job id of the item.")
    state: str = Field(description="The job's state (SUBMITTING until it reaches Slurm).")
    slurm_job_id: str | None = None
    reason: str | None = None


#: Most items a batch may hold, and the largest batch body (Lambda's synchronous payload is
#: 6 MB; the rest of the event needs room). Larger: 413.
MAX_BATCH_ITEMS = 10_000


MAX_BATCH_BODY_BYTES = 5 * 1024 * 1024


#: The OpenAPI document's name for a job specification (Powertools' components).
_JOB_SPEC_REF: dict[str, Any] = {"$ref": "#/components/schemas/JobSpec"}


class BatchBody(StrictModel):
    """A burst of jobs for one cluster (``POST /v1/clusters/{cluster}/jobs:batch``).

    Items are validated one by one (``jobs`` is a list of plain objects here), so the document
    states the rule itself: at least one item must be a valid JobSpec, and with ``atomic: true``
    every item must be.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"atomic": {"const": True}}, "required": ["atomic"]},
            "then": {"properties": {"jobs": {"items": _JOB_SPEC_REF}}},
            "else": {"properties": {"jobs": {"contains": _JOB_SPEC_REF}}},
        }
    )

    jobs: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_BATCH_ITEMS,
        description=f"1 to {MAX_BATCH_ITEMS} job specifications (each as in POST .../jobs); "
        f"the whole body at most {MAX_BATCH_BODY_BYTES} bytes. With atomic=false, invalid "
        "items are listed in the answer, but at least one must be valid (422 otherwise).",
    )
    atomic: bool = Field(
        default=False,
        description="true: any invalid item rejects the whole batch (422, nothing accepted); "
        "false: valid items are accepted and invalid ones listed in the answer.",
    )
    # None, not False, when absent: the body's idempotency fingerprint (its dump without the
    # None fields) stays what it was before pack existed.
    pack: bool | None = Field(
        default=None,
        description="true: runs of consecutive jobs that differ only in their environment are "
        "submitted as job arrays, as a sweep's items are (POST .../jobs:sweep): each keeps "
        "its broker id, and its Slurm id is <array>_<task>. Jobs with an array of their own "
        "are never packed. Absent, null or false: every job is submitted on its own.",
    )


class BatchItemError(BaseModel):
    """Why one item of a batch was rejected."""

    index: int
    fields: list[FieldError]


class BatchAccepted(BaseModel):
    """Answer to an accepted batch (HTTP 202)."""

    request_id: str = Field(description="The batch's request id; poll its location.")
    status: Literal["ACCEPTED"] = "ACCEPTED"
    location: str
    accepted: int = Field(description="Items accepted.")
    rejected_count: int = Field(description="Items rejected (not submitted).")
    rejected: list[BatchItemError] = Field(
        description="Rejected items with their errors (the first 1,000)."
    )
    job_id_prefix: str = Field(
        description="Item i's job id is job_id_prefix + i as 6 lowercase hex digits "
        "(e.g. item 10 -> prefix + '00000a'); rejected indexes have no job."
    )


class BatchItem(BaseModel):
    """One job of a batch message."""

    model_config = ConfigDict(extra="forbid")

    index: int
    job_id: str
    spec: JobSpec


class ChunkMessage(BaseModel):
    """What every chunk message of a batch or a sweep carries: its batch, owner, cluster, user."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    request_id: str
    owner: str
    cluster: str
    user: str = Field(
        pattern=POSIX_USER, description="POSIX user its jobs run as (recorded at accept)."
    )


class JobBatchMessage(ChunkMessage):
    """Queue message: a chunk of a batch (up to CHUNK_ITEMS jobs, one agent call)."""

    kind: Literal["job.batch"] = "job.batch"
    items: list[BatchItem]
    chunk: int | None = Field(default=None, ge=0, description="The chunk's number in its batch.")


#: Batch ids and their items' ids share their first 23 characters (``batch_ids``).
PREFIX_CHARS = 23


def item_id(batch_id: str, index: int) -> str:
    """The job id of a batch's item ``index``."""
    return f"{batch_id[:PREFIX_CHARS]}{index:06x}"


def batch_ids(count: int) -> tuple[str, str, list[str]]:
    """A new batch's request id, its job id prefix, and the job id of each of ``count`` items.

    Ids keep the request id shape (``r`` + 28 hex): 12 hex of time, 10 random, then 6 for the
    item's index; the batch itself takes index ffffff (a batch has at most 10,000 items).
    """
    prefix = new_request_id()[:23]
    return prefix + "ffffff", prefix, [f"{prefix}{i:06x}" for i in range(count)]
