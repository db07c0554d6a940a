"""In-memory fakes of the ports, for tests that need no AWS and no Slurm.

The store fake follows the same conditional rules as the DynamoDB adapter; the contract tests
in tests/functional/test_store_contract.py run the same cases against both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from broker.agent.protocol import AgentJobResult, AgentRequest, AgentResponse
from broker.batches.arrays import (
    PendingFields,
    SharedFields,
    SubmittedChunk,
    SweepArray,
    submitted_item,
)
from broker.batches.items import batch_id_of, chunk_item_ids, unrecorded_item
from broker.errors import (
    BackpressureError,
    ClusterNotFoundError,
    ConflictError,
    NotFoundError,
    TransientError,
)
from broker.jobs.records import JobRecord, JobState
from broker.notifications.events import Event
from broker.ports import (
    ArtifactStore,
    AttentionIndex,
    BatchStore,
    ClusterDirectory,
    ClusterTarget,
    CommandRunner,
    JobStore,
    Limits,
    Notifier,
    RequestQueue,
    RequestStore,
    UserMappings,
    UserResolver,
)
from broker.requests.models import QueueMessage, RequestRecord, RequestResult
from broker.requests.states import RequestState, can_transition
from broker.schema import ErrorInfo, utcnow
from broker.users.models import UserMapping


class InMemoryStore:
    """RequestStore + JobStore with the adapter's conditional semantics, in dicts."""

    def __init__(self) -> None:
        self.records: dict[str, RequestRecord] = {}
        self.jobs: dict[str, JobRecord] = {}
        self.started_chunks: set[tuple[str | None, int | None]] = set()  # every marker
        self.lost_chunks: dict[tuple[str, int], bool] = {}  # claimed lost -> reap done
        self.aliases: dict[tuple[str, str], str] = {}
        self.arrays: dict[tuple[str, int], SubmittedChunk] = {}  # sweep chunks' recorded arrays
        self.settled: set[tuple[str, int]] = set()  # out of the attention index
        self.counters: dict[tuple[str, str], int] = {}
        self.writes = 0

    # requests
    def create(self, record: RequestRecord) -> None:
        if record.request_id in self.records:
            raise ConflictError(f"request {record.request_id} exists already")
        self.records[record.request_id] = record
        self.writes += 1

    create_request = create

    def get(self, request_id: str) -> RequestRecord:
        try:
            return self.records[request_id]
        except KeyError:
            raise NotFoundError(f"no request {request_id}") from None

    def _move(self, request_id: str, new: RequestState, **changes: Any) -> RequestRecord | None:
        current = self.get(request_id)
        if not can_transition(current.state, new):
            return None
        if new.final:
            changes["notify_pending"] = new.value
        updated = current.model_copy(update={"state": new, "updated_at": utcnow(), **changes})
        self.records[request_id] = updated
        self.writes += 1
        return updated

    def mark_dispatched(self, request_id: str) -> RequestRecord | None:
        current = self.get(request_id)
        return self._move(request_id, RequestState.DISPATCHED, attempts=current.attempts + 1)

    def record_success(self, request_id: str, result: RequestResult) -> bool:
        return self._move(request_id, RequestState.SUCCEEDED, result=result, error=None) is not None

    def record_failure(self, request_id: str, error: ErrorInfo) -> bool:
        return self._move(request_id, RequestState.FAILED, error=error) is not None

    def record_cancelled(self, request_id: str) -> bool:
        return self._move(request_id, RequestState.CANCELLED) is not None

    def record_retry(self, request_id: str, error: ErrorInfo) -> None:
        current = self.get(request_id)
        if not current.state.final:
            self.records[request_id] = current.model_copy(update={"error": error})
            self.writes += 1

    def claim_requeue(self, request_id: str, now: datetime, stale_before: datetime) -> bool:
        current = self.records.get(request_id)
        if current is None or current.state is not RequestState.ACCEPTED:
            return False
        if current.requeued_at is not None and current.requeued_at >= stale_before:
            return False
        self.records[request_id] = current.model_copy(update={"requeued_at": now})
        self.writes += 1
        return True

    def clear_request_notification(self, request_id: str, state: str) -> bool:
        current = self.get(request_id)
        if current.notify_pending != state:
            return False
        self.records[request_id] = current.model_copy(update={"notify_pending": None})
        self.writes += 1
        return True

    # jobs
    def create_submission(
        self,
        request: RequestRecord,
        job: JobRecord,
        limits: Limits | None = None,
        *,
        ready_cluster: bool = False,  # the fake has no cluster records: every cluster is ready
    ) -> None:
        if request.request_id in self.records or job.job_id in self.jobs:
            raise ConflictError(f"request {request.request_id} exists already")
        cluster, owner = ("CLUSTER", job.cluster), ("OWNER", job.owner)
        if limits is not None:
            if self.counters.get(cluster, 0) + 1 > limits.cluster_backlog:
                raise BackpressureError(
                    "cluster backlog full", retry_after=limits.retry_after_seconds
                )
            if self.counters.get(owner, 0) + 1 > limits.owner_inflight:
                raise BackpressureError(
                    "too many in flight", retry_after=limits.retry_after_seconds
                )
            self.counters[cluster] = self.counters.get(cluster, 0) + 1
            self.counters[owner] = self.counters.get(owner, 0) + 1
        self.records[request.request_id] = request
        self.jobs[job.job_id] = job
        self.writes += 2

    def backlog(self, kind: str, name: str) -> int:
        return self.counters.get((kind, name), 0)

    def _count_out(self, job: JobRecord) -> None:
        for key in (("CLUSTER", job.cluster), ("OWNER", job.owner)):
            self.counters[key] = self.counters.get(key, 0) - 1

    def create_batch(
        self, request: RequestRecord, limits: Limits | None = None, *, ready_cluster: bool = False
    ) -> None:
        if request.request_id in self.records:
            raise ConflictError(f"request {request.request_id} exists already")
        count = request.items or 0
        cluster, owner = ("CLUSTER", request.cluster), ("OWNER", request.owner)
        if limits is not None and (
            self.counters.get(cluster, 0) + count > limits.cluster_backlog
            or self.counters.get(owner, 0) + count > limits.owner_inflight
        ):
            raise BackpressureError("backlog full", retry_after=limits.retry_after_seconds)
        self.counters[cluster] = self.counters.get(cluster, 0) + count
        self.counters[owner] = self.counters.get(owner, 0) + count
        self.records[request.request_id] = request
        self.writes += 1

    def jobs_by_id(self, job_ids: list[str]) -> dict[str, JobRecord]:
        return {j: self.jobs[j] for j in job_ids if j in self.jobs}

    def job_states(self, job_ids: list[str]) -> dict[str, JobState]:
        return {j: self.jobs[j].state for j in job_ids if j in self.jobs}

    def submitted_chunk(self, batch_id: str, chunk: int) -> SubmittedChunk | None:
        return self.arrays.get((batch_id, chunk))

    def record_arrays(
        self, batch: RequestRecord, chunk: int, arrays: list[SweepArray], shared: SharedFields
    ) -> list[SweepArray]:
        key = (batch.request_id, chunk)
        if key not in self.started_chunks or key in self.lost_chunks:
            raise TransientError("chunk not started", code="CHUNK_NOT_STARTED")
        current = self.arrays.get(key) or SubmittedChunk(
            batch_id=batch.request_id, chunk=chunk, cluster=batch.cluster, arrays=[]
        )
        known = {a.key() for a in current.arrays}
        new = [a for a in arrays if a.key() not in known]
        if not new:
            return []
        self.arrays[key] = current.model_copy(
            update={"arrays": sorted([*current.arrays, *new], key=lambda a: a.first),
                    "shared": shared}
        )  # fmt: skip
        self.settled.discard(key)
        tasks = sum(a.tasks for a in new)
        for counter in (("CLUSTER", batch.cluster), ("OWNER", batch.owner)):
            self.counters[counter] = self.counters.get(counter, 0) - tasks
        counts = dict(self.records[batch.request_id].counts)
        counts["SUBMITTED"] = counts.get("SUBMITTED", 0) + tasks
        self.records[batch.request_id] = self.records[batch.request_id].model_copy(
            update={"counts": counts}
        )
        for array in new:
            self.aliases[(batch.cluster, array.slurm_id)] = (
                f"{batch.request_id}#{chunk}#{array.first}"
            )
        self.writes += 1
        return new

    def record_pending(self, chunk: SubmittedChunk, pending: dict[str, PendingFields]) -> None:
        key = (chunk.batch_id, chunk.chunk)
        current = self.arrays.get(key)
        if current is not None and pending:
            merged = {**current.pending, **pending}
            self.arrays[key] = current.model_copy(update={"pending": merged})
            self.writes += 1

    def settle_chunk(self, chunk: SubmittedChunk) -> bool:
        key = (chunk.batch_id, chunk.chunk)
        current = self.arrays.get(key)
        if current is None or len(current.arrays) != len(chunk.arrays):
            return False
        self.settled.add(key)
        return True

    def record_batch_outcomes(
        self, batch: RequestRecord, outcomes: list[JobRecord]
    ) -> tuple[list[str], list[str]]:
        done: tuple[list[str], list[str]] = ([], [])
        for job in outcomes:
            current = self.jobs.get(job.job_id)
            if current is not None and current.state is not JobState.SUBMITTING:
                continue
            self.jobs[job.job_id] = job
            self.writes += 1
            self._count_out(job)
            outcome = "SUBMITTED" if job.slurm_job_id is not None else "FAILED"
            self._count_in_batch(batch.request_id, outcome)
            if job.slurm_job_id is not None:
                self.aliases[(job.cluster, job.slurm_job_id)] = job.job_id
            done[0 if job.slurm_job_id is not None else 1].append(job.job_id)
        return done

    def _count_in_batch(self, batch_id: str, outcome: str) -> None:
        batch = self.records[batch_id]
        counts = {**batch.counts, outcome: batch.counts.get(outcome, 0) + 1}
        self.records[batch_id] = batch.model_copy(update={"counts": counts})

    def get_job(self, job_id: str) -> JobRecord:
        if job_id in self.jobs:
            return self.jobs[job_id]
        batch = self.records.get(batch_id_of(job_id) or "")
        job = None if batch is None else unrecorded_item(batch, job_id)
        if job is None or batch is None:
            raise NotFoundError(f"no job {job_id}")
        chunk = self.arrays.get((batch.request_id, job.batch_chunk or 0))
        if chunk is not None:
            ids = chunk_item_ids(batch, chunk.chunk)
            return submitted_item(batch, job_id, chunk, ids) or job
        return job

    def find_job(self, cluster: str, ref: str) -> JobRecord:
        if ref.startswith("r"):
            job = self.get_job(ref)
            if job.cluster != cluster:
                raise NotFoundError(f"no job {ref}")
            return job
        base, _, task = ref.partition("_")
        job_id = self.aliases.get((cluster, base))
        if job_id is None:
            raise NotFoundError(f"no job {ref}")
        if "#" in job_id:  # a sweep's array: its chunk's item at position first + task
            batch_id, chunk, first = job_id.split("#")
            ids = chunk_item_ids(self.records[batch_id], int(chunk))
            position = int(first) + int(task or -1)
            found = self.get_job(ids[position]) if task and 0 <= position < len(ids) else None
            if found is None or found.slurm_job_id != ref:
                raise NotFoundError(f"no job {ref}")
            return found
        return self.get_job(job_id)

    def list_jobs(
        self,
        owner: str,
        cluster: str,
        *,
        states: frozenset[JobState] | None,
        name: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        next_token: str | None,
    ) -> tuple[list[JobRecord], str | None]:
        mine = sorted(
            (j for j in self.jobs.values() if j.owner == owner and j.cluster == cluster),
            key=lambda j: (j.created_at, j.job_id),
            reverse=True,
        )
        start = int(next_token or 0)
        page = mine[start : start + limit]
        token = str(start + limit) if start + limit < len(mine) else None
        kept = [
            j
            for j in page
            if (not states or j.state in states)
            and (name is None or j.name == name)
            and (since is None or j.created_at >= since)
            and (until is None or j.created_at <= until)
        ]
        return kept, token

    def _update_job(self, job_id: str, expect: JobState, **changes: Any) -> JobRecord | None:
        current = self.get_job(job_id)  # a batch item without a record gets its first here
        if current.state is not expect:
            return None
        updated = current.model_copy(update={**changes, "updated_at": utcnow()})
        self.jobs[job_id] = updated
        self.writes += 1
        return updated

    def start_submission(self, job_id: str) -> JobRecord | None:
        return self._update_job(job_id, JobState.SUBMITTING, submit_started=True)

    def start_chunk(self, batch_id: str, chunk: int, job_ids: list[str]) -> set[str]:
        if (batch_id, chunk) in self.lost_chunks:
            return set()
        self.started_chunks.add((batch_id, chunk))
        submitted = self.arrays.get((batch_id, chunk))
        held = set(submitted.covered(job_ids)) if submitted is not None else set()
        return {
            j
            for j in job_ids
            if j not in held and (j not in self.jobs or self.jobs[j].state is JobState.SUBMITTING)
        }

    def chunks_started(self, batch_id: str, chunk_count: int) -> set[int]:
        return {
            n
            for n in range(chunk_count)
            if (batch_id, n) in self.started_chunks and self.lost_chunks.get((batch_id, n), True)
        }

    def reap_chunk(self, batch_id: str, chunk: int) -> bool:
        key = (batch_id, chunk)
        if key in self.lost_chunks:
            if self.lost_chunks[key]:
                return False
            self.writes += 1  # an unfinished reap: the next sweep finishes it
            return True
        if key in self.started_chunks:
            return False
        self.started_chunks.add(key)
        self.lost_chunks[key] = False
        self.writes += 1
        return True

    def reap_done(self, batch_id: str, chunk: int) -> None:
        if (batch_id, chunk) in self.lost_chunks:
            self.lost_chunks[(batch_id, chunk)] = True
            self.writes += 1

    def cancel_unsubmitted(self, job_id: str) -> bool:
        job = self.get_job(job_id)
        if job.submit_started or (job.batch_id, job.batch_chunk) in self.started_chunks:
            return False
        return self._leave(
            job_id,
            state=JobState.CANCELLED,
            reason="cancelled before it reached Slurm",
            notify_pending=JobState.CANCELLED.value,
        )

    def record_submitted(self, job_id: str, slurm_job_id: str) -> bool:
        moved = self._leave(job_id, state=JobState.PENDING, slurm_job_id=slurm_job_id)
        if moved:
            self.aliases[(self.get_job(job_id).cluster, slurm_job_id)] = job_id
        return moved

    def _leave(self, job_id: str, **changes: Any) -> bool:
        """Out of SUBMITTING and out of the backlog counters (and into its batch's counts)."""
        if self.get_job(job_id).state is not JobState.SUBMITTING:
            return False
        moved = self._update_job(job_id, JobState.SUBMITTING, **changes)
        if moved is not None:
            self._count_out(moved)
            if moved.batch_id is not None and moved.batch_id in self.records:
                outcome = {JobState.PENDING: "SUBMITTED", JobState.CANCELLED: "CANCELLED"}
                self._count_in_batch(moved.batch_id, outcome.get(moved.state, "FAILED"))
        return moved is not None

    def record_submit_failed(self, job_id: str, reason: str) -> bool:
        return self._leave(
            job_id,
            state=JobState.SUBMIT_FAILED,
            reason=reason,
            notify_pending=JobState.SUBMIT_FAILED.value,
        )

    def update_job(
        self,
        job: JobRecord,
        new_state: JobState,
        changes: Mapping[str, Any],
        *,
        recorded: bool = True,
    ) -> bool:
        extra: dict[str, Any] = {**changes, "state": new_state}
        if new_state.final and not job.state.final:
            extra["notify_pending"] = new_state.value
        if not recorded:  # its first record, only if it has none
            if job.job_id in self.jobs:
                return False
            self.jobs[job.job_id] = job.model_copy(update={**extra, "updated_at": utcnow()})
            self.writes += 1
            return True
        if job.job_id not in self.jobs:
            return False  # the adapter's update is conditional on a stored state
        return self._update_job(job.job_id, job.state, **extra) is not None

    def clear_job_notification(self, job_id: str, state: str) -> bool:
        current = self.get_job(job_id)
        if current.notify_pending != state:
            return False
        self.jobs[job_id] = current.model_copy(update={"notify_pending": None})
        self.writes += 1
        return True

    def attention(self) -> tuple[list[JobRecord], list[RequestRecord], list[SubmittedChunk]]:
        jobs = [j for j in self.jobs.values() if not j.state.final or j.notify_pending]
        requests = [r for r in self.records.values() if not r.state.final or r.notify_pending]
        chunks = [c for key, c in self.arrays.items() if key not in self.settled]
        return jobs, requests, chunks


