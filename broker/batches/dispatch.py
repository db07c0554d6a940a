"""The job worker's side of batches: submit chunks, one head-node command for all their jobs.

A chunk is one queue message. The worker submits one chunk, or several chunks drained together
for one cluster, in one agent call (``handle_chunks``). Items an earlier delivery already
recorded, or cancelled while queued, are skipped (``BatchStore.start_chunk`` returns only jobs
still to submit); the agent de-duplicates by token whatever reached Slurm without being
recorded. A permanent error fails just its item; a transient one leaves its items to the
redelivery of the message. A sweep chunk's submitted items are recorded by its arrays, one
write for the chunk (``BatchStore.record_arrays``; ``broker.batches.arrays``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from broker.agent.protocol import AgentJob, AgentJobResult, AgentRequest
from broker.batches.arrays import SharedFields, arrays_of
from broker.batches.models import JobBatchMessage
from broker.batches.outcomes import finish_batch, item_outcome
from broker.batches.sweeps import JobSweepMessage
from broker.errors import PermanentError, TransientError
from broker.jobs.execution import (
    PERMANENT,
    Dependencies,
    Outcome,
    RequestEnds,
    RunnerFor,
    acting_user,
    error_of,
    lookback_seconds,
)
from broker.jobs.models import slurm_token
from broker.jobs.records import JobState
from broker.notifications.announcer import Announcer
from broker.ports import BatchStore, ClusterDirectory, JobStore, RequestStore
from broker.requests.models import RequestRecord
from broker.schema import utcnow

#: An agent call's answers by broker job id: (submitted with Slurm id, rejected with reason,
#: to retry).
Answers = tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]


class ChunkRecords(RequestStore, JobStore, BatchStore, Protocol):
    """What submitting a chunk reads and writes: its batch, its items, their dependencies."""


#: A sweep's agent job by token: its positions' broker job ids (None: no task there).
Positions = dict[str, list[str | None]]


@dataclass
class _OpenChunk:
    """A batch chunk started by a worker: its agent jobs, and items already settled."""

    message: JobBatchMessage
    batch: RequestRecord
    jobs: list[AgentJob]
    failed: list[tuple[str, str]]
    retry: list[str]
    positions: Positions
    shared: SharedFields | None = None  # a sweep chunk's: its submitted items' shared fields


def _answers_for(message: JobBatchMessage, answers: Answers) -> Answers:
    """The answers about one chunk's items, out of a call that carried several chunks."""
    mine = {item.job_id for item in message.items}
    submitted, rejected, retry = answers
    return (
        [a for a in submitted if a[0] in mine],
        [a for a in rejected if a[0] in mine],
        [job_id for job_id in retry if job_id in mine],
    )


