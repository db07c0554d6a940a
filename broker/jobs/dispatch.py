"""The job worker's side: run queued requests on their cluster, record the outcomes.

A cancel or an output fetch is one head-node command; single submissions drained together for
one cluster share one (``handle_submits``); a batch chunk goes to ``broker.batches.dispatch``.
Every error is settled the same way (``RequestEnds.settle``): a transient one is kept as the
request's last error and raised (SQS retries, then the DLQ), a permanent one fails the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from broker.agent.protocol import (
    AgentJob,
    AgentJobResult,
    AgentRequest,
    AgentResponse,
    JobTarget,
    OutputQuery,
)
from broker.batches.dispatch import ChunkDispatcher
from broker.batches.models import JobBatchMessage
from broker.batches.sweeps import JobSweepMessage
from broker.errors import ConflictError, PermanentError, TransientError
from broker.jobs.execution import (
    PERMANENT,
    Dependencies,
    Outcome,
    RequestEnds,
    RunnerFor,
    acting_user,
    agent_info,
    error_of,
    lookback_seconds,
)
from broker.jobs.models import (
    CancelResult,
    JobCancelMessage,
    JobOutputMessage,
    JobResult,
    JobSubmitMessage,
    OutputPart,
    OutputResult,
    slurm_token,
)
from broker.jobs.records import JobRecord, JobState, job_token
from broker.notifications.announcer import Announcer
from broker.observability import logger
from broker.ports import (
    ArtifactStore,
    BatchStore,
    ClusterDirectory,
    JobStore,
    RequestStore,
)
from broker.requests.models import QueueMessage


@dataclass(frozen=True)
class _OpenSubmit:
    """A single submission started by a worker: its message, agent job and token lookback."""

    message: JobSubmitMessage
    agent_job: AgentJob
    lookback: int


#: Output text above this many characters (both streams) goes to S3 behind a presigned URL
#: instead of inline in the request record (SSM itself carries at most 24,000 characters).
INLINE_OUTPUT_CHARS = 24_000


class DispatchedRecords(RequestStore, JobStore, BatchStore, Protocol):
    """What the job worker reads and writes: requests, jobs, and batches' chunks."""


