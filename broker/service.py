"""Domain services: what the API and the workers do, free of HTTP, SQS event shapes and boto3.

They depend on ports only (``broker.ports``) and raise broker errors (``broker.errors``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from broker.agent.protocol import AgentErrorInfo, AgentJob, AgentJobResult, AgentRequest
from broker.errors import (
    BrokerError,
    ClusterNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    PermanentError,
    TransientError,
)
from broker.models import (
    MAX_SCRIPT_BYTES,
    ErrorInfo,
    JobResult,
    JobSpec,
    JobSubmitMessage,
    RequestRecord,
    new_request_id,
    slurm_token,
    utcnow,
)
from broker.observability import logger
from broker.ports import ClusterDirectory, CommandRunner, RequestQueue, RequestStore
from broker.states import RequestState


class RequestService:
    """The API's side: accept writes (record, then enqueue) and read requests back."""

    def __init__(
        self, store: RequestStore, queue: RequestQueue, clusters: ClusterDirectory
    ) -> None:
        self._store = store
        self._queue = queue
        self._clusters = clusters

    def submit_job(self, owner: str, cluster: str, spec: JobSpec) -> RequestRecord:
        """Accept a job submission: validate, record it ACCEPTED, enqueue it.

        The record is written before the message is sent, so a GET right after the POST never
        answers 404 and a worker never sees a message without its record.

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
        self._clusters.resolve(cluster)
        now = utcnow()
        record = RequestRecord(
            request_id=new_request_id(),
            kind="job.submit",
            owner=owner,
            cluster=cluster,
            state=RequestState.ACCEPTED,
            created_at=now,
            updated_at=now,
            spec=spec,
        )
        self._store.create(record)
        try:
            self._queue.send(
                JobSubmitMessage(
                    request_id=record.request_id, owner=owner, cluster=cluster, spec=spec
                )
            )
        except BrokerError as exc:
            # Nothing will ever work on this request: say so in its record instead of leaving
            # it ACCEPTED forever, then let the caller know it may retry.
            self._store.record_failure(
                record.request_id,
                ErrorInfo(code="ENQUEUE_FAILED", message=exc.message, transient=True),
            )
            raise TransientError(
                "the request could not be queued; send it again", code="ENQUEUE_FAILED"
            ) from exc
        return record

    def get_request(self, owner: str, request_id: str) -> RequestRecord:
        """Read one of the caller's requests.

        Raises:
            NotFoundError: no such request, or it belongs to someone else (indistinguishable).
        """
        record = self._store.get(request_id)
        if record.owner != owner:
            raise NotFoundError(f"no request {request_id}")
        return record


Outcome = Literal["succeeded", "failed", "skipped"]


class SubmitDispatcher:
    """The job worker's side: run one queued submission on the cluster, record the outcome.

    Safe to run twice on the same message: state moves are conditional, and the head-node agent
    de-duplicates by the token in the job's Slurm comment, so a redelivery after ``sbatch``
    returns the existing job instead of making a second one.
    """

    def __init__(
        self,
        store: RequestStore,
        clusters: ClusterDirectory,
        runner_for: Callable[[Literal["ssm", "local"]], CommandRunner],
        default_working_directory: str = "/tmp",  # noqa: S108
    ) -> None:
        self._store = store
        self._clusters = clusters
        self._runner_for = runner_for
        self._workdir = default_working_directory

    def handle(self, message: JobSubmitMessage) -> Outcome:
        """Dispatch one submission.

        Returns:
            what happened: ``succeeded``, ``failed`` (permanent error, recorded) or ``skipped``
            (the request was already final: a duplicate delivery).

        Raises:
            TransientError: try again later (the last error is recorded on the request).
        """
        request_id = message.request_id
        record = self._store.mark_dispatched(request_id)
        if record is None:
            logger.info("request already final; skipping", extra={"request_id": request_id})
            return "skipped"
        try:
            result = self._submit(message)
        except TransientError as exc:
            self._store.record_retry(request_id, _info(exc))
            raise
        except (PermanentError, ClusterNotFoundError) as exc:
            self._store.record_failure(request_id, _info(exc))
            return "failed"
        self._store.record_success(
            request_id,
            JobResult(job_id=str(result.job_id), cluster=message.cluster, reused=result.reused),
        )
        return "succeeded"

    def _submit(self, message: JobSubmitMessage) -> AgentJobResult:
        """Run the submission on the head node; return the job's result (with a job id)."""
        target = self._clusters.resolve(message.cluster)
        token = slurm_token(message.request_id)
        spec = message.spec
        if spec.working_directory is None:
            # Otherwise sbatch uses the agent's own cwd (under SSM, the agent's work folder).
            spec = spec.model_copy(update={"working_directory": self._workdir})
        request = AgentRequest(op="submit", jobs=[AgentJob.of(token, spec)])
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
        return result


def _error_of(error: AgentErrorInfo | None, code: str, text: str) -> BrokerError:
    """The broker error for an agent-reported error (no details: assume transient)."""
    if error is None:
        return TransientError(text, code=code)
    kind = TransientError if error.transient else PermanentError
    return kind(error.message, code=error.code)


class DeadLetterService:
    """The DLQ worker's side: a message whose deliveries ran out marks its request FAILED."""

    def __init__(self, store: RequestStore) -> None:
        self._store = store

    def give_up(self, request_id: str) -> bool:
        """Record that retries ran out, keeping the last error's words.

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
        return self._store.record_failure(
            request_id,
            ErrorInfo(
                code="RETRIES_EXHAUSTED",
                message=f"gave up after {record.attempts} attempts{reason}",
                transient=True,
            ),
        )


def _info(exc: BrokerError) -> ErrorInfo:
    return ErrorInfo(code=exc.code, message=exc.message, transient=exc.transient)
