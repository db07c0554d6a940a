"""Domain services with in-memory fakes: accept, read, dispatch, give up."""

from __future__ import annotations

import pytest

from broker.agent.protocol import AgentErrorInfo, AgentJobResult, AgentResponse
from broker.errors import (
    ClusterNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    PermanentError,
    RunnerTimeoutError,
    TransientError,
)
from broker.models import MAX_SCRIPT_BYTES, JobSpec, JobSubmitMessage, slurm_token
from broker.service import DeadLetterService, RequestService, SubmitDispatcher
from broker.states import RequestState
from tests.fakes import FakeDirectory, FakeQueue, InMemoryRequestStore, ScriptedRunner, submitted

OWNER = "arn:aws:iam::111122223333:user/alice"
OTHER = "arn:aws:iam::111122223333:user/bob"
SPEC = JobSpec(script="#!/bin/bash\necho hi\n", name="hello")


@pytest.fixture
def store() -> InMemoryRequestStore:
    return InMemoryRequestStore()


@pytest.fixture
def queue() -> FakeQueue:
    return FakeQueue()


@pytest.fixture
def api(store: InMemoryRequestStore, queue: FakeQueue) -> RequestService:
    return RequestService(store, queue, FakeDirectory())


def test_submit_records_accepted_then_enqueues(
    api: RequestService, store: InMemoryRequestStore, queue: FakeQueue
) -> None:
    # GIVEN a valid job for a known cluster
    # WHEN it is submitted
    record = api.submit_job(OWNER, "local", SPEC)
    # THEN it is recorded ACCEPTED with its owner, and exactly one message carries it
    assert store.get(record.request_id).state is RequestState.ACCEPTED
    assert store.get(record.request_id).owner == OWNER
    assert [m.request_id for m in queue.sent] == [record.request_id]


def test_submit_to_unknown_cluster_records_and_queues_nothing(
    api: RequestService, store: InMemoryRequestStore, queue: FakeQueue
) -> None:
    # GIVEN a cluster nobody knows / WHEN submitting / THEN not found, nothing written
    with pytest.raises(ClusterNotFoundError):
        api.submit_job(OWNER, "nope", SPEC)
    assert store.records == {}
    assert queue.sent == []


def test_oversized_script_is_rejected_before_anything_is_written(
    api: RequestService, store: InMemoryRequestStore
) -> None:
    # GIVEN a script one byte over the limit
    big = JobSpec(script="#!/bin/sh\n" + "x" * (MAX_SCRIPT_BYTES - 9))
    # WHEN submitted / THEN too large, and nothing recorded
    with pytest.raises(PayloadTooLargeError, match=str(MAX_SCRIPT_BYTES)):
        api.submit_job(OWNER, "local", big)
    assert store.records == {}


def test_queue_failure_leaves_a_failed_record_not_a_stuck_one(
    store: InMemoryRequestStore,
) -> None:
    # GIVEN a queue that cannot take messages
    api = RequestService(store, FakeQueue(fail_with=TransientError("down")), FakeDirectory())
    # WHEN submitting / THEN the caller is told to retry
    with pytest.raises(TransientError, match="send it again"):
        api.submit_job(OWNER, "local", SPEC)
    # AND the record says FAILED/ENQUEUE_FAILED instead of staying ACCEPTED forever
    (record,) = store.records.values()
    assert record.state is RequestState.FAILED
    assert record.error is not None
    assert record.error.code == "ENQUEUE_FAILED"
    assert record.error.transient


def test_another_owner_cannot_read_a_request(api: RequestService) -> None:
    # GIVEN alice's request / WHEN bob reads it / THEN not found (existence not revealed)
    record = api.submit_job(OWNER, "local", SPEC)
    assert api.get_request(OWNER, record.request_id).request_id == record.request_id
    with pytest.raises(NotFoundError):
        api.get_request(OTHER, record.request_id)


def _accepted(api: RequestService, queue: FakeQueue) -> JobSubmitMessage:
    api.submit_job(OWNER, "local", SPEC)
    return queue.sent[-1]


