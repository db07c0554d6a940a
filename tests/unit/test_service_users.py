"""Run as the caller: the API accepts only from callers mapped to a user on the cluster (default
deny, nothing recorded or queued otherwise), records the user with the job and carries it in the
message; the worker acts as that recorded user for the submission, the cancel and output reads,
and never falls back to anyone."""

from __future__ import annotations

import pytest

from broker.agent.protocol import AgentJobResult, AgentResponse, CancelResult
from broker.batches.models import BatchBody, JobBatchMessage
from broker.jobs.accept import RequestService
from broker.jobs.dispatch import Dispatcher
from broker.jobs.models import OutputQueryBody, slurm_token
from broker.jobs.records import JobState
from broker.notifications.announcer import Announcer
from broker.requests.states import RequestState
from broker.users.models import MappingBody, NotMappedError
from broker.users.service import UserService
from tests.fakes import (
    FakeDirectory,
    FakeQueue,
    InMemoryStore,
    InMemoryUserStore,
    MemoryArtifacts,
    RecordingNotifier,
    ScriptedRunner,
    submitted,
)
from tests.unit.test_service import OTHER, OWNER, SPEC, World

ADMIN = "arn:aws:iam::111122223333:user/admin"


@pytest.fixture
def users() -> UserService:
    """alice -> hpcbtest-a and bob -> hpcbtest-b on local; nobody on other."""
    service = UserService(InMemoryUserStore(), admins=[ADMIN])
    service.map("local", OWNER, MappingBody(user="hpcbtest-a"), by=ADMIN)
    service.map("local", OTHER, MappingBody(user="hpcbtest-b"), by=ADMIN)
    return service


@pytest.fixture
def world(users: UserService) -> World:
    store, queue, notifier, artifacts = (
        InMemoryStore(), FakeQueue(), RecordingNotifier(), MemoryArtifacts(),
    )  # fmt: skip
    runner = ScriptedRunner()
    worker = Dispatcher(
        store, FakeDirectory(), runner.runner_for, Announcer(store, notifier), artifacts=artifacts,
    )  # fmt: skip
    api = RequestService(
        store, queue, FakeDirectory(frozenset({"local", "other"})), users,
        announcer=Announcer(store, notifier),
    )  # fmt: skip
    return World(store, queue, api, runner, notifier, artifacts, worker)


def test_each_caller_is_submitted_as_their_own_mapped_user(world: World) -> None:
    # GIVEN alice and bob, mapped to hpcbtest-a and hpcbtest-b, each with an accepted job
    alice, bob = world.accepted(owner=OWNER), world.accepted(owner=OTHER)
    # THEN the user is recorded with each job and request, and carried by its message
    assert (alice.user, bob.user) == ("hpcbtest-a", "hpcbtest-b")
    assert world.store.get_job(alice.request_id).user == "hpcbtest-a"
    assert world.store.get(bob.request_id).user == "hpcbtest-b"
    # WHEN the worker submits them / THEN the agent is asked to run each as its owner's user
    users = []
    for message in (alice, bob):
        world.runner.answers = [submitted(slurm_token(message.request_id), "42")]
        world.worker.handle(message)
        users.extend(job.user for job in world.runner.calls[-1].jobs or [])
    assert users == ["hpcbtest-a", "hpcbtest-b"]


def test_an_unmapped_caller_is_refused_with_nothing_recorded_or_queued(world: World) -> None:
    # GIVEN alice is mapped on local only / WHEN she submits a job and a batch to other
    with pytest.raises(NotMappedError, match="administrator"):
        world.api.submit_job(OWNER, "other", SPEC)
    body = BatchBody.model_validate({"jobs": [{"script": "#!/bin/sh\ntrue\n"}]})
    with pytest.raises(NotMappedError):
        world.api.submit_batch(OWNER, "other", body)
    # THEN nothing was recorded (no request, no job) and nothing queued
    assert world.store.records == {}
    assert world.store.jobs == {}
    assert world.queue.sent == []