# Kept for tests written before jobs existed.
InMemoryRequestStore = InMemoryStore


@dataclass
class FakeQueue:
    """RequestQueue that keeps what was sent; can be told to fail."""

    sent: list[QueueMessage] = field(default_factory=list)
    delays: list[tuple[str, str, int]] = field(default_factory=list)
    fail_with: Exception | None = None

    def send(self, message: QueueMessage) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(message)

    def send_many(self, messages: list[QueueMessage]) -> list[QueueMessage]:
        if self.fail_with is not None:
            return list(messages)
        self.sent.extend(messages)
        return []

    def delay_retry(self, event_source_arn: str, receipt_handle: str, seconds: int) -> None:
        self.delays.append((event_source_arn, receipt_handle, seconds))


@dataclass
class FakeDirectory:
    """ClusterDirectory knowing a fixed set of local clusters."""

    names: frozenset[str] = frozenset({"local"})
    mode: Literal["ssm", "local"] = "local"

    def resolve(self, cluster: str) -> ClusterTarget:
        if cluster not in self.names:
            raise ClusterNotFoundError(f"no cluster named {cluster!r}")
        return ClusterTarget(name=cluster, mode=self.mode, instance_id="i-0123456789abcdef0")


@dataclass
class ScriptedRunner:
    """CommandRunner that answers from a script of responses or exceptions, and records calls."""

    answers: list[AgentResponse | Exception] = field(default_factory=list)
    calls: list[AgentRequest] = field(default_factory=list)

    def run(self, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        self.calls.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def runner_for(self, mode: Literal["ssm", "local"]) -> CommandRunner:
        return self


@dataclass
class RecordingNotifier:
    """Notifier that keeps what was published; can be told to fail."""

    published: list[Event] = field(default_factory=list)
    fail_with: Exception | None = None

    def publish(self, event: Event) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.published.append(event)


@dataclass
class MemoryArtifacts:
    """ArtifactStore keeping texts in a dict; URLs are fake."""

    texts: dict[str, str] = field(default_factory=dict)

    def put_text(self, key: str, text: str) -> str:
        self.texts[key] = text
        return f"https://artifacts.invalid/{key}"


def submitted(token: str, job_id: str = "42", *, reused: bool = False) -> AgentResponse:
    """An agent answer: the job with ``token`` is Slurm job ``job_id``."""
    return AgentResponse(
        ok=True, op="submit", results=[AgentJobResult(token=token, job_id=job_id, reused=reused)]
    )


class EveryoneAs:
    """UserResolver fake for tests that are not about mappings: every caller, on every cluster,
    runs as one POSIX user (the real resolver, ``broker.users.service.MappedUsers``, reads the
    broker's mappings and refuses unmapped callers)."""

    def __init__(self, user: str = "hpcb-dev") -> None:
        self.user = user

    def user_for(self, cluster: str, owner: str) -> str:
        return self.user


@dataclass
class InMemoryUserMappings:
    """UserMappings fake: a dict by (cluster, principal)."""

    items: dict[tuple[str, str], UserMapping] = field(default_factory=dict)

    def get_mapping(self, cluster: str, principal: str) -> UserMapping | None:
        return self.items.get((cluster, principal))

    def put_mapping(self, mapping: UserMapping) -> None:
        self.items[(mapping.cluster, mapping.principal)] = mapping

    def delete_mapping(self, cluster: str, principal: str) -> bool:
        return self.items.pop((cluster, principal), None) is not None

    def list_mappings(
        self, cluster: str, *, limit: int, next_token: str | None
    ) -> tuple[list[UserMapping], str | None]:
        mine = sorted((m for (c, _), m in self.items.items() if c == cluster),
                      key=lambda m: m.principal)  # fmt: skip
        start = int(next_token) if next_token else 0
        page = mine[start : start + limit]
        return page, (str(start + limit) if start + limit < len(mine) else None)


if TYPE_CHECKING:
    # Each fake implements every member of the ports it stands for: mypy (``make lint``) fails
    # here when a port gains a member its fake lacks.
    _requests: RequestStore = InMemoryStore()
    _jobs: JobStore = InMemoryStore()
    _batches: BatchStore = InMemoryStore()
    _attention: AttentionIndex = InMemoryStore()
    _queue: RequestQueue = FakeQueue()
    _directory: ClusterDirectory = FakeDirectory()
    _runner: CommandRunner = ScriptedRunner()
    _notifier: Notifier = RecordingNotifier()
    _artifacts: ArtifactStore = MemoryArtifacts()
    _users: UserResolver = EveryoneAs()
    _mappings: UserMappings = InMemoryUserMappings()
