"""The agent acts as the request's user, never root, on the real local Slurm (issue 12).

Two real non-root users (``hpcbtest-a``, ``hpcbtest-b``; tests/integration/conftest.py) submit,
cancel and read through ``LocalRunner`` as the worker would. Proof is taken from Slurm and the
file system, not from the agent: ``sacct -o user,uid`` and the owner of each output file. Every
test is marked ``slurm``; every job created here is cancelled at the end.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.agent.protocol import (
    AgentJob,
    AgentRequest,
    AgentResponse,
    JobTarget,
    OutputQuery,
)
from broker.jobs.models import JobSpec, slurm_token
from broker.ports import ClusterTarget
from broker.runners.local import LocalRunner
from broker.schema import new_request_id
from tests.conftest import SLURM_PREFIX
from tests.integration.conftest import USER_A, USER_B

TARGET = ClusterTarget(name="local", mode="local")
MUNGE_KEY = SLURM_PREFIX / "etc" / "munge.key"

pytestmark = pytest.mark.slurm


@pytest.fixture
def created(slurm: dict[str, str], test_users: tuple[str, str]) -> Iterator[list[str]]:
    """Job ids to cancel when the test ends."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, check=False, timeout=30)


@pytest.fixture
def runner() -> LocalRunner:
    return LocalRunner(timeout=60)


class Submitted:
    """A job submitted through the agent: its Slurm id, token and user."""

    def __init__(self, job_id: str, token: str, user: str) -> None:
        self.job_id, self.token, self.user = job_id, token, user


def submit(
    runner: LocalRunner, created: list[str], user: str, spec: JobSpec, token: str | None = None
) -> AgentResponse:
    job = AgentJob.of(token or slurm_token(new_request_id()), spec, user=user)
    response = runner.run(TARGET, AgentRequest(op="submit", jobs=[job]))
    created.extend(r.job_id for r in response.results if r.job_id)
    return response


def submit_ok(runner: LocalRunner, created: list[str], user: str, spec: JobSpec) -> Submitted:
    response = submit(runner, created, user, spec)
    (result,) = response.results
    assert result.job_id is not None, result.error
    return Submitted(result.job_id, result.token, user)


def sacct_user_uid(job_id: str, token: str, wait_seconds: float = 20) -> tuple[str, int]:
    """(user, uid) of a job as accounting records it, once slurmdbd has filled them in.

    Measured on this Slurm 22.05 (4 pairs of short jobs): a finished job's first accounting row
    shows ``root|0`` (uid and gid 0, the comment already there) for 0.4 to 4.3 s; the job's real
    user and uid replace it then. So a row of root counts only if it is still root after
    ``wait_seconds``: a job that really ran as root stays root and fails the test.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "user,uid,comment"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        rows = [line.split("|", 2) for line in out.splitlines()]
        mine = [row for row in rows if len(row) == 3 and row[2] == token]
        settled = [row for row in mine if row[1] != "0"]
        if settled or time.monotonic() >= deadline:
            assert mine, f"accounting has no record of {job_id}: {out!r}"
            user, uid = (settled or mine)[-1][:2]
            return user, int(uid)
        time.sleep(0.3)


def wait_ended(job_id: str, seconds: float = 30) -> None:
    """Until slurmctld says the job ended (COMPLETED, FAILED, ...)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if state and state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not end within {seconds} s")


def read(runner: LocalRunner, job: Submitted, user: str | None = None, **query: object) -> Any:
    request = AgentRequest(
        op="output",
        output=OutputQuery.model_validate(
            {"job_id": job.job_id, "user": user or job.user, "token": job.token, **query}
        ),
    )
    return runner.run(TARGET, request)


def cancel(runner: LocalRunner, job: Submitted, user: str, token: str | None = None) -> Any:
    target = JobTarget(job_id=job.job_id, user=user, token=token or job.token)
    (result,) = runner.run(TARGET, AgentRequest(op="cancel", targets=[target])).cancelled
    return result


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


# ---- jobs run as their user -------------------------------------------------------------------


