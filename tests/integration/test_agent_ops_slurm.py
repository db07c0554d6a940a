"""The agent's ops ``status``, ``cancel`` and ``output`` and the new submit options, through
``LocalRunner`` against the real local Slurm (scripts/slurm.sh up).

Every test is marked ``slurm`` (skipped without it, a failure with REQUIRE_SLURM=1). Jobs run as
the non-root user ``hpcbtest-a`` (tests/integration/conftest.py), in a directory of that user's,
never in the repository, and every job created here is cancelled at the end. Timeouts are not
tested here: Slurm's smallest time limit is one minute.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.agent import hpcb_agent
from broker.agent.protocol import (
    AgentJob,
    AgentRequest,
    AgentResponse,
    JobTarget,
    OutputQuery,
    SlurmJobStatus,
)
from broker.jobs.models import JobSpec, slurm_token
from broker.ports import ClusterTarget
from broker.runners.local import LocalRunner
from broker.schema import new_request_id
from tests.integration.conftest import USER_A

TARGET = ClusterTarget(name="local", mode="local")
PYTHON37 = Path.home() / ".pyenv/versions/3.7.16/bin/python"
#: 100 KiB of 16-byte lines.
HUNDRED_KIB = ("0123456789abcde\n" * 6400).encode()

pytestmark = pytest.mark.slurm


@pytest.fixture
def created(slurm: dict[str, str]) -> Iterator[list[str]]:
    """Job ids to cancel when the test ends."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, check=False, timeout=30)


@pytest.fixture
def workdir(dir_a: Path) -> Path:
    """A directory of the user the jobs run as (USER_A)."""
    return dir_a


#: The token each job submitted here carries, by Slurm id (for cancel and output requests).
TOKENS: dict[str, str] = {}


@pytest.fixture
def runner() -> LocalRunner:
    return LocalRunner(timeout=60)


def submit(
    runner: LocalRunner,
    created: list[str],
    spec: JobSpec,
    dependency: str | None = None,
) -> str:
    """Submit one job as USER_A; its Slurm id (to be cancelled at teardown)."""
    job = AgentJob.of(slurm_token(new_request_id()), spec, dependency=dependency, user=USER_A)
    response = runner.run(TARGET, AgentRequest(op="submit", jobs=[job]))
    result = response.results[0]
    assert result.job_id is not None, result.error
    created.append(result.job_id)
    TOKENS[result.job_id] = job.token
    return result.job_id


def cancel_request(*job_ids: str) -> AgentRequest:
    """Cancel jobs as USER_A, each with its token (an unknown id with a made-up one)."""
    targets = [
        JobTarget(job_id=job_id, user=USER_A, token=TOKENS.get(job_id, "hpcb:rnone"))
        for job_id in job_ids
    ]
    return AgentRequest(op="cancel", targets=targets)


def query(job_id: str, **fields: object) -> OutputQuery:
    """An output query as USER_A for a job submitted here."""
    return OutputQuery.model_validate(
        {"job_id": job_id, "user": USER_A, "token": TOKENS[job_id], **fields}
    )


def status(runner: LocalRunner, *job_ids: str) -> AgentResponse:
    response = runner.run(TARGET, AgentRequest(op="status", job_ids=list(job_ids)))
    assert response.ok, response.error
    return response


def wait_for(
    runner: LocalRunner,
    job_ids: list[str],
    done: Callable[[list[SlurmJobStatus]], bool],
    seconds: float = 20,
) -> list[SlurmJobStatus]:
    """Poll op status until ``done(statuses)``; the last statuses."""
    deadline = time.monotonic() + seconds
    while True:
        statuses = status(runner, *job_ids).statuses
        if done(statuses) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.3)


def ended(statuses: list[SlurmJobStatus]) -> bool:
    return bool(statuses) and all(s.state in hpcb_agent.FINAL_STATES for s in statuses)


def script(body: str) -> str:
    return "#!/bin/bash\n" + body + "\n"


# ---- status -------------------------------------------------------------------------------------


