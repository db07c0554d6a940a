"""Domain services: what the API and the workers do, free of HTTP, SQS event shapes and boto3.

They depend on ports only (``broker.ports``) and raise broker errors (``broker.errors``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError as PydanticValidationError

from broker.agent.protocol import (
    AgentErrorInfo,
    AgentJob,
    AgentJobResult,
    AgentRequest,
    JobTarget,
    OutputQuery,
)
from broker.batches import item_id, unrecorded_item
from broker.errors import (
    BrokerError,
    ClusterNotFoundError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PermanentError,
    TransientError,
    ValidationError,
)
from broker.jobs import JobRecord, JobState
from broker.models import (
    MAX_SCRIPT_BYTES,
    BatchAccepted,
    BatchBody,
    BatchItem,
    BatchItemError,
    BatchItemView,
    BatchResult,
    CancelResult,
    ErrorInfo,
    FieldError,
    JobBatchMessage,
    JobCancelMessage,
    JobOutputMessage,
    JobResult,
    JobSpec,
    JobSubmitMessage,
    OutputPart,
    OutputQueryBody,
    OutputResult,
    QueueMessage,
    RequestKind,
    RequestRecord,
    batch_ids,
    new_request_id,
    slurm_token,
    utcnow,
)
from broker.observability import logger
from broker.ports import (
    ArtifactStore,
    ClusterDirectory,
    CommandRunner,
    Limits,
    RequestQueue,
    Store,
)
from broker.states import RequestState
from broker.sweep import Announcer, finish_batch

if TYPE_CHECKING:
    from broker.cluster_service import ClusterGate

#: How many item errors an answer lists (the count is always given).
MAX_LISTED_ERRORS = 1000
#: Jobs per batch chunk (one queue message, one agent call), and the chunk's size bound.
CHUNK_ITEMS = 1000
CHUNK_BYTES = 120 * 1024


class BatchRejectedError(ValidationError):
    """Items of a batch are invalid and the batch cannot be accepted (422, fields listed)."""

    code = "BATCH_REJECTED"

    def __init__(self, message: str, fields: list[FieldError]) -> None:
        super().__init__(message)
        self.fields = fields


#: Added to a job's age for the agent's accounting search: clock skew between the worker and
#: the head node (both NTP-synced in AWS) is far smaller.
LOOKBACK_MARGIN = timedelta(minutes=10)


def lookback_seconds(accepted_at: datetime) -> int:
    """Seconds of Slurm accounting that can hold a job accepted at ``accepted_at``.

    Its token can only be in a job submitted after it was accepted: the age of the request
    plus a margin, within the agent's bounds (60 s to 90 days).
    """
    age = utcnow() - accepted_at + LOOKBACK_MARGIN
    return max(60, min(90 * 86400, int(age.total_seconds()) + 1))


def chunk_items(items: list[BatchItem]) -> list[list[BatchItem]]:
    """Items in chunks of at most CHUNK_ITEMS and about CHUNK_BYTES of JSON each.

    A chunk is one queue message and one head-node command: bigger chunks mean fewer commands
    (SSM carries any size through S3 staging); the bound keeps a message well under SQS's
    256 KiB and one agent call well inside the runner's timeout (sbatch: ~7-10 ms a job).
    """
    chunks: list[list[BatchItem]] = []
    size = 0
    for item in items:
        length = len(item.model_dump_json())
        if not chunks or len(chunks[-1]) >= CHUNK_ITEMS or size + length > CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += length
    return chunks


def new_job(
    job_id: str,
    owner: str,
    cluster: str,
    spec: JobSpec,
    now: datetime,
    *,
    batch_id: str | None = None,
    batch_index: int | None = None,
    batch_chunk: int | None = None,
) -> JobRecord:
    """The record of a job just accepted (SUBMITTING), with what its spec says about it."""
    return JobRecord(
        job_id=job_id,
        cluster=cluster,
        owner=owner,
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


def item_outcome(
    batch: RequestRecord,
    item: BatchItem,
    chunk: int | None,
    *,
    slurm_job_id: str | None = None,
    reason: str | None = None,
) -> JobRecord:
    """The record of a batch item leaving SUBMITTING: PENDING with its Slurm id, else
    SUBMIT_FAILED with ``reason`` (its notification pending)."""
    job = new_job(item.job_id, batch.owner, batch.cluster, item.spec, batch.created_at,
                  batch_id=batch.request_id, batch_index=item.index, batch_chunk=chunk)  # fmt: skip
    changes: dict[str, object] = (
        {"state": JobState.PENDING, "slurm_job_id": slurm_job_id}
        if slurm_job_id is not None
        else {"state": JobState.SUBMIT_FAILED, "reason": (reason or "")[:1000],
              "notify_pending": JobState.SUBMIT_FAILED.value}
    )  # fmt: skip
    return job.model_copy(update={**changes, "updated_at": utcnow()})


def _item_fields(index: int, exc: PydanticValidationError) -> list[FieldError]:
    """An item's validation errors, located in the batch body."""
    return [
        FieldError(
            field=".".join(["body", "jobs", str(index), *(str(p) for p in error["loc"])]),
            message=error["msg"],
            type=error["type"],
        )
        for error in exc.errors()
    ]


