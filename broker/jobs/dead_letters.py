"""The dead-letter worker's side: a message whose deliveries ran out ends its request FAILED.

A single request keeps its last error's words. A batch chunk first asks the head node which of
its items still SUBMITTING are in Slurm (the agent's token search, submitting nothing): those
are recorded with their Slurm ids, only the others fail (none is left in progress, none keeps
its back-pressure reservation). When the head node cannot tell, the dead letter is retried.
"""

from __future__ import annotations

from typing import Protocol

from broker.batches.models import JobBatchMessage
from broker.batches.outcomes import finish_batch, item_outcome
from broker.batches.sweeps import JobSweepMessage
from broker.errors import NotFoundError, PermanentError
from broker.jobs.models import JobSubmitMessage
from broker.jobs.records import JobState
from broker.notifications.announcer import Announcer
from broker.observability import logger
from broker.ports import BatchStore, JobStore, RequestStore
from broker.schema import ErrorInfo


class DeadRecords(RequestStore, JobStore, BatchStore, Protocol):
    """What giving up writes: the request, a submission's job, a chunk's items."""


class SlurmLookup(Protocol):
    """What of a dead letter is in Slurm (the job worker's dispatcher; nothing is submitted)."""

    def find_in_slurm(
        self, message: JobBatchMessage | JobSweepMessage, job_ids: list[str]
    ) -> dict[str, str]:
        """Broker job id -> Slurm job id of the chunk's items found; raises TransientError
        when the head node cannot tell."""
        ...

    def recover_submission(self, message: JobSubmitMessage) -> bool:
        """Whether the submission's job is in Slurm (then recorded, its request SUCCEEDED);
        raises TransientError when the head node cannot tell."""
        ...


class DeadLetterService:
    """The DLQ worker's side: a message whose deliveries ran out marks its request FAILED.

    Args:
        store: the records.
        announcer: publishes the final transitions.
        slurm: asked which of a dead chunk's items are in Slurm (None: none is looked up, every
            item still SUBMITTING fails).
    """

    def __init__(
        self, store: DeadRecords, announcer: Announcer, slurm: SlurmLookup | None = None
    ) -> None:
        self._store = store
        self._announce = announcer
        self._slurm = slurm

    def give_up_chunk(self, sent: JobBatchMessage | JobSweepMessage) -> int:
        """A batch chunk ran out of deliveries: its items still SUBMITTING fail (none is left
        in progress, none keeps its back-pressure reservation); the batch ends if complete.
        A sweep's chunk is looked up by its arrays, and its items end as a batch chunk's.

        Returns:
            How many items this call failed (others had an outcome already).
        """
        message = sent.as_batch() if isinstance(sent, JobSweepMessage) else sent
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
        held = self._held(sent, message)
        found = self._in_slurm(sent, message, held)
        outcomes = [
            item_outcome(batch, item, message.chunk, slurm_job_id=found[item.job_id])
            if item.job_id in found
            else item_outcome(batch, item, message.chunk, reason=reason)
            for item in message.items
            if item.job_id not in held
        ]
        _, newly_failed = self._store.record_batch_outcomes(batch, outcomes)
        for job_id in newly_failed:
            self._announce.job(job_id, JobState.SUBMITTING)
        finish_batch(self._store, self._announce, message.request_id)
        return len(newly_failed)

    def _held(self, sent: JobBatchMessage | JobSweepMessage, message: JobBatchMessage) -> set[str]:
        """A sweep chunk's items its recorded arrays hold: submitted, counted, never failed
        here (an earlier delivery recorded those arrays before the chunk ran out)."""
        if not isinstance(sent, JobSweepMessage):
            return set()
        chunk = self._store.submitted_chunk(sent.request_id, sent.chunk)
        return set() if chunk is None else set(chunk.covered([i.job_id for i in message.items]))

    def _in_slurm(
        self,
        sent: JobBatchMessage | JobSweepMessage,
        message: JobBatchMessage,
        held: set[str],
    ) -> dict[str, str]:
        """The chunk's items still SUBMITTING that are in Slurm, with their Slurm ids.

        Why ask: a chunk runs out of deliveries when its outcome writes keep failing after
        sbatch ran (throttling, conflicts, a worker killed mid-records); failing those items
        would leave jobs running in Slurm that the broker calls failed. TransientError (the
        head node cannot tell) fails the dead letter, which comes back: retried, never guessed.
        """
        if self._slurm is None:
            return {}
        job_ids = [item.job_id for item in message.items if item.job_id not in held]
        recorded = self._store.jobs_by_id(job_ids)
        pending = [
            job_id
            for job_id in job_ids
            if job_id not in recorded or recorded[job_id].state is JobState.SUBMITTING
        ]
        if not pending:
            return {}
        try:
            return self._slurm.find_in_slurm(sent, pending)
        except (PermanentError, NotFoundError) as exc:
            # Neither the batch's user nor its cluster can be acted for: nothing was submitted.
            logger.warning(
                "dead chunk not looked up in Slurm",
                extra={"request_id": message.request_id, "error": exc.message},
            )
            return {}

    def give_up_submission(self, message: JobSubmitMessage) -> bool:
        """A submission ran out of deliveries: recorded from Slurm if its job is there (its
        record writes kept failing after sbatch ran), else FAILED as ``give_up``.

        Returns:
            True when this call ended the request FAILED.

        Raises:
            TransientError: the head node cannot tell (the dead letter is retried).
        """
        if self._slurm is not None:
            try:
                if self._slurm.recover_submission(message):
                    return False
            except NotFoundError:
                pass  # no such job record (give_up says so), or an unknown cluster
            except PermanentError as exc:
                logger.warning(
                    "dead submission not looked up in Slurm",
                    extra={"request_id": message.request_id, "error": exc.message},
                )
        return self.give_up(message.request_id)

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
        # Even when the request was already final: an earlier delivery of this dead letter may
        # have failed the request, then stopped (throttled) before failing its job, which
        # would stay SUBMITTING for ever. The job's write is conditional on SUBMITTING, so a
        # success that raced the DLQ is never touched.
        job_id = record.job_id if record.kind == "job.submit" else None
        job_failed = bool(job_id) and self._store.record_submit_failed(
            str(job_id), "retries exhausted"
        )
        if job_failed:
            self._announce.job(str(job_id), JobState.SUBMITTING)
        if failed or job_failed:
            self._announce.request(request_id)
        return failed
