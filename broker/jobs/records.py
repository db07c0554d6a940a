"""Jobs: broker job states, the one Slurm -> broker state table, job records, and the pure
logic that turns what Slurm says (``SlurmJobStatus``) into a job's next state.

States are ordered (PSI/J style): a job only moves to a higher rank, and never leaves a final
state, so overlapping sweeps or late answers can never move it backwards. A Slurm requeue
(RUNNING -> PENDING) is therefore not shown: the job stays RUNNING until it ends.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from broker.agent.protocol import SlurmJobStatus
from broker.jobs.models import Dependency, JobSpec, slurm_token, sweep_token


class JobState(StrEnum):
    """Lifecycle of a job as the broker reports it."""

    SUBMITTING = "SUBMITTING"
    """Accepted by the broker; its submission is queued or running (not in Slurm yet)."""
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    PREEMPTED = "PREEMPTED"
    SUBMIT_FAILED = "SUBMIT_FAILED"
    """Never reached Slurm: the submission failed (see the submit request's error)."""

    @property
    def rank(self) -> int:
        """Order of progress: 0 submitting, 1 pending, 2 running, 3 final."""
        return _RANK.get(self, 3)

    @property
    def final(self) -> bool:
        """Whether the job has ended (no further transition)."""
        return self.rank == 3


_RANK = {JobState.SUBMITTING: 0, JobState.PENDING: 1, JobState.RUNNING: 2}

#: The one table from Slurm's native states (long names and squeue's short codes) to ours.
SLURM_STATES: dict[str, JobState] = {
    # waiting
    "PENDING": JobState.PENDING, "PD": JobState.PENDING,
    "CONFIGURING": JobState.PENDING, "CF": JobState.PENDING,
    "REQUEUED": JobState.PENDING, "RQ": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING, "RF": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING, "RH": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING, "RD": JobState.PENDING,
    "SPECIAL_EXIT": JobState.PENDING, "SE": JobState.PENDING,
    # running (completing, suspended and stopped jobs still hold their allocation)
    "RUNNING": JobState.RUNNING, "R": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING, "CG": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING, "S": JobState.RUNNING,
    "STOPPED": JobState.RUNNING, "ST": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING, "SI": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING, "SO": JobState.RUNNING,
    "RESIZING": JobState.RUNNING, "RS": JobState.RUNNING,
    # ended
    "COMPLETED": JobState.COMPLETED, "CD": JobState.COMPLETED,
    "FAILED": JobState.FAILED, "F": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED, "CA": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED, "RV": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT, "TO": JobState.TIMEOUT,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY, "OOM": JobState.OUT_OF_MEMORY,
    "NODE_FAIL": JobState.NODE_FAIL, "NF": JobState.NODE_FAIL,
    "BOOT_FAIL": JobState.BOOT_FAIL, "BF": JobState.BOOT_FAIL,
    "DEADLINE": JobState.DEADLINE, "DL": JobState.DEADLINE,
    "PREEMPTED": JobState.PREEMPTED, "PR": JobState.PREEMPTED,
}  # fmt: skip


def from_slurm(native: str) -> JobState | None:
    """Our state for a Slurm state word ('CANCELLED by 0' -> CANCELLED); None if unknown."""
    word = native.strip().split(" ", 1)[0].rstrip("+").upper()
    return SLURM_STATES.get(word)


def advances(current: JobState, new: JobState) -> bool:
    """Whether ``current -> new`` is progress (higher rank, and ``current`` not final)."""
    return not current.final and new.rank > current.rank


class TaskStatus(BaseModel):
    """One array task's state."""

    state: JobState
    exit_code: int | None = None


class JobRecord(BaseModel):
    """A job the broker submitted (or is submitting), as stored and served."""

    job_id: str = Field(description="Broker job id: the id of the request that submitted it.")
    cluster: str
    owner: str = Field(description="IAM principal that submitted it.")
    user: str | None = Field(
        default=None, description="POSIX user it runs as: the owner's mapped user at accept."
    )
    name: str | None = None
    state: JobState
    slurm_job_id: str | None = Field(default=None, description="Slurm's id once submitted.")
    slurm_state: str | None = Field(default=None, description="Slurm's own last state word.")
    reason: str | None = Field(default=None, description="Slurm's reason (pending) or ours.")
    exit_code: int | None = None
    signal: int | None = None
    submit_time: str | None = Field(default=None, description="Slurm's time (head-node clock).")
    start_time: str | None = None
    end_time: str | None = None
    created_at: datetime
    updated_at: datetime
    array: str | None = None
    tasks: dict[str, TaskStatus] = Field(default_factory=dict)
    task_counts: dict[str, int] = Field(default_factory=dict)
    dependency: list[Dependency] | None = None
    working_directory: str | None = None
    output: str | None = None
    error: str | None = None
    tags: dict[str, str] | None = None
    submit_started: bool = False
    notify_pending: str | None = Field(default=None, description="State awaiting its event.")
    final_seen_at: datetime | None = None
    batch_id: str | None = Field(default=None, description="The batch request it came in.")
    batch_index: int | None = None
    batch_chunk: int | None = Field(
        default=None, description="Its chunk of the batch: one message, one head-node command."
    )


def new_job(
    job_id: str,
    owner: str,
    cluster: str,
    spec: JobSpec,
    now: datetime,
    *,
    user: str | None,
    batch_id: str | None = None,
    batch_index: int | None = None,
    batch_chunk: int | None = None,
) -> JobRecord:
    """The record of a job just accepted (SUBMITTING), with what its spec says about it."""
    return JobRecord(
        job_id=job_id,
        cluster=cluster,
        owner=owner,
        user=user,
        name=spec.name,
        state=JobState.SUBMITTING,
        created_at=now,
        updated_at=now,
        array=spec.array,
        dependency=spec.dependency,
        working_directory=spec.working_directory,
        output=spec.output,
        error=spec.error,
        tags=spec.tags,
        batch_id=batch_id,
        batch_index=batch_index,
        batch_chunk=batch_chunk,
    )


def array_indexes(spec: str) -> list[int]:
    """Every index of a Slurm array expression ('1-7:2,10%4' -> [1, 3, 5, 7, 10])."""
    body = spec.split("%", 1)[0].strip("[]")
    indexes: list[int] = []
    for part in body.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if not match:
            raise ValueError(f"not an array expression: {spec!r}")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        step = int(match.group(3)) if match.group(3) else 1
        indexes.extend(range(first, last + 1, step))
    return sorted(set(indexes))


class Observation(BaseModel):
    """What one sweep learned about a job: the fields to write, if anything changed."""

    changes: dict[str, Any]
    new_state: JobState


#: Final states arrive from squeue/scontrol before sacct has the exit code (2-4 s lag); wait
#: this long for it before recording the end without one.
EXIT_CODE_WAIT_SECONDS = 120.0


def is_sweep_task(job: JobRecord) -> bool:
    """Whether a job is a sweep's item: a batch item whose Slurm id is an array task
    (``123_4``) though it asked for no ``array`` of its own."""
    task = "_" in (job.slurm_job_id or "") and job.array is None
    return task and job.batch_id is not None and job.batch_chunk is not None


def job_token(job: JobRecord) -> str:
    """The token of a job's Slurm comment, for the agent's check before a cancel or a read:
    its own (``hpcb:<job id>``), or, for a sweep's item, its chunk's (its array carries it
    plus ``a<k>``)."""
    if is_sweep_task(job) and job.batch_id is not None and job.batch_chunk is not None:
        return sweep_token(job.batch_id, job.batch_chunk)
    return slurm_token(job.job_id)


def observe(
    job: JobRecord,
    statuses: list[SlurmJobStatus],
    *,
    accounting: bool,
    now: datetime,
) -> Observation | None:
    """Turn Slurm's statuses for ``job`` into the changes to record (None: nothing new).

    Rules: only forward moves; a job Slurm does not mention is left as it is (never declared
    finished on a guess); a final state is recorded once its exit code is known, or without
    one when accounting is absent (Slurm cannot say) or after EXIT_CODE_WAIT_SECONDS.
    """
    if job.state.final or job.slurm_job_id is None:
        return None
    # A job's id is its base id; a sweep item's is one array task's ('123_4').
    mine = [s for s in statuses if job.slurm_job_id in (s.base_id, s.job_id)]
    if not mine:
        return None
    if job.array:
        return _observe_array(job, mine, accounting=accounting, now=now)
    status = next((s for s in mine if s.array_task is None), mine[0])
    state = from_slurm(status.state)
    if state is None:
        return None
    changes = _field_changes(job, status, state)
    if state.final and status.exit_code is None and accounting:
        return _awaiting_exit_code(job, state, changes, now)
    if state.final:
        changes["exit_code"] = status.exit_code
        changes["signal"] = status.signal
    return _result(job, state, changes)


def _field_changes(job: JobRecord, status: SlurmJobStatus, state: JobState) -> dict[str, Any]:
    """Times, Slurm's state word and (while waiting) its reason, where they changed."""
    changes: dict[str, Any] = {}
    for field in ("submit_time", "start_time", "end_time"):
        value = getattr(status, field)
        if value and value != getattr(job, field):
            changes[field] = value
    if status.state != job.slurm_state:
        changes["slurm_state"] = status.state
    if status.reason and status.reason != job.reason and not state.final:
        changes["reason"] = status.reason
    return changes


def _awaiting_exit_code(
    job: JobRecord, state: JobState, changes: dict[str, Any], now: datetime
) -> Observation | None:
    """Slurm says the job ended but sacct has no exit code yet: wait for it, within bounds."""
    if job.final_seen_at is None:
        changes["final_seen_at"] = now
    elif (now - job.final_seen_at).total_seconds() >= EXIT_CODE_WAIT_SECONDS:
        return Observation(changes={**changes, "reason": "exit code unknown"}, new_state=state)
    return _result(job, job.state, changes)


def _result(job: JobRecord, state: JobState, changes: dict[str, Any]) -> Observation | None:
    """The observation: a forward move, or field changes only, or nothing."""
    if advances(job.state, state):
        return Observation(changes=changes, new_state=state)
    return Observation(changes=changes, new_state=job.state) if changes else None


def _observe_array(
    job: JobRecord, statuses: list[SlurmJobStatus], *, accounting: bool, now: datetime
) -> Observation | None:
    expected = [str(i) for i in array_indexes(job.array or "")]
    tasks = dict(job.tasks)
    for status in statuses:
        state = from_slurm(status.state)
        if state is None or status.array_task is None:
            continue
        indexes = (
            [str(i) for i in array_indexes(status.array_task)]
            if status.array_task.startswith("[") or "-" in status.array_task
            else [status.array_task]
        )
        for index in indexes:
            current = tasks.get(index)
            if state.final and status.exit_code is None and accounting:
                continue  # wait for sacct's exit code (see observe)
            if current is None or advances(current.state, state):
                tasks[index] = TaskStatus(state=state, exit_code=status.exit_code)
    counts: dict[str, int] = {}
    for index in expected:
        state = tasks[index].state if index in tasks else JobState.PENDING
        counts[state.value] = counts.get(state.value, 0) + 1
    summary = _summarise(counts)
    changes: dict[str, Any] = {}
    if tasks != job.tasks:
        changes["tasks"] = tasks
    if counts != job.task_counts:
        changes["task_counts"] = counts
    if summary.final:
        codes = [t.exit_code for t in tasks.values() if t.exit_code is not None]
        changes["exit_code"] = max(codes) if codes else None
    return _result(job, summary, changes)


def _summarise(counts: dict[str, int]) -> JobState:
    """An array's state from its tasks' states.

    Running while any task is not final (PENDING if none has started); once all have ended:
    COMPLETED if all completed, CANCELLED if any was cancelled, else FAILED.
    """
    states = {JobState(s) for s in counts}
    if any(not s.final for s in states):
        return JobState.RUNNING if any(s.rank >= 2 for s in states) else JobState.PENDING
    if states == {JobState.COMPLETED}:
        return JobState.COMPLETED
    if JobState.CANCELLED in states:
        return JobState.CANCELLED
    return JobState.FAILED


class JobView(BaseModel):
    """The API's view of a job (``GET /v1/clusters/{cluster}/jobs/{job_id}``)."""

    job_id: str = Field(description="Broker job id (the id of the request that submitted it).")
    cluster: str
    user: str | None = Field(default=None, description="POSIX user the job runs as.")
    name: str | None = None
    state: JobState
    final: bool = Field(description="Whether the job has ended.")
    slurm_job_id: str | None = None
    slurm_state: str | None = Field(default=None, description="Slurm's own last state word.")
    reason: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    submit_time: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    created_at: datetime
    updated_at: datetime
    array: str | None = None
    task_counts: dict[str, int] = Field(default_factory=dict, description="Array tasks by state.")
    tasks: dict[str, TaskStatus] = Field(default_factory=dict, description="Array tasks.")
    dependency: list[Dependency] | None = None
    working_directory: str | None = None
    output: str | None = None
    error: str | None = None
    tags: dict[str, str] | None = None

    @classmethod
    def of(cls, job: JobRecord, *, with_tasks: bool = True) -> JobView:
        """The public view of a record (owner and bookkeeping stay private)."""
        fields = job.model_dump(
            exclude={
                "owner",
                "submit_started",
                "notify_pending",
                "final_seen_at",
                "tasks",
                "batch_index",
                "batch_chunk",
            }
        )
        return cls(**fields, final=job.state.final, tasks=job.tasks if with_tasks else {})


class JobList(BaseModel):
    """A page of jobs, newest first."""

    jobs: list[JobView]
    next_token: str | None = Field(
        default=None, description="Pass as next_token for the next page; absent on the last."
    )
