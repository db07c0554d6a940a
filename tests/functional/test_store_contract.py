"""Store contract: the DynamoDB adapter (moto over HTTP) and the in-memory fake obey the same
conditional, forward-only rules, for requests and for jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Protocol

import pytest

from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoStore
from broker.batches.models import BatchItem, batch_ids, item_id
from broker.batches.outcomes import item_outcome
from broker.errors import BackpressureError, ConflictError, NotFoundError
from broker.jobs.models import JobResult, JobSpec
from broker.jobs.records import JobRecord, JobState
from broker.ports import AttentionIndex, BatchStore, JobStore, Limits, RequestStore
from broker.requests.models import RequestRecord
from broker.requests.states import RequestState
from broker.schema import ErrorInfo, new_request_id, utcnow
from tests.conftest import AwsResources
from tests.fakes import InMemoryStore


class Store(RequestStore, JobStore, BatchStore, AttentionIndex, Protocol):
    """Every record port the table adapter and the in-memory fake both implement."""


@pytest.fixture(params=["dynamodb", "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield InMemoryStore()
        return
    resources: AwsResources = request.getfixturevalue("aws_resources")
    yield DynamoStore(client("dynamodb"), resources.ref("RequestsTable"))


def accepted() -> RequestRecord:
    now = utcnow()
    return RequestRecord(
        request_id=new_request_id(),
        kind="job.submit",
        owner="arn:aws:iam::123456789012:user/alice",
        cluster="local",
        state=RequestState.ACCEPTED,
        created_at=now,
        updated_at=now,
        spec=JobSpec(script="#!/bin/sh\necho 'quotes' \"and\" $(subshells)\n", name="j1"),
    )


def test_created_record_reads_back_identically(store: Store) -> None:
    # GIVEN a new record / WHEN created and read / THEN every field round-trips
    record = accepted()
    store.create(record)
    assert store.get(record.request_id) == record


def test_creating_the_same_id_twice_conflicts(store: Store) -> None:
    # GIVEN an existing record / WHEN created again / THEN conflict (attribute_not_exists)
    record = accepted()
    store.create(record)
    with pytest.raises(ConflictError):
        store.create(record)


def test_reading_an_unknown_id_is_not_found(store: Store) -> None:
    # GIVEN nothing / WHEN reading / THEN not found
    with pytest.raises(NotFoundError):
        store.get(new_request_id())


def test_dispatch_counts_attempts_each_delivery(store: Store) -> None:
    # GIVEN an accepted record / WHEN dispatched twice (a redelivery)
    record = accepted()
    store.create(record)
    store.mark_dispatched(record.request_id)
    second = store.mark_dispatched(record.request_id)
    # THEN it is DISPATCHED with two attempts
    assert second is not None
    assert (second.state, second.attempts) == (RequestState.DISPATCHED, 2)


def test_success_is_final_and_clears_the_retry_error(store: Store) -> None:
    # GIVEN a dispatched record that saw a transient error
    record = accepted()
    store.create(record)
    store.mark_dispatched(record.request_id)
    store.record_retry(record.request_id, ErrorInfo(code="X", message="y", transient=True))
    assert store.get(record.request_id).error is not None
    # WHEN it succeeds
    assert store.record_success(record.request_id, JobResult(job_id="12", cluster="local"))
    # THEN it is SUCCEEDED with the job id and no error
    done = store.get(record.request_id)
    assert done.state is RequestState.SUCCEEDED
    assert done.result == JobResult(job_id="12", cluster="local")
    assert done.error is None


def test_nothing_moves_a_final_record(store: Store) -> None:
    # GIVEN a succeeded record
    record = accepted()
    store.create(record)
    store.record_success(record.request_id, JobResult(job_id="12", cluster="local"))
    # WHEN a late failure, a late dispatch and a late retry note arrive
    failed = store.record_failure(
        record.request_id, ErrorInfo(code="X", message="y", transient=False)
    )
    dispatched = store.mark_dispatched(record.request_id)
    store.record_retry(record.request_id, ErrorInfo(code="X", message="y", transient=True))
    # THEN none of them changes it
    assert failed is False
    assert dispatched is None
    final = store.get(record.request_id)
    assert final.state is RequestState.SUCCEEDED
    assert final.error is None


def test_dispatching_an_unknown_request_is_not_found(store: Store) -> None:
    # GIVEN no record / WHEN a worker dispatches it / THEN not found (not a silent create)
    with pytest.raises(NotFoundError):
        store.mark_dispatched(new_request_id())


#: The sweeper's re-send period in these tests.
PERIOD = timedelta(seconds=600)


def test_a_requeue_claim_holds_for_one_period(store: Store) -> None:
    # GIVEN an accepted request never re-sent
    record = accepted()
    store.create(record)
    now = utcnow()
    # WHEN a sweep claims its re-send / THEN it holds the claim, and only requeued_at changed
    assert store.claim_requeue(record.request_id, now, now - PERIOD)
    assert store.get(record.request_id) == record.model_copy(update={"requeued_at": now})
    # AND while the claim is fresh, no other sweep gets it
    soon = now + timedelta(seconds=15)
    assert not store.claim_requeue(record.request_id, soon, soon - PERIOD)
    # AND one period later, a sweep gets it again
    later = now + PERIOD + timedelta(seconds=1)
    assert store.claim_requeue(record.request_id, later, later - PERIOD)
    assert store.get(record.request_id).requeued_at == later


@pytest.mark.parametrize("outcome", ["dispatched", "succeeded"])
def test_a_requeue_claim_fails_once_a_worker_took_the_request(store: Store, outcome: str) -> None:
    # GIVEN an accepted request, then taken by a worker (and, for one case, finished)
    record = accepted()
    store.create(record)
    store.mark_dispatched(record.request_id)
    if outcome == "succeeded":
        store.record_success(record.request_id, JobResult(job_id="12", cluster="local"))
    # WHEN a sweep, long after, tries to claim its re-send / THEN it fails, nothing written
    later = utcnow() + 3 * PERIOD
    assert not store.claim_requeue(record.request_id, later, later - PERIOD)
    assert store.get(record.request_id).requeued_at is None


def test_a_requeue_claim_on_an_unknown_request_creates_nothing(store: Store) -> None:
    # GIVEN no record / WHEN a re-send is claimed / THEN it fails and no record appears
    request_id, now = new_request_id(), utcnow()
    assert not store.claim_requeue(request_id, now, now - PERIOD)
    with pytest.raises(NotFoundError):
        store.get(request_id)


def submission(
    owner: str = "arn:aws:iam::123456789012:user/alice",
) -> tuple[RequestRecord, JobRecord]:
    record = accepted().model_copy(update={"owner": owner})
    record = record.model_copy(update={"job_id": record.request_id})
    job = JobRecord(
        job_id=record.request_id,
        cluster="local",
        owner=owner,
        name="j1",
        state=JobState.SUBMITTING,
        created_at=record.created_at,
        updated_at=record.created_at,
    )
    return record, job


def test_a_submission_writes_request_and_job_together(store: Store) -> None:
    # GIVEN a submission / WHEN created / THEN both read back
    record, job = submission()
    store.create_submission(record, job)
    assert store.get(record.request_id) == record
    assert store.get_job(job.job_id) == job
    # AND a second write of the same submission conflicts (neither is overwritten)
    with pytest.raises(ConflictError):
        store.create_submission(record, job)


def test_a_submitted_job_is_found_by_its_slurm_id(store: Store) -> None:
    # GIVEN a job submitted as Slurm 77
    record, job = submission()
    store.create_submission(record, job)
    assert store.start_submission(job.job_id) is not None
    assert store.record_submitted(job.job_id, "77")
    # WHEN looked up by Slurm id (or an array task of it) / THEN found, PENDING
    assert store.find_job("local", "77").job_id == job.job_id
    assert store.find_job("local", "77_3").job_id == job.job_id
    assert store.get_job(job.job_id).state is JobState.PENDING
    # AND a late second record_submitted changes nothing
    assert not store.record_submitted(job.job_id, "78")
    with pytest.raises(NotFoundError):
        store.find_job("other", "77")


def test_cancel_wins_only_before_the_submission_started(store: Store) -> None:
    # GIVEN two submissions; the second has been taken by a worker
    first, first_job = submission()
    second, second_job = submission()
    store.create_submission(first, first_job)
    store.create_submission(second, second_job)
    store.start_submission(second_job.job_id)
    # WHEN both are cancelled while queued
    # THEN the untouched one is CANCELLED, the started one is not (the worker owns it)
    assert store.cancel_unsubmitted(first_job.job_id)
    assert not store.cancel_unsubmitted(second_job.job_id)
    assert store.get_job(first_job.job_id).state is JobState.CANCELLED
    assert store.start_submission(first_job.job_id) is None


def test_a_batch_job_is_cancelled_as_unsubmitted_only_before_its_chunk_started(
    store: Store,
) -> None:
    # GIVEN a batch with two jobs in chunk 0 and one in chunk 1
    batch = accepted().model_copy(update={"kind": "job.batch", "items": 3, "batch_size": 3})
    store.create(batch)
    jobs = []
    for chunk in (0, 0, 1):
        record, job = submission()
        job = job.model_copy(update={"batch_id": batch.request_id, "batch_chunk": chunk})
        store.create_submission(record, job)
        jobs.append(job)
    # AND one job of chunk 0 cancelled while queued
    assert store.cancel_unsubmitted(jobs[0].job_id)
    # WHEN a worker starts chunk 0
    started = store.start_chunk(batch.request_id, 0, [jobs[0].job_id, jobs[1].job_id])
    # THEN only its job still SUBMITTING is returned (the cancelled one is skipped)
    assert started == {jobs[1].job_id}
    # AND that job can no longer be cancelled as unsubmitted (the worker owns it) ...
    assert not store.cancel_unsubmitted(jobs[1].job_id)
    assert store.get_job(jobs[1].job_id).state is JobState.SUBMITTING
    # ... while a job of another chunk still can
    assert store.cancel_unsubmitted(jobs[2].job_id)
    # AND starting chunk 0 again (a redelivery) returns the same job
    assert store.start_chunk(batch.request_id, 0, [jobs[0].job_id, jobs[1].job_id]) == {
        jobs[1].job_id
    }


def test_job_updates_are_conditional_on_the_state_read(store: Store) -> None:
    # GIVEN a pending job read by two sweeps
    record, job = submission()
    store.create_submission(record, job)
    store.start_submission(job.job_id)
    store.record_submitted(job.job_id, "90")
    seen = store.get_job(job.job_id)
    # WHEN both write the final state / THEN only the first write lands
    assert store.update_job(seen, JobState.FAILED, {"exit_code": 3, "end_time": "t1"})
    assert not store.update_job(seen, JobState.FAILED, {"exit_code": 3, "end_time": "t1"})
    final = store.get_job(job.job_id)
    assert (final.state, final.exit_code, final.notify_pending) == (JobState.FAILED, 3, "FAILED")


def test_the_attention_index_holds_exactly_what_needs_attention(store: Store) -> None:
    # GIVEN a running job, and a finished one whose event is then published
    running_req, running = submission()
    done_req, done = submission()
    for record, job in ((running_req, running), (done_req, done)):
        store.create_submission(record, job)
        store.start_submission(job.job_id)
        store.record_submitted(job.job_id, job.job_id[-6:])
    store.update_job(store.get_job(done.job_id), JobState.COMPLETED, {"exit_code": 0})
    jobs, _, _ = store.attention()
    assert {j.job_id for j in jobs} == {running.job_id, done.job_id}
    # WHEN the finished job's event is marked published
    assert store.clear_job_notification(done.job_id, "COMPLETED")
    # THEN only the running job is left
    jobs, _, _ = store.attention()
    assert {j.job_id for j in jobs} == {running.job_id}


def test_listing_is_per_owner_newest_first_filtered_and_paginated(store: Store) -> None:
    # GIVEN three of alice's jobs (one failed) and one of bob's
    alice = "arn:aws:iam::123456789012:user/alice"
    ids = []
    for _ in range(3):
        time.sleep(0.002)  # distinct creation times: "newest first" is by creation time
        record, job = submission(alice)
        store.create_submission(record, job)
        ids.append(job.job_id)
    bob_record, bob_job = submission("arn:aws:iam::123456789012:user/bob")
    store.create_submission(bob_record, bob_job)
    store.record_submit_failed(ids[0], "nope")
    # WHEN alice lists two per page
    page, token = store.list_jobs(alice, "local", states=None, name=None, since=None,
                                  until=None, limit=2, next_token=None)  # fmt: skip
    rest, end = store.list_jobs(alice, "local", states=None, name=None, since=None,
                                until=None, limit=2, next_token=token)  # fmt: skip
    # THEN she sees her three jobs, newest first, and never bob's
    assert [j.job_id for j in page + rest] == list(reversed(ids))
    assert token is not None
    assert end is None
    # AND a state filter keeps only the failed one
    failed, _ = store.list_jobs(
        alice,
        "local",
        states=frozenset({JobState.SUBMIT_FAILED}),
        name=None,
        since=None,
        until=None,
        limit=10,
        next_token=None,
    )
    assert [j.job_id for j in failed] == [ids[0]]


def test_backlog_limits_hold_exactly_and_count_out_on_every_exit(store: Store) -> None:
    # GIVEN a cluster backlog limit of 2
    limits = Limits(cluster_backlog=2, owner_inflight=100, retry_after_seconds=7)
    first, first_job = submission()
    second, second_job = submission()
    store.create_submission(first, first_job, limits)
    store.create_submission(second, second_job, limits)
    # WHEN a third submission arrives / THEN refused with the retry delay, nothing written
    third, third_job = submission()
    with pytest.raises(BackpressureError) as info:
        store.create_submission(third, third_job, limits)
    assert info.value.retry_after == 7
    with pytest.raises(NotFoundError):
        store.get(third.request_id)
    # AND once one job reaches Slurm and the other is cancelled while queued, both counted out
    store.start_submission(first_job.job_id)
    assert store.record_submitted(first_job.job_id, "501")
    assert store.cancel_unsubmitted(second_job.job_id)
    assert store.backlog("CLUSTER", "local") == 0
    # AND a late duplicate transition does not count out twice
    assert not store.record_submitted(first_job.job_id, "501")
    assert store.backlog("CLUSTER", "local") == 0
    store.create_submission(third, third_job, limits)


def test_a_callers_in_flight_limit_is_separate_from_others(store: Store) -> None:
    # GIVEN alice at her in-flight limit of 1
    limits = Limits(cluster_backlog=100, owner_inflight=1)
    record, job = submission("arn:aws:iam::123456789012:user/alice")
    store.create_submission(record, job, limits)
    # WHEN she submits again / THEN refused; bob is not affected
    again, again_job = submission("arn:aws:iam::123456789012:user/alice")
    with pytest.raises(BackpressureError):
        store.create_submission(again, again_job, limits)
    bob, bob_job = submission("arn:aws:iam::123456789012:user/bob")
    store.create_submission(bob, bob_job, limits)
    # AND a failed submission frees her slot
    assert store.record_submit_failed(job.job_id, "nope")
    store.create_submission(again, again_job, limits)


def lazy_batch(size: int, chunk_starts: list[int], rejected: list[int]) -> RequestRecord:
    """A batch accepted without item records (``broker.batches``), on its own cluster."""
    return accepted().model_copy(
        update={
            "request_id": batch_ids(size)[0],
            "kind": "job.batch",
            "cluster": "lazy",
            "spec": None,
            "items": size - len(rejected),
            "batch_size": size,
            "chunk_starts": chunk_starts,
            "rejected_items": rejected or None,
        }
    )


def test_a_batch_item_without_a_record_reads_as_submitting_from_its_batch(store: Store) -> None:
    # GIVEN a batch of 4 items in chunks starting at 0 and 2, item 1 rejected at accept
    batch = lazy_batch(4, [0, 2], [1])
    store.create_batch(batch)
    # WHEN its items are read (none has a record of its own)
    # THEN the accepted ones are SUBMITTING, in their chunk, the batch's owner's
    first, last = (
        store.get_job(item_id(batch.request_id, 0)),
        store.get_job(item_id(batch.request_id, 3)),
    )
    assert (first.state, first.batch_chunk, first.owner) == (JobState.SUBMITTING, 0, batch.owner)
    assert (last.batch_id, last.batch_index, last.batch_chunk) == (batch.request_id, 3, 1)
    assert store.find_job("lazy", last.job_id) == last
    # AND the rejected item, one past the end and the batch's own id are not jobs
    for missing in (item_id(batch.request_id, 1), item_id(batch.request_id, 4), batch.request_id):
        with pytest.raises(NotFoundError):
            store.get_job(missing)
    with pytest.raises(NotFoundError):
        store.find_job("other", last.job_id)
    # AND no record was written for any item
    assert store.jobs_by_id([item_id(batch.request_id, i) for i in range(4)]) == {}


def test_batch_outcomes_are_recorded_once_and_never_over_a_cancel(store: Store) -> None:
    # GIVEN a batch of 3 items within limits (chunk 0: items 0 and 1; chunk 1: item 2)
    limits = Limits(cluster_backlog=10, owner_inflight=10)
    batch = lazy_batch(3, [0, 2], [])
    store.create_batch(batch, limits)
    assert store.backlog("CLUSTER", "lazy") == 3
    ids = [item_id(batch.request_id, i) for i in range(3)]
    items = [
        BatchItem(index=i, job_id=ids[i], spec=JobSpec(script="#!/bin/sh\ntrue\n"))
        for i in range(3)
    ]
    # AND item 2 cancelled while queued (its first record), then chunk 0 started
    assert store.cancel_unsubmitted(ids[2])
    assert store.start_chunk(batch.request_id, 0, ids[:2]) == set(ids[:2])
    assert not store.cancel_unsubmitted(ids[1])
    # WHEN item 0 reached Slurm as 7 and item 1 failed, and the outcomes are recorded twice,
    # and a late outcome for the cancelled item 2 arrives
    outcomes = [
        item_outcome(batch, items[0], 0, slurm_job_id="7"),
        item_outcome(batch, items[1], 0, reason="sbatch: invalid partition"),
    ]
    assert store.record_batch_outcomes(batch, outcomes) == ([ids[0]], [ids[1]])
    assert store.record_batch_outcomes(batch, outcomes) == ([], [])
    assert store.record_batch_outcomes(
        batch, [item_outcome(batch, items[2], 1, slurm_job_id="8")]
    ) == ([], [])
    # THEN each item has one record, in its outcome, counted once in and out
    assert store.find_job("lazy", "7").job_id == ids[0]
    assert store.get_job(ids[1]).state is JobState.SUBMIT_FAILED
    assert store.get_job(ids[2]).state is JobState.CANCELLED
    assert store.get(batch.request_id).counts == {"SUBMITTED": 1, "FAILED": 1, "CANCELLED": 1}
    assert store.backlog("CLUSTER", "lazy") == 0
    # AND a chunk started again (a redelivery) has nothing left to submit
    assert store.start_chunk(batch.request_id, 0, ids[:2]) == set()


def test_a_lost_chunk_is_claimed_until_its_reap_is_done_and_never_started_after(
    store: Store,
) -> None:
    # GIVEN a batch of 4 items in two chunks, neither started
    batch = lazy_batch(4, [0, 2], [])
    store.create_batch(batch)
    ids = [item_id(batch.request_id, i) for i in range(4)]
    # WHEN the sweep claims chunk 1 as lost
    assert store.reap_chunk(batch.request_id, 1)
    # THEN a late first delivery of chunk 1 has nothing to submit, and a cancel of its item
    # does not race the sweep's failure
    assert store.start_chunk(batch.request_id, 1, ids[2:]) == set()
    assert not store.cancel_unsubmitted(ids[2])
    # AND until its reap is done, a sweep may claim it again (to finish an interrupted reap)
    assert store.reap_chunk(batch.request_id, 1)
    assert store.chunks_started(batch.request_id, 2) == set()
    # AND once done, it is claimed never again, and counts as needing nothing
    store.reap_done(batch.request_id, 1)
    assert not store.reap_chunk(batch.request_id, 1)
    assert store.chunks_started(batch.request_id, 2) == {1}
    assert store.start_chunk(batch.request_id, 1, ids[2:]) == set()


def test_a_chunk_a_worker_started_cannot_be_claimed_lost(store: Store) -> None:
    # GIVEN a batch of 4 items in two chunks; a worker started chunk 0
    batch = lazy_batch(4, [0, 2], [])
    store.create_batch(batch)
    ids = [item_id(batch.request_id, i) for i in range(4)]
    assert store.start_chunk(batch.request_id, 0, ids[:2]) == set(ids[:2])
    # WHEN the sweep tries to claim it / THEN it fails, and the worker can start it again
    assert not store.reap_chunk(batch.request_id, 0)
    assert store.start_chunk(batch.request_id, 0, ids[:2]) == set(ids[:2])
    # AND a reap_done on it changes nothing (it is no lost chunk)
    store.reap_done(batch.request_id, 0)
    assert store.start_chunk(batch.request_id, 0, ids[:2]) == set(ids[:2])


def test_chunks_started_reads_the_markers_of_many_chunks(store: Store) -> None:
    # GIVEN a batch of 250 one-item chunks (more than one read's 100 keys); chunks 0, 99, 100
    # and 249 started by workers, chunk 5 claimed lost and done, chunk 6 claimed lost only
    batch = lazy_batch(250, list(range(250)), [])
    store.create_batch(batch)
    for chunk in (0, 99, 100, 249):
        store.start_chunk(batch.request_id, chunk, [item_id(batch.request_id, chunk)])
    for chunk in (5, 6):
        assert store.reap_chunk(batch.request_id, chunk)
    store.reap_done(batch.request_id, 5)
    # WHEN asked which chunks need no reaping
    started = store.chunks_started(batch.request_id, 250)
    # THEN the started ones and the finished reap, not the unfinished one
    assert started == {0, 5, 99, 100, 249}
    # AND a count short of the batch reads only those chunks
    assert store.chunks_started(batch.request_id, 100) == {0, 5, 99}