def test_job_exiting_3_is_failed_with_exit_code_3(
    runner: LocalRunner, created: list[str], workdir: Path
) -> None:
    # GIVEN a job that exits 3
    job_id = submit(
        runner, created, JobSpec(script=script("exit 3"), working_directory=str(workdir))
    )
    # WHEN its status is polled until it ended
    (final,) = wait_for(runner, [job_id], ended)
    # THEN FAILED with exit code 3 and no signal
    assert (final.state, final.exit_code, final.signal) == ("FAILED", 3, 0)
    assert final.start_time is not None
    assert final.end_time is not None


def test_accounting_agrees_once_it_has_the_job(
    runner: LocalRunner, created: list[str], workdir: Path
) -> None:
    # GIVEN a finished job that exited 3
    job_id = submit(
        runner, created, JobSpec(script=script("exit 3"), working_directory=str(workdir))
    )
    wait_for(runner, [job_id], ended)
    # WHEN sacct (text, as the agent runs it) is polled until it has the final record (lag 2-4 s)
    deadline, record = time.monotonic() + 15, None
    while time.monotonic() < deadline:
        out = subprocess.run(
            [*hpcb_agent.SACCT_STATUS_ARGV, "-j", job_id],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        records = hpcb_agent.parse_sacct_status(out)
        if records and records[-1]["state"] in hpcb_agent.FINAL_STATES:
            record = records[-1]
            break
        time.sleep(0.5)
    # THEN the agent's sacct parser reads FAILED 3:0 as well
    assert record is not None
    assert (record["state"], record["exit_code"], record["signal"]) == ("FAILED", 3, 0)


def test_a_look_up_finds_the_users_job_by_token_and_submits_nothing(
    runner: LocalRunner, created: list[str], workdir: Path
) -> None:
    # GIVEN a held job of USER_A's in Slurm, and a token no job carries
    spec = JobSpec(script=script("true"), hold=True, working_directory=str(workdir))
    job_id = submit(runner, created, spec)
    known = AgentJob.of(TOKENS[job_id], spec, user=USER_A)
    unknown = AgentJob.of(slurm_token(new_request_id()), spec, user=USER_A)
    before = squeue_count()
    # WHEN both are looked up (find_only: what the DLQ worker asks of a dead chunk)
    response = runner.run(TARGET, AgentRequest(op="submit", jobs=[known, unknown], find_only=True))
    # THEN the job in Slurm is found, the other is NOT_SUBMITTED (permanent), nothing was submitted
    found, missing = response.results
    assert (found.job_id, found.reused) == (job_id, True)
    assert missing.job_id is None
    assert missing.error is not None
    assert (missing.error.code, missing.error.transient) == ("NOT_SUBMITTED", False)
    assert squeue_count() == before


def squeue_count() -> int:
    """How many jobs squeue lists (all users, all states)."""
    out = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%i"], capture_output=True,
                         text=True, check=True, timeout=30).stdout  # fmt: skip
    return len(out.split())


def test_unknown_job_is_missing(runner: LocalRunner, slurm: dict[str, str]) -> None:
    # GIVEN an id Slurm never gave / WHEN asked / THEN missing, and accounting was consulted
    response = status(runner, "99999999")
    assert response.missing == ["99999999"]
    assert response.statuses == []
    assert response.accounting is True


def test_array_tasks_report_their_own_outcomes(
    runner: LocalRunner, created: list[str], workdir: Path
) -> None:
    # GIVEN an array 1-4 whose tasks 2 and 4 exit 1
    body = 'case "$SLURM_ARRAY_TASK_ID" in 2|4) exit 1;; esac'
    spec = JobSpec(script=script(body), array="1-4", working_directory=str(workdir))
    job_id = submit(runner, created, spec)
    # WHEN its status is polled until every task ended
    statuses = wait_for(runner, [job_id], lambda s: len(s) == 4 and ended(s))
    # THEN one status per task with its own state and exit code
    assert [(s.job_id, s.base_id, s.array_task, s.state, s.exit_code) for s in statuses] == [
        (f"{job_id}_1", job_id, "1", "COMPLETED", 0),
        (f"{job_id}_2", job_id, "2", "FAILED", 1),
        (f"{job_id}_3", job_id, "3", "COMPLETED", 0),
        (f"{job_id}_4", job_id, "4", "FAILED", 1),
    ]


