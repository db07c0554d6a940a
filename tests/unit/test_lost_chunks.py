"""The sweep fails the items of batch chunks whose message was never sent (the API died before or
while sending them): only chunks no worker started, once, releasing their reservations, and a
late delivery of such a chunk submits nothing."""

from __future__ import annotations

from datetime import datetime, timedelta

import pydantic
import pytest

from broker.agent.protocol import AgentResponse
from broker.batches import accept as service_module
from broker.batches.items import chunk_item_ids
from broker.batches.models import BatchBody, JobBatchMessage
from broker.batches.outcomes import item_outcome
from broker.errors import TransientError
from broker.jobs.accept import RequestService
from broker.jobs.dispatch import Dispatcher
from broker.jobs.models import JobSpec
from broker.jobs.records import JobRecord, JobState
from broker.notifications.announcer import Announcer
from broker.notifications.events import JobEvent, RequestEvent
from broker.ports import Limits
from broker.requests.models import RequestRecord
from broker.requests.states import RequestState
from broker.settings import SweeperSettings
from broker.sweep.repairs import BATCH_LOST_AFTER, LOST_CHUNK_REASON
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
SPEC = JobSpec(script="#!/bin/sh\ntrue\n", name="j")
LIMITS = Limits(cluster_backlog=100, owner_inflight=100)


@pytest.fixture(autouse=True)
def _two_items_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "CHUNK_ITEMS", 2)


def accept(store: InMemoryStore, count: int) -> tuple[RequestRecord, list[JobBatchMessage]]:
    """A batch of ``count`` jobs (chunks of 2) and the chunk messages the API built."""
    queue = FakeQueue()
    body = BatchBody(jobs=[SPEC.model_dump(exclude_none=True)] * count)
    accepted = RequestService(
        store, queue, FakeDirectory(), limits=LIMITS, users=EveryoneAs()
    ).submit_batch(OWNER, "local", body)
    messages = [m for m in queue.sent if isinstance(m, JobBatchMessage)]
    return store.get(accepted.request_id), messages


def submit_chunk(store: InMemoryStore, batch: RequestRecord, message: JobBatchMessage) -> None:
    """A worker started the chunk and recorded every item in Slurm."""
    assert message.chunk is not None
    store.start_chunk(batch.request_id, message.chunk, [i.job_id for i in message.items])
    outcomes = [
        item_outcome(batch, item, message.chunk, slurm_job_id=str(1000 + item.index))
        for item in message.items
    ]
    store.record_batch_outcomes(batch, outcomes)


def sweeper(store: InMemoryStore, notifier: RecordingNotifier, now: datetime) -> Sweeper:
    # The head node's status answer mentions no job: jobs in Slurm are left as they are.
    runner = ScriptedRunner([AgentResponse(ok=True, op="status")])
    return Sweeper(store, FakeDirectory(), runner.runner_for,
                   Announcer(store, notifier), now=lambda: now)  # fmt: skip


def job_events(notifier: RecordingNotifier) -> list[tuple[str, JobState | None, JobState]]:
    return [
        (e.job_id, e.old_state, e.new_state) for e in notifier.published if isinstance(e, JobEvent)
    ]


def three_chunks(store: InMemoryStore) -> tuple[RequestRecord, list[JobBatchMessage]]:
    """A batch of 3 chunks: chunk 0 submitted, chunk 1 started but unfinished, chunk 2 never
    sent."""
    batch, messages = accept(store, 6)
    assert len(messages) == 3
    submit_chunk(store, batch, messages[0])
    store.start_chunk(batch.request_id, 1, [i.job_id for i in messages[1].items])
    return batch, messages


