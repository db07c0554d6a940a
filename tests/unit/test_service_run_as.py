"""The worker's side of running as a user: every agent request it builds carries the caller's
mapped user; for a caller with no mapping (removed since the API accepted the request), each
submission, cancel and output request fails permanently with NOT_MAPPED and no agent call."""

from __future__ import annotations

import pytest

from broker.agent.protocol import AgentResponse, CancelResult
from broker.jobs.accept import RequestService
from broker.jobs.dispatch import Dispatcher
from broker.jobs.models import OutputQueryBody, slurm_token
from broker.jobs.records import JobState
from broker.notifications.announcer import Announcer
from broker.requests.states import RequestState
from broker.users.service import MappedUsers
from tests.fakes import (
    EveryoneAs,
    FakeDirectory,
    FakeQueue,
    InMemoryStore,
    InMemoryUserMappings,
    MemoryArtifacts,
    RecordingNotifier,
    ScriptedRunner,
    submitted,
)
from tests.unit.test_service import OWNER, World


@pytest.fixture
def world() -> World:
    """test_service's world: its worker runs jobs as hpcb-dev."""
    store, queue, notifier, artifacts = (
        InMemoryStore(), FakeQueue(), RecordingNotifier(), MemoryArtifacts(),
    )  # fmt: skip
    runner = ScriptedRunner()
    worker = Dispatcher(
        store, FakeDirectory(), runner.runner_for, Announcer(store, notifier), artifacts=artifacts,
        users=EveryoneAs(),
    )  # fmt: skip
    api = RequestService(
        store, queue, FakeDirectory(), Announcer(store, notifier), users=EveryoneAs()
    )
    return World(store, queue, api, runner, notifier, artifacts, worker)


@pytest.fixture
def unmapped(world: World) -> World:
    """The world's worker, with no mapping for anyone."""
    world.worker = Dispatcher(
        world.store, FakeDirectory(), world.runner.runner_for,
        Announcer(world.store, world.notifier), artifacts=world.artifacts,
        users=MappedUsers(InMemoryUserMappings()),
    )  # fmt: skip
    return world


def test_submission_carries_the_user_to_run_as(world: World) -> None:
    # GIVEN a worker whose user is hpcb-dev and an accepted job
    message = world.accepted()
    world.runner.answers = [submitted(slurm_token(message.request_id), "42")]
    # WHEN dispatched / THEN the agent was asked to submit it as hpcb-dev
    world.worker.handle(message)
    assert [job.user for job in world.runner.calls[-1].jobs] == ["hpcb-dev"]


def test_without_a_user_a_submission_fails_not_mapped_without_an_agent_call(
    unmapped: World,
) -> None:
    # GIVEN no user to run as / WHEN a job is dispatched
    message = unmapped.accepted()
    outcome = unmapped.worker.handle(message)
    # THEN the request FAILED permanently with NOT_MAPPED, the job never reached Slurm, and
    # the agent was never called
    record = unmapped.store.get(message.request_id)
    assert outcome == "failed"
    assert record.state is RequestState.FAILED
    assert record.error is not None
    assert (record.error.code, record.error.transient) == ("NOT_MAPPED", False)
    assert unmapped.store.get_job(message.request_id).state is JobState.SUBMIT_FAILED
    assert unmapped.runner.calls == []


def test_without_a_user_cancel_and_output_fail_not_mapped(world: World) -> None:
    # GIVEN a job in Slurm as 42, then its caller's mapping removed
    message = world.accepted()
    world.runner.answers = [submitted(slurm_token(message.request_id), "42")]
    world.worker.handle(message)
    calls = len(world.runner.calls)
    world.worker = Dispatcher(
        world.store, FakeDirectory(), world.runner.runner_for,
        Announcer(world.store, world.notifier), users=MappedUsers(InMemoryUserMappings()),
    )  # fmt: skip
    world.runner.answers = [AgentResponse(ok=True, op="cancel", cancelled=[CancelResult(
        job_id="42", ok=True)])]  # fmt: skip
    # WHEN its output and its cancel are asked for
    output = world.api.fetch_output(OWNER, "local", "42", OutputQueryBody())
    world.worker.handle(world.queue.sent[-1])
    cancel = world.api.cancel_job(OWNER, "local", "42")
    world.worker.handle(world.queue.sent[-1])
    # THEN both FAILED with NOT_MAPPED, and no agent call was made for them
    for request_id in (output.request_id, cancel.request_id):
        record = world.store.get(request_id)
        assert record.error is not None
        assert (record.state, record.error.code) == (RequestState.FAILED, "NOT_MAPPED")
    assert len(world.runner.calls) == calls
