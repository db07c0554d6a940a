"""Domain services with in-memory fakes: accept, read, dispatch, cancel, output, give up."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from broker.agent.protocol import (
    AgentErrorInfo,
    AgentJobResult,
    AgentResponse,
    CancelResult,
    OutputChunk,
)
from broker.errors import (
    ClusterNotFoundError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PermanentError,
    RunnerTimeoutError,
    ThrottledError,
    TransientError,
)
from broker.jobs.accept import RequestService
from broker.jobs.dead_letters import DeadLetterService
from broker.jobs.dispatch import Dispatcher
from broker.jobs.execution import lookback_seconds
from broker.jobs.models import (
    MAX_SCRIPT_BYTES,
    Dependency,
    JobSpec,
    JobSubmitMessage,
    OutputQueryBody,
    slurm_token,
)
from broker.jobs.records import JobState
from broker.notifications.announcer import Announcer
from broker.notifications.events import JobEvent, RequestEvent
from broker.requests.models import RequestRecord
from broker.requests.states import RequestState
from broker.schema import utcnow
from tests.fakes import (
    EveryoneAs,
    FakeDirectory,
    FakeQueue,
    InMemoryStore,
    MemoryArtifacts,
    RecordingNotifier,
    ScriptedRunner,
    submitted,
)

OWNER = "arn:aws:iam::111122223333:user/alice"
OTHER = "arn:aws:iam::111122223333:user/bob"
SPEC = JobSpec(script="#!/bin/bash\necho hi\n", name="hello")


@dataclass
class World:
    store: InMemoryStore
    queue: FakeQueue
    api: RequestService
    runner: ScriptedRunner
    notifier: RecordingNotifier
    artifacts: MemoryArtifacts
    worker: Dispatcher

    def accepted(self, spec: JobSpec = SPEC, owner: str = OWNER) -> JobSubmitMessage:
        self.api.submit_job(owner, "local", spec)
        message = self.queue.sent[-1]
        assert isinstance(message, JobSubmitMessage)
        return message

    def events(self, kind: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.notifier.published if isinstance(e, kind)]


@pytest.fixture
def world() -> World:
    store, queue, notifier, artifacts = (
        InMemoryStore(), FakeQueue(), RecordingNotifier(), MemoryArtifacts(),
    )  # fmt: skip
    runner = ScriptedRunner()
    worker = Dispatcher(
        store, FakeDirectory(), runner.runner_for, Announcer(store, notifier), artifacts=artifacts,
    )  # fmt: skip
    api = RequestService(
        store, queue, FakeDirectory(), Announcer(store, notifier), users=EveryoneAs()
    )
    return World(store, queue, api, runner, notifier, artifacts, worker)


# -- accepting -------------------------------------------------------------------------------


def test_submit_records_request_and_job_then_enqueues(world: World) -> None:
    # GIVEN a valid job for a known cluster / WHEN submitted
    record = world.api.submit_job(OWNER, "local", SPEC)
    # THEN the request is ACCEPTED, its job SUBMITTING (same id), and one message carries it
    assert world.store.get(record.request_id).state is RequestState.ACCEPTED
    job = world.store.get_job(record.request_id)
    assert (job.state, job.owner, job.name) == (JobState.SUBMITTING, OWNER, "hello")
    assert [m.request_id for m in world.queue.sent] == [record.request_id]


def test_submit_to_unknown_cluster_records_and_queues_nothing(world: World) -> None:
    # GIVEN a cluster nobody knows / WHEN submitting / THEN not found, nothing written
    with pytest.raises(ClusterNotFoundError):
        world.api.submit_job(OWNER, "nope", SPEC)
    assert world.store.records == {}
    assert world.queue.sent == []


def test_oversized_script_is_rejected_before_anything_is_written(world: World) -> None:
    # GIVEN a script one byte over the limit
    big = JobSpec(script="#!/bin/sh\n" + "x" * (MAX_SCRIPT_BYTES - 9))
    # WHEN submitted / THEN too large, and nothing recorded
    with pytest.raises(PayloadTooLargeError, match=str(MAX_SCRIPT_BYTES)):
        world.api.submit_job(OWNER, "local", big)
    assert world.store.records == {}


def test_queue_failure_leaves_failed_records_not_stuck_ones(world: World) -> None:
    # GIVEN a queue that cannot take messages
    world.queue.fail_with = TransientError("down")
    # WHEN submitting / THEN the caller is told to retry
    with pytest.raises(TransientError, match="send it again"):
        world.api.submit_job(OWNER, "local", SPEC)
    # AND the request is FAILED/ENQUEUE_FAILED and its job SUBMIT_FAILED, not left in progress
    (record,) = world.store.records.values()
    assert record.state is RequestState.FAILED
    assert record.error is not None
    assert (record.error.code, record.error.transient) == ("ENQUEUE_FAILED", True)
    assert world.store.get_job(record.request_id).state is JobState.SUBMIT_FAILED


def test_another_owner_cannot_read_a_request_or_a_job(world: World) -> None:
    # GIVEN alice's request / WHEN bob reads it or its job / THEN not found (not revealed)
    record = world.api.submit_job(OWNER, "local", SPEC)
    assert world.api.get_request(OWNER, record.request_id).request_id == record.request_id
    with pytest.raises(NotFoundError):
        world.api.get_request(OTHER, record.request_id)
    with pytest.raises(NotFoundError):
        world.api.get_job(OTHER, "local", record.request_id)


# -- submitting ------------------------------------------------------------------------------


def test_dispatch_success_records_the_slurm_job_id_and_announces_once(world: World) -> None:
    # GIVEN an accepted submission and an agent that submits it as job 42
    message = world.accepted()
    world.runner.answers = [submitted(slurm_token(message.request_id), "42")]
    # WHEN the worker handles it
    outcome = world.worker.handle(message)
    # THEN the request SUCCEEDED with job 42, the job is PENDING in Slurm, findable by its id
    record = world.store.get(message.request_id)
    assert outcome == "succeeded"
    assert record.state is RequestState.SUCCEEDED
    assert record.result is not None
    assert record.result.kind == "job.submit"
    assert record.attempts == 1
    job = world.store.find_job("local", "42")
    assert (job.job_id, job.state, job.slurm_job_id) == (message.request_id, JobState.PENDING, "42")
    # AND the agent got the token and the options, each separately, with the default workdir
    sent = world.runner.calls[0].jobs[0]
    assert sent.token == f"hpcb:{message.request_id}"
    assert sent.options == {"name": "hello", "working_directory": "/tmp"}
    # AND exactly one request event was published, its pending mark cleared
    assert [e.new_state for e in world.events(RequestEvent)] == [RequestState.SUCCEEDED]
    assert world.store.get(message.request_id).notify_pending is None


class ThrottledAfterSuccess(InMemoryStore):
    """A store whose next ``n`` request reads after a request SUCCEEDED are throttled (the
    announcer's, which follow the winning transition)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.throttled = 0

    def record_success(self, request_id: str, result: Any) -> bool:
        moved = bool(super().record_success(request_id, result))
        self.throttled = self.n
        return moved

    def get(self, request_id: str) -> RequestRecord:
        if self.throttled:
            self.throttled -= 1
            raise ThrottledError("read request: AWS is throttling")
        return super().get(request_id)


def test_a_final_transition_is_announced_even_when_the_announcers_read_is_throttled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a worker whose store throttles the request reads twice (the winner of the final
    # transition reads the record to announce it; a redelivery would find it final and skip)
    monkeypatch.setattr("broker.notifications.announcer.BACKOFF_S", 0.0, raising=False)
    store, queue, notifier = ThrottledAfterSuccess(2), FakeQueue(), RecordingNotifier()
    runner = ScriptedRunner()
    worker = Dispatcher(store, FakeDirectory(), runner.runner_for, Announcer(store, notifier))
    RequestService(store, queue, FakeDirectory(), users=EveryoneAs()).submit_job(
        OWNER, "local", SPEC
    )
    message = queue.sent[-1]
    runner.answers = [submitted(slurm_token(message.request_id), "42")]
    # WHEN the worker handles it
    outcome = worker.handle(message)
    # THEN the delivery succeeds and the SUCCEEDED event was published once, its mark cleared
    assert outcome == "succeeded"
    events = [e for e in notifier.published if isinstance(e, RequestEvent)]
    assert [e.new_state for e in events] == [RequestState.SUCCEEDED]
    assert store.get(message.request_id).notify_pending is None


def test_the_agent_searches_accounting_only_back_to_the_jobs_acceptance(world: World) -> None:
    # GIVEN a job accepted just now
    message = world.accepted(SPEC)
    world.runner.answers = [submitted(slurm_token(message.request_id))]
    # WHEN dispatched
    world.worker.handle(message)
    # THEN the agent's sacct looks back the job's age plus the 10-minute margin, not a week
    lookback = world.runner.calls[0].lookback_seconds
    assert lookback is not None
    assert 600 <= lookback <= 630


def test_lookback_covers_an_old_request_and_stays_in_the_agents_bounds() -> None:
    # GIVEN requests accepted 3 days, and 200 days, ago / WHEN the lookback is computed
    now = utcnow()
    three_days = lookback_seconds(now - timedelta(days=3))
    # THEN it covers their age plus the margin, and never passes the agent's 90-day bound
    assert 3 * 86400 + 600 <= three_days <= 3 * 86400 + 630
    assert lookback_seconds(now - timedelta(days=200)) == 90 * 86400


def test_a_job_keeps_its_own_working_directory(world: World) -> None:
    # GIVEN a job that names its working directory
    message = world.accepted(SPEC.model_copy(update={"working_directory": "/home/a/run"}))
    world.runner.answers = [submitted(slurm_token(message.request_id))]
    # WHEN dispatched / THEN the agent gets that directory, not the default
    world.worker.handle(message)
    assert world.runner.calls[0].jobs[0].options["working_directory"] == "/home/a/run"


def test_redelivery_after_success_does_not_run_again(world: World) -> None:
    # GIVEN a submission that already succeeded
    message = world.accepted()
    world.runner.answers = [submitted(slurm_token(message.request_id))]
    world.worker.handle(message)
    # WHEN the same message is delivered again
    outcome = world.worker.handle(message)
    # THEN it is skipped: no second head-node call, no second event
    assert outcome == "skipped"
    assert len(world.runner.calls) == 1
    assert len(world.events(RequestEvent)) == 1


def test_transient_runner_error_is_recorded_and_raised_for_retry(world: World) -> None:
    # GIVEN a runner that times out with an unknown outcome
    message = world.accepted()
    world.runner.answers = [RunnerTimeoutError("no answer in 120 s")]
    # WHEN handled / THEN the error propagates (SQS will redeliver)
    with pytest.raises(RunnerTimeoutError):
        world.worker.handle(message)
    # AND the request is still in progress, showing the last error; nothing announced
    record = world.store.get(message.request_id)
    assert record.state is RequestState.DISPATCHED
    assert record.error is not None
    assert (record.error.code, record.error.transient) == ("RUNNER_TIMEOUT", True)
    assert world.notifier.published == []


def test_retry_after_unknown_outcome_reuses_the_existing_job(world: World) -> None:
    # GIVEN a first attempt that timed out after sbatch ran, and an agent that finds the token
    message = world.accepted()
    token = slurm_token(message.request_id)
    world.runner.answers = [RunnerTimeoutError("lost"), submitted(token, "7", reused=True)]
    with pytest.raises(RunnerTimeoutError):
        world.worker.handle(message)
    # WHEN the message is delivered again
    world.worker.handle(message)
    # THEN the request succeeds with the existing job, marked reused, after two attempts
    record = world.store.get(message.request_id)
    assert record.state is RequestState.SUCCEEDED
    assert record.result is not None
    assert record.result.model_dump(include={"job_id", "reused"}) == {"job_id": "7", "reused": True}
    assert record.attempts == 2
    assert record.error is None


def test_scheduler_rejection_fails_request_and_job_with_slurms_words(world: World) -> None:
    # GIVEN an agent reporting that sbatch rejected the job
    message = world.accepted()
    rejection = AgentErrorInfo(
        code="SCHEDULER_REJECTED",
        message="sbatch: error: invalid partition specified: nope",
        transient=False,
    )
    world.runner.answers = [
        AgentResponse(
            ok=True,
            op="submit",
            results=[AgentJobResult(token=slurm_token(message.request_id), error=rejection)],
        )
    ]
    # WHEN handled / THEN FAILED, permanent, with Slurm's message; nothing raised (no retry)
    assert world.worker.handle(message) == "failed"
    record = world.store.get(message.request_id)
    assert record.state is RequestState.FAILED
    assert record.error is not None
    assert record.error.code == "SCHEDULER_REJECTED"
    assert "invalid partition" in record.error.message
    assert not record.error.transient
    # AND the job is SUBMIT_FAILED; one job event and one request event were published
    assert world.store.get_job(message.request_id).state is JobState.SUBMIT_FAILED
    assert [e.new_state for e in world.events(JobEvent)] == [JobState.SUBMIT_FAILED]
    assert [e.new_state for e in world.events(RequestEvent)] == [RequestState.FAILED]


def test_agent_level_transient_error_is_retried(world: World) -> None:
    # GIVEN an agent that cannot reach slurmctld
    message = world.accepted()
    down = AgentErrorInfo(code="SCHEDULER_UNAVAILABLE", message="Socket timed out", transient=True)
    world.runner.answers = [AgentResponse(ok=False, op="submit", error=down)]
    # WHEN handled / THEN a transient error is raised for SQS to retry
    with pytest.raises(TransientError, match="Socket timed out"):
        world.worker.handle(message)
    assert world.store.get(message.request_id).state is RequestState.DISPATCHED


def test_permanent_runner_error_fails_without_retry(world: World) -> None:
    # GIVEN a runner that is denied access to the head node
    message = world.accepted()
    world.runner.answers = [PermanentError("AccessDenied", code="SSM_ACCESS_DENIED")]
    # WHEN handled / THEN FAILED with that code
    assert world.worker.handle(message) == "failed"
    error = world.store.get(message.request_id).error
    assert error is not None
    assert error.code == "SSM_ACCESS_DENIED"


# -- dependencies ----------------------------------------------------------------------------


def test_dependencies_on_broker_ids_become_slurm_ids(world: World) -> None:
    # GIVEN job A submitted as Slurm 100, and B depending afterok on A (broker id) and Slurm 99
    first = world.accepted()
    world.runner.answers = [submitted(slurm_token(first.request_id), "100")]
    world.worker.handle(first)
    dep = [Dependency(type="afterok", jobs=[first.request_id, "99"])]
    second = world.accepted(SPEC.model_copy(update={"dependency": dep}))
    world.runner.answers = [submitted(slurm_token(second.request_id), "101")]
    # WHEN B is dispatched / THEN the agent gets Slurm's form with A's Slurm id
    world.worker.handle(second)
    assert world.runner.calls[-1].jobs[0].options["dependency"] == "afterok:100:99"


def test_dependency_on_a_job_still_submitting_waits(world: World) -> None:
    # GIVEN A accepted but not yet in Slurm, and B depending on it
    first = world.accepted()
    second = world.accepted(
        SPEC.model_copy(
            update={"dependency": [Dependency(type="afterany", jobs=[first.request_id])]}
        )
    )
    # WHEN B is dispatched first / THEN it is retried later (transient), not submitted
    with pytest.raises(TransientError) as info:
        world.worker.handle(second)
    assert info.value.code == "DEPENDENCY_NOT_SUBMITTED"
    assert world.runner.calls == []


@pytest.mark.parametrize("whose", ["unknown", "other owner"])
def test_dependency_on_an_unknown_or_foreign_job_fails_clearly(world: World, whose: str) -> None:
    # GIVEN B depending on a job id that does not exist, or is bob's
    ref = "r" + "0" * 28
    if whose == "other owner":
        ref = world.accepted(owner=OTHER).request_id
    message = world.accepted(
        SPEC.model_copy(update={"dependency": [Dependency(type="afterok", jobs=[ref])]})
    )
    # WHEN dispatched / THEN FAILED with DEPENDENCY_NOT_FOUND, job SUBMIT_FAILED, no sbatch
    assert world.worker.handle(message) == "failed"
    error = world.store.get(message.request_id).error
    assert error is not None
    assert error.code == "DEPENDENCY_NOT_FOUND"
    assert world.store.get_job(message.request_id).state is JobState.SUBMIT_FAILED
    assert world.runner.calls == []


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_while_queued_skips_the_submission_entirely(world: World) -> None:
    # GIVEN a submission still queued in SQS
    message = world.accepted()
    # WHEN the owner cancels it
    cancel = world.api.cancel_job(OWNER, "local", message.request_id)
    # THEN the cancel request is done at once and the job is CANCELLED
    assert cancel.state is RequestState.SUCCEEDED
    assert world.store.get_job(message.request_id).state is JobState.CANCELLED
    # AND when the worker later takes the submission, it never reaches Slurm
    assert world.worker.handle(message) == "cancelled"
    assert world.runner.calls == []
    assert world.store.get(message.request_id).state is RequestState.CANCELLED
    # AND one CANCELLED job event and one event per finished request were published at once
    assert [e.new_state for e in world.events(JobEvent)] == [JobState.CANCELLED]
    assert sorted(e.request_id for e in world.events(RequestEvent)) == sorted(
        [cancel.request_id, message.request_id]
    )


def test_cancel_of_a_job_in_slurm_runs_scancel(world: World) -> None:
    # GIVEN a job in Slurm as 42
    message = world.accepted()
    world.runner.answers = [submitted(slurm_token(message.request_id), "42")]
    world.worker.handle(message)
    # WHEN cancelled
    cancel = world.api.cancel_job(OWNER, "local", "42")
    world.runner.answers = [
        AgentResponse(ok=True, op="cancel", cancelled=[CancelResult(job_id="42", ok=True)])
    ]
    assert world.worker.handle(world.queue.sent[-1]) == "succeeded"
    # THEN the agent was asked to cancel 42 as the job's user, if it carries the job's token,
    # and the cancel request SUCCEEDED
    assert world.runner.calls[-1].op == "cancel"
    assert [(t.job_id, t.user, t.token) for t in world.runner.calls[-1].targets] == [
        ("42", "hpcb-dev", slurm_token(message.request_id))
    ]
    assert world.store.get(cancel.request_id).state is RequestState.SUCCEEDED


def test_cancel_of_a_finished_job_is_a_conflict(world: World) -> None:
    # GIVEN a job that failed to submit / WHEN cancelled / THEN 409-style conflict
    world.queue.fail_with = TransientError("down")
    with pytest.raises(TransientError):
        world.api.submit_job(OWNER, "local", SPEC)
    job_id = next(iter(world.store.jobs))
    with pytest.raises(ConflictError, match="already ended"):
        world.api.cancel_job(OWNER, "local", job_id)


def test_cancel_of_someone_elses_job_is_not_found(world: World) -> None:
    # GIVEN alice's job / WHEN bob cancels it / THEN not found
    message = world.accepted()
    with pytest.raises(NotFoundError):
        world.api.cancel_job(OTHER, "local", message.request_id)


# -- output ----------------------------------------------------------------------------------


def _in_slurm(world: World, slurm_id: str = "42") -> JobSubmitMessage:
    message = world.accepted()
    world.runner.answers = [submitted(slurm_token(message.request_id), slurm_id)]
    world.worker.handle(message)
    return message


def test_small_output_comes_back_inline(world: World) -> None:
    # GIVEN a job in Slurm and an agent returning a small stdout
    message = _in_slurm(world)
    request = world.api.fetch_output(OWNER, "local", message.request_id, OutputQueryBody())
    chunk = OutputChunk(
        stream="stdout", path="/tmp/slurm-42.out", size=6, length=6, data="hello\n", eof=True
    )
    world.runner.answers = [AgentResponse(ok=True, op="output", output=[chunk])]
    # WHEN the output request is handled
    world.worker.handle(world.queue.sent[-1])
    # THEN the text is in the result, and the agent got the default path pattern
    result = world.store.get(request.request_id).result
    assert result is not None
    assert result.kind == "job.output"
    assert [p.data for p in result.parts] == ["hello\n"]
    query = world.runner.calls[-1].output
    assert query is not None
    assert query.patterns["stdout"] == "/tmp/slurm-%j.out"


def test_large_output_is_staged_behind_a_link(world: World) -> None:
    # GIVEN an output larger than the inline limit
    message = _in_slurm(world)
    request = world.api.fetch_output(OWNER, "local", message.request_id, OutputQueryBody())
    text = "x" * 40_000
    chunk = OutputChunk(stream="stdout", size=40_000, length=40_000, data=text, eof=True)
    world.runner.answers = [AgentResponse(ok=True, op="output", output=[chunk])]
    # WHEN handled / THEN the result carries a URL, not the text, and the store has the text
    world.worker.handle(world.queue.sent[-1])
    result = world.store.get(request.request_id).result
    assert result is not None
    assert result.kind == "job.output"
    (part,) = result.parts
    assert part.data is None
    assert part.url is not None
    assert world.artifacts.texts[f"outputs/{request.request_id}/stdout"] == text


def test_output_of_a_job_not_in_slurm_is_a_conflict(world: World) -> None:
    # GIVEN a job still submitting / WHEN its output is asked for / THEN conflict
    message = world.accepted()
    with pytest.raises(ConflictError, match="not reached Slurm"):
        world.api.fetch_output(OWNER, "local", message.request_id, OutputQueryBody())


# -- dead letters ----------------------------------------------------------------------------


def test_dead_letter_fails_the_request_and_its_job_with_the_last_error(world: World) -> None:
    # GIVEN a request that failed transiently on its last attempt
    message = world.accepted()
    world.runner.answers = [RunnerTimeoutError("no answer")]
    with pytest.raises(RunnerTimeoutError):
        world.worker.handle(message)
    # WHEN its message reaches the DLQ
    assert DeadLetterService(world.store, Announcer(world.store, world.notifier)).give_up(
        message.request_id
    )
    # THEN it is FAILED, RETRIES_EXHAUSTED, transient, and says what went wrong last
    record = world.store.get(message.request_id)
    assert record.state is RequestState.FAILED
    assert record.error is not None
    assert record.error.code == "RETRIES_EXHAUSTED"
    assert "RUNNER_TIMEOUT" in record.error.message
    assert "1 attempts" in record.error.message
    assert world.store.get_job(message.request_id).state is JobState.SUBMIT_FAILED
    assert len(world.events(RequestEvent)) == 1


def test_dead_letter_never_overrides_a_success(world: World) -> None:
    # GIVEN a request that succeeded (its message reached the DLQ late, in a race)
    message = world.accepted()
    world.runner.answers = [submitted(slurm_token(message.request_id))]
    world.worker.handle(message)
    # WHEN the dead letter is processed / THEN nothing changes
    dead = DeadLetterService(world.store, Announcer(world.store, world.notifier))
    assert not dead.give_up(message.request_id)
    assert world.store.get(message.request_id).state is RequestState.SUCCEEDED


def test_a_dead_letter_delivered_again_fails_the_job_its_first_delivery_left_submitting(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a request whose retries ran out, and whose first dead-letter delivery marked the
    # request FAILED but was throttled failing its job (the DLQ message then comes back)
    message = world.accepted()
    world.runner.answers = [RunnerTimeoutError("no answer")]
    with pytest.raises(RunnerTimeoutError):
        world.worker.handle(message)
    dead = DeadLetterService(world.store, Announcer(world.store, world.notifier))
    real = world.store.record_submit_failed
    monkeypatch.setattr(
        world.store, "record_submit_failed", lambda *_: (_ for _ in ()).throw(ThrottledError("x"))
    )
    with pytest.raises(ThrottledError):
        dead.give_up(message.request_id)
    monkeypatch.setattr(world.store, "record_submit_failed", real)
    # WHEN the dead letter is delivered again
    dead.give_up(message.request_id)
    # THEN the job is no longer in progress: SUBMIT_FAILED, announced once, as is the request
    assert world.store.get_job(message.request_id).state is JobState.SUBMIT_FAILED
    assert [e.new_state for e in world.events(JobEvent)] == [JobState.SUBMIT_FAILED]
    assert [e.new_state for e in world.events(RequestEvent)] == [RequestState.FAILED]
