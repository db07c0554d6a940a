"""LocalRunner and the head-node agent against the real local Slurm (scripts/slurm.sh up).

Tests marked ``slurm`` use the ``slurm`` fixture of tests/conftest.py: skipped when Slurm is not
up, a failure when REQUIRE_SLURM=1. Every job created here is cancelled at the end. The last
tests need no Slurm: they check how LocalRunner reports an agent that cannot answer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from broker.agent.protocol import AgentJob, AgentRequest, AgentResponse
from broker.errors import PermanentError, RunnerTimeoutError, TransientError
from broker.jobs.models import JobSpec, slurm_token
from broker.ports import ClusterTarget
from broker.runners.local import ARGV_PAYLOAD_LIMIT, LocalRunner
from broker.schema import new_request_id
from tests.integration.conftest import USER_A

TARGET = ClusterTarget(name="local", mode="local")
#: Long enough to still be in squeue while the test looks; cancelled at teardown.
SLEEPER = "#!/bin/bash\nsleep 120\n"


def slurm_out(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def job_ids_with_comment(token: str) -> list[str]:
    """Ids of all jobs (any state still in slurmctld) whose comment is the token."""
    lines = slurm_out("squeue", "-h", "-a", "-t", "all", "-o", "%i|%k").splitlines()
    return [line.split("|", 1)[0] for line in lines if line.split("|", 1)[1:] == [token]]


def sacct_ids_with_comment(token: str, wait_seconds: float = 15) -> list[str]:
    """Ids of jobs in accounting with that comment.

    With ``AccountingStoreFlags=job_comment`` slurmdbd gets the comment in the job-complete
    message, so only ended jobs show it, a few seconds after they end.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        out = slurm_out("sacct", "-a", "-X", "-n", "-P", "-o", "jobid,comment", "-S", "now-1hour")
        ids = [line.split("|", 1)[0] for line in out.splitlines() if line.endswith("|" + token)]
        if ids or time.monotonic() >= deadline:
            return ids
        time.sleep(0.5)


