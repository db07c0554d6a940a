"""Run as the caller, end to end (issue 12): through the HTTP API of the local stack onto the
real Slurm, with two real non-root users. Principal A is mapped to ``hpcbtest-a`` and B to
``hpcbtest-b`` on cluster "local"; a third caller is mapped to nothing. Proof comes from Slurm
(``sacct -o user,uid``) and the file system, never from the broker's own answers.

``test_attack_corpus`` prints the table of attacks tried and their answers (``pytest -s``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.client import ApiError, BrokerClient
from broker.local.stack import LocalStack
from tests.conftest import SLURM_PREFIX, local_stack
from tests.integration.conftest import USER_A, USER_B
from tests.integration.test_agent_users_slurm import sacct_user_uid, uid, wait_ended

A = "arn:aws:iam::000000000000:user/researcher-a"
B = "arn:aws:iam::000000000000:user/researcher-b"
NOBODY = "arn:aws:iam::000000000000:user/not-mapped"
HELD = "#!/bin/sh\ntrue\n"

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def stack(slurm: dict[str, str], test_users: tuple[str, str]) -> Iterator[LocalStack]:
    with local_stack(slurm, schedule_seconds=1, users={A: USER_A, B: USER_B}) as running:
        yield running


@pytest.fixture
def created() -> Iterator[list[str]]:
    """Slurm ids to cancel when the test ends."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, check=False, timeout=30)


def api(stack: LocalStack, who: str) -> BrokerClient:
    return BrokerClient(stack.api_url, principal=who)


def submitted(stack: LocalStack, who: str, spec: dict[str, Any], created: list[str]) -> Any:
    """Submit as ``who``; the final request (its Slurm id kept for cleanup)."""
    client = api(stack, who)
    request = client.wait(client.submit_job("local", spec).request_id, timeout=90)
    if request.state == "SUCCEEDED":
        created.append(request.result.job_id)  # type: ignore[union-attr]
    return request


def test_each_callers_jobs_run_as_their_mapped_user_never_root(
    stack: LocalStack, created: list[str], dir_a: Path, dir_b: Path
) -> None:
    # GIVEN A mapped to hpcbtest-a and B to hpcbtest-b
    body = "#!/bin/bash\nid -u > uid.txt\n"
    # WHEN each submits a job through the API
    job_a = submitted(stack, A, {"script": body, "working_directory": str(dir_a)}, created)
    job_b = submitted(stack, B, {"script": body, "working_directory": str(dir_b)}, created)
    slurm_a, slurm_b = job_a.result.job_id, job_b.result.job_id
    wait_ended(slurm_a)
    wait_ended(slurm_b)
    # THEN Slurm's accounting and the files say: A's ran as hpcbtest-a, B's as hpcbtest-b
    print(f"\nA's job {slurm_a}: {sacct_user_uid(slurm_a, f'hpcb:{job_a.request_id}')}; "
          f"B's job {slurm_b}: {sacct_user_uid(slurm_b, f'hpcb:{job_b.request_id}')}")  # fmt: skip
    assert sacct_user_uid(slurm_a, f"hpcb:{job_a.request_id}") == (USER_A, uid(USER_A))
    assert sacct_user_uid(slurm_b, f"hpcb:{job_b.request_id}") == (USER_B, uid(USER_B))
    assert (dir_a / "uid.txt").read_text().strip() == str(uid(USER_A))
    assert (dir_b / f"slurm-{slurm_b}.out").stat().st_uid == uid(USER_B)


def test_an_unmapped_caller_gets_403_and_nothing_reaches_slurm(stack: LocalStack) -> None:
    # GIVEN a caller mapped to no user / WHEN they submit a job and a batch
    client = api(stack, NOBODY)
    spec = {"script": HELD, "name": "nobody"}
    answers = []
    for call in (lambda: client.submit_job("local", spec),
                 lambda: client.submit_batch("local", [spec])):  # fmt: skip
        with pytest.raises(ApiError) as refused:
            call()
        answers.append((refused.value.status, refused.value.body["error"]["code"]))
    # THEN 403 NOT_MAPPED each time, and Slurm holds no job of that name
    assert answers == [(403, "NOT_MAPPED")] * 2
    listed = subprocess.run(["squeue", "-h", "-n", "nobody", "-o", "%i"], capture_output=True,
                            text=True, check=True).stdout.split()  # fmt: skip
    assert listed == []


def test_b_cannot_touch_as_job_by_broker_or_slurm_id(
    stack: LocalStack, created: list[str], dir_a: Path, dir_b: Path
) -> None:
    # GIVEN A's held job
    job = submitted(stack, A, {"script": HELD, "hold": True, "working_directory": str(dir_a)},
                    created)  # fmt: skip
    slurm_id, broker_id = job.result.job_id, job.request_id
    b = api(stack, B)
    # WHEN B reads, cancels or fetches the output of it, by either id / THEN 404 every time
    for ref in (broker_id, slurm_id):
        for call in (lambda r=ref: b.get_job("local", r),
                     lambda r=ref: b.cancel_job("local", r),
                     lambda r=ref: b.fetch_output("local", r)):  # fmt: skip
            with pytest.raises(ApiError) as refused:
                call()
            assert refused.value.status == 404
    # AND B's listing does not show it
    assert broker_id not in [j.job_id for j in b.iter_jobs("local")]
    # AND a job of B's that depends on it, by either id, fails DEPENDENCY_NOT_FOUND unsubmitted
    for ref in (broker_id, slurm_id):
        spec = {"script": HELD, "working_directory": str(dir_b),
                "dependency": [{"type": "afterok", "jobs": [ref]}]}  # fmt: skip
        final = submitted(stack, B, spec, created)
        assert final.state == "FAILED"
        assert final.error.code == "DEPENDENCY_NOT_FOUND", final.error
    # AND A's job is still held in Slurm, untouched
    state = subprocess.run(["squeue", "-h", "-j", slurm_id, "-o", "%T"], capture_output=True,
                           text=True, check=True).stdout.strip()  # fmt: skip
    assert state == "PENDING"