def test_only_the_chunk_no_worker_started_fails_and_its_reservations_are_released() -> None:
    # GIVEN a batch of 3 chunks accepted 2 h ago: chunk 0 submitted, chunk 1 started but
    # unfinished, chunk 2 never sent
    store, notifier = InMemoryStore(), RecordingNotifier()
    batch, messages = three_chunks(store)
    assert store.backlog("CLUSTER", "local") == 4
    # WHEN a sweep runs
    report = sweeper(store, notifier, batch.created_at + timedelta(hours=2)).sweep()
    # THEN only chunk 2's items are SUBMIT_FAILED, with the reason to send them again
    lost = [i.job_id for i in messages[2].items]
    assert lost == chunk_item_ids(batch, 2)
    for job_id in lost:
        job = store.get_job(job_id)
        assert (job.state, job.reason) == (JobState.SUBMIT_FAILED, LOST_CHUNK_REASON)
    assert {store.get_job(i.job_id).state for i in messages[0].items} == {JobState.PENDING}
    assert {store.get_job(i.job_id).state for i in messages[1].items} == {JobState.SUBMITTING}
    # AND their reservations are released (chunk 1's two are still held)
    assert store.backlog("CLUSTER", "local") == store.backlog("OWNER", OWNER) == 2
    # AND one job event each, and the report says so; the batch waits for chunk 1
    assert job_events(notifier) == [(j, JobState.SUBMITTING, JobState.SUBMIT_FAILED) for j in lost]
    assert (report.chunks_lost, report.items_lost, report.errors) == (1, 2, {})
    record = store.get(batch.request_id)
    assert record.counts == {"SUBMITTED": 2, "FAILED": 2}
    assert not record.state.final


def test_a_second_sweep_does_nothing() -> None:
    # GIVEN the 3-chunk batch whose lost chunk a first sweep failed
    store, notifier = InMemoryStore(), RecordingNotifier()
    batch, _ = three_chunks(store)
    later = batch.created_at + timedelta(hours=2)
    sweeper(store, notifier, later).sweep()
    writes, published = store.writes, list(notifier.published)
    # WHEN a second sweep runs
    report = sweeper(store, notifier, later + timedelta(seconds=15)).sweep()
    # THEN nothing is claimed, written or published
    assert (report.chunks_lost, report.items_lost) == (0, 0)
    assert (store.writes, notifier.published) == (writes, published)
    assert store.get(batch.request_id).counts == {"SUBMITTED": 2, "FAILED": 2}


def test_a_batch_younger_than_the_threshold_is_untouched() -> None:
    # GIVEN the 3-chunk batch, accepted just under the threshold ago
    store, notifier = InMemoryStore(), RecordingNotifier()
    batch, messages = three_chunks(store)
    writes = store.writes
    # WHEN a sweep runs
    now = batch.created_at + BATCH_LOST_AFTER - timedelta(seconds=1)
    report = sweeper(store, notifier, now).sweep()
    # THEN nothing is claimed or written, and chunk 2 can still start
    assert (report.chunks_lost, store.writes, notifier.published) == (0, writes, [])
    ids = [i.job_id for i in messages[2].items]
    assert store.start_chunk(batch.request_id, 2, ids) == set(ids)


def test_a_batch_whose_every_chunk_was_lost_ends_and_frees_its_reservations() -> None:
    # GIVEN a batch of 5 jobs (3 chunks) none of whose messages was sent
    store, notifier = InMemoryStore(), RecordingNotifier()
    batch, _ = accept(store, 5)
    assert store.backlog("CLUSTER", "local") == 5
    # WHEN a sweep runs 2 h later
    report = sweeper(store, notifier, batch.created_at + timedelta(hours=2)).sweep()
    # THEN the batch ended SUCCEEDED with every item counted FAILED, and its event published
    record = store.get(batch.request_id)
    assert (record.state, record.counts) == (RequestState.SUCCEEDED, {"FAILED": 5})
    assert [e.new_state for e in notifier.published if isinstance(e, RequestEvent)] == [
        RequestState.SUCCEEDED
    ]
    assert (report.chunks_lost, report.items_lost) == (3, 5)
    assert len(job_events(notifier)) == 5
    # AND its back-pressure counters are back to 0
    assert store.backlog("CLUSTER", "local") == store.backlog("OWNER", OWNER) == 0


def test_items_cancelled_while_queued_keep_their_outcome() -> None:
    # GIVEN a lost batch of 2 jobs (one chunk), one of them cancelled while "queued"
    store, notifier = InMemoryStore(), RecordingNotifier()
    batch, (message,) = accept(store, 2)
    cancelled, other = (i.job_id for i in message.items)
    assert store.cancel_unsubmitted(cancelled)
    # WHEN a sweep runs 2 h later
    report = sweeper(store, notifier, batch.created_at + timedelta(hours=2)).sweep()
    # THEN only the other one fails, and the batch ends counting both
    assert store.get_job(cancelled).state is JobState.CANCELLED
    assert store.get_job(other).state is JobState.SUBMIT_FAILED
    assert report.items_lost == 1
    record = store.get(batch.request_id)
    assert (record.state, record.counts) == (
        RequestState.SUCCEEDED, {"CANCELLED": 1, "FAILED": 1},
    )  # fmt: skip
    assert store.backlog("CLUSTER", "local") == 0


