"""Batch items known from their batch record alone: which ids a chunk holds, and the record an
item of a lost chunk fails with."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.batches.items import chunk_item_ids, lost_item
from broker.batches.models import batch_ids, item_id
from broker.jobs.records import JobState
from broker.requests.models import RequestRecord
from broker.requests.states import RequestState
from broker.schema import utcnow


def batch(size: int, chunk_starts: list[int] | None, rejected: list[int]) -> RequestRecord:
    now = utcnow()
    return RequestRecord(
        request_id=batch_ids(size)[0], kind="job.batch", owner="arn:aws:iam::1:user/alice",
        cluster="local", state=RequestState.ACCEPTED, created_at=now, updated_at=now,
        items=size - len(rejected), batch_size=size, chunk_starts=chunk_starts,
        rejected_items=rejected or None,
    )  # fmt: skip


def test_a_chunk_holds_the_indexes_up_to_the_next_chunks_start() -> None:
    # GIVEN 7 items in chunks starting at 0, 3 and 5
    record = batch(7, [0, 3, 5], [])
    # WHEN each chunk's ids are asked for / THEN each has its own indexes, the last up to the end
    ids = [chunk_item_ids(record, n) for n in range(3)]
    assert ids == [
        [item_id(record.request_id, i) for i in (0, 1, 2)],
        [item_id(record.request_id, i) for i in (3, 4)],
        [item_id(record.request_id, i) for i in (5, 6)],
    ]


def test_items_rejected_at_accept_are_in_no_chunk() -> None:
    # GIVEN 6 items, 1, 4 and 5 rejected at accept, chunks starting at 0 and 3
    record = batch(6, [0, 3], [1, 4, 5])
    # WHEN / THEN chunk 0 holds 0 and 2, and the last chunk only 3 (its tail was rejected)
    assert chunk_item_ids(record, 0) == [item_id(record.request_id, i) for i in (0, 2)]
    assert chunk_item_ids(record, 1) == [item_id(record.request_id, 3)]


def test_a_chunk_the_batch_does_not_have_holds_nothing() -> None:
    # GIVEN a batch of two chunks, and one accepted with item records (no chunk_starts)
    record, old = batch(4, [0, 2], []), batch(4, None, [])
    # WHEN / THEN chunk 2, chunk -1 and any chunk of the old batch hold no id
    assert chunk_item_ids(record, 2) == chunk_item_ids(record, -1) == []
    assert chunk_item_ids(old, 0) == []


def test_an_item_of_a_lost_chunk_fails_with_the_reason_and_its_event_pending() -> None:
    # GIVEN a batch of 4 in chunks at 0 and 2
    record = batch(4, [0, 2], [])
    now = record.created_at + timedelta(hours=2)
    # WHEN item 3's lost record is built
    job = lost_item(record, item_id(record.request_id, 3), "x" * 2000, now)
    # THEN it is the item, SUBMIT_FAILED in chunk 1, with the (bounded) reason, event pending
    assert (job.job_id, job.batch_id, job.batch_index, job.batch_chunk) == (
        item_id(record.request_id, 3), record.request_id, 3, 1,
    )  # fmt: skip
    assert (job.state, job.notify_pending) == (JobState.SUBMIT_FAILED, "SUBMIT_FAILED")
    assert job.reason == "x" * 1000
    assert (job.owner, job.cluster, job.created_at, job.updated_at) == (
        record.owner, record.cluster, record.created_at, now,
    )  # fmt: skip


def test_a_lost_record_is_refused_for_an_id_that_is_not_an_item() -> None:
    # GIVEN a batch with item 1 rejected / WHEN its lost record is asked for / THEN ValueError
    record = batch(3, [0], [1])
    with pytest.raises(ValueError, match="not an item"):
        lost_item(record, item_id(record.request_id, 1), "lost", utcnow())