def output_of(stack: LocalStack, who: str, spec: dict[str, Any], created: list[str]) -> str:
    """Submit ``spec`` held, then ask for its stdout; what the output request answered."""
    job = submitted(stack, who, {**spec, "hold": True}, created)
    if job.state != "SUCCEEDED":
        return f"submit {job.state} {job.error.code if job.error else ''}"
    client = api(stack, who)
    read = client.wait(client.fetch_output("local", job.request_id).request_id, timeout=60)
    if read.state != "SUCCEEDED":
        return f"output {read.state} {read.error.code if read.error else ''}"
    parts = read.result.parts  # type: ignore[union-attr]
    if any(p.data for p in parts):
        return "READ: " + repr(parts[0].data[:40])
    return "output " + ",".join(p.error.code for p in parts if p.error)


def test_attack_corpus(stack: LocalStack, created: list[str], dir_a: Path, dir_b: Path) -> None:
    # GIVEN a symlink in A's directory to a root-only file, and a file of B's
    (dir_a / "link").symlink_to("/etc/shadow")
    (dir_b / "secret.txt").write_text("B's secret\n")
    munge_key = str(SLURM_PREFIX / "etc" / "munge.key")
    attacks: list[tuple[str, str, dict[str, Any]]] = [
        ("output at /etc/shadow", "output", {"script": HELD, "output": "/etc/shadow"}),
        ("output at the munge key", "output", {"script": HELD, "output": munge_key}),
        ("output in B's home", "output", {"script": HELD, "output": str(dir_b / "secret.txt")}),
        ("output via a symlink", "output", {"script": HELD, "output": str(dir_a / "link")}),
        ("#SBATCH --uid=0 in the script", "submit",
         {"script": "#!/bin/sh\n#SBATCH --uid=0\nid -u\n"}),
        ("environment LD_PRELOAD", "submit",
         {"script": HELD, "environment": {"LD_PRELOAD": "/tmp/x.so"}}),
        ("environment SLURM_JOB_UID", "submit",
         {"script": HELD, "environment": {"SLURM_JOB_UID": "0"}}),
        ("shell text in a name", "submit", {"script": HELD, "name": "x;id"}),
        ("option in a partition", "submit", {"script": HELD, "partition": "--uid=0"}),
    ]  # fmt: skip
    rows: list[tuple[str, str]] = []
    ran_as: list[tuple[str, int]] = []
    for title, kind, attack in attacks:
        spec = {"working_directory": str(dir_a), **attack}
        if kind == "output":
            rows.append((title, output_of(stack, A, spec, created)))
            continue
        try:
            job = submitted(stack, A, spec, created)
        except ApiError as exc:
            rows.append((title, f"{exc.status} {exc.body['error']['code']}"))
            continue
        answer = f"submit {job.state} {job.error.code if job.error else job.result.job_id}"
        if job.state == "SUCCEEDED":
            wait_ended(job.result.job_id)
            ran_as.append(sacct_user_uid(job.result.job_id, f"hpcb:{job.request_id}"))
            answer += f", ran as {ran_as[-1]}"
        rows.append((title, answer))
    print("\n| attack (as A = hpcbtest-a) | answer |\n|---|---|")
    for title, answer in rows:
        print(f"| {title} | {answer} |")
    # THEN nothing was read, and whatever ran, ran as hpcbtest-a
    assert [row for row in rows if row[1].startswith("READ")] == []
    assert set(ran_as) <= {(USER_A, uid(USER_A))}


def test_a_remapped_caller_still_cancels_the_job_that_runs_as_their_old_user(
    stack: LocalStack, created: list[str], dir_a: Path
) -> None:
    # GIVEN a third caller mapped to hpcbtest-a, with a held job in Slurm as hpcbtest-a
    caller = "arn:aws:iam::000000000000:user/remapped"
    stack.map_user("local", caller, USER_A)
    spec = {"script": HELD, "hold": True, "working_directory": str(dir_a)}
    job = submitted(stack, caller, spec, created)
    assert job.state == "SUCCEEDED", job
    # WHEN an administrator re-maps them to hpcbtest-b, and they cancel the old job
    stack.map_user("local", caller, USER_B)
    client = api(stack, caller)
    cancel = client.wait(client.cancel_job("local", job.job_id).request_id, timeout=90)
    # THEN the cancel acted as hpcbtest-a, the job's user in Slurm (as hpcbtest-b the agent
    # would refuse another user's job), and Slurm shows it cancelled, still hpcbtest-a's
    assert cancel.state == "SUCCEEDED", cancel
    slurm_id = job.result.job_id
    wait_ended(slurm_id)
    assert sacct_user_uid(slurm_id, f"hpcb:{job.request_id}") == (USER_A, uid(USER_A))
    assert client.get_job("local", job.job_id).user == USER_A