def test_a_late_delivery_of_a_reaped_chunk_submits_nothing() -> None:
    # GIVEN the 3-chunk batch whose chunk 2 the sweep failed (the batch waits for chunk 1)
    store, notifier = InMemoryStore(), RecordingNotifier()
    batch, messages = three_chunks(store)
    sweeper(store, notifier, batch.created_at + timedelta(hours=2)).sweep()
    counts = store.get(batch.request_id).counts
    # WHEN chunk 2's message is delivered after all
    runner = ScriptedRunner()  # no answers: an agent call fails the test
    worker = Dispatcher(
        store, FakeDirectory(), runner.runner_for, Announcer(store, notifier),
    )  # fmt: skip
    assert worker.handle(messages[2]) == "succeeded"
    # THEN no agent call was made, and its items and the batch's counts are as the sweep left
    assert runner.calls == []
    assert {store.get_job(i.job_id).state for i in messages[2].items} == {JobState.SUBMIT_FAILED}
    assert store.get(batch.request_id).counts == counts


class FlakyStore(InMemoryStore):
    """Refuses the first outcome write of one batch (DynamoDB throttling)."""

    def __init__(self) -> None:
        super().__init__()
        self.flaky: str | None = None

    def record_batch_outcomes(
        self, batch: RequestRecord, outcomes: list[JobRecord]
    ) -> tuple[list[str], list[str]]:
        if batch.request_id == self.flaky:
            self.flaky = None
            raise TransientError("throttled")
        return super().record_batch_outcomes(batch, outcomes)


def test_one_batchs_error_stops_neither_the_others_nor_a_later_sweep() -> None:
    # GIVEN two lost batches; the first one's outcome write is throttled once, after its claim
    store, notifier = FlakyStore(), RecordingNotifier()
    first, _ = accept(store, 2)
    second, _ = accept(store, 2)
    store.flaky = first.request_id
    later = second.created_at + timedelta(hours=2)
    # WHEN a sweep runs
    report = sweeper(store, notifier, later).sweep()
    # THEN the error is reported, the other batch still ended, the first is untouched
    assert list(report.errors) == [f"batch {first.request_id}"]
    assert store.get(second.request_id).state is RequestState.SUCCEEDED
    assert store.get(first.request_id).counts == {}
    # WHEN the next sweep runs / THEN it finishes the claimed chunk: the first batch ends too
    again = sweeper(store, notifier, later + timedelta(seconds=15)).sweep()
    assert (again.chunks_lost, again.items_lost, again.errors) == (1, 2, {})
    assert store.get(first.request_id).counts == {"FAILED": 2}
    assert store.backlog("CLUSTER", "local") == 0


def test_the_threshold_is_a_sweeper_setting_of_at_least_five_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN the sweeper's environment
    monkeypatch.setenv("HPCB_TABLE_NAME", "t")
    monkeypatch.setenv("HPCB_TOPIC_ARN", "arn:aws:sns:us-east-1:1:t")
    monkeypatch.setenv("HPCB_QUEUE_URL", "https://sqs.invalid/q")
    # WHEN read / THEN the default is an hour, and under 5 minutes is refused
    assert SweeperSettings().batch_lost_after_seconds == 3600 == BATCH_LOST_AFTER.total_seconds()
    monkeypatch.setenv("HPCB_BATCH_LOST_AFTER_SECONDS", "299")
    with pytest.raises(pydantic.ValidationError):
        SweeperSettings()


def test_a_batch_accepted_with_item_records_is_not_reaped() -> None:
    # GIVEN an old batch accepted when items had records at accept (no chunk_starts)
    store, notifier = InMemoryStore(), RecordingNotifier()
    batch, _ = accept(store, 2)
    store.records[batch.request_id] = batch.model_copy(update={"chunk_starts": None})
    # WHEN a sweep runs 2 h later / THEN nothing is claimed (its items are not in its record)
    report = sweeper(store, notifier, batch.created_at + timedelta(hours=2)).sweep()
    assert (report.chunks_lost, store.lost_chunks) == (0, {})
