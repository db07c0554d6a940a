"""Sweeps on real SQS/DynamoDB (moto over HTTP) with a scripted head-node agent that makes job
arrays: the API's answer, packed chunks, one agent job per chunk, items recorded as array tasks
exactly once across redeliveries, and the dead-letter path."""

from __future__ import annotations

from typing import Any

import pytest

from broker.agent.protocol import (
    AgentArray,
    AgentErrorInfo,
    AgentJobResult,
    AgentRequest,
    AgentResponse,
)
from broker.batches import sweeps as sweeps_module
from broker.batches.sweeps import JobSweepMessage
from broker.jobs.dead_letters import DeadLetterService
from broker.jobs.dispatch import Dispatcher
from broker.jobs.records import JobState
from broker.notifications.announcer import Announcer
from broker.ports import ClusterTarget
from broker.requests.states import RequestState
from tests.fakes import FakeDirectory, RecordingNotifier
from tests.functional.test_batch import World, dead_letter, world  # noqa: F401 - the fixture

SCRIPT = "#!/bin/bash\necho $PARAM_I\n"
#: The scripted controller's MaxArraySize.
ARRAY_SIZE = 30


class ArraySlurm:
    """An agent that submits each sweep as arrays of ARRAY_SIZE positions (ids from 500),
    remembering each array's token as the real one does."""

    def __init__(self) -> None:
        self.arrays: dict[str, str] = {}
        self.calls: list[AgentRequest] = []

    def run(self, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        self.calls.append(request)
        results = []
        for job in request.jobs:
            assert job.tasks is not None
            arrays = []
            error = None
            for first in range(0, len(job.tasks), ARRAY_SIZE):
                if not any(job.tasks[first : first + ARRAY_SIZE]):
                    continue
                token = f"{job.token}a{first // ARRAY_SIZE}"
                if request.find_only and token not in self.arrays:
                    error = AgentErrorInfo(code="NOT_SUBMITTED", message="no", transient=False)
                    continue
                self.arrays.setdefault(token, str(500 + len(self.arrays)))
                tasks = min(ARRAY_SIZE, len(job.tasks) - first)
                arrays.append(AgentArray(job_id=self.arrays[token], first=first, tasks=tasks))
            results.append(AgentJobResult(token=job.token, arrays=arrays, error=error))
        return AgentResponse(ok=True, op="submit", results=results)

    def runner_for(self, mode: str) -> ArraySlurm:
        return self


def post(world: World, parameters: list[Any], **extra: Any) -> Any:  # noqa: F811
    body = {"template": {"script": SCRIPT, "name": "sw"}, "parameters": parameters, **extra}
    return world.api.post("/v1/clusters/local/jobs:sweep", json=body)


def worker(world: World, slurm: ArraySlurm) -> Dispatcher:  # noqa: F811
    return Dispatcher(world.store, FakeDirectory(), slurm.runner_for,  # type: ignore[arg-type]
                      Announcer(world.store, RecordingNotifier()))  # fmt: skip


def test_a_sweep_is_accepted_with_invalid_items_listed(world: World) -> None:  # noqa: F811
    # GIVEN 50 parameter sets, two of them invalid
    parameters: list[Any] = [{"PARAM_I": str(i)} for i in range(50)]
    parameters[4] = {"BASH_ENV": "/tmp/x"}
    parameters[9] = {"PARAM_I": "\x00"}
    # WHEN posted
    answer = post(world, parameters)
    # THEN 202 with 48 accepted and the two listed; one packed chunk queued
    assert answer.status_code == 202, answer.get_json()
    accepted = answer.get_json()
    assert (accepted["accepted"], [r["index"] for r in accepted["rejected"]]) == (48, [4, 9])
    (message,) = world.drain()
    assert isinstance(message, JobSweepMessage)
    assert message.indexes == [i for i in range(50) if i not in (4, 9)]
    # AND the request is a batch of 48 items, each SUBMITTING until it reaches Slurm
    view = world.api.get(f"{accepted['location']}?items_limit=3").get_json()
    assert (view["kind"], view["items"]) == ("job.batch", 48)
    assert [i["state"] for i in view["item_page"]] == ["SUBMITTING"] * 3


@pytest.mark.parametrize(
    ("extra", "parameters", "field"),
    [
        ({"atomic": True}, [{"PARAM_I": "1"}, {"PATH": "/x"}], "body.parameters.1.PATH.[key]"),
        ({}, [{"PATH": "/x"}], "body.parameters.0.PATH.[key]"),
        ({}, [], "body.parameters"),
        ({}, [{}] * 100_001, "body.parameters"),
    ],
)
def test_invalid_sweeps_are_422_and_nothing_is_queued(
    world: World,  # noqa: F811
    extra: dict[str, Any],
    parameters: list[Any],
    field: str,
) -> None:
    answer = post(world, parameters, **extra)
    assert answer.status_code == 422
    assert answer.get_json()["error"]["fields"][0]["field"] == field
    assert world.drain() == []


def test_a_template_that_is_an_array_is_422(world: World) -> None:  # noqa: F811
    body = {"template": {"script": SCRIPT, "array": "1-3"}, "parameters": [{}]}
    answer = world.api.post("/v1/clusters/local/jobs:sweep", json=body)
    assert answer.status_code == 422
    assert answer.get_json()["error"]["fields"][0]["field"] == "body.template.array"


def test_each_chunk_is_one_agent_job_and_items_become_array_tasks_exactly_once(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN chunks of 40 (moto's transactions are slow) and a sweep of 100 items
    monkeypatch.setattr(sweeps_module, "SWEEP_CHUNK_ITEMS", 40)
    accepted = post(world, [{"PARAM_I": str(i)} for i in range(100)]).get_json()
    messages = world.drain()
    slurm = ArraySlurm()
    dispatcher = worker(world, slurm)
    # WHEN the worker handles every chunk, then every chunk again (redelivery)
    for message in messages + messages:
        dispatcher.handle(message)
    # THEN 3 chunks, 3 agent calls of one job each (the redeliveries found their items done)
    assert [len(m.indexes) for m in messages if isinstance(m, JobSweepMessage)] == [40, 40, 20]
    assert [len(call.jobs) for call in slurm.calls] == [1, 1, 1]
    # AND 5 arrays (30 + 10 per chunk of 40, then 20), every item a task of one of them
    assert len(slurm.arrays) == 5
    prefix = accepted["job_id_prefix"]
    ids = [world.store.get_job(f"{prefix}{i:06x}").slurm_job_id for i in range(100)]
    assert ids[:3] == ["500_0", "500_1", "500_2"]
    assert (ids[30], ids[40], ids[99]) == ("501_0", "502_0", "504_19")
    assert len(set(ids)) == 100
    # AND the counts are exact and the sweep SUCCEEDED
    batch = world.store.get(accepted["request_id"])
    assert (batch.counts, batch.state) == ({"SUBMITTED": 100}, RequestState.SUCCEEDED)


def test_a_redelivery_after_the_arrays_were_submitted_asks_for_the_same_arrays(
    world: World,  # noqa: F811
) -> None:
    # GIVEN a sweep of 10 whose chunk was submitted, but whose outcomes were never recorded
    accepted = post(world, [{"PARAM_I": str(i)} for i in range(10)]).get_json()
    (message,) = world.drain()
    slurm = ArraySlurm()
    assert isinstance(message, JobSweepMessage)
    slurm.arrays[f"{message.token()}a0"] = "777"
    # WHEN the chunk is delivered again
    worker(world, slurm).handle(message)
    # THEN the agent was asked for the chunk's token, found the array, and items are its tasks
    assert [job.token for job in slurm.calls[-1].jobs] == [message.token()]
    assert len(slurm.arrays) == 1
    prefix = accepted["job_id_prefix"]
    assert world.store.get_job(f"{prefix}{9:06x}").slurm_job_id == "777_9"


def test_a_dead_lettered_sweep_chunk_fails_its_items(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a sweep of 5 whose only chunk ran out of deliveries
    accepted = post(world, [{"PARAM_I": str(i)} for i in range(5)]).get_json()
    (message,) = world.drain()
    # WHEN the DLQ worker handles it (nothing looked up in Slurm)
    assert dead_letter(world, message, monkeypatch, lookup=None) == {"batchItemFailures": []}
    # THEN its items are SUBMIT_FAILED and the sweep ended with its counts
    prefix = accepted["job_id_prefix"]
    states = {world.store.get_job(f"{prefix}{i:06x}").state for i in range(5)}
    assert states == {JobState.SUBMIT_FAILED}
    assert world.store.get(accepted["request_id"]).counts == {"FAILED": 5}


def test_an_item_is_found_by_its_array_task_id_and_the_array_alone_is_no_job(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a sweep of 70 (item 3 rejected) in chunks of 40, submitted as arrays of 30 positions
    monkeypatch.setattr(sweeps_module, "SWEEP_CHUNK_ITEMS", 40)
    parameters: list[Any] = [{"PARAM_I": str(i)} for i in range(70)]
    parameters[3] = {"PATH": "/x"}
    accepted = post(world, parameters).get_json()
    slurm = ArraySlurm()
    for message in world.drain():
        worker(world, slurm).handle(message)
    prefix = accepted["job_id_prefix"]
    # WHEN items are read by their Slurm ids (item 35 is position 34 of chunk 0: task 4 of its
    # second array; item 69 is position 28 of chunk 1)
    for index in (0, 35, 40, 69):
        job = world.store.get_job(f"{prefix}{index:06x}")
        assert job.slurm_job_id is not None
        found = world.api.get(f"/v1/clusters/local/jobs/{job.slurm_job_id}")
        # THEN each is that item
        assert found.status_code == 200
        assert found.get_json()["job_id"] == job.job_id
    assert world.store.get_job(f"{prefix}{35:06x}").slurm_job_id == "501_4"
    # AND an array's id alone, or a task past its items, is no job (404)
    assert world.api.get("/v1/clusters/local/jobs/501").status_code == 404
    assert world.api.get("/v1/clusters/local/jobs/501_20").status_code == 404  # 9 tasks


def test_a_dead_sweep_chunk_keeps_the_items_its_arrays_hold_and_fails_the_others(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a sweep of 50 (arrays of 30 positions) whose first array reached Slurm, and whose
    # chunk then ran out of deliveries before any outcome was recorded
    accepted = post(world, [{"PARAM_I": str(i)} for i in range(50)]).get_json()
    (message,) = world.drain()
    assert isinstance(message, JobSweepMessage)
    slurm = ArraySlurm()
    slurm.arrays[f"{message.token()}a0"] = "900"
    dead = DeadLetterService(world.store, Announcer(world.store, RecordingNotifier()),
                             worker(world, slurm))  # fmt: skip
    # WHEN the DLQ worker gives it up
    dead.give_up_chunk(message)
    # THEN one look-up (nothing submitted) by the chunk's token; the first array's 30 items are
    # its tasks, the other 20 failed; the sweep ended
    (call,) = slurm.calls
    assert call.find_only is True
    assert [job.token for job in call.jobs] == [message.token()]
    assert len(slurm.arrays) == 1
    prefix = accepted["job_id_prefix"]
    jobs = [world.store.get_job(f"{prefix}{i:06x}") for i in range(50)]
    assert [j.slurm_job_id for j in jobs[:30]] == [f"900_{i}" for i in range(30)]
    assert {j.state for j in jobs[30:]} == {JobState.SUBMIT_FAILED}
    batch = world.store.get(accepted["request_id"])
    assert (batch.counts, batch.state) == ({"SUBMITTED": 30, "FAILED": 20}, RequestState.SUCCEEDED)