class ChunkDispatcher:
    """Submits batch chunks and records their items' outcomes; see the module docstring."""

    def __init__(
        self,
        store: ChunkRecords,
        clusters: ClusterDirectory,
        runner_for: RunnerFor,
        announcer: Announcer,
        *,
        default_working_directory: str,
        submit_concurrency: int | None,
    ) -> None:
        self._store = store
        self._clusters = clusters
        self._runner_for = runner_for
        self._announce = announcer
        self._workdir = default_working_directory
        self._concurrency = submit_concurrency
        self._dependencies = Dependencies(store)
        self._ends = RequestEnds(store, announcer)

    def handle(self, message: JobBatchMessage | JobSweepMessage) -> Outcome:
        """One chunk (already marked dispatched): one agent call submits all of its jobs still
        to submit.

        Raises:
            TransientError: some items must be retried (the message comes back for them).
            PermanentError, NotFoundError, ConflictError: the chunk cannot be submitted.
        """
        chunk = self._open_chunk(message)
        answers: Answers = ([], [], [])
        if chunk.jobs:
            lookback = lookback_seconds(chunk.batch.created_at)
            answers = self._submit_chunk(message.cluster, chunk.jobs, lookback, chunk.positions)
        return self._close_chunk(chunk, answers)

    def handle_chunks(
        self, messages: list[JobBatchMessage | JobSweepMessage]
    ) -> list[Outcome | TransientError]:
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
            except (TransientError, *PERMANENT) as exc:
                ends[position] = self._ends.settle(message, exc)
        jobs = [job for chunk in opened.values() for job in chunk.jobs]
        positions = {t: p for chunk in opened.values() for t, p in chunk.positions.items()}
        answers: Answers = ([], [], [])
        if jobs:
            lookback = max(lookback_seconds(c.batch.created_at) for c in opened.values())
            try:
                answers = self._submit_chunk(messages[0].cluster, jobs, lookback, positions)
            except (TransientError, *PERMANENT) as exc:
                for position in opened:
                    ends[position] = self._ends.settle(messages[position], exc)
                return ends
        for position, chunk in opened.items():
            try:
                ends[position] = self._close_chunk(chunk, _answers_for(chunk.message, answers))
            except (TransientError, *PERMANENT) as exc:
                ends[position] = self._ends.settle(messages[position], exc)
        return ends

    def find_in_slurm(
        self, message: JobBatchMessage | JobSweepMessage, job_ids: list[str]
    ) -> dict[str, str]:
        """Which of a chunk's items are in Slurm: broker job id -> Slurm job id.

        One agent call (``find_only``): the token search a submission makes, under the same
        head-node lock, and no sbatch. Items not found are absent from the answer. A sweep's
        chunk is asked for as it is submitted (its arrays' tokens, ``_prepare_sweep``).

        Raises:
            TransientError: the head node cannot tell (unreachable, or a job's search failed).
            PermanentError, NotFoundError: the batch's user or cluster cannot be acted for.
        """
        batch = self._store.get(message.request_id)
        user = acting_user(batch.user, message.user)
        wanted = set(job_ids)
        positions: Positions = {}
        if isinstance(message, JobSweepMessage):
            chunk = self._prepare_sweep(message, message.as_batch(), batch, wanted, user)
            jobs, positions = chunk.jobs, chunk.positions
        else:
            jobs = []
            for item in message.items:
                if item.job_id in wanted:
                    spec = item.spec
                    if spec.working_directory is None:
                        spec = spec.model_copy(update={"working_directory": self._workdir})
                    jobs.append(AgentJob.of(slurm_token(item.job_id), spec, None, user=user))
        if not jobs:
            return {}
        target = self._clusters.resolve(message.cluster)
        request = AgentRequest(op="submit", jobs=jobs, find_only=True,
                               lookback_seconds=lookback_seconds(batch.created_at))  # fmt: skip
        response = self._runner_for(target.mode).run(target, request)
        if not response.ok:
            raise error_of(response.error, "AGENT_FAILED", "the head-node agent failed")
        answers = {r.token: r for r in response.results}
        found: dict[str, str] = {}
        for job in jobs:
            answer = answers.get(job.token)
            if job.token in positions:
                submitted, _, unsure = _sweep_answers_of(positions[job.token], answer)
                if unsure:
                    raise TransientError("the head node could not tell whether a sweep's "
                                         "arrays are in Slurm", code="UNKNOWN_OUTCOME")  # fmt: skip
                found.update(submitted)
            elif answer is not None and answer.job_id is not None:
                found[job.token.split(":", 1)[1]] = answer.job_id
            elif answer is None or answer.error is None or answer.error.transient:
                raise TransientError(
                    "the head node could not tell whether a job is in Slurm", code="UNKNOWN_OUTCOME"
                )
        return found

    def _open_chunk(self, sent: JobBatchMessage | JobSweepMessage) -> _OpenChunk:
        """Start a chunk: its batch, and the agent jobs of its items still to submit (a sweep's
        chunk: one agent job for all of them, ``_prepare_sweep``)."""
        message = sent.as_batch() if isinstance(sent, JobSweepMessage) else sent
        if message.chunk is None:
            # Every accept numbers its chunks; the field is optional only in the message model.
            raise PermanentError("a batch message without its chunk number", code="NO_CHUNK")
        batch = self._store.get(message.request_id)
        user = acting_user(batch.user, message.user)  # before the chunk starts: never half-done
        job_ids = [item.job_id for item in message.items]
        started = self._store.start_chunk(message.request_id, message.chunk, job_ids)
        if isinstance(sent, JobSweepMessage):
            return self._prepare_sweep(sent, message, batch, started, user)
        jobs, failed, retry = self._prepare(message, started, user)
        return _OpenChunk(message, batch, jobs, failed, retry, {})

    def _close_chunk(self, chunk: _OpenChunk, answers: Answers) -> Outcome:
        """Record a chunk's outcomes and end its batch if complete; TransientError if some of
        its items must be retried (the message comes back for them)."""
        submitted, rejected, unknown = answers
        message, batch = chunk.message, chunk.batch
        if chunk.shared is not None and submitted and message.chunk is not None:
            # A sweep chunk: its arrays are its submitted items' record (one write per array).
            ids = next(iter(chunk.positions.values()))
            arrays = arrays_of(ids, dict(submitted), utcnow())
            self._store.record_arrays(batch, message.chunk, arrays, chunk.shared)
            submitted = []
        item_of = {item.job_id: item for item in message.items}
        outcomes = [
            item_outcome(batch, item_of[job_id], message.chunk, slurm_job_id=slurm_id)
            for job_id, slurm_id in submitted
        ] + [item_outcome(batch, item_of[job_id], message.chunk, reason=reason)
             for job_id, reason in chunk.failed + rejected]  # fmt: skip
        _, newly_failed = self._store.record_batch_outcomes(batch, outcomes)
        for job_id in newly_failed:
            self._announce.job(job_id, JobState.SUBMITTING)
        finish_batch(self._store, self._announce, message.request_id)
        retry = chunk.retry + unknown
        if retry:
            raise TransientError(
                f"{len(retry)} items of this chunk must be retried", code="BATCH_ITEMS_RETRY"
            )
        return "succeeded"

    def _prepare(
        self, message: JobBatchMessage, started: set[str], user: str
    ) -> tuple[list[AgentJob], list[tuple[str, str]], list[str]]:
        """The agent jobs of the started items; items failed or to retry (dependencies)."""
        jobs: list[AgentJob] = []
        failed: list[tuple[str, str]] = []
        retry: list[str] = []
        for item in message.items:
            if item.job_id not in started:
                continue
            try:
                dependency = self._dependencies.slurm_string(
                    message.owner, message.cluster, item.spec
                )
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

    def _prepare_sweep(
        self,
        sweep: JobSweepMessage,
        message: JobBatchMessage,
        batch: RequestRecord,
        started: set[str],
        user: str,
    ) -> _OpenChunk:
        """A sweep's chunk as one agent job: a task at each position whose item is started.

        Positions are the chunk's items in order, whatever has happened to them since: a
        redelivery asks for the same arrays (found by their tokens), and task ``p - first`` of
        an array is always the chunk's item ``p``. The template's dependencies are resolved
        once for all items.
        """
        ids = [item.job_id for item in message.items]
        todo = [job_id for job_id in ids if job_id in started]
        shared = SharedFields.of(sweep.template)
        if not todo:
            return _OpenChunk(message, batch, [], [], [], {}, shared)
        try:
            dependency = self._dependencies.slurm_string(sweep.owner, sweep.cluster, sweep.template)
        except TransientError:
            return _OpenChunk(message, batch, [], [], todo, {}, shared)
        except PermanentError as exc:
            failed = [(j, exc.message) for j in todo]
            return _OpenChunk(message, batch, [], failed, [], {}, shared)
        template = sweep.template
        if template.working_directory is None:
            template = template.model_copy(update={"working_directory": self._workdir})
        job = AgentJob.of(sweep.token(), template, dependency, user=user)
        job.tasks = [own if job_id in started else None
                     for job_id, own in zip(ids, sweep.parameters, strict=True)]  # fmt: skip
        positions = {job.token: [job_id if job_id in started else None for job_id in ids]}
        return _OpenChunk(message, batch, [job], [], [], positions, shared)

    def _submit_chunk(
        self, cluster: str, jobs: list[AgentJob], lookback: int, positions: Positions
    ) -> Answers:
        """One agent call for all ``jobs``: (submitted, rejected, to retry) job ids."""
        target = self._clusters.resolve(cluster)
        request = AgentRequest(op="submit", jobs=jobs, concurrency=self._concurrency,
                               lookback_seconds=lookback)  # fmt: skip
        response = self._runner_for(target.mode).run(target, request)
        if not response.ok:
            raise error_of(response.error, "AGENT_FAILED", "the head-node agent failed")
        answers = {r.token: r for r in response.results}
        submitted: list[tuple[str, str]] = []
        rejected: list[tuple[str, str]] = []
        retry: list[str] = []
        for job in jobs:
            answer = answers.get(job.token)
            if job.token in positions:
                _sweep_answers(positions[job.token], answer, (submitted, rejected, retry))
                continue
            job_id = job.token.split(":", 1)[1]
            if answer is not None and answer.job_id is not None:
                submitted.append((job_id, answer.job_id))
            elif answer is not None and answer.error is not None and not answer.error.transient:
                rejected.append((job_id, f"{answer.error.code}: {answer.error.message}"))
            else:
                retry.append(job_id)
        return submitted, rejected, retry


def _sweep_answers(ids: list[str | None], answer: AgentJobResult | None, into: Answers) -> None:
    """A sweep's answer per item: ``<array>_<task>`` where an array holds its position; the
    answer's error (or a retry, without one) for the others."""
    submitted, rejected, retry = into
    placed: dict[int, str] = {}
    for array in (answer.arrays or []) if answer is not None else []:
        for position in range(array.first, min(array.first + array.tasks, len(ids))):
            placed[position] = f"{array.job_id}_{position - array.first}"
    error = answer.error if answer is not None else None
    for position, job_id in enumerate(ids):
        if job_id is None:
            continue
        if position in placed:
            submitted.append((job_id, placed[position]))
        elif error is not None and not error.transient:
            rejected.append((job_id, f"{error.code}: {error.message}"))
        else:
            retry.append(job_id)


def _sweep_answers_of(ids: list[str | None], answer: AgentJobResult | None) -> Answers:
    """``_sweep_answers`` as a new (submitted, rejected, to retry) triple."""
    into: Answers = ([], [], [])
    _sweep_answers(ids, answer, into)
    return into
