"""The sweep repairs an accept whose queue message was lost (the API died between its write and
its send): the message is rebuilt from the record and sent again, once per period."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from broker.agent.protocol import AgentResponse, SlurmJobStatus
from broker.batches.models import BatchBody
from broker.errors import TransientError
from broker.jobs.accept import RequestService
from broker.jobs.models import JobResult, JobSpec, OutputQueryBody
from broker.notifications.announcer import Announcer
from broker.requests.models import QueueMessage
from broker.requests.requeue import message_of
from broker.requests.states import RequestState
from broker.schema import utcnow
from broker.sweep.repairs import REQUEUE_AFTER
from broker.sweep.status import Sweeper
from tests.fakes import (
    EveryoneAs,
    FakeDirectory,
    FakeQueue,
    InMemoryStore,
    RecordingNotifier,
    ScriptedRunner,
)

OWNER = "arn:aws:iam::111122223333:user/alice"
SPEC = JobSpec(script="#!/bin/sh\necho 'hi'\n", name="j1", nodes=2, tags={"team": "a"})


class Clock:
    """A settable clock for the sweeper."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def later(self, delta: timedelta) -> None:
        self.now += delta


def sweeper(
    store: InMemoryStore,
    queue: FakeQueue,
    clock: Callable[[], datetime],
    limit: int = 100,
    runner: ScriptedRunner | None = None,
) -> Sweeper:
    # By default a ScriptedRunner with no answers: any head-node command fails the test.
    runner = runner or ScriptedRunner()
    return Sweeper(store, FakeDirectory(), runner.runner_for,
                   Announcer(store, RecordingNotifier()), now=clock, queue=queue,
                   requeue_limit=limit)  # fmt: skip


def running(slurm_job_id: str) -> ScriptedRunner:
    """A head node answering the sweep's status command: the job is RUNNING."""
    status = SlurmJobStatus(job_id=slurm_job_id, base_id=slurm_job_id, state="RUNNING",
                            source="squeue")  # fmt: skip
    return ScriptedRunner([AgentResponse(ok=True, op="status", statuses=[status])])


def lost_submit(store: InMemoryStore) -> tuple[str, QueueMessage]:
    """A submit accepted by the API whose message never reached the queue: its id, and the
    message the API built."""
    api_queue = FakeQueue()  # what the API "sent"; the requests queue never got it
    request_id = (
        RequestService(store, api_queue, FakeDirectory(), users=EveryoneAs())
        .submit_job(OWNER, "local", SPEC)
        .request_id
    )
    (original,) = api_queue.sent
    return request_id, original


def in_slurm(store: InMemoryStore) -> str:
    """A job submitted and in Slurm (its submit request SUCCEEDED, nothing left to re-send)."""
    request_id, _ = lost_submit(store)
    store.mark_dispatched(request_id)
    store.start_submission(request_id)
    store.record_submitted(request_id, "1000")
    store.record_success(request_id, JobResult(job_id="1000", cluster="local"))
    return request_id


def test_a_submit_whose_message_was_lost_is_sent_again_once() -> None:
    # GIVEN a submit ACCEPTED with no attempt, its message lost, older than the threshold
    store, queue, clock = InMemoryStore(), FakeQueue(), Clock()
    request_id, original = lost_submit(store)
    clock.later(REQUEUE_AFTER + timedelta(seconds=1))
    # WHEN a sweep runs
    report = sweeper(store, queue, clock).sweep()
    # THEN exactly one message, equal to the original, is sent, and it is counted
    assert queue.sent == [original]
    assert report.requeued == 1
    assert store.get(request_id).requeued_at == clock.now
    # AND a second sweep right after sends nothing
    clock.later(timedelta(seconds=15))
    again = sweeper(store, queue, clock).sweep()
    assert (again.requeued, len(queue.sent)) == (0, 1)


def test_overlapping_sweeps_from_the_same_read_send_one_message() -> None:
    # GIVEN a lost submit, and two sweeps that both read it before either wrote
    store, queue, clock = InMemoryStore(), FakeQueue(), Clock()
    lost_submit(store)
    clock.later(REQUEUE_AFTER + timedelta(seconds=1))
    stale_view = store.attention()
    store.attention = lambda: stale_view  # type: ignore[method-assign]
    # WHEN both sweep
    reports = [sweeper(store, queue, clock).sweep() for _ in range(2)]
    # THEN the conditional claim lets exactly one of them send
    assert [r.requeued for r in reports] == [1, 0]
    assert len(queue.sent) == 1


def test_a_lost_message_is_sent_again_once_per_period() -> None:
    # GIVEN a lost submit already re-sent once, and still not taken by any worker
    store, queue, clock = InMemoryStore(), FakeQueue(), Clock()
    _, original = lost_submit(store)
    clock.later(REQUEUE_AFTER + timedelta(seconds=1))
    sweeper(store, queue, clock).sweep()
    # WHEN a sweep runs one more period later
    clock.later(REQUEUE_AFTER + timedelta(seconds=1))
    report = sweeper(store, queue, clock).sweep()
    # THEN it is sent a second time
    assert report.requeued == 1
    assert queue.sent == [original, original]


def test_a_request_younger_than_the_threshold_is_not_sent_again() -> None:
    # GIVEN a submit ACCEPTED just under the threshold ago
    store, queue, clock = InMemoryStore(), FakeQueue(), Clock()
    lost_submit(store)
    clock.later(REQUEUE_AFTER - timedelta(seconds=1))
    # WHEN a sweep runs / THEN nothing is sent and nothing written
    writes = store.writes
    report = sweeper(store, queue, clock).sweep()
    assert (report.requeued, queue.sent, store.writes) == (0, [], writes)


