"""A sweep chunk's arrays as its items' record: which positions each array holds, and the
PENDING view of an item without a record of its own (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.batches.arrays import (
    SharedFields,
    SubmittedChunk,
    arrays_of,
    submitted_item,
    submitted_items,
)
from broker.batches.items import chunk_item_ids
from broker.batches.models import item_id
from broker.jobs.models import JobSpec
from broker.jobs.records import JobState
from broker.requests.models import RequestRecord
from broker.requests.states import RequestState

AT = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
BATCH_ID = "r" + "0" * 22 + "ffffff"


def batch(size: int, starts: list[int], rejected: list[int] | None = None) -> RequestRecord:
    return RequestRecord(
        request_id=BATCH_ID, kind="job.batch", owner="alice", cluster="local", user="alice",
        state=RequestState.SUCCEEDED, created_at=AT, updated_at=AT,
        items=size - len(rejected or []), batch_size=size, chunk_starts=starts,
        rejected_items=rejected,
    )  # fmt: skip


def test_arrays_are_read_from_the_answers_and_skip_positions_without_a_task() -> None:
    # GIVEN a chunk of 7 positions, position 2 cancelled before submission (no task), arrays of
    # 4 positions: 70 holds positions 0-3 (tasks 0, 1, 3), 71 holds positions 4-6
    ids: list[str | None] = ["a", "b", None, "d", "e", "f", "g"]
    answers = {"a": "70_0", "b": "70_1", "d": "70_3", "e": "71_0", "f": "71_1", "g": "71_2"}
    # WHEN the arrays are built from the answers
    arrays = arrays_of(ids, answers, AT)
    # THEN two arrays, each with its span and its count of tasks
    assert [(a.slurm_id, a.first, a.last, a.tasks) for a in arrays] == [
        ("70", 0, 3, 3),
        ("71", 4, 6, 3),
    ]


def test_an_array_whose_first_positions_had_no_task_keeps_its_first_position() -> None:
    # GIVEN an array of 4 positions from position 4 whose first two items were cancelled
    ids: list[str | None] = [None, None, None, None, None, None, "g", "h"]
    # WHEN it is built from its tasks 2 and 3
    (array,) = arrays_of(ids, {"g": "80_2", "h": "80_3"}, AT)
    # THEN task 0 is still position 4 (its key is the same on every delivery)
    assert (array.first, array.last, array.tasks, array.key()) == (4, 7, 2, "4")


def test_an_item_reads_as_its_arrays_task_and_rejected_indexes_are_no_position() -> None:
    # GIVEN a sweep of 10 items in chunks starting at 0 and 6, index 2 rejected; chunk 0's
    # items (0, 1, 3, 4, 5) are positions 0-4, in arrays 90 (positions 0-2) and 91 (3-4)
    record = batch(10, [0, 6], rejected=[2])
    ids = chunk_item_ids(record, 0)
    spec = JobSpec(script="#!/bin/sh\n", name="sw", tags={"k": "v"})
    chunk = SubmittedChunk(
        batch_id=BATCH_ID, chunk=0, cluster="local", shared=SharedFields.of(spec),
        arrays=arrays_of(list(ids), {ids[0]: "90_0", ids[1]: "90_1", ids[2]: "90_2",
                                     ids[3]: "91_0", ids[4]: "91_1"}, AT),
    )  # fmt: skip
    # WHEN items are read from the chunk
    item = submitted_item(record, item_id(BATCH_ID, 4), chunk, ids)
    # THEN index 4 is position 3: task 0 of array 91, PENDING, with the template's fields
    assert item is not None
    assert (item.state, item.slurm_job_id, item.batch_index, item.batch_chunk) == (
        JobState.PENDING, "91_0", 4, 0,
    )  # fmt: skip
    assert (item.name, item.tags, item.updated_at) == ("sw", {"k": "v"}, AT)
    # AND a rejected index, or an item of another chunk, is no item of these arrays
    assert submitted_item(record, item_id(BATCH_ID, 2), chunk, ids) is None
    assert submitted_item(record, item_id(BATCH_ID, 7), chunk, ids) is None
    # AND every item the arrays hold reads so, but those with a record of their own
    views = submitted_items(record, chunk, ids, without={item_id(BATCH_ID, 1)})
    assert [v.slurm_job_id for v in views] == ["90_0", "90_2", "91_0", "91_1"]
    assert chunk.covered(ids) == dict(
        zip(ids, ["90_0", "90_1", "90_2", "91_0", "91_1"], strict=True)
    )