def test_a_caller_unmapped_after_submitting_cannot_cancel_or_read_output(
    world: World, users: UserService
) -> None:
    # GIVEN alice's job in Slurm, then her mapping removed
    message = world.accepted()
    world.runner.answers = [submitted(slurm_token(message.request_id), "42")]
    world.worker.handle(message)
    users.unmap("local", OWNER)
    before = (dict(world.store.records), len(world.queue.sent))
    # WHEN she cancels it or asks for its output / THEN 403 NOT_MAPPED, nothing recorded
    with pytest.raises(NotMappedError):
        world.api.cancel_job(OWNER, "local", "42")
    with pytest.raises(NotMappedError):
        world.api.fetch_output(OWNER, "local", "42", OutputQueryBody())
    assert (dict(world.store.records), len(world.queue.sent)) == before


def test_cancel_and_output_act_as_the_user_the_job_runs_as(
    world: World, users: UserService
) -> None:
    # GIVEN alice's job submitted as hpcbtest-a, then alice remapped to another user
    message = world.accepted()
    world.runner.answers = [submitted(slurm_token(message.request_id), "42")]
    world.worker.handle(message)
    users.map("local", OWNER, MappingBody(user="hpcbtest-c"), by=ADMIN)
    # WHEN she reads its output and cancels it
    world.runner.answers = [AgentResponse(ok=True, op="output", output=[])]
    world.api.fetch_output(OWNER, "local", "42", OutputQueryBody())
    world.worker.handle(world.queue.sent[-1])
    world.runner.answers = [AgentResponse(ok=True, op="cancel", cancelled=[CancelResult(
        job_id="42", ok=True)])]  # fmt: skip
    world.api.cancel_job(OWNER, "local", "42")
    world.worker.handle(world.queue.sent[-1])
    # THEN both ran as hpcbtest-a, the job's user in Slurm (the only one who may touch it)
    output, cancel = world.runner.calls[-2:]
    assert output.output is not None
    assert output.output.user == "hpcbtest-a"
    assert [t.user for t in cancel.targets or []] == ["hpcbtest-a"]


def test_a_job_recorded_without_a_user_fails_not_mapped_without_an_agent_call(
    world: World,
) -> None:
    # GIVEN an accepted job whose record has no user (accepted before users were mapped)
    message = world.accepted()
    job = world.store.jobs[message.request_id]
    world.store.jobs[message.request_id] = job.model_copy(update={"user": None})
    # WHEN the worker handles its message
    outcome = world.worker.handle(message)
    # THEN FAILED permanently with NOT_MAPPED, SUBMIT_FAILED, and no agent call: no fallback
    record = world.store.get(message.request_id)
    assert outcome == "failed"
    assert record.error is not None
    assert (record.error.code, record.error.transient) == ("NOT_MAPPED", False)
    assert world.store.get_job(message.request_id).state is JobState.SUBMIT_FAILED
    assert world.runner.calls == []


def test_a_message_naming_another_user_than_the_record_is_refused(world: World) -> None:
    # GIVEN alice's accepted job, and a message for it that names bob's user
    message = world.accepted()
    forged = message.model_copy(update={"user": "hpcbtest-b"})
    # WHEN the worker handles it / THEN FAILED with USER_MISMATCH and no agent call
    assert world.worker.handle(forged) == "failed"
    record = world.store.get(message.request_id)
    assert record.state is RequestState.FAILED
    assert record.error is not None
    assert record.error.code == "USER_MISMATCH"
    assert world.runner.calls == []


def test_a_batch_runs_every_item_as_the_callers_user(world: World) -> None:
    # GIVEN bob's batch of two
    body = BatchBody.model_validate({"jobs": [{"script": "#!/bin/sh\ntrue\n"}] * 2})
    world.api.submit_batch(OTHER, "local", body)
    (chunk,) = world.queue.sent
    assert isinstance(chunk, JobBatchMessage)
    # WHEN its chunk is submitted
    world.runner.answers = [AgentResponse(ok=True, op="submit", results=[
        AgentJobResult(token=slurm_token(item.job_id), job_id=str(40 + i))
        for i, item in enumerate(chunk.items)])]  # fmt: skip
    world.worker.handle(chunk)
    # THEN the message carried hpcbtest-b and every agent job ran as hpcbtest-b
    assert chunk.user == "hpcbtest-b"
    assert {job.user for job in world.runner.calls[-1].jobs or []} == {"hpcbtest-b"}
    assert world.store.get_job(chunk.items[0].job_id).user == "hpcbtest-b"