def test_a_dispatched_request_is_not_sent_again() -> None:
    # GIVEN an old submit a worker took (DISPATCHED, one attempt) and is still working on
    store, queue, clock = InMemoryStore(), FakeQueue(), Clock()
    request_id, _ = lost_submit(store)
    store.mark_dispatched(request_id)
    clock.later(REQUEUE_AFTER * 3)
    # WHEN a sweep runs / THEN nothing is sent
    report = sweeper(store, queue, clock).sweep()
    assert (report.requeued, queue.sent) == (0, [])
    assert store.get(request_id).state is RequestState.DISPATCHED


def test_a_cancel_whose_message_was_lost_is_rebuilt_from_its_record() -> None:
    # GIVEN a job in Slurm, and a cancel of it accepted but whose message was lost
    store, queue, clock = InMemoryStore(), FakeQueue(), Clock()
    job_id = in_slurm(store)
    api_queue = FakeQueue()
    RequestService(store, api_queue, FakeDirectory(), users=EveryoneAs()).cancel_job(
        OWNER, "local", job_id
    )
    clock.later(REQUEUE_AFTER + timedelta(seconds=1))
    # WHEN a sweep runs / THEN the cancel message is sent again, equal to the original
    report = sweeper(store, queue, clock, runner=running("1000")).sweep()
    assert [m.kind for m in api_queue.sent] == ["job.cancel"]
    assert queue.sent == api_queue.sent
    assert report.requeued == 1


def test_an_output_fetch_whose_message_was_lost_is_rebuilt_with_its_query() -> None:
    # GIVEN a job in Slurm, and an output fetch (with a query) accepted but its message lost
    store, queue, clock = InMemoryStore(), FakeQueue(), Clock()
    job_id = in_slurm(store)
    api_queue = FakeQueue()
    query = OutputQueryBody(stream="stderr", offset=128, max_bytes=4096)
    RequestService(store, api_queue, FakeDirectory(), users=EveryoneAs()).fetch_output(
        OWNER, "local", job_id, query
    )
    clock.later(REQUEUE_AFTER + timedelta(seconds=1))
    # WHEN a sweep runs / THEN the output message is sent again, query included
    sweeper(store, queue, clock, runner=running("1000")).sweep()
    assert [m.kind for m in api_queue.sent] == ["job.output"]
    assert queue.sent == api_queue.sent


def test_a_batch_is_not_sent_again() -> None:
    # GIVEN a batch ACCEPTED long ago whose chunk messages were lost (they alone hold the specs)
    store, queue, clock = InMemoryStore(), FakeQueue(), Clock()
    body = BatchBody(jobs=[SPEC.model_dump(exclude_none=True)] * 3)
    accepted = RequestService(store, FakeQueue(), FakeDirectory(), users=EveryoneAs()).submit_batch(
        OWNER, "local", body
    )
    assert store.get(accepted.request_id).state is RequestState.ACCEPTED
    clock.later(REQUEUE_AFTER * 3)
    # WHEN a sweep runs / THEN nothing is sent (and the batch is left as it was)
    report = sweeper(store, queue, clock).sweep()
    assert (report.requeued, queue.sent) == (0, [])
    assert store.get(accepted.request_id).requeued_at is None


def test_a_resend_that_fails_is_tried_again_one_period_later_not_every_sweep() -> None:
    # GIVEN a lost submit, and a queue that refuses the first re-send
    store, queue, clock = InMemoryStore(), FakeQueue(), Clock()
    _, original = lost_submit(store)
    clock.later(REQUEUE_AFTER + timedelta(seconds=1))
    queue.fail_with = TransientError("SQS throttled")
    first = sweeper(store, queue, clock).sweep()
    queue.fail_with = None
    # WHEN the next sweep runs, then one a period later
    clock.later(timedelta(seconds=15))
    soon = sweeper(store, queue, clock).sweep()
    clock.later(REQUEUE_AFTER)
    later = sweeper(store, queue, clock).sweep()
    # THEN only the later one sends it
    assert [r.requeued for r in (first, soon, later)] == [0, 0, 1]
    assert queue.sent == [original]


def test_resends_per_sweep_are_capped_oldest_first() -> None:
    # GIVEN three lost submits, accepted 3, 2 and 1 seconds apart, and a cap of two per sweep
    store, queue, clock = InMemoryStore(), FakeQueue(), Clock()
    ids = [lost_submit(store)[0] for _ in range(3)]
    for age, request_id in zip((3, 2, 1), reversed(ids), strict=True):
        record = store.records[request_id]
        store.records[request_id] = record.model_copy(
            update={"created_at": clock.now - timedelta(seconds=age)}
        )
    clock.later(REQUEUE_AFTER)
    # WHEN two sweeps run
    first = sweeper(store, queue, clock, limit=2).sweep()
    second = sweeper(store, queue, clock, limit=2).sweep()
    # THEN the first sends the two oldest, the second the last one
    assert (first.requeued, second.requeued) == (2, 1)
    assert [m.request_id for m in queue.sent] == list(reversed(ids))


def test_a_message_is_rebuilt_with_its_recorded_user_and_never_without_one() -> None:
    # GIVEN a lost submit (its caller mapped to hpcb-dev at accept)
    store = InMemoryStore()
    request_id, original = lost_submit(store)
    record = store.get(request_id)
    # WHEN its message is rebuilt / THEN it carries the recorded user, as the original did
    rebuilt = message_of(record)
    assert rebuilt == original
    assert rebuilt is not None
    assert rebuilt.user == "hpcb-dev"
    # AND a record without a user (accepted before mappings) is never re-sent: no default user
    assert message_of(record.model_copy(update={"user": None})) is None