def test_each_users_jobs_run_as_that_user_never_root(
    runner: LocalRunner, created: list[str], dir_a: Path, dir_b: Path
) -> None:
    # GIVEN a job of A's and a job of B's, each writing `id -u` into its own directory
    body = "#!/bin/bash\nid -u > uid.txt\n"
    job_a = submit_ok(runner, created, USER_A, JobSpec(script=body, working_directory=str(dir_a)))
    job_b = submit_ok(runner, created, USER_B, JobSpec(script=body, working_directory=str(dir_b)))
    wait_ended(job_a.job_id)
    wait_ended(job_b.job_id)
    # THEN accounting records each job as its user's, the job saw its user's uid, and its output
    # file belongs to its user: nothing ran as root
    assert sacct_user_uid(job_a.job_id, job_a.token) == (USER_A, uid(USER_A))
    assert sacct_user_uid(job_b.job_id, job_b.token) == (USER_B, uid(USER_B))
    assert (dir_a / "uid.txt").read_text().strip() == str(uid(USER_A))
    assert (dir_b / "uid.txt").read_text().strip() == str(uid(USER_B))
    assert (dir_a / f"slurm-{job_a.job_id}.out").stat().st_uid == uid(USER_A)
    assert (dir_b / f"slurm-{job_b.job_id}.out").stat().st_uid == uid(USER_B)


def test_job_environment_is_the_users_not_the_agents(
    runner: LocalRunner, created: list[str], dir_a: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a secret in the agent's environment and a job of A's printing its environment
    monkeypatch.setenv("HPCB_TEST_SECRET", "must-not-leak")
    spec = JobSpec(script="#!/bin/bash\nenv > env.txt\n", working_directory=str(dir_a))
    job = submit_ok(runner, created, USER_A, spec)
    wait_ended(job.job_id)
    # THEN the job has A's HOME, USER and LOGNAME, and nothing of the agent's
    env = dict(
        line.split("=", 1) for line in (dir_a / "env.txt").read_text().splitlines() if "=" in line
    )
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (f"/home/{USER_A}", USER_A, USER_A)
    assert "must-not-leak" not in json.dumps(env)


# ---- refused before any Slurm call -------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "min_uid"),
    [
        ("root", 1),  # uid 0, even when the request lowers min_uid to 1
        ("daemon", 1000),  # uid 1
        ("nobody", 65535),  # uid 65534: below this request's min_uid
        ("hpcb-nosuchuser", 1000),  # unknown on this head node
    ],
)
def test_refused_user_submits_nothing(
    runner: LocalRunner, created: list[str], user: str, min_uid: int
) -> None:
    # GIVEN a job for a user the agent must not act as
    token = slurm_token(new_request_id())
    job = AgentJob.of(token, JobSpec(script="#!/bin/sh\ntrue\n"), user=user)
    # WHEN submitted
    response = runner.run(TARGET, AgentRequest(op="submit", jobs=[job], min_uid=min_uid))
    created.extend(r.job_id for r in response.results if r.job_id)
    # THEN refused permanently, and Slurm never saw the token (no dedup search, no sbatch)
    (result,) = response.results
    assert result.job_id is None
    assert result.error is not None
    assert (result.error.code, result.error.transient) == ("USER_REFUSED", False)
    assert response.info == {}  # no token search ran (it reports its sources here)
    listed = subprocess.run(
        ["squeue", "-h", "-a", "-t", "all", "-o", "%k"], capture_output=True, text=True, check=True
    ).stdout
    assert token not in listed


def test_bad_user_name_is_refused_by_the_agent_as_well(runner: LocalRunner) -> None:
    # GIVEN a request built without the broker's model (the agent is the last check)
    job = AgentJob.model_construct(
        token=slurm_token(new_request_id()),
        script="#!/bin/sh\n",
        user="-uroot",
        options={},
        environment={},
    )
    request = AgentRequest(op="submit", jobs=[job])
    # WHEN sent / THEN the agent refuses the name
    (result,) = runner.run(TARGET, request).results
    assert result.error is not None
    assert result.error.code == "USER_REFUSED"


# ---- exactly once, per user ---------------------------------------------------------------------