class Dispatcher:
    """Runs one queued request on its cluster and records the outcome.

    Safe to run twice on the same message: state moves are conditional, and the head-node
    agent de-duplicates submissions by the token in the job's Slurm comment, so a redelivery
    after ``sbatch`` returns the existing job instead of making a second one.
    """

    def __init__(
        self,
        store: DispatchedRecords,
        clusters: ClusterDirectory,
        runner_for: RunnerFor,
        announcer: Announcer,
        *,
        artifacts: ArtifactStore | None = None,
        default_working_directory: str = "/tmp",  # noqa: S108
        submit_concurrency: int | None = None,
    ) -> None:
        self._concurrency = submit_concurrency
        self._store = store
        self._clusters = clusters
        self._runner_for = runner_for
        self._announce = announcer
        self._artifacts = artifacts
        self._workdir = default_working_directory
        self._dependencies = Dependencies(store)
        self._ends = RequestEnds(store, announcer)
        self._chunks = ChunkDispatcher(
            store, clusters, runner_for, announcer,
            default_working_directory=default_working_directory,
            submit_concurrency=submit_concurrency,
        )  # fmt: skip

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
            if isinstance(message, JobBatchMessage | JobSweepMessage):
                return self._chunks.handle(message)
            return self._output(message)
        except (TransientError, *PERMANENT) as exc:
            end = self._ends.settle(message, exc)
            if isinstance(end, TransientError):
                raise
            return end

    def handle_chunks(
        self, messages: list[JobBatchMessage | JobSweepMessage]
    ) -> list[Outcome | TransientError]:
        """Batch chunks drained together for one cluster: all their jobs in one agent call
        (see ``ChunkDispatcher.handle_chunks``)."""
        return self._chunks.handle_chunks(messages)

    # -- submit ----------------------------------------------------------------------------

    def handle_submits(self, messages: list[JobSubmitMessage]) -> list[Outcome | TransientError]:
        """Single submissions drained together for one cluster: one agent call for all of them.

        Each message ends as ``handle`` would end it alone (its job's record, its request's
        result or error), with its outcome or the TransientError its record must fail with; a
        failure of the shared agent call ends every message that was in it. The agent's token
        search makes a redelivery of any of them find its job instead of submitting it again.
        """
        ends: list[Outcome | TransientError] = ["skipped"] * len(messages)
        opened: dict[int, _OpenSubmit] = {}
        for position, message in enumerate(messages):
            if self._store.mark_dispatched(message.request_id) is None:
                continue  # already final
            try:
                started = self._open_submit(message)
            except (TransientError, *PERMANENT) as exc:
                ends[position] = self._ends.settle(message, exc)
                continue
            if isinstance(started, _OpenSubmit):
                opened[position] = started
            else:
                ends[position] = started
        if not opened:
            return ends
        try:
            response = self._run_submits(messages[0].cluster, list(opened.values()))
        except (TransientError, *PERMANENT) as exc:
            for position in opened:
                ends[position] = self._ends.settle(messages[position], exc)
            return ends
        for position, started in opened.items():
            try:
                ends[position] = self._close_submit(started, response)
            except (TransientError, *PERMANENT) as exc:
                ends[position] = self._ends.settle(messages[position], exc)
        return ends

    # -- submit ----------------------------------------------------------------------------

    def _submit(self, message: JobSubmitMessage) -> Outcome:
        started = self._open_submit(message)
        if not isinstance(started, _OpenSubmit):
            return started
        return self._close_submit(started, self._run_submits(message.cluster, [started]))

    def _open_submit(self, message: JobSubmitMessage) -> _OpenSubmit | Outcome:
        """Move the job to its submission and build its agent job; or how the message ends
        when an earlier delivery already did the work (cancelled, or in Slurm)."""
        job_id = message.request_id
        job = self._store.start_submission(job_id)
        if job is None:
            current = self._store.get_job(job_id)
            if current.state is JobState.CANCELLED and current.slurm_job_id is None:
                if self._store.record_cancelled(message.request_id):
                    self._announce.request(message.request_id)
                return "cancelled"
            if current.slurm_job_id is not None:  # an earlier attempt got this far
                self._ends.succeed(message.request_id, _submitted(current.slurm_job_id, message))
                return "succeeded"
            raise ConflictError(f"job {job_id} is {current.state}; not submitting it")
        dependency = self._dependencies.slurm_string(message.owner, message.cluster, message.spec)
        spec = message.spec
        if spec.working_directory is None:
            # Otherwise sbatch uses the agent's own cwd (under SSM, the agent's work folder).
            spec = spec.model_copy(update={"working_directory": self._workdir})
        user = acting_user(job.user, message.user)
        agent_job = AgentJob.of(slurm_token(job_id), spec, dependency, user=user)
        return _OpenSubmit(message, agent_job, lookback_seconds(job.created_at))

    def _run_submits(self, cluster: str, started: list[_OpenSubmit]) -> AgentResponse:
        """One agent call submitting every started job (as each job's own user)."""
        target = self._clusters.resolve(cluster)
        request = AgentRequest(
            op="submit",
            jobs=[s.agent_job for s in started],
            concurrency=self._concurrency if len(started) > 1 else None,
            lookback_seconds=max(s.lookback for s in started),
        )
        return self._runner_for(target.mode).run(target, request)

    def _close_submit(self, started: _OpenSubmit, response: AgentResponse) -> Outcome:
        """Record what the agent said of one started job."""
        message, token = started.message, started.agent_job.token
        if not response.ok:
            raise error_of(response.error, "AGENT_FAILED", "the head-node agent failed")
        result = next((r for r in response.results if r.token == token), None)
        if result is None:
            raise TransientError(
                "the head-node agent's answer does not mention this job", code="AGENT_NO_RESULT"
            )
        if result.job_id is None:
            raise error_of(result.error, "AGENT_NO_RESULT", "the agent returned no job id")
        self._store.record_submitted(message.request_id, result.job_id)
        self._ends.succeed(message.request_id, _submitted(result.job_id, message, result))
        return "succeeded"

    def find_in_slurm(
        self, message: JobBatchMessage | JobSweepMessage, job_ids: list[str]
    ) -> dict[str, str]:
        """Which of a chunk's items are in Slurm (``ChunkDispatcher.find_in_slurm``)."""
        return self._chunks.find_in_slurm(message, job_ids)

    def recover_submission(self, message: JobSubmitMessage) -> bool:
        """A submission whose deliveries ran out: if its job is in Slurm (one look-up, nothing
        submitted), record it there and the request SUCCEEDED.

        Returns:
            True when the job is in Slurm (recorded now or before); False when it is not.

        Raises:
            TransientError: the head node cannot tell (the dead letter is retried).
            PermanentError, NotFoundError: the job's user or cluster cannot be acted for.
        """
        job = self._store.get_job(message.request_id)
        slurm_job_id = job.slurm_job_id
        if slurm_job_id is None:
            if job.state is not JobState.SUBMITTING:
                return False
            spec = message.spec
            if spec.working_directory is None:
                spec = spec.model_copy(update={"working_directory": self._workdir})
            user = acting_user(job.user, message.user)
            agent_job = AgentJob.of(slurm_token(job.job_id), spec, None, user=user)
            target = self._clusters.resolve(message.cluster)
            request = AgentRequest(op="submit", jobs=[agent_job], find_only=True,
                                   lookback_seconds=lookback_seconds(job.created_at))  # fmt: skip
            response = self._runner_for(target.mode).run(target, request)
            if not response.ok:
                raise error_of(response.error, "AGENT_FAILED", "the head-node agent failed")
            result = next((r for r in response.results if r.token == agent_job.token), None)
            if result is None or result.job_id is None:
                if result is None or result.error is None or result.error.transient:
                    raise TransientError(
                        "the head node could not tell whether the job is in Slurm",
                        code="UNKNOWN_OUTCOME",
                    )
                return False
            slurm_job_id = result.job_id
            self._store.record_submitted(job.job_id, slurm_job_id)
        self._ends.succeed(message.request_id, _submitted(slurm_job_id, message))
        return True

    # -- cancel ----------------------------------------------------------------------------

    def _cancel(self, message: JobCancelMessage) -> Outcome:
        job = self._store.get_job(message.job_id)
        if job.slurm_job_id is None:
            if job.state is JobState.SUBMITTING and self._store.cancel_unsubmitted(job.job_id):
                self._announce.job(job.job_id, JobState.SUBMITTING)
                result = CancelResult(job_id=job.job_id, before_submission=True)
                self._ends.succeed(message.request_id, result)
                return "succeeded"
            if job.state.final:
                raise ConflictError(f"job {job.job_id} has already ended ({job.state})")
            raise TransientError(
                "the job's submission is in progress; cancelling once it is in Slurm",
                code="SUBMISSION_IN_PROGRESS",
            )
        target = self._clusters.resolve(message.cluster)
        user, token = acting_user(job.user, message.user), job_token(job)
        request = AgentRequest(op="cancel", targets=[JobTarget(job_id=job.slurm_job_id, user=user,
                                                               token=token)])  # fmt: skip
        response = self._runner_for(target.mode).run(target, request)
        if not response.ok:
            raise error_of(response.error, "AGENT_FAILED", "the head-node agent failed")
        answer = next((c for c in response.cancelled if c.job_id == job.slurm_job_id), None)
        if answer is None:
            raise TransientError("the agent did not report the cancel", code="AGENT_NO_RESULT")
        if not answer.ok:
            raise error_of(answer.error, "CANCEL_FAILED", "scancel failed")
        result = CancelResult(job_id=job.job_id, slurm_job_id=job.slurm_job_id)
        self._ends.succeed(message.request_id, result)
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
                user=acting_user(job.user, message.user),
                token=job_token(job),
            ),
        )
        response = self._runner_for(target.mode).run(target, request)
        if not response.ok:
            raise error_of(response.error, "AGENT_FAILED", "the head-node agent failed")
        parts = [
            OutputPart(
                stream=chunk.stream,
                path=chunk.path,
                size=chunk.size,
                offset=chunk.offset,
                length=chunk.length,
                eof=chunk.eof,
                data=chunk.data,
                error=None if chunk.error is None else agent_info(chunk.error),
            )
            for chunk in response.output
        ]
        if sum(len(p.data or "") for p in parts) > INLINE_OUTPUT_CHARS:
            parts = self._stage(message.request_id, parts)
        self._ends.succeed(message.request_id, OutputResult(job_id=job.job_id, parts=parts))
        return "succeeded"

    def _patterns(self, job: JobRecord) -> dict[Literal["stdout", "stderr"], str]:
        """The job's output file patterns as submitted (Slurm's defaults where unset)."""
        workdir = (job.working_directory or self._workdir).rstrip("/")
        task = job.array or "_" in (job.slurm_job_id or "")  # an array's, or a sweep item's
        default = f"{workdir}/slurm-%A_%a.out" if task else f"{workdir}/slurm-%j.out"
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


def _submitted(
    slurm_job_id: str, message: JobSubmitMessage, result: AgentJobResult | None = None
) -> JobResult:
    reused = result.reused if result is not None else True
    return JobResult(job_id=slurm_job_id, cluster=message.cluster, reused=reused)