def test_held_array_is_pending_per_task(
    runner: LocalRunner, created: list[str], workdir: Path
) -> None:
    # GIVEN an array submitted held
    spec = JobSpec(script=script("true"), array="5-7", hold=True, working_directory=str(workdir))
    job_id = submit(runner, created, spec)
    # WHEN asked
    statuses = status(runner, job_id).statuses
    # THEN each task is PENDING, held by the user
    assert [(s.array_task, s.state, s.reason) for s in statuses] == [
        ("5", "PENDING", "JobHeldUser"),
        ("6", "PENDING", "JobHeldUser"),
        ("7", "PENDING", "JobHeldUser"),
    ]


def test_afterok_dependency_runs_the_second_job_after_the_first(
    runner: LocalRunner, created: list[str], workdir: Path
) -> None:
    # GIVEN job A (2 s) and job B depending on A through a Slurm dependency string
    first = submit(
        runner, created, JobSpec(script=script("sleep 2"), working_directory=str(workdir))
    )
    second = submit(
        runner,
        created,
        JobSpec(script=script("true"), working_directory=str(workdir)),
        dependency=f"afterok:{first}",
    )
    # WHEN B is looked at while A runs, then once both ended
    waiting = {s.job_id: s for s in status(runner, first, second).statuses}[second]
    statuses = {s.job_id: s for s in wait_for(runner, [first, second], ended)}
    # THEN B waited for its dependency, then completed, starting no earlier than A ended
    assert (waiting.state, waiting.reason) == ("PENDING", "Dependency")
    assert statuses[second].state == "COMPLETED"
    assert str(statuses[second].start_time) >= str(statuses[first].end_time)


# ---- cancel -------------------------------------------------------------------------------------


def test_running_job_is_cancelled(runner: LocalRunner, created: list[str], workdir: Path) -> None:
    # GIVEN a job that sleeps 60 s, seen RUNNING
    job_id = submit(
        runner, created, JobSpec(script=script("sleep 60"), working_directory=str(workdir))
    )
    (running,) = wait_for(runner, [job_id], lambda s: bool(s) and s[0].state == "RUNNING")
    assert running.state == "RUNNING"
    # WHEN cancelled
    response = runner.run(TARGET, cancel_request(job_id))
    # THEN the cancel is ok and the job ends CANCELLED
    assert [(c.job_id, c.ok) for c in response.cancelled] == [(job_id, True)]
    (final,) = wait_for(runner, [job_id], ended)
    assert final.state == "CANCELLED"


def test_cancel_of_a_finished_job_says_so(
    runner: LocalRunner, created: list[str], workdir: Path
) -> None:
    # GIVEN a job that already completed, and an id Slurm never gave
    job_id = submit(runner, created, JobSpec(script=script("true"), working_directory=str(workdir)))
    wait_for(runner, [job_id], ended)
    # WHEN both are cancelled in one call
    response = runner.run(TARGET, cancel_request(job_id, "99999999"))
    # THEN permanent per-job errors that tell the two cases apart
    finished, unknown = response.cancelled
    assert finished.error is not None
    assert unknown.error is not None
    assert (finished.ok, finished.error.code, finished.error.transient) == (
        False,
        "JOB_ALREADY_FINISHED",
        False,
    )
    assert (unknown.ok, unknown.error.code) == (False, "JOB_NOT_FOUND")


# ---- environment --------------------------------------------------------------------------------


def test_environment_variable_reaches_the_job(
    runner: LocalRunner, created: list[str], workdir: Path
) -> None:
    # GIVEN a variable with spaces, commas, '=' and shell syntax
    value = "hello world, a=b; $(id) `id`"
    spec = JobSpec(
        script=script('printf "%s" "$APP_MYVAR" > myvar.txt'),
        environment={"APP_MYVAR": value},
        working_directory=str(workdir),
    )
    # WHEN the job runs
    job_id = submit(runner, created, spec)
    wait_for(runner, [job_id], ended)
    # THEN it saw the value verbatim
    assert (workdir / "myvar.txt").read_text() == value


