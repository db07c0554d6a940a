"""Run as the caller, the worker's side: the API records the caller's mapped user with the
request and the job and carries it in the message; the worker acts as that recorded user (a
submission, a batch, and the cancel and output reads of the job), never looks it up again and
never falls back: a record without a user, or a message naming another, fails permanently with
no agent call."""

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
from broker.users.models import MappingBody
from broker.users.service import MappedUsers, UserAdmin
from tests.fakes import (
    FakeDirectory,
    FakeQueue,
    InMemoryStore,
    InMemoryUserMappings,
    MemoryArtifacts,
    RecordingNotifier,
    ScriptedRunner,
    submitted,
)
from tests.unit.test_service import OTHER, OWNER, World

ADMIN = "arn:aws:iam::111122223333:user/admin"


@pytest.fixture
def mappings() -> InMemoryUserMappings:
    return InMemoryUserMappings()


@pytest.fixture
def admin(mappings: InMemoryUserMappings) -> UserAdmin:
    """alice -> hpcbtest-a and bob -> hpcbtest-b on local."""
    users = UserAdmin(mappings)
    users.put(ADMIN, "local", MappingBody(principal=OWNER, user="hpcbtest-a"))
    users.put(ADMIN, "local", MappingBody(principal=OTHER, user="hpcbtest-b"))
    return users


@pytest.fixture
def world(admin: UserAdmin, mappings: InMemoryUserMappings) -> World:
    store, queue, notifier, artifacts = (
        InMemoryStore(), FakeQueue(), RecordingNotifier(), MemoryArtifacts(),
    )  # fmt: skip
    runner = ScriptedRunner()
    worker = Dispatcher(
        store, FakeDirectory(), runner.runner_for, Announcer(store, notifier), artifacts=artifacts,
    )  # fmt: skip
    api = RequestService(
        store, queue, FakeDirectory(), Announcer(store, notifier),
        users=MappedUsers(mappings),  # the mappings the admin writes
    )  # fmt: skip
    return World(store, queue, api, runner, notifier, artifacts, worker)


def in_slurm(world: World, owner: str = OWNER) -> str:
    """One of ``owner``'s jobs, submitted as Slurm job 42; its broker id."""
    message = world.accepted(owner=owner)
    world.runner.answers = [submitted(slurm_token(message.request_id), "42")]
    world.worker.handle(message)
    return message.request_id


def test_each_caller_is_submitted_as_their_own_recorded_user(world: World) -> None:
    # GIVEN alice (hpcbtest-a) and bob (hpcbtest-b), each with an accepted job
    alice, bob = world.accepted(owner=OWNER), world.accepted(owner=OTHER)
    # THEN the user is recorded with each job and request, and carried by its message
    assert (alice.user, bob.user) == ("hpcbtest-a", "hpcbtest-b")
    assert world.store.get_job(alice.request_id).user == "hpcbtest-a"
    assert world.store.get(bob.request_id).user == "hpcbtest-b"
    # WHEN the worker submits them / THEN the agent runs each as its owner's user
    users = []
    for message in (alice, bob):
        world.runner.answers = [submitted(slurm_token(message.request_id), "42")]
        world.worker.handle(message)
        users.extend(job.user for job in world.runner.calls[-1].jobs or [])
    assert users == ["hpcbtest-a", "hpcbtest-b"]


def test_a_remapping_after_accept_does_not_move_a_queued_job(
    world: World, admin: UserAdmin
) -> None:
    # GIVEN alice's job accepted as hpcbtest-a, then alice re-mapped before the worker ran
    message = world.accepted()
    admin.put(ADMIN, "local", MappingBody(principal=OWNER, user="hpcbtest-c"))
    # WHEN the worker submits it / THEN as the user recorded at accept
    world.runner.answers = [submitted(slurm_token(message.request_id), "42")]
    world.worker.handle(message)
    assert [job.user for job in world.runner.calls[-1].jobs or []] == ["hpcbtest-a"]


def test_cancel_and_output_act_as_the_user_the_job_runs_as(world: World, admin: UserAdmin) -> None:
    # GIVEN alice's job in Slurm as hpcbtest-a, then alice re-mapped to another user
    in_slurm(world)
    admin.put(ADMIN, "local", MappingBody(principal=OWNER, user="hpcbtest-c"))
    # WHEN she reads its output and cancels it
    world.runner.answers = [AgentResponse(ok=True, op="output", output=[])]
    world.api.fetch_output(OWNER, "local", "42", OutputQueryBody())
    world.worker.handle(world.queue.sent[-1])
    world.runner.answers = [AgentResponse(ok=True, op="cancel", cancelled=[CancelResult(
        job_id="42", ok=True)])]  # fmt: skip
    world.api.cancel_job(OWNER, "local", "42")
    world.worker.handle(world.queue.sent[-1])
    # THEN both acted as hpcbtest-a: in Slurm the job is that user's, the only one who may
    # touch it (the agent refuses another user's job)
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


def test_a_batch_runs_every_item_as_the_callers_recorded_user(world: World) -> None:
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
    # THEN the message carried hpcbtest-b, and every agent job and item record is hpcbtest-b's
    assert chunk.user == "hpcbtest-b"
    assert {job.user for job in world.runner.calls[-1].jobs or []} == {"hpcbtest-b"}
    assert world.store.get_job(chunk.items[0].job_id).user == "hpcbtest-b"