def test_dispatch_success_records_the_slurm_job_id(
    api: RequestService, store: InMemoryRequestStore, queue: FakeQueue
) -> None:
    # GIVEN an accepted submission and an agent that submits it as job 42
    message = _accepted(api, queue)
    runner = ScriptedRunner([submitted(slurm_token(message.request_id), "42")])
    dispatcher = SubmitDispatcher(store, FakeDirectory(), runner.runner_for)
    # WHEN the worker handles it
    outcome = dispatcher.handle(message)
    # THEN the request SUCCEEDED with job 42 after one attempt, and the agent got the token
    record = store.get(message.request_id)
    assert outcome == "succeeded"
    assert record.state is RequestState.SUCCEEDED
    assert record.result is not None
    assert record.result.job_id == "42"
    assert record.attempts == 1
    assert runner.calls[0].jobs[0].token == f"hpcb:{message.request_id}"
    assert runner.calls[0].jobs[0].options == {"name": "hello", "working_directory": "/tmp"}


def test_redelivery_after_success_does_not_run_again(
    api: RequestService, store: InMemoryRequestStore, queue: FakeQueue
) -> None:
    # GIVEN a submission that already succeeded
    message = _accepted(api, queue)
    runner = ScriptedRunner([submitted(slurm_token(message.request_id))])
    dispatcher = SubmitDispatcher(store, FakeDirectory(), runner.runner_for)
    dispatcher.handle(message)
    # WHEN the same message is delivered again
    outcome = dispatcher.handle(message)
    # THEN it is skipped: no second head-node call
    assert outcome == "skipped"
    assert len(runner.calls) == 1


def test_transient_runner_error_is_recorded_and_raised_for_retry(
    api: RequestService, store: InMemoryRequestStore, queue: FakeQueue
) -> None:
    # GIVEN a runner that times out with an unknown outcome
    message = _accepted(api, queue)
    runner = ScriptedRunner([RunnerTimeoutError("no answer in 120 s")])
    dispatcher = SubmitDispatcher(store, FakeDirectory(), runner.runner_for)
    # WHEN handled / THEN the error propagates (SQS will redeliver)
    with pytest.raises(RunnerTimeoutError):
        dispatcher.handle(message)
    # AND the request is still in progress, showing the last error
    record = store.get(message.request_id)
    assert record.state is RequestState.DISPATCHED
    assert record.error is not None
    assert record.error.code == "RUNNER_TIMEOUT"
    assert record.error.transient


def test_retry_after_unknown_outcome_reuses_the_existing_job(
    api: RequestService, store: InMemoryRequestStore, queue: FakeQueue
) -> None:
    # GIVEN a first attempt that timed out after sbatch ran, and an agent that finds the token
    message = _accepted(api, queue)
    token = slurm_token(message.request_id)
    runner = ScriptedRunner([RunnerTimeoutError("lost"), submitted(token, "7", reused=True)])
    dispatcher = SubmitDispatcher(store, FakeDirectory(), runner.runner_for)
    with pytest.raises(RunnerTimeoutError):
        dispatcher.handle(message)
    # WHEN the message is delivered again
    dispatcher.handle(message)
    # THEN the request succeeds with the existing job, marked reused, after two attempts
    record = store.get(message.request_id)
    assert record.state is RequestState.SUCCEEDED
    assert record.result is not None
    assert (record.result.job_id, record.result.reused) == ("7", True)
    assert record.attempts == 2
    assert record.error is None


def test_scheduler_rejection_fails_the_request_with_slurms_words(
    api: RequestService, store: InMemoryRequestStore, queue: FakeQueue
) -> None:
    # GIVEN an agent reporting that sbatch rejected the job
    message = _accepted(api, queue)
    rejection = AgentErrorInfo(
        code="SCHEDULER_REJECTED",
        message="sbatch: error: invalid partition specified: nope",
        transient=False,
    )
    answer = AgentResponse(
        ok=True,
        op="submit",
        results=[AgentJobResult(token=slurm_token(message.request_id), error=rejection)],
    )
    dispatcher = SubmitDispatcher(store, FakeDirectory(), ScriptedRunner([answer]).runner_for)
    # WHEN handled / THEN FAILED, permanent, with Slurm's message; nothing raised (no retry)
    assert dispatcher.handle(message) == "failed"
    record = store.get(message.request_id)
    assert record.state is RequestState.FAILED
    assert record.error is not None
    assert record.error.code == "SCHEDULER_REJECTED"
    assert "invalid partition" in record.error.message
    assert not record.error.transient


