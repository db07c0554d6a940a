"""The core path end to end: the local stack over real HTTP, moto for AWS, real Slurm.

POST a job -> 202 -> the job worker (fed by the SQS poller, as Lambda's event source mapping
would) runs the head-node agent -> sbatch on the real local Slurm -> GET shows SUCCEEDED with
the Slurm job id, and Slurm shows the job with the request id in its comment.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoStore
from broker.adapters.local_directory import LocalClusterDirectory
from broker.adapters.sqs import SqsRequestQueue
from broker.agent.protocol import AgentJob, AgentRequest
from broker.client import ApiError, BrokerClient
from broker.jobs.accept import RequestService
from broker.jobs.models import JobResult, JobSpec, JobSubmitMessage, slurm_token
from broker.local.stack import LocalStack
from broker.ports import ClusterTarget
from broker.runners.local import LocalRunner
from broker.schema import dump
from tests.conftest import local_stack
from tests.fakes import EveryoneAs

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

ALICE = "arn:aws:iam::000000000000:user/alice"
BOB = "arn:aws:iam::000000000000:user/bob"
HELLO = "#!/bin/bash\necho hello\n"


@pytest.fixture(scope="module")
def stack(slurm: dict[str, str]) -> Iterator[LocalStack]:
    with local_stack(slurm) as running:
        yield running


@pytest.fixture
def alice(stack: LocalStack) -> BrokerClient:
    return BrokerClient(stack.api_url, principal=ALICE)


def slurm_jobs_with(token: str) -> list[str]:
    """Job ids Slurm knows (queue or accounting) whose comment is exactly ``token``."""
    ids: set[str] = set()
    queue = subprocess.run(
        ["squeue", "-h", "-a", "-t", "all", "-o", "%i|%k"],
        capture_output=True,
        text=True,
        check=True,
    )
    accounting = subprocess.run(
        ["sacct", "-a", "-X", "-n", "-P", "-o", "jobid,comment", "-S", "now-1hour"],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in (queue.stdout + accounting.stdout).splitlines():
        job_id, _, comment = line.partition("|")
        if comment.strip() == token:
            ids.add(job_id.strip())
    return sorted(ids)


def wait_finished(job_id: str, timeout: float = 60) -> tuple[str, str]:
    """(state, exit code) from sacct once the job is finished there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-o", "state,exitcode", "-j", job_id],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if out and out.split("|")[0] not in {"PENDING", "RUNNING", "COMPLETING"}:
            state, code = out.split("|")
            return state, code
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


def test_a_job_goes_from_post_to_slurm_and_succeeds(alice: BrokerClient) -> None:
    # GIVEN the local stack on real Slurm
    # WHEN alice posts a job and polls its request
    accepted = alice.submit_job("local", {"script": HELLO, "name": "it-hello"})
    final = alice.wait(accepted.request_id, timeout=60)
    # THEN it SUCCEEDED with a Slurm job id after one attempt
    assert final.state == "SUCCEEDED"
    assert final.attempts == 1
    assert isinstance(final.result, JobResult)
    job_id = final.result.job_id
    # AND Slurm has exactly that one job carrying the request id, and it ran to completion
    token = slurm_token(accepted.request_id)
    assert wait_finished(job_id) == ("COMPLETED", "0:0")
    assert slurm_jobs_with(token) == [job_id]


def test_get_right_after_post_never_answers_404(alice: BrokerClient) -> None:
    # GIVEN a burst of posts / WHEN each is read straight after its 202
    states = []
    for _ in range(20):
        request_id = alice.submit_job("local", {"script": HELLO}).request_id
        states.append(alice.get_request(request_id).state)
    # THEN every read finds the request (in whatever state it has reached)
    assert set(states) <= {"ACCEPTED", "DISPATCHED", "SUCCEEDED"}


def test_a_job_slurm_rejects_fails_with_slurms_message(alice: BrokerClient) -> None:
    # GIVEN a job for a partition that does not exist
    accepted = alice.submit_job("local", {"script": HELLO, "partition": "nope"})
    # WHEN it is processed
    final = alice.wait(accepted.request_id, timeout=60)
    # THEN FAILED, permanent, with Slurm's own words, after a single attempt (no retries)
    assert final.state == "FAILED"
    assert final.error is not None
    assert final.error.code == "SCHEDULER_REJECTED"
    assert "invalid partition" in final.error.message.lower()
    assert final.error.transient is False
    assert final.attempts == 1


