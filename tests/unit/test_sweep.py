"""The sweep with fakes: one head-node command per cluster, real transitions only, exactly one
notification per terminal transition, and repair of a notification lost in a crash."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.agent import hpcb_agent as agent
from broker.agent.protocol import AgentResponse, SlurmJobStatus
from broker.errors import TransientError
from broker.jobs.accept import RequestService
from broker.jobs.models import JobSpec
from broker.jobs.records import JobState
from broker.notifications.announcer import REANNOUNCE_AFTER, Announcer
from broker.notifications.events import JobEvent
from broker.schema import utcnow
from broker.sweep.status import STATUS_SLICE, Sweeper
from tests.fakes import (
    EveryoneAs,
    FakeDirectory,
    FakeQueue,
    InMemoryStore,
    RecordingNotifier,
    ScriptedRunner,
)

OWNER = "arn:aws:iam::111122223333:user/alice"


def in_slurm(store: InMemoryStore, count: int, cluster: str = "local") -> list[str]:
    """``count`` jobs accepted and submitted as Slurm ids 1000, 1001, ..."""
    api = RequestService(
        store, FakeQueue(), FakeDirectory(frozenset({"local", "other"})), users=EveryoneAs()
    )
    ids = []
    for _ in range(count):
        job_id = api.submit_job(OWNER, cluster, JobSpec(script="#!/bin/sh\ntrue\n")).request_id
        store.start_submission(job_id)
        store.record_submitted(job_id, str(1000 + len(store.aliases)))
        ids.append(job_id)
    return ids


def answer(states: dict[str, str], *, exit_code: int = 0, accounting: bool = True) -> AgentResponse:
    statuses = [
        SlurmJobStatus(job_id=i, base_id=i, state=s, exit_code=exit_code, signal=0, source="sacct")
        for i, s in states.items()
    ]
    return AgentResponse(ok=True, op="status", statuses=statuses, accounting=accounting)


def sweeper(store: InMemoryStore, runner: ScriptedRunner, notifier: RecordingNotifier) -> Sweeper:
    directory = FakeDirectory(frozenset({"local", "other"}))
    return Sweeper(store, directory, runner.runner_for, Announcer(store, notifier))


@pytest.mark.parametrize("jobs", [1, 100, 1000])
def test_one_head_node_command_per_cluster_whatever_the_job_count(jobs: int) -> None:
    # GIVEN n active jobs on one cluster
    store = InMemoryStore()
    in_slurm(store, jobs)
    runner = ScriptedRunner([answer({})])
    # WHEN swept / THEN exactly one command, asking for all n ids
    report = sweeper(store, runner, RecordingNotifier()).sweep()
    assert report.head_node_commands == 1
    assert len(runner.calls) == 1
    assert len(runner.calls[0].job_ids) == jobs


def test_two_clusters_cost_two_commands() -> None:
    # GIVEN jobs on two clusters / WHEN swept / THEN one command each
    store = InMemoryStore()
    in_slurm(store, 3, "local")
    in_slurm(store, 2, "other")
    runner = ScriptedRunner([answer({}), answer({})])
    report = sweeper(store, runner, RecordingNotifier()).sweep()
    assert (report.clusters, report.head_node_commands) == (2, 2)


def test_unchanged_jobs_cost_no_write() -> None:
    # GIVEN a job already recorded RUNNING
    store = InMemoryStore()
    (job_id,) = in_slurm(store, 1)
    runner = ScriptedRunner([answer({"1000": "RUNNING"}), answer({"1000": "RUNNING"})])
    notifier = RecordingNotifier()
    sweeper(store, runner, notifier).sweep()
    writes = store.writes
    # WHEN swept again with the same answer / THEN no write
    report = sweeper(store, runner, notifier).sweep()
    assert (report.transitions, store.writes) == (0, writes)
    assert store.get_job(job_id).state is JobState.RUNNING


def test_a_terminal_transition_is_announced_exactly_once_across_overlapping_sweeps() -> None:
    # GIVEN a running job, and two sweeps that both read it before either wrote
    store = InMemoryStore()
    (job_id,) = in_slurm(store, 1)
    notifier = RecordingNotifier()
    first = sweeper(store, ScriptedRunner([answer({"1000": "FAILED"}, exit_code=3)]), notifier)
    second = sweeper(store, ScriptedRunner([answer({"1000": "FAILED"}, exit_code=3)]), notifier)
    stale_view = store.attention()
    first.sweep()
    store.attention = lambda: stale_view  # type: ignore[method-assign]
    # WHEN the second sweep writes from its stale read
    second.sweep()
    # THEN the job is FAILED with exit code 3 and exactly one event was published
    job = store.get_job(job_id)
    assert (job.state, job.exit_code) == (JobState.FAILED, 3)
    events = [e for e in notifier.published if isinstance(e, JobEvent)]
    assert [(e.job_id, e.old_state, e.new_state, e.exit_code) for e in events] == [
        (job_id, JobState.PENDING, JobState.FAILED, 3)
    ]
    assert events[0].attributes() == {
        "type": "job.state_changed",
        "cluster": "local",
        "owner": OWNER,
        "state": "FAILED",
    }


def test_a_notification_lost_in_a_crash_is_published_by_a_later_sweep() -> None:
    # GIVEN a job whose final transition was written but whose publish failed
    store = InMemoryStore()
    (job_id,) = in_slurm(store, 1)
    notifier = RecordingNotifier(fail_with=TransientError("SNS down"))
    sweeper(store, ScriptedRunner([answer({"1000": "COMPLETED"})]), notifier).sweep()
    assert store.get_job(job_id).notify_pending == "COMPLETED"
    # WHEN a sweep runs after REANNOUNCE_AFTER, with SNS back
    notifier.fail_with = None
    later = utcnow() + REANNOUNCE_AFTER + timedelta(seconds=1)
    late = Sweeper(store, FakeDirectory(), ScriptedRunner().runner_for,
                   Announcer(store, notifier), now=lambda: later)  # fmt: skip
    report = late.sweep()
    # THEN the event is published once, the mark cleared, and no head-node call was needed
    assert report.announced == 1
    assert [e.new_state for e in notifier.published] == [JobState.COMPLETED]
    assert store.get_job(job_id).notify_pending is None


def test_a_cluster_whose_head_node_fails_does_not_stop_the_others() -> None:
    # GIVEN two clusters; the first one's head node is unreachable
    store = InMemoryStore()
    in_slurm(store, 1, "local")
    (other,) = in_slurm(store, 1, "other")
    runner = ScriptedRunner([TransientError("unreachable"), answer({"1001": "RUNNING"})])
    # WHEN swept / THEN the error is reported and the other cluster's job still moves
    report = sweeper(store, runner, RecordingNotifier()).sweep()
    assert "local" in report.errors
    assert store.get_job(other).state is JobState.RUNNING


def test_without_accounting_the_sweep_says_what_it_cannot_know() -> None:
    # GIVEN no slurmdbd, and squeue/scontrol saying COMPLETED without an exit code
    store = InMemoryStore()
    (job_id,) = in_slurm(store, 1)
    statuses = [SlurmJobStatus(job_id="1000", base_id="1000", state="COMPLETED", source="squeue")]
    runner = ScriptedRunner([AgentResponse(ok=True, op="status", statuses=statuses,
                                           accounting=False)])  # fmt: skip
    # WHEN swept / THEN COMPLETED, with a reason saying the exit code is unknown
    report = sweeper(store, runner, RecordingNotifier()).sweep()
    job = store.get_job(job_id)
    assert report.accounting == {"local": False}
    assert job.state is JobState.COMPLETED
    assert job.reason == "no accounting: exit code unknown"


def test_more_ids_than_the_agent_takes_go_in_slices_and_every_job_is_seen() -> None:
    # GIVEN one more active job than one status command may carry (the agent's limit)
    store = InMemoryStore()
    ids = in_slurm(store, STATUS_SLICE + 1)
    first, last = store.get_job(ids[0]).slurm_job_id, store.get_job(ids[-1]).slurm_job_id
    assert first is not None
    assert last is not None
    runner = ScriptedRunner([answer({first: "COMPLETED"}), answer({last: "COMPLETED"})])
    # WHEN swept
    report = sweeper(store, runner, RecordingNotifier()).sweep()
    # THEN two commands, none over the agent's limit, all ids asked once, and the jobs
    # answered in either slice moved
    assert report.head_node_commands == 2
    assert [len(c.job_ids) for c in runner.calls] == [STATUS_SLICE, 1]
    assert len({i for c in runner.calls for i in c.job_ids}) == STATUS_SLICE + 1
    assert [store.get_job(i).state for i in (ids[0], ids[-1])] == [JobState.COMPLETED] * 2
    assert report.errors == {}


def test_the_slice_is_the_agents_limit() -> None:
    assert STATUS_SLICE == agent.MAX_JOB_IDS


def test_a_sweeps_items_are_asked_for_by_their_arrays_in_one_command() -> None:
    from broker.batches.accept import accept_sweep  # noqa: PLC0415
    from broker.batches.outcomes import item_outcome  # noqa: PLC0415
    from broker.batches.sweeps import SweepBody  # noqa: PLC0415

    # GIVEN a sweep of 6,000 items in Slurm as the tasks of arrays 70-75 (1,000 each): more
    # than one command's STATUS_SLICE of ids if each task were asked for
    store, queue = InMemoryStore(), FakeQueue()
    parameters = [{"p": str(i)} for i in range(6000)]
    body = SweepBody.model_validate({"template": {"script": "#!/bin/sh\ntrue\n"},
                                     "parameters": parameters})  # fmt: skip
    accepted = accept_sweep(store, queue, OWNER, "local", body, user="alice", limits=None,
                            ready_cluster=False)  # fmt: skip
    batch = store.get(accepted.request_id)
    chunks = [m.as_batch() for m in queue.sent]  # type: ignore[attr-defined]
    outcomes = [item_outcome(batch, item, chunk.chunk, slurm_job_id=f"{70 + i // 1000}_{i % 1000}")
                for chunk in chunks for item in chunk.items for i in [item.index]]  # fmt: skip
    store.record_batch_outcomes(batch, outcomes)
    assert len(parameters) > STATUS_SLICE
    task = SlurmJobStatus(job_id="70_5", base_id="70", array_task="5", state="RUNNING",
                          source="squeue")  # fmt: skip
    runner = ScriptedRunner([AgentResponse(ok=True, op="status", statuses=[task])])
    # WHEN swept
    report = sweeper(store, runner, RecordingNotifier()).sweep()
    # THEN one command asking for the 6 arrays, and the task Slurm named moved on its own
    assert (report.head_node_commands, report.active_jobs) == (1, 6000)
    assert runner.calls[0].job_ids == ["70", "71", "72", "73", "74", "75"]
    assert store.get_job(f"{accepted.job_id_prefix}{5:06x}").state is JobState.RUNNING
    assert store.get_job(f"{accepted.job_id_prefix}{6:06x}").state is JobState.PENDING