@pytest.fixture
def created(slurm: dict[str, str], test_users: tuple[str, str]) -> Iterator[list[str]]:
    """Job ids to cancel when the test ends."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, check=False, timeout=30)


def submit(runner: LocalRunner, spec: JobSpec, token: str | None = None) -> AgentResponse:
    """Submit one job as USER_A (a real non-root user, tests/integration/conftest.py)."""
    job = AgentJob.of(token or slurm_token(new_request_id()), spec, user=USER_A)
    return runner.run(TARGET, AgentRequest(op="submit", jobs=[job]))


@pytest.mark.slurm
def test_ping_reports_the_local_sbatch(slurm: dict[str, str]) -> None:
    # GIVEN the local Slurm / WHEN pinging through the local runner
    response = LocalRunner().run(TARGET, AgentRequest(op="ping"))
    # THEN the agent answers with sbatch's version
    assert response.ok
    assert response.info["sbatch"].startswith("slurm")


@pytest.mark.slurm
def test_submitted_job_carries_its_token_in_squeue(created: list[str]) -> None:
    # GIVEN a job spec and its token
    token = slurm_token(new_request_id())
    # WHEN submitted
    response = submit(LocalRunner(), JobSpec(script=SLEEPER, name="hpcb-it"), token)
    job_id = response.results[0].job_id
    assert job_id is not None
    created.append(job_id)
    # THEN the job is in squeue with the token as its comment
    assert response.ok
    assert not response.results[0].reused
    assert job_ids_with_comment(token) == [job_id]


@pytest.mark.slurm
def test_same_token_twice_makes_one_job(created: list[str]) -> None:
    # GIVEN a submitted job
    token = slurm_token(new_request_id())
    runner = LocalRunner()
    first = submit(runner, JobSpec(script=SLEEPER), token)
    assert first.results[0].job_id is not None
    created.append(first.results[0].job_id)
    # WHEN the same token is submitted again (a redelivered message)
    second = submit(runner, JobSpec(script=SLEEPER), token)
    # THEN the same job is answered as reused, and Slurm holds one job with that token
    assert second.results[0].reused
    assert second.results[0].job_id == first.results[0].job_id
    assert job_ids_with_comment(token) == [first.results[0].job_id]
    # AND accounting (which records the comment when a job ends) has that one job only
    slurm_out("scancel", first.results[0].job_id)
    assert sacct_ids_with_comment(token) == [first.results[0].job_id]


@pytest.mark.slurm
def test_concurrent_deliveries_of_one_token_make_one_job(created: list[str]) -> None:
    # GIVEN four deliveries of the same message arriving at once
    token = slurm_token(new_request_id())
    runner = LocalRunner()
    # WHEN they run in parallel (each its own agent process)
    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(
            pool.map(lambda _: submit(runner, JobSpec(script=SLEEPER), token), range(4))
        )
    ids = {r.results[0].job_id for r in responses}
    created.extend(i for i in ids if i)
    # THEN the lock serialized them: one job, one fresh answer, three reused
    assert len(ids) == 1
    assert sorted(r.results[0].reused for r in responses) == [False, True, True, True]
    assert job_ids_with_comment(token) == list(ids)


@pytest.mark.slurm
def test_unknown_partition_is_rejected_with_slurms_message(slurm: dict[str, str]) -> None:
    # GIVEN a partition that does not exist / WHEN submitted
    response = submit(LocalRunner(), JobSpec(script=SLEEPER, partition="nope"))
    # THEN a permanent SCHEDULER_REJECTED carrying sbatch's own words
    error = response.results[0].error
    assert error is not None
    assert error.code == "SCHEDULER_REJECTED"
    assert not error.transient
    assert "sbatch: error: invalid partition specified: nope" in error.message


@pytest.mark.slurm
def test_shell_syntax_in_the_script_is_only_data(created: list[str]) -> None:
    # GIVEN a script full of shell syntax, quoted so it only prints at run time
    marker = Path(f"/tmp/hpcb-pwned-{uuid.uuid4().hex}")
    script = (
        "#!/bin/bash\n"
        "cat <<'EOF'\n"
        f"$(touch {marker}) `touch {marker}` '; rm -rf / --no-preserve-root; echo '\n"
        "EOF\n"
        "sleep 120\n"
    )
    # WHEN submitted
    response = submit(LocalRunner(), JobSpec(script=script, name="hpcb-inject"))
    job_id = response.results[0].job_id
    assert job_id is not None
    created.append(job_id)
    # THEN it was accepted, nothing ran at submit time, and Slurm holds the script verbatim
    assert not marker.exists()
    assert slurm_out("scontrol", "write", "batch_script", job_id, "-") == script


@pytest.mark.slurm
def test_request_too_large_for_argv_goes_through_stdin(created: list[str]) -> None:
    # GIVEN three jobs with 60 KB scripts: a payload far over one argv string's 128 KiB limit
    script = "#!/bin/bash\n" + "# padding padding\n" * 3300 + "sleep 120\n"
    jobs = [
        AgentJob.of(slurm_token(new_request_id()), JobSpec(script=script), user=USER_A)
        for _ in range(3)
    ]
    request = AgentRequest(op="submit", jobs=jobs)
    assert len(request.model_dump_json()) > ARGV_PAYLOAD_LIMIT
    # WHEN run (on argv this would fail with E2BIG)
    response = LocalRunner().run(TARGET, request)
    ids = [r.job_id for r in response.results]
    created.extend(i for i in ids if i)
    # THEN all three were submitted
    assert all(ids)
    assert len(set(ids)) == 3


def fake_python(tmp_path: Path, body: str) -> str:
    path = tmp_path / "python3"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_hanging_agent_is_a_runner_timeout(tmp_path: Path) -> None:
    # GIVEN an "agent" that never answers
    runner = LocalRunner(python=fake_python(tmp_path, "sleep 30"), timeout=0.5)
    # WHEN run / THEN RunnerTimeoutError (outcome unknown, retry is safe)
    with pytest.raises(RunnerTimeoutError):
        runner.run(TARGET, AgentRequest(op="ping"))


def test_missing_interpreter_is_permanent(tmp_path: Path) -> None:
    # GIVEN an interpreter path that does not exist / WHEN run / THEN AGENT_NOT_RUNNABLE
    with pytest.raises(PermanentError) as caught:
        LocalRunner(python=str(tmp_path / "nope")).run(TARGET, AgentRequest(op="ping"))
    assert caught.value.code == "AGENT_NOT_RUNNABLE"


def test_agent_printing_garbage_is_transient_with_its_stderr(tmp_path: Path) -> None:
    # GIVEN an "agent" that crashes without an answer
    runner = LocalRunner(python=fake_python(tmp_path, "echo oops; echo Traceback >&2; exit 1"))
    # WHEN run / THEN a transient error quoting the exit status and stderr
    with pytest.raises(TransientError) as caught:
        runner.run(TARGET, AgentRequest(op="ping"))
    assert caught.value.code == "AGENT_BAD_OUTPUT"
    assert "exit status 1" in caught.value.message
    assert "Traceback" in caught.value.message


def test_ssm_target_is_refused() -> None:
    # GIVEN an SSM target / WHEN given to the local runner / THEN permanent mismatch
    with pytest.raises(PermanentError) as caught:
        LocalRunner().run(
            ClusterTarget(name="p", mode="ssm", instance_id="i-1"), AgentRequest(op="ping")
        )
    assert caught.value.code == "RUNNER_MISMATCH"


def test_the_cluster_check_passes_on_this_machines_slurm(slurm: dict[str, str]) -> None:
    # GIVEN the real Slurm / WHEN `python -m broker.check local --local` runs
    argv = [sys.executable, "-m", "broker.check", "local", "--local"]
    env = {**os.environ, **slurm}
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    # THEN exit 0 and the three steps passed, the agent and sbatch named
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["ok", "ok", "ok"]
    assert "sbatch slurm" in lines[1]