def test_redelivery_as_the_same_user_finds_its_job_and_another_user_does_not(
    runner: LocalRunner, created: list[str], dir_a: Path, dir_b: Path
) -> None:
    # GIVEN A's held job with token T
    token = slurm_token(new_request_id())
    spec = JobSpec(script="#!/bin/sh\ntrue\n", hold=True, working_directory=str(dir_a))
    (first,) = submit(runner, created, USER_A, spec, token).results
    # WHEN T is delivered again as A, then as B
    (again,) = submit(runner, created, USER_A, spec, token).results
    spec_b = spec.model_copy(update={"working_directory": str(dir_b)})
    (as_b,) = submit(runner, created, USER_B, spec_b, token).results
    # THEN A's redelivery reuses A's job; B's is a new job of B's, never A's
    assert (again.job_id, again.reused) == (first.job_id, True)
    assert as_b.job_id is not None
    assert as_b.job_id != first.job_id
    assert not as_b.reused
    owner = subprocess.run(
        ["squeue", "-h", "-j", as_b.job_id, "-o", "%u|%U"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert owner == f"{USER_B}|{uid(USER_B)}"


# ---- B cannot touch A's jobs --------------------------------------------------------------------


def test_b_cannot_depend_on_as_job_by_its_slurm_id_and_a_can(
    runner: LocalRunner, created: list[str], dir_a: Path, dir_b: Path
) -> None:
    # GIVEN A's held job, known to B only by its Slurm id
    held = JobSpec(script="#!/bin/sh\ntrue\n", hold=True, working_directory=str(dir_a))
    job = submit_ok(runner, created, USER_A, held)
    # WHEN B, then A, submit a job that depends on it (afterok:<id>)
    after = f"afterok:{job.job_id}"
    b_spec = JobSpec(script="#!/bin/sh\ntrue\n", working_directory=str(dir_b))
    a_spec = JobSpec(script="#!/bin/sh\ntrue\n", working_directory=str(dir_a))
    as_b = runner.run(TARGET, AgentRequest(op="submit", jobs=[
        AgentJob.of(slurm_token(new_request_id()), b_spec, after, user=USER_B)]))  # fmt: skip
    as_a = runner.run(TARGET, AgentRequest(op="submit", jobs=[
        AgentJob.of(slurm_token(new_request_id()), a_spec, after, user=USER_A)]))  # fmt: skip
    created.extend(r.job_id for r in [*as_b.results, *as_a.results] if r.job_id)
    # THEN B's job is refused before sbatch (permanent, no job of B's in Slurm); A's is pending
    # on it
    (refused,) = as_b.results
    assert refused.job_id is None
    assert refused.error is not None
    assert (refused.error.code, refused.error.transient) == ("DEPENDENCY_NOT_FOUND", False)
    listed = subprocess.run(["squeue", "-h", "-u", USER_B, "-o", "%i"],
                            capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert listed == []
    (accepted,) = as_a.results
    assert accepted.job_id is not None, accepted.error
    reason = subprocess.run(["squeue", "-h", "-j", accepted.job_id, "-o", "%E"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert reason.startswith(f"afterok:{job.job_id}")


def test_b_cannot_cancel_as_job_and_a_can(
    runner: LocalRunner, created: list[str], dir_a: Path
) -> None:
    # GIVEN A's held job
    spec = JobSpec(script="#!/bin/sh\ntrue\n", hold=True, working_directory=str(dir_a))
    job = submit_ok(runner, created, USER_A, spec)
    # WHEN B asks to cancel it (with its token), then A does
    as_b = cancel(runner, job, USER_B)
    held = subprocess.run(
        ["squeue", "-h", "-j", job.job_id, "-o", "%T"], capture_output=True, text=True, check=True
    ).stdout.strip()
    as_a = cancel(runner, job, USER_A)
    # THEN B is refused (JOB_MISMATCH, permanent) and the job still pends; A's cancel works
    assert (as_b.ok, as_b.error.code, as_b.error.transient) == (False, "JOB_MISMATCH", False)
    assert held == "PENDING"
    assert as_a.ok is True


def test_cancel_with_a_stale_token_leaves_the_job_alone(
    runner: LocalRunner, created: list[str], dir_a: Path
) -> None:
    # GIVEN A's held job / WHEN a cancel for that Slurm id arrives with another token (a stale
    # record of a job that had the id before)
    spec = JobSpec(script="#!/bin/sh\ntrue\n", hold=True, working_directory=str(dir_a))
    job = submit_ok(runner, created, USER_A, spec)
    result = cancel(runner, job, USER_A, token=slurm_token(new_request_id()))
    # THEN refused, and the job is untouched
    assert (result.ok, result.error.code) == (False, "JOB_MISMATCH")
    state = subprocess.run(
        ["squeue", "-h", "-j", job.job_id, "-o", "%T"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert state == "PENDING"


def test_b_cannot_read_as_output_and_a_can(
    runner: LocalRunner, created: list[str], dir_a: Path
) -> None:
    # GIVEN A's finished job that printed a secret
    spec = JobSpec(script="#!/bin/sh\necho a-secret\n", working_directory=str(dir_a))
    job = submit_ok(runner, created, USER_A, spec)
    wait_ended(job.job_id)
    # WHEN B asks for its output, then A does
    as_b = read(runner, job, user=USER_B)
    as_a = read(runner, job)
    # THEN B is refused without a byte of it; A reads it
    assert as_b.error is not None
    assert (as_b.error.code, as_b.error.transient) == ("JOB_MISMATCH", False)
    assert "a-secret" not in as_b.model_dump_json()
    assert as_a.output[0].data == "a-secret\n"


# ---- output paths that are not the user's -------------------------------------------------------


def refused_read(runner: LocalRunner, created: list[str], dir_a: Path, output: str) -> Any:
    """A's held job (it never runs) whose --output is ``output``; the chunk of reading it."""
    spec = JobSpec(
        script="#!/bin/sh\ntrue\n", hold=True, output=output, working_directory=str(dir_a)
    )
    job = submit_ok(runner, created, USER_A, spec)
    response = read(runner, job, offset=0)
    assert response.ok, response.error
    (chunk,) = response.output
    return chunk


def secret_of(path: Path) -> str:
    return path.read_bytes()[:16].decode("latin-1")


@pytest.mark.parametrize(
    "target",
    [Path("/etc/shadow"), MUNGE_KEY],
    ids=["etc-shadow", "munge-key"],
)
def test_output_at_a_root_file_is_refused_unread(
    runner: LocalRunner, created: list[str], dir_a: Path, target: Path
) -> None:
    # GIVEN a job of A's whose output path is a root-only file
    chunk = refused_read(runner, created, dir_a, str(target))
    # THEN a permanent OUTPUT_UNREADABLE, and none of the file's content
    assert chunk.error is not None
    assert (chunk.error.code, chunk.error.transient) == ("OUTPUT_UNREADABLE", False)
    assert chunk.data == ""
    assert secret_of(target) not in chunk.model_dump_json()


def test_output_in_another_users_home_is_refused_unread(
    runner: LocalRunner, created: list[str], dir_a: Path, dir_b: Path
) -> None:
    # GIVEN B's file (mode 644) in B's home, and A's job naming it as its output
    secret = dir_b / "b-secret.txt"
    secret.write_text("b-words\n")
    os.chown(secret, uid(USER_B), uid(USER_B))
    secret.chmod(0o644)
    chunk = refused_read(runner, created, dir_a, str(secret))
    # THEN refused (B's home is closed to A, and the file is not A's), nothing of it returned
    assert chunk.error is not None
    assert chunk.error.code == "OUTPUT_UNREADABLE"
    assert "b-words" not in chunk.model_dump_json()


def test_world_readable_file_of_another_user_is_refused(
    runner: LocalRunner, created: list[str], dir_a: Path
) -> None:
    # GIVEN a world-readable file of root's in a directory A can enter
    secret = dir_a / "roots.txt"
    secret.write_text("root-words\n")
    secret.chmod(0o644)
    # WHEN A's job names it as its output / THEN refused: not a file of A's
    chunk = refused_read(runner, created, dir_a, str(secret))
    assert chunk.error is not None
    assert chunk.error.code == "OUTPUT_UNREADABLE"
    assert "root-words" not in chunk.model_dump_json()


@pytest.mark.parametrize("target", ["/etc/shadow", str(MUNGE_KEY), "b-home"])
def test_output_symlink_to_a_secret_is_refused_unread(
    runner: LocalRunner, created: list[str], dir_a: Path, dir_b: Path, target: str
) -> None:
    # GIVEN A's own symbolic link, in A's directory, to a secret (root's, or in B's home)
    if target == "b-home":
        (dir_b / "b-secret.txt").write_text("b-words\n")
        os.chown(dir_b / "b-secret.txt", uid(USER_B), uid(USER_B))
        target = str(dir_b / "b-secret.txt")
    link = dir_a / "out.txt"
    link.symlink_to(target)
    os.lchown(link, uid(USER_A), uid(USER_A))
    # WHEN A's job names the link as its output
    chunk = refused_read(runner, created, dir_a, str(link))
    # THEN refused (O_NOFOLLOW), and none of the target's content
    assert chunk.error is not None
    assert (chunk.error.code, chunk.error.transient) == ("OUTPUT_UNREADABLE", False)
    assert secret_of(Path(target)) not in chunk.model_dump_json()