def test_broker_environment_does_not_reach_the_job(
    runner: LocalRunner,
    created: list[str],
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a secret in the environment of the process that runs the agent
    monkeypatch.setenv("HPCB_TEST_SECRET", "must-not-leak")
    spec = JobSpec(script=script("env > env.txt"), working_directory=str(workdir))
    # WHEN a job runs
    job_id = submit(runner, created, spec)
    wait_for(runner, [job_id], ended)
    # THEN its environment has PATH but not the secret
    env = (workdir / "env.txt").read_text()
    assert "\nPATH=" in "\n" + env
    assert "must-not-leak" not in env


# ---- output -------------------------------------------------------------------------------------


@pytest.fixture
def hundred_kib_job(runner: LocalRunner, created: list[str], workdir: Path) -> str:
    """A finished job that printed 100 KiB to stdout and one line to stderr."""
    body = f"yes 0123456789abcde | head -c {len(HUNDRED_KIB)}\necho oops >&2"
    spec = JobSpec(
        script=script(body),
        working_directory=str(workdir),
        output=f"{workdir}/%x-%j.out",
        error=f"{workdir}/%x-%j.err",
        name="big",
    )
    job_id = submit(runner, created, spec)
    wait_for(runner, [job_id], ended)
    return job_id


def read_output(runner: LocalRunner, query: OutputQuery) -> AgentResponse:
    response = runner.run(TARGET, AgentRequest(op="output", output=query))
    assert response.ok, response.error
    return response


def test_output_tail_is_the_last_64_kib(runner: LocalRunner, hundred_kib_job: str) -> None:
    # GIVEN a job that printed 100 KiB / WHEN the tail of stdout and stderr is read
    stdout, stderr = read_output(
        runner, query(hundred_kib_job, streams=["stdout", "stderr"])
    ).output
    # THEN stdout's last 64 KiB from offset 36 KiB to the end, and all of stderr
    assert (stdout.size, stdout.offset, stdout.length, stdout.eof) == (
        100 * 1024,
        36 * 1024,
        64 * 1024,
        True,
    )
    assert stdout.data.encode() == HUNDRED_KIB[36 * 1024 :]
    assert stdout.path is not None
    assert stdout.path.endswith(f"/big-{hundred_kib_job}.out")
    assert (stderr.data, stderr.eof) == ("oops\n", True)


def test_output_from_offset_zero_is_the_first_64_kib(
    runner: LocalRunner, hundred_kib_job: str
) -> None:
    # GIVEN the same job / WHEN stdout is read from offset 0
    (chunk,) = read_output(runner, query(hundred_kib_job, offset=0)).output
    # THEN the first 64 KiB, not at the end
    assert (chunk.offset, chunk.length, chunk.eof) == (0, 64 * 1024, False)
    assert chunk.data.encode() == HUNDRED_KIB[: 64 * 1024]


def test_output_of_a_job_without_a_file_is_not_found(
    runner: LocalRunner, created: list[str], workdir: Path
) -> None:
    # GIVEN a held job (it never ran, so it wrote nothing)
    spec = JobSpec(script=script("true"), hold=True, working_directory=str(workdir))
    job_id = submit(runner, created, spec)
    # WHEN its output is read / THEN OUTPUT_NOT_FOUND naming the default path
    (chunk,) = read_output(runner, query(job_id)).output
    assert chunk.error is not None
    assert chunk.error.code == "OUTPUT_NOT_FOUND"
    assert chunk.path == f"{workdir}/slurm-{job_id}.out"


# ---- the head node's Python ---------------------------------------------------------------------


@pytest.mark.skipif(not PYTHON37.exists(), reason="Python 3.7 is not installed (pyenv)")
def test_agent_ops_run_under_python_37(created: list[str], workdir: Path) -> None:
    # GIVEN the agent run by Python 3.7 (Amazon Linux 2's python3)
    old = LocalRunner(python=str(PYTHON37), timeout=60)
    spec = JobSpec(
        script=script('echo "$APP_MYVAR"; exit 3'),
        environment={"APP_MYVAR": "from 3.7"},
        working_directory=str(workdir),
    )
    # WHEN submitting, polling status, reading output and cancelling through it
    job_id = submit(old, created, spec)
    (final,) = wait_for(old, [job_id], ended)
    (chunk,) = old.run(TARGET, AgentRequest(op="output", output=query(job_id))).output
    cancel = old.run(TARGET, cancel_request(job_id))
    # THEN every op answers as under the current Python
    assert (final.state, final.exit_code) == ("FAILED", 3)
    assert chunk.data == "from 3.7\n"
    assert cancel.cancelled[0].error is not None
    assert cancel.cancelled[0].error.code == "JOB_ALREADY_FINISHED"
    assert os.access(PYTHON37, os.X_OK)
