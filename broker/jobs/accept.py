"""The API's side of jobs: accept writes (record, then enqueue) and read records back.

Every write answers at once: the records are written, the message is sent, and a worker does
the work. Nothing here calls a scheduler.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from broker.batches.accept import accept_batch, accept_sweep, batch_page
from broker.batches.models import BatchAccepted, BatchBody, BatchItemView
from broker.batches.sweeps import SweepBody
from broker.clusters.service import ClusterGate
from broker.errors import (
    BrokerError,
    ClusterNotFoundError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    TransientError,
    ValidationError,
)
from broker.jobs.models import (
    MAX_SCRIPT_BYTES,
    CancelResult,
    JobCancelMessage,
    JobOutputMessage,
    JobSpec,
    JobSubmitMessage,
    OutputQueryBody,
)
from broker.jobs.records import JobRecord, JobState, new_job
from broker.notifications.announcer import Announcer
from broker.ports import (
    BatchStore,
    ClusterDirectory,
    JobStore,
    Limits,
    RequestQueue,
    RequestStore,
    UserResolver,
)
from broker.requests.models import QueueMessage, RequestKind, RequestRecord
from broker.requests.states import RequestState
from broker.schema import ErrorInfo, new_request_id, utcnow


class AcceptedRecords(RequestStore, JobStore, BatchStore, Protocol):
    """What the accept writes and reads: requests, jobs and batches."""


class RequestService:
    """The API's side: accept writes (record, then enqueue) and read records back."""

    def __init__(
        self,
        store: AcceptedRecords,
        queue: RequestQueue,
        clusters: ClusterDirectory,
        announcer: Announcer | None = None,
        limits: Limits | None = None,
        *,
        users: UserResolver,
        cluster_gate: ClusterGate | None = None,
    ) -> None:
        self._users = users
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
            NotMappedError: the caller has no user on that cluster (403; nothing recorded).
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
        # Recorded with the request and the job and carried in the message: the worker acts
        # as this user and never looks it up again (a later re-mapping does not move a job).
        user = self._users.user_for(cluster, owner)
        record = self._new_request(owner, cluster, "job.submit", user, spec=spec)
        job = new_job(record.request_id, owner, cluster, spec, record.created_at, user=user)
        self._store.create_submission(record, job, self._limits, ready_cluster=self._gated)
        message = JobSubmitMessage(
            request_id=record.request_id, owner=owner, cluster=cluster, user=user, spec=spec
        )
        self._enqueue(record, message, job_id=job.job_id)
        return record

    def submit_batch(self, owner: str, cluster: str, body: BatchBody) -> BatchAccepted:
        """Accept a burst: validate each item, record the batch, enqueue its valid items in
        chunks (``broker.batches.accept``).

        Raises:
            BatchRejectedError: ``atomic`` and some item is invalid, or no item is valid.
            ClusterNotFoundError, BackpressureError, TransientError: as for one job.
        """
        self._resolve(cluster)
        user = self._users.user_for(cluster, owner)
        return accept_batch(self._store, self._queue, owner, cluster, body, user=user,
                            limits=self._limits, ready_cluster=self._gated)  # fmt: skip

    def submit_sweep(self, owner: str, cluster: str, body: SweepBody) -> BatchAccepted:
        """Accept a sweep: one template, many parameter sets, packed into job arrays
        (``broker.batches.sweeps``); raises as ``submit_batch``."""
        self._resolve(cluster)
        user = self._users.user_for(cluster, owner)
        return accept_sweep(self._store, self._queue, owner, cluster, body, user=user,
                            limits=self._limits, ready_cluster=self._gated)  # fmt: skip

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
        return batch_page(self._store, record, start, limit)

    def cancel_job(self, owner: str, cluster: str, ref: str) -> RequestRecord:
        """Accept a cancel. A job still queued in SQS is cancelled at once, never reaching Slurm.

        Raises:
            NotMappedError: the caller has no user on that cluster (403).
            NotFoundError: no such job of the caller's.
            ConflictError: the job has already ended.
        """
        self._users.user_for(cluster, owner)
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
                user=job.user,
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
        user = _recorded_user(job)
        record = self._new_request(owner, cluster, "job.cancel", user, job_id=job.job_id)
        self._store.create_request(record)
        message = JobCancelMessage(
            request_id=record.request_id, owner=owner, cluster=cluster, user=user,
            job_id=job.job_id,
        )  # fmt: skip
        self._enqueue(record, message)
        return record

    def fetch_output(
        self, owner: str, cluster: str, ref: str, query: OutputQueryBody
    ) -> RequestRecord:
        """Accept an output fetch for a job that reached Slurm.

        Raises:
            NotMappedError: the caller has no user on that cluster (403).
            NotFoundError: no such job of the caller's.
            ConflictError: the job has no Slurm id (not submitted, or never will be).
        """
        self._users.user_for(cluster, owner)
        job = self.get_job(owner, cluster, ref)
        if job.slurm_job_id is None:
            raise ConflictError(f"job {job.job_id} has not reached Slurm ({job.state})")
        if query.task is not None and job.array is None:
            raise ConflictError(f"job {job.job_id} is not an array; 'task' does not apply")
        if query.task is None and job.array is not None:
            # Slurm keeps an array's base id on its last task: without a task the answer
            # would silently be that task's file.
            raise ValidationError(f"job {job.job_id} is an array ({job.array}): name a 'task'")
        user = _recorded_user(job)
        record = self._new_request(
            owner, cluster, "job.output", user, job_id=job.job_id, query=query
        )
        self._store.create_request(record)
        message = JobOutputMessage(
            request_id=record.request_id,
            owner=owner,
            cluster=cluster,
            user=user,
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
        user: str,
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
            user=user,
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


def _recorded_user(job: JobRecord) -> str:
    """The user a job runs as, recorded at its accept: its cancel and output reads act as that
    user (the caller's mapping may have changed since; in Slurm the job is still that user's,
    and the agent acts only on a job of the request's user).

    Raises:
        ConflictError: the job was accepted without a user (before users were mapped).
    """
    if job.user is None:
        raise ConflictError(
            f"job {job.job_id} was accepted before callers were mapped to cluster users; the "
            "broker cannot act on it"
        )
    return job.user
