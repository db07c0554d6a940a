"""Job states: the Slurm table, forward-only moves, and what a sweep makes of Slurm's answer."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.agent.protocol import SlurmJobStatus
from broker.jobs.records import (
    EXIT_CODE_WAIT_SECONDS,
    SLURM_STATES,
    JobRecord,
    JobState,
    advances,
    array_indexes,
    from_slurm,
    observe,
)
from broker.schema import utcnow

NOW = utcnow()


def job(state: JobState = JobState.PENDING, **fields: object) -> JobRecord:
    return JobRecord.model_validate(
        {
            "job_id": "r1",
            "cluster": "local",
            "owner": "arn:x",
            "state": state,
            "slurm_job_id": "7",
            "created_at": NOW,
            "updated_at": NOW,
            **fields,
        }
    )


def status(state: str, **fields: object) -> SlurmJobStatus:
    values: dict[str, object] = {"job_id": "7", "base_id": "7", "state": state, "source": "sacct"}
    values.update(fields)
    return SlurmJobStatus.model_validate(values)


@pytest.mark.parametrize(
    ("native", "ours"),
    [
        ("PD", JobState.PENDING), ("PENDING", JobState.PENDING), ("CONFIGURING", JobState.PENDING),
        ("R", JobState.RUNNING), ("COMPLETING", JobState.RUNNING), ("SUSPENDED", JobState.RUNNING),
        ("CD", JobState.COMPLETED), ("FAILED", JobState.FAILED), ("TO", JobState.TIMEOUT),
        ("CANCELLED by 0", JobState.CANCELLED), ("OOM", JobState.OUT_OF_MEMORY),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY), ("NODE_FAIL", JobState.NODE_FAIL),
        ("PREEMPTED", JobState.PREEMPTED), ("BOOT_FAIL", JobState.BOOT_FAIL),
        ("DEADLINE", JobState.DEADLINE), ("REQUEUED", JobState.PENDING),
    ],
)  # fmt: skip
def test_slurm_states_map_through_the_one_table(native: str, ours: JobState) -> None:
    # GIVEN a native Slurm state word / THEN the table gives our state
    assert from_slurm(native) is ours


def test_unknown_slurm_states_are_not_guessed() -> None:
    # GIVEN a state Slurm might add one day / THEN no mapping (the job is left as it is)
    assert from_slurm("WIBBLE") is None


def test_every_table_entry_is_a_broker_state_and_only_finals_are_final() -> None:
    # GIVEN the table / THEN final Slurm states map to final broker states and vice versa
    finals = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
              "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"}  # fmt: skip
    for native, ours in SLURM_STATES.items():
        if len(native) > 3:
            assert ours.final == (native in finals), native


@pytest.mark.parametrize("final", [s for s in JobState if s.final])
def test_nothing_leaves_a_final_state(final: JobState) -> None:
    # GIVEN a final state / THEN no move is progress
    assert not any(advances(final, other) for other in JobState)


def test_a_requeue_never_moves_a_running_job_back() -> None:
    # GIVEN a running job / WHEN Slurm requeues it (PENDING) / THEN not progress
    assert not advances(JobState.RUNNING, JobState.PENDING)
    assert advances(JobState.PENDING, JobState.RUNNING)


def test_observe_records_a_start() -> None:
    # GIVEN a pending job / WHEN Slurm says RUNNING with a start time
    seen = observe(job(), [status("RUNNING", start_time="2026-11-21T10:00:00", source="squeue")],
                   accounting=True, now=NOW)  # fmt: skip
    # THEN the job moves to RUNNING with the start time and Slurm's word
    assert seen is not None
    assert seen.new_state is JobState.RUNNING
    assert seen.changes["start_time"] == "2026-11-21T10:00:00"


def test_observe_writes_nothing_when_nothing_changed() -> None:
    # GIVEN a running job whose Slurm status is what we already have
    current = job(JobState.RUNNING, slurm_state="RUNNING", start_time="t0")
    # WHEN observed again / THEN no write at all (no write amplification)
    assert observe(current, [status("RUNNING", start_time="t0")], accounting=True, now=NOW) is None


def test_observe_records_the_exact_exit_code_of_a_failure() -> None:
    # GIVEN sacct says FAILED with exit 3
    seen = observe(job(JobState.RUNNING), [status("FAILED", exit_code=3, signal=0)],
                   accounting=True, now=NOW)  # fmt: skip
    # THEN FAILED, exit code 3
    assert seen is not None
    assert (seen.new_state, seen.changes["exit_code"]) == (JobState.FAILED, 3)


def test_a_job_slurm_does_not_mention_is_not_declared_finished() -> None:
    # GIVEN a running job that squeue no longer lists and sacct does not know yet
    # WHEN observed / THEN nothing is guessed
    assert observe(job(JobState.RUNNING), [], accounting=True, now=NOW) is None


def test_a_final_state_waits_for_its_exit_code_while_accounting_lags() -> None:
    # GIVEN squeue says COMPLETED but sacct has no exit code yet
    squeue_done = status("COMPLETED", source="squeue")
    first = observe(job(JobState.RUNNING), [squeue_done], accounting=True, now=NOW)
    # THEN the job stays RUNNING, noting when the end was first seen
    assert first is not None
    assert first.new_state is JobState.RUNNING
    assert first.changes["final_seen_at"] == NOW
    # AND after the bound it is recorded final without an exit code, saying so
    waited = job(JobState.RUNNING, slurm_state="COMPLETED", final_seen_at=NOW)
    later = NOW + timedelta(seconds=EXIT_CODE_WAIT_SECONDS)
    second = observe(waited, [squeue_done], accounting=True, now=later)
    assert second is not None
    assert second.new_state is JobState.COMPLETED
    assert second.changes["reason"] == "exit code unknown"


def test_without_accounting_a_final_state_is_recorded_at_once() -> None:
    # GIVEN no slurmdbd: squeue/scontrol say COMPLETED, exit code from scontrol
    seen = observe(job(JobState.RUNNING), [status("COMPLETED", exit_code=0, source="scontrol")],
                   accounting=False, now=NOW)  # fmt: skip
    # THEN it is final now
    assert seen is not None
    assert seen.new_state is JobState.COMPLETED


@pytest.mark.parametrize(
    ("spec", "indexes"),
    [("1-4", [1, 2, 3, 4]), ("1-7:2,10%4", [1, 3, 5, 7, 10]), ("0,5", [0, 5]), ("[5-6]", [5, 6])],
)
def test_array_expressions_expand(spec: str, indexes: list[int]) -> None:
    # GIVEN an array expression / THEN every index, sorted
    assert array_indexes(spec) == indexes


def test_an_array_summarises_its_tasks_and_ends_when_all_did() -> None:
    # GIVEN an array 1-4: tasks 1 and 3 completed, 2 failed (exit 1), 4 still running
    array = job(JobState.RUNNING, array="1-4")
    statuses = [
        status("COMPLETED", job_id="7_1", array_task="1", exit_code=0),
        status("FAILED", job_id="7_2", array_task="2", exit_code=1),
        status("COMPLETED", job_id="7_3", array_task="3", exit_code=0),
        status("RUNNING", job_id="7_4", array_task="4", source="squeue"),
    ]
    seen = observe(array, statuses, accounting=True, now=NOW)
    # THEN each task is visible, counts per state, and the array is still RUNNING
    assert seen is not None
    assert seen.new_state is JobState.RUNNING
    assert seen.changes["task_counts"] == {"COMPLETED": 2, "FAILED": 1, "RUNNING": 1}
    # WHEN task 4 completes too / THEN the array is FAILED (one task failed), exit code max
    after = array.model_copy(
        update={"tasks": seen.changes["tasks"], "task_counts": seen.changes["task_counts"]}
    )
    done = observe(after, [status("COMPLETED", job_id="7_4", array_task="4", exit_code=0)],
                   accounting=True, now=NOW)  # fmt: skip
    assert done is not None
    assert done.new_state is JobState.FAILED
    assert done.changes["exit_code"] == 1


def test_an_array_with_all_tasks_completed_is_completed() -> None:
    # GIVEN a two-task array whose tasks both completed / THEN COMPLETED
    statuses = [
        status("COMPLETED", job_id=f"7_{i}", array_task=str(i), exit_code=0) for i in (1, 2)
    ]
    seen = observe(job(array="1-2"), statuses, accounting=True, now=NOW)
    assert seen is not None
    assert seen.new_state is JobState.COMPLETED


def test_a_pending_array_range_counts_every_task() -> None:
    # GIVEN squeue's one line for still-pending tasks 5-10 of an array 1-10, 1-4 running
    statuses = [status("RUNNING", job_id=f"7_{i}", array_task=str(i)) for i in range(1, 5)]
    statuses.append(status("PENDING", job_id="7_[5-10]", array_task="[5-10]", source="squeue"))
    seen = observe(job(array="1-10"), statuses, accounting=True, now=NOW)
    # THEN 4 running, 6 pending
    assert seen is not None
    assert seen.changes["task_counts"] == {"RUNNING": 4, "PENDING": 6}
