"""A sweep chunk's arrays as its items' record (pure logic, no I/O).

A submitted sweep chunk is recorded once, not once per item: its marker (the item a worker
writes when it starts the chunk) gains the chunk's Slurm arrays (``SweepArray``), with the
item fields every item shares (the template's name, paths, tags and dependencies), in one
transaction that also counts the items out of the backlog and into the batch's SUBMITTED. That
is what makes a sweep of 10,000 items one write per array rather than 10,000 writes.

From then on an item without a record of its own reads as PENDING in its array
(``submitted_item``): position ``p`` of the chunk is task ``p - first`` of the array whose
span holds it, with what Slurm last said of the array's pending tasks (``PendingFields``,
written by the status sweep once per array when it changes). An item gets its own record
when Slurm moves it on (the status sweep writes it with its new state) or when an earlier
writer gave it one (cancelled or failed before the chunk was submitted: those positions are no
task, and their record wins). A chunk with items still reading from its arrays stays in the
status sweep's attention index (``SubmittedChunk``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from datetime import datetime

from pydantic import BaseModel, Field

from broker.batches.items import unrecorded_item
from broker.jobs.models import Dependency, JobSpec
from broker.jobs.records import JobRecord, JobState
from broker.requests.models import RequestRecord


class SweepArray(BaseModel):
    """One Slurm array of a sweep chunk: positions ``first`` to ``last`` of the chunk."""

    slurm_id: str = Field(description="The array's Slurm job id.")
    first: int = Field(ge=0, description="The chunk position of task 0.")
    last: int = Field(ge=0, description="The chunk position of its last task.")
    tasks: int = Field(ge=1, description="How many tasks it has (positions without are none).")
    at: datetime = Field(description="When it was recorded.")

    def key(self) -> str:
        """Its key in the chunk's marker: the same array on every delivery (first is k * size)."""
        return str(self.first)


class SharedFields(BaseModel):
    """What every item of a sweep shows of its template."""

    name: str | None = None
    working_directory: str | None = None
    output: str | None = None
    error: str | None = None
    tags: dict[str, str] | None = None
    dependency: list[Dependency] | None = None

    @classmethod
    def of(cls, template: JobSpec) -> SharedFields:
        """The fields of a sweep's template its items show."""
        return cls(**{name: getattr(template, name) for name in cls.model_fields})


class PendingFields(BaseModel):
    """What Slurm last said of an array's pending tasks (one of them, read by the status
    sweep): what its items without a record show while they wait."""

    slurm_state: str | None = None
    reason: str | None = None
    submit_time: str | None = None


class SubmittedChunk(BaseModel):
    """A sweep chunk's recorded arrays, as its marker holds them."""

    batch_id: str
    chunk: int
    cluster: str
    arrays: list[SweepArray]
    shared: SharedFields = Field(default_factory=SharedFields)
    pending: dict[str, PendingFields] = Field(
        default_factory=dict, description="By array key: Slurm's word on its pending tasks."
    )

    def array_of(self, slurm_job_id: str) -> SweepArray | None:
        """The array a task id (``<array>_<task>``) belongs to."""
        base = slurm_job_id.partition("_")[0]
        return next((a for a in self.arrays if a.slurm_id == base), None)

    def holding(self, position: int) -> SweepArray | None:
        """The array whose span holds ``position`` (None: no recorded array does)."""
        return next((a for a in self.arrays if a.first <= position <= a.last), None)

    def covered(self, ids: list[str]) -> dict[str, str]:
        """The chunk's item ids (``ids``, in position order) within an array's span, with the
        Slurm id they would have as its task. A position whose item has a record of its own
        (no task there) is in the answer too: callers read records first."""
        return {ids[p]: f"{array.slurm_id}_{p - array.first}" for p, array in self.spans(ids)}

    def spans(self, ids: list[str]) -> Iterator[tuple[int, SweepArray]]:
        """Each position of the chunk's items ``ids`` that an array's span holds, with it."""
        for array in self.arrays:
            for position in range(array.first, min(array.last, len(ids) - 1) + 1):
                yield position, array


def submitted_item(
    batch: RequestRecord, job_id: str, chunk: SubmittedChunk, ids: list[str]
) -> JobRecord | None:
    """The PENDING view of a sweep item without a record of its own, from its chunk's arrays
    (None: not an item of the chunk, or no recorded array holds it). ``ids`` are the chunk's
    items in position order (``chunk_item_ids``): ascending ids, so found by bisection."""
    position = bisect_left(ids, job_id)
    if position == len(ids) or ids[position] != job_id:
        return None
    array = chunk.holding(position)
    return None if array is None else _task(batch, chunk, ids, position, array)


def submitted_items(
    batch: RequestRecord, chunk: SubmittedChunk, ids: list[str], without: set[str]
) -> list[JobRecord]:
    """The PENDING views of every item the chunk's arrays hold, but those in ``without`` (the
    items that have a record of their own)."""
    return [
        job
        for position, array in chunk.spans(ids)
        if ids[position] not in without
        and (job := _task(batch, chunk, ids, position, array)) is not None
    ]


def _task(
    batch: RequestRecord, chunk: SubmittedChunk, ids: list[str], position: int, array: SweepArray
) -> JobRecord | None:
    job = unrecorded_item(batch, ids[position])
    if job is None or job.batch_chunk != chunk.chunk:
        return None
    return job.model_copy(
        update={
            **dict(chunk.shared),
            "state": JobState.PENDING,
            "slurm_job_id": f"{array.slurm_id}_{position - array.first}",
            "updated_at": array.at,
            **dict(chunk.pending.get(array.key(), PendingFields())),
        }
    )


def arrays_of(ids: list[str | None], submitted: dict[str, str], at: datetime) -> list[SweepArray]:
    """The arrays that hold the ``submitted`` items (job id -> ``<array>_<task>``) of a chunk
    whose positions are ``ids`` (None: no task at that position)."""
    spans: dict[str, SweepArray] = {}
    for position, job_id in enumerate(ids):
        if job_id is None or job_id not in submitted:
            continue
        array, _, task = submitted[job_id].partition("_")
        first = position - int(task)
        seen = spans.get(array)
        if seen is None:
            spans[array] = SweepArray(slurm_id=array, first=first, last=position, tasks=1, at=at)
        else:
            seen.last = max(seen.last, position)
            seen.tasks += 1
    return sorted(spans.values(), key=lambda a: a.first)