def test_agent_level_transient_error_is_retried(
    api: RequestService, store: InMemoryRequestStore, queue: FakeQueue
) -> None:
    # GIVEN an agent that cannot reach slurmctld
    message = _accepted(api, queue)
    down = AgentErrorInfo(code="SCHEDULER_UNAVAILABLE", message="Socket timed out", transient=True)
    answer = AgentResponse(ok=False, op="submit", error=down)
    dispatcher = SubmitDispatcher(store, FakeDirectory(), ScriptedRunner([answer]).runner_for)
    # WHEN handled / THEN a transient error is raised for SQS to retry
    with pytest.raises(TransientError, match="Socket timed out"):
        dispatcher.handle(message)
    assert store.get(message.request_id).state is RequestState.DISPATCHED


def test_permanent_runner_error_fails_without_retry(
    api: RequestService, store: InMemoryRequestStore, queue: FakeQueue
) -> None:
    # GIVEN a runner that is denied access to the head node
    message = _accepted(api, queue)
    denied = PermanentError("AccessDenied", code="SSM_ACCESS_DENIED")
    dispatcher = SubmitDispatcher(store, FakeDirectory(), ScriptedRunner([denied]).runner_for)
    # WHEN handled / THEN FAILED with that code
    assert dispatcher.handle(message) == "failed"
    error = store.get(message.request_id).error
    assert error is not None
    assert error.code == "SSM_ACCESS_DENIED"


def test_dead_letter_fails_the_request_with_the_last_error(
    api: RequestService, store: InMemoryRequestStore, queue: FakeQueue
) -> None:
    # GIVEN a request that failed transiently on its last attempt
    message = _accepted(api, queue)
    runner = ScriptedRunner([RunnerTimeoutError("no answer")])
    with pytest.raises(RunnerTimeoutError):
        SubmitDispatcher(store, FakeDirectory(), runner.runner_for).handle(message)
    # WHEN its message reaches the DLQ
    assert DeadLetterService(store).give_up(message.request_id)
    # THEN it is FAILED, RETRIES_EXHAUSTED, transient, and says what went wrong last
    record = store.get(message.request_id)
    assert record.state is RequestState.FAILED
    assert record.error is not None
    assert record.error.code == "RETRIES_EXHAUSTED"
    assert "RUNNER_TIMEOUT" in record.error.message
    assert "1 attempts" in record.error.message


def test_dead_letter_never_overrides_a_success(
    api: RequestService, store: InMemoryRequestStore, queue: FakeQueue
) -> None:
    # GIVEN a request that succeeded (its message reached the DLQ late, in a race)
    message = _accepted(api, queue)
    runner = ScriptedRunner([submitted(slurm_token(message.request_id))])
    SubmitDispatcher(store, FakeDirectory(), runner.runner_for).handle(message)
    # WHEN the dead letter is processed / THEN nothing changes
    assert not DeadLetterService(store).give_up(message.request_id)
    assert store.get(message.request_id).state is RequestState.SUCCEEDED


def test_a_job_keeps_its_own_working_directory(
    api: RequestService, store: InMemoryRequestStore, queue: FakeQueue
) -> None:
    # GIVEN a job that names its working directory
    api.submit_job(OWNER, "local", SPEC.model_copy(update={"working_directory": "/home/a/run"}))
    message = queue.sent[-1]
    runner = ScriptedRunner([submitted(slurm_token(message.request_id))])
    dispatcher = SubmitDispatcher(store, FakeDirectory(), runner.runner_for, "/scratch")
    # WHEN dispatched / THEN the agent gets that directory, not the default
    dispatcher.handle(message)
    assert runner.calls[0].jobs[0].options["working_directory"] == "/home/a/run"