#: Output text above this many characters (both streams) goes to S3 behind a presigned URL
#: instead of inline in the request record (SSM itself carries at most 24,000 characters).
INLINE_OUTPUT_CHARS = 24_000


class RequestService:
    """The API's side: accept writes (record, then enqueue) and read records back."""

    def __init__(
        self,
        store: Store,
        queue: RequestQueue,
        clusters: ClusterDirectory,
        announcer: Announcer | None = None,
        limits: Limits | None = None,
        *,
        cluster_gate: ClusterGate | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._clusters = clusters
        self._announce = announcer
        self._limits = limits
        self._gate = cluster_gate

    def submit_job(self, owner: str, cluster: str, spec: JobSpec) -> RequestRecord:
        """Accept a job submission: validate, record request and job, enqueue.

        The records are written before the message is sent, so a GET right after the POST
        never answers 404 and a worker never sees a message without its records.

        Raises:
            PayloadTooLargeError: the script is over MAX_SCRIPT_BYTES.
            ClusterNotFoundError: no such cluster.
            TransientError: the table or queue cannot take the request now (it is then FAILED
                with ``ENQUEUE_FAILED``, and the caller may send it again).
        """
        size = len(spec.script.encode("utf-8"))
        if size > MAX_SCRIPT_BYTES:
            raise PayloadTooLargeError(
                f"the script is {size} bytes; the limit is {MAX_SCRIPT_BYTES} bytes. "
                "Keep large inputs in files on the cluster and reference them from the script."
            )
        self._resolve(cluster)
        record = self._new_request(owner, cluster, "job.submit", spec=spec)
        job = new_job(record.request_id, owner, cluster, spec, record.created_at)
        self._store.create_submission(record, job, self._limits, ready_cluster=self._gated)
        message = JobSubmitMessage(
            request_id=record.request_id, owner=owner, cluster=cluster, spec=spec
        )
        self._enqueue(record, message, job_id=job.job_id)
        return record

    def submit_batch(self, owner: str, cluster: str, body: BatchBody) -> BatchAccepted:
        """Accept a burst: validate each item, record the batch, enqueue its valid items in
        chunks. Items get their own records with their outcomes (``broker.batches``): the
        accept costs one transaction and a few queue calls, however many items.

        Raises:
            BatchRejectedError: ``atomic`` and some item is invalid, or no item is valid.
            ClusterNotFoundError, BackpressureError, TransientError: as for one job.
        """
        self._resolve(cluster)
        valid: list[tuple[int, JobSpec]] = []
        rejected: list[BatchItemError] = []
        for index, raw in enumerate(body.jobs):
            try:
                spec = JobSpec.model_validate(raw)
                size = len(spec.script.encode("utf-8"))
                if size > MAX_SCRIPT_BYTES:
                    raise PayloadTooLargeError(f"the script is {size} bytes")
                valid.append((index, spec))
            except PydanticValidationError as exc:
                rejected.append(BatchItemError(index=index, fields=_item_fields(index, exc)))
            except PayloadTooLargeError as exc:
                error = FieldError(
                    field=f"body.jobs.{index}.script", message=exc.message, type="too_large"
                )
                rejected.append(BatchItemError(index=index, fields=[error]))
        if rejected and (body.atomic or not valid):
            raise BatchRejectedError(
                f"{len(rejected)} of {len(body.jobs)} items are invalid"
                + ("; the batch is atomic" if body.atomic else ""),
                [f for item in rejected[:MAX_LISTED_ERRORS] for f in item.fields],
            )
        batch_id, prefix, ids = batch_ids(len(body.jobs))
        chunks = chunk_items([BatchItem(index=i, job_id=ids[i], spec=spec) for i, spec in valid])
        now = utcnow()
        record = RequestRecord(
            request_id=batch_id, kind="job.batch", owner=owner, cluster=cluster,
            state=RequestState.ACCEPTED, created_at=now, updated_at=now, items=len(valid),
            batch_size=len(body.jobs), chunk_starts=[chunk[0].index for chunk in chunks],
            rejected_items=[item.index for item in rejected] or None,
        )  # fmt: skip
        self._store.create_batch(record, self._limits, ready_cluster=self._gated)
        messages: list[QueueMessage] = [
            JobBatchMessage(request_id=batch_id, owner=owner, cluster=cluster, items=chunk,
                            chunk=number)
            for number, chunk in enumerate(chunks)
        ]  # fmt: skip
        unsent = self._queue.send_many(messages)
        if unsent:
            lost = [
                item_outcome(record, i, m.chunk, reason="could not be queued")
                for m in unsent
                if isinstance(m, JobBatchMessage)
                for i in m.items
            ]
            self._store.record_batch_outcomes(record, lost)
            if len(unsent) == len(messages):
                self._store.record_failure(
                    batch_id, ErrorInfo(code="ENQUEUE_FAILED", message="the batch could not "
                                        "be queued; send it again", transient=True),
                )  # fmt: skip
                raise TransientError("the batch could not be queued; send it again",
                                     code="ENQUEUE_FAILED")  # fmt: skip
        return BatchAccepted(
            request_id=batch_id,
            location=f"/v1/requests/{batch_id}",
            accepted=len(valid),
            rejected_count=len(rejected),
            rejected=rejected[:MAX_LISTED_ERRORS],
            job_id_prefix=prefix,
        )

    @property
    def _gated(self) -> bool:
        """Whether submissions check the cluster's record (in their write's transaction)."""
        return self._gate is not None

    def _resolve(self, cluster: str) -> None:
        """The cluster must be known; one the broker is creating (or deleting) has no head node
        yet (or any more) and answers 409 CLUSTER_NOT_READY, not 404.

        A cluster found here may still be refused with 409 by the submission's transaction,
        which checks the cluster's record (one read fewer than checking before, and atomic).
        """
        try:
            self._clusters.resolve(cluster)
        except ClusterNotFoundError:
            if self._gate is not None:
                self._gate.ensure_ready(cluster)
            raise

    def batch_page(self, record: RequestRecord, start: int, limit: int) -> list[BatchItemView]:
        """A page of a batch's items, by index, with their jobs' states (items without a
        record yet are SUBMITTING; rejected items are left out)."""
        ids = [item_id(record.request_id, i) for i in range(start, start + limit)]
        jobs = self._store.jobs_by_id(ids)
        return [
            BatchItemView(
                index=job.batch_index if job.batch_index is not None else -1,
                job_id=job.job_id,
                state=job.state.value,
                slurm_job_id=job.slurm_job_id,
                reason=job.reason,
            )
            for job_id in ids
            if (job := jobs.get(job_id) or unrecorded_item(record, job_id)) is not None
        ]

    def cancel_job(self, owner: str, cluster: str, ref: str) -> RequestRecord:
        """Accept a cancel. A job still queued in SQS is cancelled at once, never reaching Slurm.

        Raises:
            NotFoundError: no such job of the caller's.
            ConflictError: the job has already ended.
        """
        job = self.get_job(owner, cluster, ref)
        if job.state.final:
            raise ConflictError(f"job {job.job_id} has already ended ({job.state})")
        if job.state is JobState.SUBMITTING and self._store.cancel_unsubmitted(job.job_id):
            now = utcnow()
            record = RequestRecord(
                request_id=new_request_id(),
                kind="job.cancel",
                owner=owner,
                cluster=cluster,
                state=RequestState.SUCCEEDED,
                created_at=now,
                updated_at=now,
                job_id=job.job_id,
                result=CancelResult(job_id=job.job_id, before_submission=True),
                notify_pending=RequestState.SUCCEEDED.value,
            )
            self._store.create_request(record)
            if self._announce is not None:  # else the sweep publishes both, a minute later
                self._announce.job(job.job_id, JobState.SUBMITTING)
                self._announce.request(record.request_id)
            return record
        record = self._new_request(owner, cluster, "job.cancel", job_id=job.job_id)
        self._store.create_request(record)
        message = JobCancelMessage(
            request_id=record.request_id, owner=owner, cluster=cluster, job_id=job.job_id
        )
        self._enqueue(record, message)
        return record

    def fetch_output(
        self, owner: str, cluster: str, ref: str, query: OutputQueryBody
    ) -> RequestRecord:
        """Accept an output fetch for a job that reached Slurm.

        Raises:
            NotFoundError: no such job of the caller's.
            ConflictError: the job has no Slurm id (not submitted, or never will be).
        """
        job = self.get_job(owner, cluster, ref)
        if job.slurm_job_id is None:
            raise ConflictError(f"job {job.job_id} has not reached Slurm ({job.state})")
        if query.task is not None and job.array is None:
            raise ConflictError(f"job {job.job_id} is not an array; 'task' does not apply")
        if query.task is None and job.array is not None:
            # Slurm keeps an array's base id on its last task: without a task the answer
            # would silently be that task's file.
            raise ValidationError(f"job {job.job_id} is an array ({job.array}): name a 'task'")
        record = self._new_request(owner, cluster, "job.output", job_id=job.job_id, query=query)
        self._store.create_request(record)
        message = JobOutputMessage(
            request_id=record.request_id,
            owner=owner,
            cluster=cluster,
            job_id=job.job_id,
            query=query,
        )
        self._enqueue(record, message)
        return record

    def get_request(self, owner: str, request_id: str) -> RequestRecord:
        """Read one of the caller's requests (NotFoundError if absent or someone else's)."""
        record = self._store.get(request_id)
        if record.owner != owner:
            raise NotFoundError(f"no request {request_id}")
        return record

    def get_job(self, owner: str, cluster: str, ref: str) -> JobRecord:
        """Read one of the caller's jobs by broker or Slurm id (NotFoundError otherwise)."""
        self._clusters.resolve(cluster)
        job = self._store.find_job(cluster, ref)
        if job.owner != owner or job.cluster != cluster:
            raise NotFoundError(f"no job {ref} on {cluster}")
        return job

    def list_jobs(
        self,
        owner: str,
        cluster: str,
        *,
        states: frozenset[JobState] | None = None,
        name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        next_token: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """The caller's jobs on a cluster, newest first (from the table, never Slurm)."""
        self._clusters.resolve(cluster)
        return self._store.list_jobs(
            owner,
            cluster,
            states=states,
            name=name,
            since=since,
            until=until,
            limit=limit,
            next_token=next_token,
        )

    def _new_request(
        self,
        owner: str,
        cluster: str,
        kind: RequestKind,
        *,
        spec: JobSpec | None = None,
        job_id: str | None = None,
        query: OutputQueryBody | None = None,
    ) -> RequestRecord:
        now = utcnow()
        request_id = new_request_id()
        return RequestRecord(
            request_id=request_id,
            kind=kind,
            owner=owner,
            cluster=cluster,
            state=RequestState.ACCEPTED,
            created_at=now,
            updated_at=now,
            spec=spec,
            job_id=job_id or (request_id if kind == "job.submit" else None),
            query=query,
        )

    def _enqueue(
        self, record: RequestRecord, message: QueueMessage, job_id: str | None = None
    ) -> None:
        try:
            self._queue.send(message)
        except BrokerError as exc:
            # Nothing will ever work on this request: say so in its record instead of leaving
            # it ACCEPTED forever, then let the caller know it may retry.
            self._store.record_failure(
                record.request_id,
                ErrorInfo(code="ENQUEUE_FAILED", message=exc.message, transient=True),
            )
            if job_id is not None:
                self._store.record_submit_failed(job_id, "the submission could not be queued")
            raise TransientError(
                "the request could not be queued; send it again", code="ENQUEUE_FAILED"
            ) from exc


Outcome = Literal["succeeded", "failed", "skipped", "cancelled"]
RunnerFor = Callable[[Literal["ssm", "local"]], CommandRunner]
#: Errors that end a request for good (recorded FAILED): retrying cannot fix them.
_PERMANENT = (PermanentError, ClusterNotFoundError, NotFoundError, ConflictError)
#: An agent call's answers by broker job id: (submitted with Slurm id, rejected with reason,
#: to retry).
_Answers = tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]


@dataclass
class _OpenChunk:
    """A batch chunk started by a worker: its agent jobs, and items already settled."""

    message: JobBatchMessage
    batch: RequestRecord
    jobs: list[AgentJob]
    failed: list[tuple[str, str]]
    retry: list[str]


def _answers_for(message: JobBatchMessage, answers: _Answers) -> _Answers:
    """The answers about one chunk's items, out of a call that carried several chunks."""
    mine = {item.job_id for item in message.items}
    submitted, rejected, retry = answers
    return (
        [a for a in submitted if a[0] in mine],
        [a for a in rejected if a[0] in mine],
        [job_id for job_id in retry if job_id in mine],
    )


class Dispatcher:
    """The job worker's side: run one queued request on its cluster, record the outcome.

    Safe to run twice on the same message: state moves are conditional, and the head-node
    agent de-duplicates submissions by the token in the job's Slurm comment, so a redelivery
    after ``sbatch`` returns the existing job instead of making a second one.
    """

    def __init__(
        self,
        store: Store,
        clusters: ClusterDirectory,
        runner_for: RunnerFor,
        announcer: Announcer,
        *,
        artifacts: ArtifactStore | None = None,
        default_working_directory: str = "/tmp",  # noqa: S108
        submit_concurrency: int | None = None,
        run_as_user: str | None = None,
    ) -> None:
        self._run_as_user = run_as_user  # transitional: HPCB_LOCAL_RUN_AS_USER
        self._store = store
        self._concurrency = submit_concurrency
        self._clusters = clusters
        self._runner_for = runner_for
        self._announce = announcer
        self._artifacts = artifacts
        self._workdir = default_working_directory

    def handle(self, message: QueueMessage) -> Outcome:
        """Dispatch one message.

        Returns:
            what happened: ``succeeded``, ``failed`` (permanent error, recorded), ``cancelled``
            (the job was cancelled before submission) or ``skipped`` (already final).

        Raises:
            TransientError: try again later (the last error is recorded on the request).
        """
        request_id = message.request_id
        if self._store.mark_dispatched(request_id) is None:
            logger.info("request already final; skipping", extra={"request_id": request_id})
            return "skipped"
        try:
            if isinstance(message, JobSubmitMessage):
                return self._submit(message)
            if isinstance(message, JobCancelMessage):
                return self._cancel(message)
            if isinstance(message, JobBatchMessage):
                return self._batch(message)
            return self._output(message)
        except (TransientError, *_PERMANENT) as exc:
            end = self._settle(message, exc)
            if isinstance(end, TransientError):
                raise
            return end

    def _settle(self, message: QueueMessage, exc: BrokerError) -> Outcome | TransientError:
        """Record how a message ends on an error: a transient one is kept as the request's last
        error (and returned, for its record to fail); a permanent one fails the request."""
        if isinstance(exc, TransientError):
            self._store.record_retry(message.request_id, _info(exc))
            return exc
        if isinstance(message, JobSubmitMessage):
            self._fail_job(message.request_id, exc.message)
        self._finish(message.request_id, failure=_info(exc))
        return "failed"

    def handle_chunks(self, messages: list[JobBatchMessage]) -> list[Outcome | TransientError]:
        """Batch chunks drained together for one cluster: all their jobs in one agent call.

        Each message ends as ``handle`` would end it alone (its items' records, its batch's
        counts, its request's error), with its outcome or the TransientError its record must
        fail with. A failure of the shared agent call ends every chunk that was in it.
        """
        ends: list[Outcome | TransientError] = ["skipped"] * len(messages)
        opened: dict[int, _OpenChunk] = {}
        for position, message in enumerate(messages):
            if self._store.mark_dispatched(message.request_id) is None:
                continue  # the batch is already final
            try:
                opened[position] = self._open_chunk(message)
            except (TransientError, *_PERMANENT) as exc:
                ends[position] = self._settle(message, exc)
        jobs = [job for chunk in opened.values() for job in chunk.jobs]
        answers: _Answers = ([], [], [])
        if jobs:
            lookback = max(lookback_seconds(c.batch.created_at) for c in opened.values())
            try:
                answers = self._submit_chunk(messages[0].cluster, jobs, lookback)
            except (TransientError, *_PERMANENT) as exc:
                for position in opened:
                    ends[position] = self._settle(messages[position], exc)
                return ends
        for position, chunk in opened.items():
            try:
                ends[position] = self._close_chunk(chunk, _answers_for(chunk.message, answers))
            except (TransientError, *_PERMANENT) as exc:
                ends[position] = self._settle(messages[position], exc)
        return ends

    # -- submit ----------------------------------------------------------------------------

    def _submit(self, message: JobSubmitMessage) -> Outcome:
        job_id = message.request_id
        job = self._store.start_submission(job_id)
        if job is None:
            current = self._store.get_job(job_id)
            if current.state is JobState.CANCELLED and current.slurm_job_id is None:
                if self._store.record_cancelled(message.request_id):
                    self._announce.request(message.request_id)
                return "cancelled"
            if current.slurm_job_id is not None:  # an earlier attempt got this far
                self._succeed(message.request_id, _submitted(current.slurm_job_id, message))
                return "succeeded"
            raise ConflictError(f"job {job_id} is {current.state}; not submitting it")
        dependency = self._dependency_string(message)
        target = self._clusters.resolve(message.cluster)
        token = slurm_token(message.request_id)
        spec = message.spec
        if spec.working_directory is None:
            # Otherwise sbatch uses the agent's own cwd (under SSM, the agent's work folder).
            spec = spec.model_copy(update={"working_directory": self._workdir})
        user = self._run_as()
        request = AgentRequest(op="submit", jobs=[AgentJob.of(token, spec, dependency, user=user)],
                               lookback_seconds=lookback_seconds(job.created_at))  # fmt: skip
        response = self._runner_for(target.mode).run(target, request)
        if not response.ok:
            raise _error_of(response.error, "AGENT_FAILED", "the head-node agent failed")
        result = next((r for r in response.results if r.token == token), None)
        if result is None:
            raise TransientError(
                "the head-node agent's answer does not mention this job", code="AGENT_NO_RESULT"
            )
        if result.job_id is None:
            raise _error_of(result.error, "AGENT_NO_RESULT", "the agent returned no job id")
        self._store.record_submitted(job_id, result.job_id)
        self._succeed(message.request_id, _submitted(result.job_id, message, result))
        return "succeeded"

    def _dependency_string(self, message: JobSubmitMessage) -> str | None:
        """The spec's dependencies in Slurm's form, broker ids resolved to Slurm ids.

        Raises:
            PermanentError: a dependency is unknown, not the caller's, or never reached Slurm.
            TransientError: a dependency is still being submitted (retry shortly).
        """
        if not message.spec.dependency:
            return None
        parts = []
        for condition in message.spec.dependency:
            ids = [self._slurm_id_of(message, ref) for ref in condition.jobs]
            parts.append(":".join([condition.type, *ids]))
        return ",".join(parts)

    def _slurm_id_of(self, message: JobSubmitMessage, ref: str) -> str:
        if not ref.startswith("r"):
            return ref  # a Slurm id: Slurm itself rejects an unknown one, with its reason
        try:
            job = self._store.get_job(ref)
        except NotFoundError:
            job = None
        if job is None or job.owner != message.owner or job.cluster != message.cluster:
            raise PermanentError(
                f"dependency {ref} is not a job of yours on {message.cluster}",
                code="DEPENDENCY_NOT_FOUND",
            )
        if job.slurm_job_id is not None:
            return job.slurm_job_id
        if job.state.final:
            raise PermanentError(
                f"dependency {ref} never reached Slurm ({job.state}); this job could never start",
                code="DEPENDENCY_FAILED",
            )
        raise TransientError(
            f"dependency {ref} is still being submitted", code="DEPENDENCY_NOT_SUBMITTED"
        )

    def _fail_job(self, job_id: str, reason: str) -> None:
        if self._store.record_submit_failed(job_id, reason):
            self._announce.job(job_id, JobState.SUBMITTING)

    # -- batch -----------------------------------------------------------------------------

    def _batch(self, message: JobBatchMessage) -> Outcome:
        """One chunk of a batch: one agent call submits all of its jobs still to submit.

        Items an earlier delivery already recorded, or cancelled while queued, are skipped
        (``start_chunk`` returns only jobs still to submit); the agent de-duplicates by token
        whatever reached Slurm without being recorded. A permanent error fails just its item;
        a transient one leaves its items to the redelivery of the message.
        """
        chunk = self._open_chunk(message)
        answers: _Answers = ([], [], [])
        if chunk.jobs:
            lookback = lookback_seconds(chunk.batch.created_at)
            answers = self._submit_chunk(message.cluster, chunk.jobs, lookback)
        return self._close_chunk(chunk, answers)

    def _open_chunk(self, message: JobBatchMessage) -> _OpenChunk:
        """Start a chunk: its batch, and the agent jobs of its items still to submit."""
        batch = self._store.get(message.request_id)
        job_ids = [item.job_id for item in message.items]
        if message.chunk is None:  # a message queued before chunks were numbered
            started = self._store.start_submissions(job_ids)
        else:
            started = self._store.start_chunk(message.request_id, message.chunk, job_ids)
        jobs, failed, retry = self._prepare(message, started)
        return _OpenChunk(message, batch, jobs, failed, retry)

    def _close_chunk(self, chunk: _OpenChunk, answers: _Answers) -> Outcome:
        """Record a chunk's outcomes and end its batch if complete; TransientError if some of
        its items must be retried (the message comes back for them)."""
        submitted, rejected, unknown = answers
        message, batch = chunk.message, chunk.batch
        item_of = {item.job_id: item for item in message.items}
        outcomes = [
            item_outcome(batch, item_of[job_id], message.chunk, slurm_job_id=slurm_id)
            for job_id, slurm_id in submitted
        ] + [item_outcome(batch, item_of[job_id], message.chunk, reason=reason)
             for job_id, reason in chunk.failed + rejected]  # fmt: skip
        _, newly_failed = self._store.record_batch_outcomes(batch, outcomes)
        for job_id in newly_failed:
            self._announce.job(job_id, JobState.SUBMITTING)
        self._finish_batch(message.request_id)
        retry = chunk.retry + unknown
        if retry:
            raise TransientError(
                f"{len(retry)} items of this chunk must be retried", code="BATCH_ITEMS_RETRY"
            )
        return "succeeded"

    def _prepare(
        self, message: JobBatchMessage, started: set[str]
    ) -> tuple[list[AgentJob], list[tuple[str, str]], list[str]]:
        """The agent jobs of the started items; items failed or to retry (dependencies)."""
        jobs: list[AgentJob] = []
        failed: list[tuple[str, str]] = []
        retry: list[str] = []
        for item in message.items:
            if item.job_id not in started:
                continue
            single = JobSubmitMessage(
                request_id=item.job_id, owner=message.owner, cluster=message.cluster,
                spec=item.spec,
            )  # fmt: skip
            try:
                user = self._run_as()
                dependency = self._dependency_string(single)
            except TransientError:
                retry.append(item.job_id)
                continue
            except PermanentError as exc:
                failed.append((item.job_id, exc.message))
                continue
            spec = item.spec
            if spec.working_directory is None:
                spec = spec.model_copy(update={"working_directory": self._workdir})
            jobs.append(AgentJob.of(slurm_token(item.job_id), spec, dependency, user=user))
        return jobs, failed, retry

    def _submit_chunk(self, cluster: str, jobs: list[AgentJob], lookback: int) -> _Answers:
        """One agent call for all ``jobs``: (submitted, rejected, to retry) job ids."""
        target = self._clusters.resolve(cluster)
        request = AgentRequest(op="submit", jobs=jobs, concurrency=self._concurrency,
                               lookback_seconds=lookback)  # fmt: skip
        response = self._runner_for(target.mode).run(target, request)
        if not response.ok:
            raise _error_of(response.error, "AGENT_FAILED", "the head-node agent failed")
        answers = {r.token: r for r in response.results}
        submitted: list[tuple[str, str]] = []
        rejected: list[tuple[str, str]] = []
        retry: list[str] = []
        for job in jobs:
            job_id = job.token.split(":", 1)[1]
            answer = answers.get(job.token)
            if answer is not None and answer.job_id is not None:
                submitted.append((job_id, answer.job_id))
            elif answer is not None and answer.error is not None and not answer.error.transient:
                rejected.append((job_id, f"{answer.error.code}: {answer.error.message}"))
            else:
                retry.append(job_id)
        return submitted, rejected, retry

    def _finish_batch(self, batch_id: str) -> None:
        finish_batch(self._store, self._announce, batch_id)

    # -- cancel ----------------------------------------------------------------------------

    def _cancel(self, message: JobCancelMessage) -> Outcome:
        job = self._store.get_job(message.job_id)
        if job.slurm_job_id is None:
            if job.state is JobState.SUBMITTING and self._store.cancel_unsubmitted(job.job_id):
                self._announce.job(job.job_id, JobState.SUBMITTING)
                result = CancelResult(job_id=job.job_id, before_submission=True)
                self._succeed(message.request_id, result)
                return "succeeded"
            if job.state.final:
                raise ConflictError(f"job {job.job_id} has already ended ({job.state})")
            raise TransientError(
                "the job's submission is in progress; cancelling once it is in Slurm",
                code="SUBMISSION_IN_PROGRESS",
            )
        target = self._clusters.resolve(message.cluster)
        user, token = self._run_as(), slurm_token(job.job_id)
        request = AgentRequest(op="cancel", targets=[JobTarget(job_id=job.slurm_job_id, user=user,
                                                               token=token)])  # fmt: skip
        response = self._runner_for(target.mode).run(target, request)
        if not response.ok:
            raise _error_of(response.error, "AGENT_FAILED", "the head-node agent failed")
        answer = next((c for c in response.cancelled if c.job_id == job.slurm_job_id), None)
        if answer is None:
            raise TransientError("the agent did not report the cancel", code="AGENT_NO_RESULT")
        if not answer.ok:
            raise _error_of(answer.error, "CANCEL_FAILED", "scancel failed")
        result = CancelResult(job_id=job.job_id, slurm_job_id=job.slurm_job_id)
        self._succeed(message.request_id, result)
        return "succeeded"

    # -- output ----------------------------------------------------------------------------

    def _output(self, message: JobOutputMessage) -> Outcome:
        job = self._store.get_job(message.job_id)
        if job.slurm_job_id is None:
            raise ConflictError(f"job {job.job_id} has not reached Slurm")
        query = message.query
        slurm_id = job.slurm_job_id
        if query.task is not None:
            slurm_id = f"{slurm_id}_{query.task}"
        streams: list[Literal["stdout", "stderr"]] = (
            ["stdout", "stderr"] if query.stream == "both" else [query.stream]
        )
        target = self._clusters.resolve(message.cluster)
        request = AgentRequest(
            op="output",
            output=OutputQuery(
                job_id=slurm_id,
                streams=streams,
                offset=query.offset,
                max_bytes=query.max_bytes,
                patterns=self._patterns(job),
                job_name=job.name,
                user=self._run_as(),
                token=slurm_token(job.job_id),
            ),
        )
        response = self._runner_for(target.mode).run(target, request)
        if not response.ok:
            raise _error_of(response.error, "AGENT_FAILED", "the head-node agent failed")
        parts = [
            OutputPart(
                stream=chunk.stream,
                path=chunk.path,
                size=chunk.size,
                offset=chunk.offset,
                length=chunk.length,
                eof=chunk.eof,
                data=chunk.data,
                error=None if chunk.error is None else _agent_info(chunk.error),
            )
            for chunk in response.output
        ]
        if sum(len(p.data or "") for p in parts) > INLINE_OUTPUT_CHARS:
            parts = self._stage(message.request_id, parts)
        self._succeed(message.request_id, OutputResult(job_id=job.job_id, parts=parts))
        return "succeeded"

    def _patterns(self, job: JobRecord) -> dict[Literal["stdout", "stderr"], str]:
        """The job's output file patterns as submitted (Slurm's defaults where unset)."""
        workdir = (job.working_directory or self._workdir).rstrip("/")
        default = f"{workdir}/slurm-%A_%a.out" if job.array else f"{workdir}/slurm-%j.out"
        stdout = job.output or default
        return {"stdout": stdout, "stderr": job.error or stdout}

    def _stage(self, request_id: str, parts: list[OutputPart]) -> list[OutputPart]:
        """Move the text of each part to S3 and give a presigned URL instead."""
        if self._artifacts is None:
            raise PermanentError(
                "the output is too large to return inline and no staging bucket is configured",
                code="OUTPUT_TOO_LARGE",
            )
        staged = []
        for part in parts:
            if part.data:
                url = self._artifacts.put_text(f"outputs/{request_id}/{part.stream}", part.data)
                staged.append(part.model_copy(update={"data": None, "url": url}))
            else:
                staged.append(part)
        return staged

    # -- shared ----------------------------------------------------------------------------

    def _run_as(self) -> str:
        """The POSIX user the agent acts as (transitional: one setting for every caller)."""
        if self._run_as_user is None:
            raise PermanentError(
                "no cluster user is mapped for this caller (HPCB_LOCAL_RUN_AS_USER is unset); "
                "ask the broker's administrator to map you",
                code="NOT_MAPPED",
            )
        return self._run_as_user

    def _succeed(
        self, request_id: str, result: JobResult | CancelResult | OutputResult | BatchResult
    ) -> None:
        if self._store.record_success(request_id, result):
            self._announce.request(request_id)

    def _finish(self, request_id: str, *, failure: ErrorInfo) -> None:
        if self._store.record_failure(request_id, failure):
            self._announce.request(request_id)


class DeadLetterService:
    """The DLQ worker's side: a message whose deliveries ran out marks its request FAILED."""

    def __init__(self, store: Store, announcer: Announcer) -> None:
        self._store = store
        self._announce = announcer

    def give_up_chunk(self, message: JobBatchMessage) -> int:
        """A batch chunk ran out of deliveries: its items still SUBMITTING fail (none is left
        in progress, none keeps its back-pressure reservation); the batch ends if complete.

        Returns:
            How many items this call failed (others had an outcome already).
        """
        try:
            batch = self._store.get(message.request_id)
        except NotFoundError:
            logger.error(
                "dead letter for an unknown batch", extra={"request_id": message.request_id}
            )
            return 0
        last = batch.error
        reason = "retries exhausted" + (
            f"; last error: {last.code}: {last.message}" if last else ""
        )
        failed = [item_outcome(batch, item, message.chunk, reason=reason) for item in message.items]
        _, newly_failed = self._store.record_batch_outcomes(batch, failed)
        for job_id in newly_failed:
            self._announce.job(job_id, JobState.SUBMITTING)
        finish_batch(self._store, self._announce, message.request_id)
        return len(newly_failed)

    def give_up(self, request_id: str) -> bool:
        """Record that retries ran out, keeping the last error's words (and fail its job).

        Returns:
            False when the request was already final (a success that raced the DLQ wins) or
            unknown.
        """
        try:
            record = self._store.get(request_id)
        except NotFoundError:
            logger.error("dead letter for an unknown request", extra={"request_id": request_id})
            return False
        last = record.error
        reason = f"; last error: {last.code}: {last.message}" if last else ""
        failed = self._store.record_failure(
            request_id,
            ErrorInfo(
                code="RETRIES_EXHAUSTED",
                message=f"gave up after {record.attempts} attempts{reason}",
                transient=True,
            ),
        )
        if failed:
            job_id = record.job_id if record.kind == "job.submit" else None
            if job_id and self._store.record_submit_failed(job_id, "retries exhausted"):
                self._announce.job(job_id, JobState.SUBMITTING)
            self._announce.request(request_id)
        return failed


def _submitted(
    slurm_job_id: str, message: JobSubmitMessage, result: AgentJobResult | None = None
) -> JobResult:
    reused = result.reused if result is not None else True
    return JobResult(job_id=slurm_job_id, cluster=message.cluster, reused=reused)


def _error_of(error: AgentErrorInfo | None, code: str, text: str) -> BrokerError:
    """The broker error for an agent-reported error (no details: assume transient)."""
    if error is None:
        return TransientError(text, code=code)
    kind = TransientError if error.transient else PermanentError
    return kind(error.message, code=error.code)


def _agent_info(error: AgentErrorInfo) -> ErrorInfo:
    return ErrorInfo(code=error.code, message=error.message, transient=error.transient)


def _info(exc: BrokerError) -> ErrorInfo:
    return ErrorInfo(code=exc.code, message=exc.message, transient=exc.transient)
