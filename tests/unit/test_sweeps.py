"""Sweeps on the broker's side (``broker.batches.sweeps``): items validated one by one, chunks
packed, a chunk read back as a batch chunk, the agent's arrays mapped to items, and the token
and status of an item that is an array task."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from broker.agent.protocol import AgentArray, AgentErrorInfo, AgentJobResult, SlurmJobStatus
from broker.batches.accept import BatchRejectedError
from broker.batches.dispatch import Answers, _sweep_answers
from broker.batches.models import item_id
from broker.batches.sweeps import (
    SWEEP_CHUNK_ITEMS,
    JobSweepMessage,
    SweepBody,
    sweep_chunks,
    validate_parameters,
)
from broker.jobs.records import JobRecord, JobState, job_token, observe

TEMPLATE: dict[str, Any] = {"script": "#!/bin/sh\ntrue\n", "environment": {"APP_A": "t", "x": "1"}}
BATCH = "r" + "0" * 22 + "ffffff"
TOKEN = f"hpcb:{BATCH}c0"


def body(parameters: list[Any], **extra: Any) -> SweepBody:
    return SweepBody.model_validate({"template": TEMPLATE, "parameters": parameters, **extra})


def message(items: list[tuple[int, dict[str, str]]]) -> JobSweepMessage:
    base = JobSweepMessage(request_id=BATCH, owner="o", cluster="c", user="alice", chunk=0,
                           template=body([{}]).template, indexes=[], parameters=[])  # fmt: skip
    (chunk,) = sweep_chunks(base, items)
    return chunk


def test_each_parameter_set_is_validated_on_its_own() -> None:
    # GIVEN four items: fine, a reserved name, a number, too many variables with the template's
    too_many = {f"p{i}": "v" for i in range(127)}
    sweep = body([{"PARAM_I": "1"}, {"PATH": "/x"}, {"PARAM_I": 2}, too_many])
    # WHEN validated / THEN only item 0 is valid, the others located in the body
    valid, rejected = validate_parameters(sweep)
    assert valid == [(0, {"PARAM_I": "1"})]
    assert [(r.index, r.fields[0].field) for r in rejected] == [
        (1, "body.parameters.1.PATH.[key]"),
        (2, "body.parameters.2.PARAM_I"),
        (3, "body.parameters.3"),
    ]


def test_a_template_may_not_be_an_array_itself() -> None:
    with pytest.raises(ValidationError, match="array"):
        SweepBody.model_validate({"template": {**TEMPLATE, "array": "1-3"}, "parameters": [{}]})


def test_an_atomic_sweep_with_one_invalid_item_is_rejected_whole() -> None:
    from broker.batches.accept import accept_sweep  # noqa: PLC0415
    from tests.fakes import FakeQueue, InMemoryStore  # noqa: PLC0415

    # GIVEN an atomic sweep with item 1 invalid
    store, queue = InMemoryStore(), FakeQueue()
    sweep = body([{"PARAM_I": "1"}, {"LD_PRELOAD": "/x.so"}], atomic=True)
    # WHEN accepted / THEN 422 naming the item, nothing recorded, nothing queued
    with pytest.raises(BatchRejectedError) as refused:
        accept_sweep(store, queue, "o", "c", sweep, user="alice", limits=None,
                     ready_cluster=False)  # fmt: skip
    assert [f.field for f in refused.value.fields] == ["body.parameters.1.LD_PRELOAD.[key]"]
    assert queue.sent == []


def test_chunks_hold_at_most_their_items_and_bytes_and_keep_index_order() -> None:
    # GIVEN 12,000 small items and 300 large ones
    small = [(i, {"PARAM_I": str(i)}) for i in range(12_000)]
    large = [(12_000 + i, {"PARAM_BLOB": "x" * 4000}) for i in range(300)]
    base = message([(0, {})]).model_copy(update={"indexes": [], "parameters": []})
    # WHEN chunked
    chunks = sweep_chunks(base, small + large)
    # THEN every item once, in order; chunks of at most 5,000 items and ~200 KiB each
    assert [i for c in chunks for i in c.indexes] == list(range(12_300))
    assert [c.chunk for c in chunks] == list(range(len(chunks)))
    assert max(len(c.indexes) for c in chunks) == SWEEP_CHUNK_ITEMS
    assert all(len(c.model_dump_json()) < 230 * 1024 for c in chunks)


def test_a_chunk_read_as_a_batch_chunk_gives_each_item_the_template_and_its_variables() -> None:
    # GIVEN a chunk of items 3 and 5, item 5 overriding the template's x
    chunk = message([(3, {"PARAM_I": "3"}), (5, {"x": "2"})])
    # WHEN read as a batch chunk
    batch = chunk.as_batch()
    # THEN each item has its id, and the template's environment with its own on top
    assert [(i.index, i.job_id) for i in batch.items] == [(3, item_id(BATCH, 3)),
                                                          (5, item_id(BATCH, 5))]  # fmt: skip
    assert [i.spec.environment for i in batch.items] == [
        {"APP_A": "t", "x": "1", "PARAM_I": "3"}, {"APP_A": "t", "x": "2"},
    ]  # fmt: skip
    assert chunk.token() == f"hpcb:{BATCH}c0"


def answers_for(ids: list[str | None], result: AgentJobResult | None) -> Answers:
    into: Answers = ([], [], [])
    _sweep_answers(ids, result, into)
    return into


def test_each_position_gets_its_arrays_task() -> None:
    # GIVEN positions a..e (no task at c), in arrays of 2 positions: 70 (0-1), 71 (2-3), 72 (4)
    ids: list[str | None] = ["a", "b", None, "d", "e"]
    arrays = [AgentArray(job_id="70", first=0, tasks=2), AgentArray(job_id="71", first=2, tasks=2),
              AgentArray(job_id="72", first=4, tasks=1)]  # fmt: skip
    # WHEN mapped / THEN each item is <array>_<position - first>
    submitted, rejected, retry = answers_for(ids, AgentJobResult(token=TOKEN, arrays=arrays))
    assert submitted == [("a", "70_0"), ("b", "70_1"), ("d", "71_1"), ("e", "72_0")]
    assert (rejected, retry) == ([], [])


@pytest.mark.parametrize(("transient", "fails"), [(True, False), (False, True)])
def test_positions_no_array_holds_take_the_answers_error(transient: bool, fails: bool) -> None:
    # GIVEN array 0 submitted and array 1 refused (transiently or not)
    error = AgentErrorInfo(code="X", message="no", transient=transient)
    result = AgentJobResult(token=TOKEN, arrays=[AgentArray(job_id="9", first=0, tasks=2)],
                            error=error)  # fmt: skip
    submitted, rejected, retry = answers_for(["a", "b", "c"], result)
    # THEN array 0's items are submitted; the other fails (permanent) or is retried (transient)
    assert submitted == [("a", "9_0"), ("b", "9_1")]
    assert (rejected, retry) == (([("c", "X: no")], []) if fails else ([], ["c"]))


def test_no_answer_at_all_retries_every_item() -> None:
    assert answers_for(["a", None, "b"], None) == ([], [], ["a", "b"])


def job(**fields: Any) -> JobRecord:
    now = datetime(2026, 12, 4, tzinfo=UTC)
    values: dict[str, Any] = {"job_id": item_id(BATCH, 7), "cluster": "c", "owner": "o",
                              "state": JobState.PENDING, "created_at": now,
                              "updated_at": now}  # fmt: skip
    return JobRecord(**{**values, **fields})


def test_a_sweep_items_token_is_its_chunks() -> None:
    item = job(slurm_job_id="70_3", batch_id=BATCH, batch_chunk=2)
    assert job_token(item) == f"hpcb:{BATCH}c2"
    # a plain batch item, or an array a batch item asked for, keeps its own token
    assert job_token(job(slurm_job_id="70", batch_id=BATCH, batch_chunk=2)) == f"hpcb:{item.job_id}"
    own_array = job(slurm_job_id="70_3", batch_id=BATCH, batch_chunk=2, array="1-3")
    assert job_token(own_array) == f"hpcb:{item.job_id}"


def test_a_sweep_items_status_is_its_tasks_not_its_neighbours() -> None:
    # GIVEN item 70_1, and Slurm's word on tasks 70_0 (running) and 70_1 (completed)
    statuses = [
        SlurmJobStatus(job_id=f"70_{t}", base_id="70", array_task=str(t), state=state,
                       exit_code=code, source="sacct")
        for t, state, code in ((0, "RUNNING", None), (1, "COMPLETED", 0))
    ]  # fmt: skip
    item = job(slurm_job_id="70_1", batch_id=BATCH, batch_chunk=0)
    # WHEN observed / THEN it is COMPLETED with exit 0
    seen = observe(item, statuses, accounting=True, now=item.created_at)
    assert seen is not None
    assert (seen.new_state, seen.changes["exit_code"]) == (JobState.COMPLETED, 0)
