"""A sweep chunk's arrays as its items' record, on real DynamoDB/SQS (moto over HTTP): one write
per array at submission, items read from it (GET, item pages, Slurm ids, cancel) until the
status sweep gives an item a record of its own when Slurm moves it, exactly once across
redeliveries, dead letters and overlapping sweeps; and a batch's ``pack``."""

from __future__ import annotations

from typing import Any

import pytest

from broker.adapters.dynamodb import batches as dynamo_batches
from broker.agent.protocol import AgentJobResult, AgentRequest, AgentResponse, SlurmJobStatus
from broker.batches import sweeps as sweeps_module
from broker.batches.arrays import PendingFields, SharedFields, SubmittedChunk, SweepArray
from broker.batches.models import JobBatchMessage
from broker.batches.sweeps import JobSweepMessage
from broker.jobs.dead_letters import DeadLetterService
from broker.jobs.records import JobState
from broker.notifications.announcer import Announcer
from broker.notifications.events import JobEvent
from broker.ports import ClusterTarget
from broker.requests.states import RequestState
from broker.schema import utcnow
from broker.sweep.status import Sweeper
from tests.fakes import FakeDirectory, RecordingNotifier
from tests.functional.test_batch import World, world  # noqa: F401 - the fixture
from tests.functional.test_sweeps_api import SCRIPT, ArraySlurm, post, worker


def job_items(world: World, prefix: str) -> int:  # noqa: F811
    """How many job records the table holds for a sweep's items."""
    ddb = world.store._table.client
    pages = ddb.get_paginator("scan").paginate(
        TableName=world.store._table.name,
        FilterExpression="begins_with(pk, :p)",
        ExpressionAttributeValues={":p": {"S": f"JOB#{prefix}"}},
    )
    return sum(page["Count"] for page in pages)


def submitted_sweep(world: World, count: int) -> tuple[dict[str, Any], list[JobSweepMessage]]:  # noqa: F811
    """A sweep of ``count`` items whose every chunk the worker submitted (arrays from 500)."""
    accepted = post(world, [{"PARAM_I": str(i)} for i in range(count)]).get_json()
    messages = [m for m in world.drain() if isinstance(m, JobSweepMessage)]
    dispatcher = worker(world, ArraySlurm())
    for message in messages:
        dispatcher.handle(message)
    return accepted, messages


class StatusSlurm:
    """A status answer per call: Slurm's states of array tasks (PENDING for any not given)."""

    def __init__(self, arrays: dict[str, int]) -> None:
        self.arrays = arrays  # array id -> its task count
        self.states: dict[str, tuple[str, int | None]] = {}
        self.calls = 0

    def run(self, target: ClusterTarget, request: Any) -> AgentResponse:
        self.calls += 1
        statuses = [
            SlurmJobStatus(job_id=f"{array}_{t}", base_id=array, array_task=str(t),
                           state=self.states.get(f"{array}_{t}", ("PENDING", None))[0],
                           exit_code=self.states.get(f"{array}_{t}", ("PENDING", None))[1],
                           reason="Priority", submit_time="2026-12-04T08:00:00", source="sacct")
            for array, tasks in self.arrays.items() if array in request.job_ids
            for t in range(tasks)
        ]  # fmt: skip
        return AgentResponse(ok=True, op="status", statuses=statuses, accounting=True)

    def runner_for(self, mode: str) -> StatusSlurm:
        return self