def test_requests_are_private_to_their_owner(stack: LocalStack, alice: BrokerClient) -> None:
    # GIVEN alice's request
    request_id = alice.submit_job("local", {"script": HELLO}).request_id
    # WHEN bob asks for it / THEN 404
    with pytest.raises(ApiError) as info:
        BrokerClient(stack.api_url, principal=BOB).get_request(request_id)
    assert info.value.status == 404


def test_unknown_cluster_is_404_and_nothing_reaches_slurm(alice: BrokerClient) -> None:
    # GIVEN a cluster the broker does not know / WHEN posting / THEN 404 CLUSTER_NOT_FOUND
    with pytest.raises(ApiError) as info:
        alice.submit_job("elsewhere", {"script": HELLO})
    assert info.value.status == 404
    assert info.value.body["error"]["code"] == "CLUSTER_NOT_FOUND"


def test_shell_text_in_options_is_refused_and_in_scripts_is_only_data(
    alice: BrokerClient, tmp_path: Path
) -> None:
    marker = Path("/tmp") / f"hpcb-pwned-{uuid.uuid4().hex}"
    # GIVEN a job name that tries command substitution / WHEN posted / THEN 422 on that field
    with pytest.raises(ApiError) as info:
        alice.submit_job("local", {"script": HELLO, "name": f"$(touch {marker})"})
    assert info.value.status == 422
    assert info.value.body["error"]["fields"][0]["field"] == "body.name"
    # GIVEN a script whose comment line would run if it were ever pasted into a command line
    out = tmp_path / "out.txt"
    script = f"#!/bin/bash\n# '; touch {marker}; echo '\necho \"$SLURM_JOB_ID\" > {out}\n"
    tmp_path.chmod(0o777)
    # WHEN it is submitted and runs
    accepted = alice.submit_job("local", {"script": script, "working_directory": str(tmp_path)})
    final = alice.wait(accepted.request_id, timeout=60)
    assert final.state == "SUCCEEDED"
    assert isinstance(final.result, JobResult)
    wait_finished(final.result.job_id)
    # THEN the job ran its real line, and the text in the comment never executed anywhere
    assert out.read_text().strip() == final.result.job_id
    assert not marker.exists()


def test_redelivery_after_sbatch_but_before_the_record_makes_no_duplicate(
    stack: LocalStack, alice: BrokerClient
) -> None:
    # GIVEN a submission whose first attempt ran sbatch and then died before writing its
    # result (simulated: the agent submits the token, then the message is (re)delivered)
    store = DynamoStore(client("dynamodb"), stack.resources["RequestsTable"])
    spec = JobSpec(script=HELLO, name="it-crash")
    token_holder: dict[str, str] = {}

    class CrashAfterSbatch(SqsRequestQueue):
        def send(self, message: JobSubmitMessage) -> None:
            token = slurm_token(message.request_id)
            answer = LocalRunner().run(
                ClusterTarget(name="local", mode="local"),
                AgentRequest(op="submit", jobs=[AgentJob.of(token, message.spec, user="hpcb-dev")]),
            )
            token_holder["job_id"] = str(answer.results[0].job_id)
            super().send(message)  # the redelivery

    service = RequestService(
        store,
        CrashAfterSbatch(client("sqs"), stack.queue_url("RequestsQueue")),
        LocalClusterDirectory(frozenset({"local"})),
        users=EveryoneAs(),
    )
    request_id = service.submit_job(ALICE, "local", spec).request_id
    # WHEN the worker handles the redelivered message
    final = alice.wait(request_id, timeout=60)
    # THEN the request reuses the job sbatch already made, and Slurm holds exactly one
    assert final.state == "SUCCEEDED"
    assert final.result is not None
    assert dump(final.result) == {
        "kind": "job.submit",
        "job_id": token_holder["job_id"],
        "cluster": "local",
        "reused": True,
    }
    assert slurm_jobs_with(slurm_token(request_id)) == [token_holder["job_id"]]
