"""Run as the caller, end to end on the real local Slurm through the HTTP API: an administrator
maps principal A to hpcbtest-a and B to hpcbtest-b with the admin API; A's job runs as
hpcbtest-a and B's as hpcbtest-b (Slurm accounting's user and uid, and the files they wrote);
nothing runs as root; an unmapped caller gets 403 NOT_MAPPED and nothing is recorded or queued;
a caller who is no administrator does not see the admin routes."""

from __future__ import annotations

import pwd
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from broker.adapters.aws import client
from broker.client.raw import ApiError
from broker.client.raw import RawClient as BrokerClient
from broker.local.stack import LocalStack
from tests.conftest import local_stack
from tests.integration.conftest import USER_A, USER_B
from tests.integration.test_agent_users_slurm import sacct_user_uid

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

ADMIN = "arn:aws:iam::000000000000:user/ops/admin"
A = "arn:aws:iam::000000000000:user/team-a/alice"
B = "arn:aws:sts::000000000000:assumed-role/Researcher/bob"
STRANGER = "arn:aws:iam::000000000000:user/carol"


@pytest.fixture(scope="module")
def stack(slurm: dict[str, str], test_users: tuple[str, str]) -> Iterator[LocalStack]:
    """The local stack with one administrator and nobody mapped yet."""
    env = {"HPCB_ADMIN_PRINCIPALS": ADMIN, "HPCB_SWEEP_WINDOW_SECONDS": "0"}
    with local_stack(slurm, users={}, schedule_seconds=1, env=env) as running:
        yield running


def mapping_path(cluster: str, principal: str) -> str:
    """The admin route of one mapping: the ARN URL-encoded in the query ('/' as %2F)."""
    return f"/v1/admin/clusters/{cluster}/users/mapping?principal={quote(principal, safe='')}"


@pytest.fixture(scope="module")
def mapped(stack: LocalStack) -> dict[str, str]:
    """A -> hpcbtest-a and B -> hpcbtest-b, mapped by the administrator over HTTP."""
    admin = BrokerClient(stack.api_url, principal=ADMIN)
    for principal, user in ((A, USER_A), (B, USER_B)):
        uid = pwd.getpwnam(user).pw_uid
        answer = admin.call("PUT", mapping_path("local", principal), {"user": user, "uid": uid})
        assert (answer["principal"], answer["user"]) == (principal, user)
    return {A: USER_A, B: USER_B}


def wait_job(caller: BrokerClient, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = caller.call("GET", f"/v1/clusters/local/jobs/{job_id}")
        if job["final"]:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never ended; last: {job}")


def test_each_callers_job_runs_as_their_mapped_user(
    stack: LocalStack, mapped: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN A and B mapped by the administrator, and a directory both users may write
    tmp_path.chmod(0o777)
    script = "#!/bin/bash\nid -u > uid-$SLURM_JOB_ID.txt\n"
    # WHEN each submits a job through the HTTP API
    ids = {}
    for principal in (A, B):
        caller = BrokerClient(stack.api_url, principal=principal)
        accepted = caller.submit_job("local", {"script": script, "name": "it-run-as",
                                               "working_directory": str(tmp_path)})  # fmt: skip
        ids[principal] = (caller, str(accepted["request_id"]))
    # THEN each job completes, recorded and run as its caller's user, never root
    for principal, (caller, job_id) in ids.items():
        job = wait_job(caller, job_id)
        user = mapped[principal]
        uid = pwd.getpwnam(user).pw_uid
        assert (job["state"], job["user"]) == ("COMPLETED", user)
        slurm_id = str(job["slurm_job_id"])
        assert sacct_user_uid(slurm_id, f"hpcb:{job_id}") == (user, uid)
        written = tmp_path / f"uid-{slurm_id}.txt"
        assert written.read_text().strip() == str(uid)
        assert written.stat().st_uid == uid != 0
        print(f"{principal} -> job {slurm_id} ran as {user} (uid {uid})")


def test_an_unmapped_caller_gets_403_and_nothing_is_recorded_or_queued(
    stack: LocalStack, mapped: dict[str, str]
) -> None:
    # GIVEN a caller nobody mapped
    stranger = BrokerClient(stack.api_url, principal=STRANGER)
    table = stack.provisioned.physical_id("RequestsTable")
    queue = stack.queue_url("RequestsQueue")

    def owned() -> int:
        items = client("dynamodb").scan(TableName=table)["Items"]
        return sum(1 for item in items if item.get("owner", {}).get("S") == STRANGER)

    # WHEN they submit a job and a batch
    refusals = []
    job = {"script": "#!/bin/sh\ntrue\n"}
    for path, body in (("/v1/clusters/local/jobs", job), ("/v1/clusters/local/jobs:batch",
                                                          {"jobs": [job]})):  # fmt: skip
        with pytest.raises(ApiError) as refused:
            stranger.call("POST", path, body)
        refusals.append(refused.value)
    # THEN 403 NOT_MAPPED, telling them to ask the administrator, named
    for error in refusals:
        assert (error.status, error.code) == (403, "NOT_MAPPED")
        assert ADMIN in error.message
    # AND no record of theirs exists (no request, no job), and nothing of theirs is queued
    assert owned() == 0
    waiting = client("sqs").receive_message(QueueUrl=queue, VisibilityTimeout=0)
    assert STRANGER not in str(waiting.get("Messages", []))


def test_a_caller_who_is_not_an_admin_does_not_see_the_admin_routes(
    stack: LocalStack, mapped: dict[str, str]
) -> None:
    # GIVEN A, mapped but no administrator / WHEN A tries to map themselves to root's peer B
    alice = BrokerClient(stack.api_url, principal=A)
    with pytest.raises(ApiError) as refused:
        alice.call("PUT", mapping_path("local", A), {"user": USER_B})
    # THEN the 404 of a route that does not exist, and A is still hpcbtest-a
    assert (refused.value.status, refused.value.code) == (404, "ROUTE_NOT_FOUND")
    admin = BrokerClient(stack.api_url, principal=ADMIN)
    assert admin.call("GET", mapping_path("local", A))["user"] == USER_A