def pending_writes(world: World, monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:  # noqa: F811
    """The array keys of each write of Slurm's word on pending tasks (none: nothing changed)."""
    writes: list[set[str]] = []
    record = world.store.record_pending

    def spy(chunk: SubmittedChunk, pending: dict[str, PendingFields]) -> None:
        if pending:
            writes.append(set(pending))
        record(chunk, pending)

    monkeypatch.setattr(world.store, "record_pending", spy)
    return writes


def job_events(notifier: RecordingNotifier) -> list[JobEvent]:
    return [e for e in notifier.published if isinstance(e, JobEvent)]


def sweeper(world: World, slurm: StatusSlurm, notifier: RecordingNotifier) -> Sweeper:  # noqa: F811
    return Sweeper(world.store, FakeDirectory(), slurm.runner_for,  # type: ignore[arg-type]
                   Announcer(world.store, notifier))  # fmt: skip


def test_a_submitted_sweep_is_one_write_per_array_and_its_items_read_from_it(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a sweep of 100 in chunks of 40 (item 3 rejected), arrays of 30 positions
    monkeypatch.setattr(sweeps_module, "SWEEP_CHUNK_ITEMS", 40)
    parameters: list[Any] = [{"PARAM_I": str(i)} for i in range(100)]
    parameters[3] = {"PATH": "/x"}
    accepted = post(world, parameters).get_json()
    dispatcher = worker(world, ArraySlurm())
    # WHEN the worker submits every chunk
    for message in world.drain():
        dispatcher.handle(message)
    # THEN no item has a record of its own, yet every item reads PENDING as its array's task,
    # through GET and through the batch's item page, with the template's name
    prefix = accepted["job_id_prefix"]
    assert job_items(world, prefix) == 0
    item = world.api.get(f"/v1/clusters/local/jobs/{prefix}{35:06x}").get_json()
    assert (item["state"], item["slurm_job_id"], item["name"]) == ("PENDING", "501_4", "sw")
    page = world.api.get(f"/v1/requests/{accepted['request_id']}?items_limit=1000").get_json()
    views = page["item_page"]
    assert len(views) == 99
    assert {v["state"] for v in views} == {"PENDING"}
    assert len({v["slurm_job_id"] for v in views}) == 99
    assert views[3] == {"index": 4, "job_id": f"{prefix}{4:06x}", "state": "PENDING",
                        "slurm_job_id": "500_3", "reason": None}  # fmt: skip
    # AND the counts and the backlog counters are exact, the sweep SUCCEEDED
    batch = world.store.get(accepted["request_id"])
    assert (batch.counts, batch.state) == ({"SUBMITTED": 99}, RequestState.SUCCEEDED)
    assert world.store.backlog("CLUSTER", "local") == 0
    assert world.store.backlog("OWNER", batch.owner) == 0


def test_a_redelivery_after_one_array_was_recorded_submits_and_counts_only_the_rest(
    world: World,  # noqa: F811
) -> None:
    # GIVEN a sweep of 50 (arrays of 30 positions) whose first array was recorded, and whose
    # delivery then died before the second was submitted
    accepted = post(world, [{"PARAM_I": str(i)} for i in range(50)]).get_json()
    (message,) = world.drain()
    assert isinstance(message, JobSweepMessage)
    batch = world.store.get(accepted["request_id"])
    ids = [item.job_id for item in message.as_batch().items]
    world.store.start_chunk(batch.request_id, 0, ids)
    first = SweepArray(slurm_id="500", first=0, last=29, tasks=30, at=utcnow())
    assert world.store.record_arrays(batch, 0, [first], SharedFields()) == [first]
    slurm = ArraySlurm()
    slurm.arrays[f"{message.token()}a0"] = "500"
    # WHEN the chunk is delivered again, twice
    worker(world, slurm).handle(message)
    worker(world, slurm).handle(message)
    # THEN the first delivery asked only for the second array's 20 positions; the second, nothing
    (call,) = slurm.calls
    (job,) = call.jobs
    assert job.tasks is not None
    assert [t is None for t in job.tasks] == [True] * 30 + [False] * 20
    # AND every item is one task, counted once
    prefix = accepted["job_id_prefix"]
    slurm_ids = [world.store.get_job(f"{prefix}{i:06x}").slurm_job_id for i in range(50)]
    assert slurm_ids[29:31] == ["500_29", "501_0"]
    batch = world.store.get(accepted["request_id"])
    assert (batch.counts, batch.state) == ({"SUBMITTED": 50}, RequestState.SUCCEEDED)
    assert world.store.backlog("CLUSTER", "local") == 0
    # AND recording the same array again records nothing
    assert world.store.record_arrays(batch, 0, [first], SharedFields()) == []
    assert world.store.get(accepted["request_id"]).counts == {"SUBMITTED": 50}


def test_a_dead_letter_of_a_recorded_sweep_chunk_fails_none_of_its_items(
    world: World,  # noqa: F811
) -> None:
    # GIVEN a sweep of 40 whose chunk's arrays were recorded before its message ran out
    accepted, (message,) = submitted_sweep(world, 40)
    slurm = ArraySlurm()
    dead = DeadLetterService(world.store, Announcer(world.store, RecordingNotifier()),
                             worker(world, slurm))  # fmt: skip
    # WHEN the DLQ worker gives the chunk up
    assert dead.give_up_chunk(message) == 0
    # THEN nothing is looked up, no item failed, the counts are unchanged
    assert slurm.calls == []
    prefix = accepted["job_id_prefix"]
    assert {world.store.get_job(f"{prefix}{i:06x}").state for i in range(40)} == {JobState.PENDING}
    assert world.store.get(accepted["request_id"]).counts == {"SUBMITTED": 40}


def test_the_status_sweep_records_an_item_when_slurm_moves_it_and_then_lets_the_chunk_go(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a sweep of 40: arrays 500 (30 tasks) and 501 (10 tasks), in Slurm
    accepted, _ = submitted_sweep(world, 40)
    prefix = accepted["job_id_prefix"]
    slurm = StatusSlurm({"500": 30, "501": 10})
    notifier = RecordingNotifier()
    writes = pending_writes(world, monkeypatch)
    # WHEN a sweep sees every task pending
    report = sweeper(world, slurm, notifier).sweep()
    # THEN it asked for the 2 arrays in 1 command and wrote no item (pending: the array is
    # their record), but one word per array on the chunk: what a pending item shows
    assert (report.head_node_commands, report.active_jobs, report.transitions) == (1, 40, 0)
    assert job_items(world, prefix) == 0
    assert writes == [{"0", "30"}]
    waiting = world.api.get(f"/v1/clusters/local/jobs/{prefix}{35:06x}").get_json()
    assert (waiting["state"], waiting["slurm_job_id"]) == ("PENDING", "501_5")
    assert (waiting["slurm_state"], waiting["reason"]) == ("PENDING", "Priority")
    assert waiting["submit_time"] == "2026-12-04T08:00:00"
    # AND a steady sweep writes nothing at all
    sweeper(world, slurm, notifier).sweep()
    assert writes == [{"0", "30"}]
    assert job_items(world, prefix) == 0
    # WHEN task 0 runs and task 1 completes, and two sweeps read the same
    slurm.states = {"500_0": ("RUNNING", None), "500_1": ("COMPLETED", 0)}
    reports = [sweeper(world, slurm, notifier).sweep() for _ in range(2)]
    # THEN those two items have records of their own, the others still none; one event
    assert [r.transitions for r in reports] == [2, 0]
    assert job_items(world, prefix) == 2
    running = world.store.get_job(f"{prefix}{0:06x}")
    assert (running.state, running.slurm_job_id, running.name) == (JobState.RUNNING, "500_0", "sw")
    done = world.store.get_job(f"{prefix}{1:06x}")
    assert (done.state, done.exit_code) == (JobState.COMPLETED, 0)
    assert [(e.job_id, e.new_state) for e in job_events(notifier)] == [
        (done.job_id, JobState.COMPLETED)
    ]
    # WHEN every task completes
    slurm.states = {f"{a}_{t}": ("COMPLETED", 0) for a, n in slurm.arrays.items() for t in range(n)}
    sweeper(world, slurm, notifier).sweep()
    # THEN every item has its record and one event each
    assert job_items(world, prefix) == 40
    assert len({e.job_id for e in job_events(notifier)}) == len(job_events(notifier)) == 40
    # AND the next sweep finds no item left to read from the arrays: no command, and the chunk
    # leaves the attention index
    report = sweeper(world, slurm, notifier).sweep()
    assert (report.head_node_commands, report.active_jobs) == (0, 0)
    _, _, chunks = world.store.attention()
    assert chunks == []


def test_an_item_read_from_its_array_is_cancelled_through_slurm(
    world: World,  # noqa: F811
) -> None:
    # GIVEN a sweep of 5, submitted (array 500), no item with a record of its own
    accepted, _ = submitted_sweep(world, 5)
    prefix = accepted["job_id_prefix"]
    # WHEN item 3 is cancelled by its Slurm id
    answer = world.api.delete("/v1/clusters/local/jobs/500_3")
    # THEN the cancel is accepted for that item and queued for scancel (never "cancelled while
    # queued": it is in Slurm); nothing was written to the item
    assert answer.status_code == 202
    (message,) = world.drain()
    assert (message.kind, getattr(message, "job_id", None)) == ("job.cancel", f"{prefix}{3:06x}")
    assert job_items(world, prefix) == 0
    assert world.store.get_job(f"{prefix}{3:06x}").state is JobState.PENDING


class PackSlurm(ArraySlurm):
    """Arrays for packed runs (as ArraySlurm), plain job ids from 900 for other jobs."""

    def run(self, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        packed = request.model_copy(update={"jobs": [j for j in request.jobs if j.tasks]})
        answer = super().run(target, packed)
        plain = [AgentJobResult(token=j.token, job_id=str(900 + n))
                 for n, j in enumerate(j for j in request.jobs if not j.tasks)]  # fmt: skip
        return answer.model_copy(update={"results": answer.results + plain})


def test_pack_submits_runs_that_differ_only_in_their_environment_as_arrays(
    world: World,  # noqa: F811
) -> None:
    # GIVEN a batch asking to pack: 3 jobs differing only in PARAM_I, one other job, 2 more of
    # the first kind, and one of the first kind that is an array of its own
    def job(i: int, **extra: Any) -> dict[str, Any]:
        return {"script": SCRIPT, "name": "p", "environment": {"PARAM_I": str(i)}, **extra}

    body = {"pack": True, "jobs": [job(0), job(1), job(2), {"script": SCRIPT, "name": "other"},
                                   job(4), job(5), job(6, array="0-1")]}  # fmt: skip
    accepted = world.post(body).get_json()
    messages = world.drain()
    # WHEN the worker submits its chunks
    slurm = PackSlurm()
    dispatcher = worker(world, slurm)
    for message in messages:
        dispatcher.handle(message)
    # THEN the runs became sweep chunks (one array each), the others plain batch chunks, in
    # index order
    assert [(m.kind, m.chunk) for m in messages] == [
        ("job.sweep", 0), ("job.batch", 1), ("job.sweep", 2), ("job.batch", 3),
    ]  # fmt: skip
    sweeps = [job for call in slurm.calls for job in call.jobs if job.tasks]
    assert [job.tasks for job in sweeps] == [
        [{"PARAM_I": "0"}, {"PARAM_I": "1"}, {"PARAM_I": "2"}],
        [{"PARAM_I": "4"}, {"PARAM_I": "5"}],
    ]
    # AND every item keeps its broker id, packed ones as array tasks with their own name
    prefix = accepted["job_id_prefix"]
    jobs = [world.store.get_job(f"{prefix}{i:06x}") for i in range(7)]
    assert [j.slurm_job_id for j in jobs] == ["500_0", "500_1", "500_2", "900", "501_0",
                                              "501_1", "900"]  # fmt: skip
    assert [j.name for j in jobs] == ["p", "p", "p", "other", "p", "p", "p"]
    assert jobs[6].array == "0-1"
    batch = world.store.get(accepted["request_id"])
    assert (batch.counts, batch.state) == ({"SUBMITTED": 7}, RequestState.SUCCEEDED)


def test_a_sweep_larger_than_a_batch_has_item_pages_to_its_last_item(
    world: World,  # noqa: F811
) -> None:
    # GIVEN a sweep of 10,002 items, more than a batch may hold (10,000)
    accepted = post(world, [{"PARAM_I": str(i)} for i in range(10_002)]).get_json()
    # WHEN its last page is read
    answer = world.api.get(f"/v1/requests/{accepted['request_id']}?items_from=10001")
    # THEN it holds the last item (422 before: items_from stopped at 10,000)
    assert answer.status_code == 200
    page = answer.get_json()
    assert [v["index"] for v in page["item_page"]] == [10_001]
    assert page.get("next_items_from") is None
    assert (
        world.api.get(f"/v1/requests/{accepted['request_id']}?items_from=100001").status_code == 422
    )


def test_many_arrays_of_a_chunk_are_recorded_in_several_writes_each_counted_once(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN at most 2 arrays a write, and a sweep of 100 in one chunk: 4 arrays of 30 positions
    monkeypatch.setattr(dynamo_batches, "ARRAYS_PER_WRITE", 2)
    # WHEN it is submitted, and delivered again
    accepted, messages = submitted_sweep(world, 100)
    again = ArraySlurm()
    worker(world, again).handle(messages[0])
    # THEN the redelivery asked the head node nothing; every item reads as its task, and the
    # counts are exact
    prefix = accepted["job_id_prefix"]
    ids = [world.store.get_job(f"{prefix}{i:06x}").slurm_job_id for i in range(100)]
    assert again.calls == []
    assert (ids[0], ids[29], ids[30], ids[99]) == ("500_0", "500_29", "501_0", "503_9")
    chunk = world.store.submitted_chunk(accepted["request_id"], 0)
    assert chunk is not None
    assert [a.slurm_id for a in chunk.arrays] == ["500", "501", "502", "503"]
    batch = world.store.get(accepted["request_id"])
    assert (batch.counts, batch.state) == ({"SUBMITTED": 100}, RequestState.SUCCEEDED)
    assert world.store.backlog("CLUSTER", "local") == 0


def test_pack_keeps_jobs_it_cannot_pack_together_in_one_chunk(
    world: World,  # noqa: F811
) -> None:
    # GIVEN a packed batch of 3 jobs that differ in more than their environment, then a run of 2
    others = [{"script": SCRIPT, "name": f"other-{i}"} for i in range(3)]
    run = [{"script": SCRIPT, "name": "p", "environment": {"PARAM_I": str(i)}} for i in range(2)]
    # WHEN it is accepted
    world.post({"pack": True, "jobs": others + run})
    # THEN the 3 go in one batch chunk (not one chunk each), the run in one sweep chunk
    messages = world.drain()
    assert [(m.kind, m.chunk) for m in messages] == [("job.batch", 0), ("job.sweep", 1)]
    assert isinstance(messages[0], JobBatchMessage)
    assert [item.index for item in messages[0].items] == [0, 1, 2]
