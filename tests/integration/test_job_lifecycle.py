"""Job lifecycle end to end on the real local Slurm, through the HTTP API.

Every test asserts the job record, the request record and exactly one notification per
terminal transition, as a subscriber of the SNS topic receives them (the local inbox queue).
Sweeps run in the background every second, as the scheduled sweeper would.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.adapters.aws import client
from broker.client.raw import ApiError
from broker.client.raw import RawClient as BrokerClient
from broker.local.notifications import drain
from broker.local.stack import LocalStack
from tests.conftest import local_stack

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

ALICE = "arn:aws:iam::000000000000:user/alice"
BOB = "arn:aws:iam::000000000000:user/bob"


class Inbox:
    """Every notification received so far (the local SNS -> SQS subscription)."""

    def __init__(self, stack: LocalStack) -> None:
        self._stack = stack
        self.events: list[dict[str, Any]] = []
        self.attributes: list[dict[str, Any]] = []

    def collect(self, wait_s: float = 0) -> None:
        for note in drain(client("sqs"), self._stack.notifications_queue_url, wait_s):
            self.events.append(note.message if isinstance(note.message, dict) else {})
            self.attributes.append(note.message_attributes)

    def about_job(self, job_id: str) -> list[dict[str, Any]]:
        self.collect()
        return [e for e in self.events if e.get("type") == "job.state_changed"
                and e.get("job_id") == job_id]  # fmt: skip

    def about_request(self, request_id: str) -> list[dict[str, Any]]:
        self.collect()
        return [e for e in self.events if e.get("type") == "request.finished"
                and e.get("request_id") == request_id]  # fmt: skip


@pytest.fixture(scope="module")
def stack(slurm: dict[str, str]) -> Iterator[LocalStack]:
    env = {"HPCB_SWEEP_WINDOW_SECONDS": "0"}
    with local_stack(slurm, schedule_seconds=1, notifications_inbox=True, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def inbox(stack: LocalStack) -> Inbox:
    return Inbox(stack)


@pytest.fixture(scope="module")
def alice(stack: LocalStack) -> BrokerClient:
    return BrokerClient(stack.api_url, principal=ALICE)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jobs")
    path.chmod(0o777)
    return path


@pytest.fixture(scope="module")
def timeout_job(alice: BrokerClient, workdir: Path) -> str:
    """Submitted first, so its minute-long wait overlaps the other tests."""
    spec = {"script": "#!/bin/bash\nsleep 300\n", "time_limit": "1", "name": "it-timeout",
            "working_directory": str(workdir)}  # fmt: skip
    return str(alice.submit_job("local", spec)["request_id"])


def submit(alice: BrokerClient, workdir: Path, script: str, **options: Any) -> str:
    spec = {"script": f"#!/bin/bash\n{script}\n", "working_directory": str(workdir), **options}
    return str(alice.submit_job("local", spec)["request_id"])


def wait_job(
    alice: BrokerClient, job_id: str, until: set[str], timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = alice.call("GET", f"/v1/clusters/local/jobs/{job_id}")
        if job["state"] in until:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never reached {until}; last: {job}")


def wait_events(inbox: Inbox, job_id: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    events = inbox.about_job(job_id)
    while len(events) < count and time.monotonic() < deadline:
        inbox.collect(wait_s=1)
        events = inbox.about_job(job_id)
    return events


def assert_one_event_per_transition(inbox: Inbox, job_id: str, final_state: str) -> dict[str, Any]:
    events = wait_events(inbox, job_id, 1)
    # give a duplicate, if any, the chance to arrive before judging
    time.sleep(2.5)
    events = inbox.about_job(job_id)
    assert Counter(e["new_state"] for e in events) == {final_state: 1}, events
    return events[0]


def test_a_job_that_succeeds(alice: BrokerClient, inbox: Inbox, workdir: Path,
                             timeout_job: str) -> None:  # fmt: skip
    # GIVEN a job that exits 0 / WHEN it runs
    job_id = submit(alice, workdir, "echo hello; exit 0", name="it-ok")
    job = wait_job(alice, job_id, {"COMPLETED", "FAILED"})
    # THEN its record is COMPLETED, exit 0, with Slurm's times; its request SUCCEEDED
    assert (job["state"], job["exit_code"], job["final"]) == ("COMPLETED", 0, True)
    assert job["start_time"]
    assert job["end_time"]
    assert alice.get_request(job_id)["state"] == "SUCCEEDED"
    # AND exactly one job event, with the filterable attributes, and one request event
    event = assert_one_event_per_transition(inbox, job_id, "COMPLETED")
    assert event["version"] == 1
    assert event["links"]["job"] == f"/v1/clusters/local/jobs/{job_id}"
    attributes = inbox.attributes[inbox.events.index(event)]
    assert dict(attributes.items()) == {
        "type": "job.state_changed",
        "cluster": "local",
        "owner": ALICE,
        "state": "COMPLETED",
    }
    assert [e["new_state"] for e in inbox.about_request(job_id)] == ["SUCCEEDED"]


def test_a_job_that_exits_non_zero_records_its_exact_exit_code(
    alice: BrokerClient, inbox: Inbox, workdir: Path
) -> None:
    # GIVEN a job that exits 3 / WHEN it runs
    job_id = submit(alice, workdir, "exit 3")
    job = wait_job(alice, job_id, {"COMPLETED", "FAILED"})
    # THEN FAILED with exit code 3, and one FAILED event carrying it
    assert (job["state"], job["exit_code"]) == ("FAILED", 3)
    assert assert_one_event_per_transition(inbox, job_id, "FAILED")["exit_code"] == 3


def test_a_job_cancelled_while_running(alice: BrokerClient, inbox: Inbox, workdir: Path) -> None:
    # GIVEN a running job
    job_id = submit(alice, workdir, "sleep 300")
    wait_job(alice, job_id, {"RUNNING"})
    # WHEN its owner cancels it
    cancel = alice.call("DELETE", f"/v1/clusters/local/jobs/{job_id}")
    # THEN the cancel request SUCCEEDS, the job ends CANCELLED, one CANCELLED event
    assert alice.wait(cancel["request_id"])["state"] == "SUCCEEDED"
    assert wait_job(alice, job_id, {"CANCELLED"})["state"] == "CANCELLED"
    assert_one_event_per_transition(inbox, job_id, "CANCELLED")


def test_a_job_cancelled_while_still_queued_never_reaches_slurm(
    stack: LocalStack, alice: BrokerClient, inbox: Inbox, workdir: Path
) -> None:
    # GIVEN the job worker paused, so a submission stays in SQS
    (worker,) = [p for p in stack.pollers if "JobWorker" in p.name]
    worker.stop()
    try:
        job_id = submit(alice, workdir, "touch should-not-exist")
        # WHEN the owner cancels it
        cancel = alice.call("DELETE", f"/v1/clusters/local/jobs/{job_id}")
    finally:
        worker.start()
    # THEN the cancel is done at once, the job CANCELLED, and the submission is skipped
    assert alice.get_request(cancel["request_id"])["result"]["before_submission"] is True
    submission = alice.wait(job_id)
    assert submission["state"] == "CANCELLED"
    job = alice.call("GET", f"/v1/clusters/local/jobs/{job_id}")
    assert (job["state"], job["slurm_job_id"]) == ("CANCELLED", None)
    assert_one_event_per_transition(inbox, job_id, "CANCELLED")
    assert not (workdir / "should-not-exist").exists()


def test_an_array_with_mixed_outcomes(alice: BrokerClient, inbox: Inbox, workdir: Path) -> None:
    # GIVEN an array 1-4 whose odd tasks fail
    job_id = submit(alice, workdir, "exit $(( SLURM_ARRAY_TASK_ID % 2 ))", array="1-4")
    # WHEN it has run
    job = wait_job(alice, job_id, {"COMPLETED", "FAILED", "CANCELLED"})
    # THEN each task is visible with its state, counts summarise them, the array FAILED
    assert job["task_counts"] == {"COMPLETED": 2, "FAILED": 2}
    assert {k: v["state"] for k, v in job["tasks"].items()} == {
        "1": "FAILED",
        "2": "COMPLETED",
        "3": "FAILED",
        "4": "COMPLETED",
    }
    assert (job["state"], job["exit_code"]) == ("FAILED", 1)
    assert assert_one_event_per_transition(inbox, job_id, "FAILED")["task_counts"] == {
        "COMPLETED": 2,
        "FAILED": 2,
    }


def test_an_afterok_chain_runs_in_order(alice: BrokerClient, inbox: Inbox, workdir: Path) -> None:
    # GIVEN A, and B depending afterok on A by broker id
    first = submit(alice, workdir, "sleep 2; date +%s.%N > a.done")
    second = submit(alice, workdir, "date +%s.%N > b.start",
                    dependency=[{"type": "afterok", "jobs": [first]}])  # fmt: skip
    # WHEN both have run
    a = wait_job(alice, first, {"COMPLETED", "FAILED"})
    b = wait_job(alice, second, {"COMPLETED", "FAILED", "CANCELLED"})
    # THEN both COMPLETED and B started after A finished
    assert (a["state"], b["state"]) == ("COMPLETED", "COMPLETED")
    assert float((workdir / "b.start").read_text()) >= float((workdir / "a.done").read_text())
    assert_one_event_per_transition(inbox, second, "COMPLETED")


def test_an_afterok_on_a_failed_job_fails_instead_of_pending_forever(
    alice: BrokerClient, inbox: Inbox, workdir: Path
) -> None:
    # GIVEN A that fails, and B afterok on A
    first = submit(alice, workdir, "exit 1")
    second = submit(alice, workdir, "true", dependency=[{"type": "afterok", "jobs": [first]}])
    # WHEN A has failed / THEN B does not pend forever: Slurm cancels it (kill_invalid_depend)
    wait_job(alice, first, {"FAILED"})
    b = wait_job(alice, second, {"CANCELLED", "FAILED", "COMPLETED"})
    assert b["state"] == "CANCELLED"
    assert_one_event_per_transition(inbox, second, "CANCELLED")


def test_a_dependency_on_an_unknown_job_is_a_clear_error(
    alice: BrokerClient, workdir: Path
) -> None:
    # GIVEN a dependency on a broker id that does not exist
    job_id = submit(alice, workdir, "true",
                    dependency=[{"type": "afterok", "jobs": ["r" + "0" * 28]}])  # fmt: skip
    # WHEN processed / THEN the submission FAILED with DEPENDENCY_NOT_FOUND, job SUBMIT_FAILED
    request = alice.wait(job_id)
    assert (request["state"], request["error"]["code"]) == ("FAILED", "DEPENDENCY_NOT_FOUND")
    assert alice.call("GET", f"/v1/clusters/local/jobs/{job_id}")["state"] == "SUBMIT_FAILED"


def fetch_output(alice: BrokerClient, job_id: str, **query: Any) -> dict[str, Any]:
    accepted = alice.call("POST", f"/v1/clusters/local/jobs/{job_id}/output", query)
    request = alice.wait(accepted["request_id"])
    assert request["state"] == "SUCCEEDED", request
    return {part["stream"]: part for part in request["result"]["parts"]}


def test_small_output_is_returned_inline(alice: BrokerClient, workdir: Path) -> None:
    # GIVEN a finished job that printed to stdout and stderr
    job_id = submit(alice, workdir, "echo out-line; echo err-line >&2", error=f"{workdir}/e-%j.txt")
    wait_job(alice, job_id, {"COMPLETED"})
    # WHEN its output is fetched
    parts = fetch_output(alice, job_id, stream="both")
    # THEN both streams come inline, whole, with offsets
    assert parts["stdout"]["data"] == "out-line\n"
    assert parts["stderr"]["data"] == "err-line\n"
    assert (parts["stdout"]["offset"], parts["stdout"]["eof"]) == (0, True)


def test_large_output_comes_through_a_presigned_url(alice: BrokerClient, workdir: Path) -> None:
    # GIVEN a job that printed 100 KiB
    job_id = submit(alice, workdir, "head -c 102400 /dev/zero | tr '\\0' 'x'")
    wait_job(alice, job_id, {"COMPLETED"})
    # WHEN its stdout tail is fetched
    part = fetch_output(alice, job_id, stream="stdout")["stdout"]
    # THEN the last 64 KiB come through a URL (too big for the response), with paging offsets
    assert part["data"] is None
    assert (part["size"], part["offset"], part["length"]) == (102400, 102400 - 65536, 65536)
    with urllib.request.urlopen(part["url"], timeout=10) as answer:  # noqa: S310
        body = answer.read()
    assert body == b"x" * 65536
    # AND the first bytes can be paged from offset 0
    head = fetch_output(alice, job_id, stream="stdout", offset=0, max_bytes=10)["stdout"]
    assert (head["data"], head["offset"], head["eof"]) == ("x" * 10, 0, False)


def test_jobs_are_listed_from_the_table(alice: BrokerClient, stack: LocalStack) -> None:
    # GIVEN the jobs above / WHEN alice lists failed ones, and bob lists his
    failed = alice.call("GET", "/v1/clusters/local/jobs?state=FAILED")["jobs"]
    bobs = BrokerClient(stack.api_url, principal=BOB).call("GET", "/v1/clusters/local/jobs")
    # THEN she sees only failures, and bob sees none of hers
    assert failed
    assert all(j["state"] == "FAILED" for j in failed)
    assert bobs["jobs"] == []


def test_someone_elses_job_cannot_be_cancelled(alice: BrokerClient, stack: LocalStack,
                                               workdir: Path) -> None:  # fmt: skip
    # GIVEN alice's job / WHEN bob cancels it / THEN 404
    job_id = submit(alice, workdir, "true")
    with pytest.raises(ApiError) as info:
        BrokerClient(stack.api_url, principal=BOB).call(
            "DELETE", f"/v1/clusters/local/jobs/{job_id}"
        )
    assert info.value.status == 404


def test_a_job_that_runs_past_its_time_limit_times_out(
    alice: BrokerClient, inbox: Inbox, timeout_job: str
) -> None:
    # GIVEN the 1-minute job submitted at the start of this module / WHEN it overruns
    job = wait_job(alice, timeout_job, {"TIMEOUT", "COMPLETED", "FAILED"}, timeout=240)
    # THEN TIMEOUT, one event
    assert job["state"] == "TIMEOUT"
    assert_one_event_per_transition(inbox, timeout_job, "TIMEOUT")


def test_notifications_are_valid_json_events(inbox: Inbox) -> None:
    # GIVEN everything above / THEN every notification is a versioned event of a known type
    inbox.collect()
    assert inbox.events
    assert all(e["version"] == 1 and e["type"] in {"job.state_changed", "request.finished"}
               for e in inbox.events)  # fmt: skip
    assert json.dumps(inbox.events)
