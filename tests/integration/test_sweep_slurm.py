"""Sweeps through the HTTP API onto the real local Slurm: one template, many parameter sets,
submitted as job arrays (``broker.batches.sweeps``), each item then a job of its own.

The local Slurm has Slurm's default MaxArraySize (1001), as a ParallelCluster cluster has.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.adapters.aws import client
from broker.agent.protocol import AgentRequest, AgentResponse
from broker.batches.sweeps import JobSweepMessage, SweepBody, sweep_chunks, validate_parameters
from broker.client.raw import RawClient as BrokerClient
from broker.local.notifications import drain
from broker.local.stack import LocalStack
from broker.ports import ClusterTarget
from broker.runners.local import LocalRunner
from tests.conftest import local_stack
from tests.integration.test_job_lifecycle import wait_job

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

ALICE = "arn:aws:iam::000000000000:user/alice"
NAME = "it-sweep"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "SUBMIT_FAILED"}


@pytest.fixture(scope="module")
def stack(slurm: dict[str, str]) -> Iterator[LocalStack]:
    env = {"HPCB_SWEEP_WINDOW_SECONDS": "0", "POWERTOOLS_LOG_LEVEL": "WARNING"}
    with local_stack(slurm, schedule_seconds=1, notifications_inbox=True, env=env) as running:
        yield running
    subprocess.run(["scancel", "--name", NAME], check=False)


@pytest.fixture(scope="module")
def alice(stack: LocalStack) -> BrokerClient:
    return BrokerClient(stack.api_url, principal=ALICE)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sweeps")
    path.chmod(0o777)
    return path


def submit_requests(monkeypatch: pytest.MonkeyPatch) -> list[AgentRequest]:
    """Each head-node ``submit`` request from now on (the real agent still runs)."""
    requests: list[AgentRequest] = []
    run = LocalRunner.run

    def watched(self: LocalRunner, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        if request.op == "submit":
            requests.append(request)
        return run(self, target, request)

    monkeypatch.setattr(LocalRunner, "run", watched)
    return requests


def slurm_arrays(prefix: str) -> dict[str, tuple[str, int]]:
    """Token -> (array id, tasks) of the arrays in Slurm whose token starts ``hpcb:<prefix>``."""
    out = subprocess.run(["squeue", "-h", "-r", "-a", "-t", "all", "-o", "%F|%k"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    tasks: Counter[tuple[str, str]] = Counter()
    for line in out.splitlines():
        array, _, token = line.partition("|")
        if token.startswith(f"hpcb:{prefix}"):
            tasks[(token, array)] += 1
    arrays: dict[str, tuple[str, int]] = {}
    for (token, array), count in tasks.items():
        assert token not in arrays, f"two arrays carry {token}"
        arrays[token] = (array, count)
    return arrays


SCRIPT = (
    '#!/bin/bash\necho "item $PARAM_N of $APP_SWEEP"\nsleep ${PARAM_SLEEP:-0}\n'
    "exit ${PARAM_CODE:-0}\n"
)


def test_a_sweep_runs_each_item_as_an_array_task_with_its_own_variables(
    stack: LocalStack, alice: BrokerClient, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a sweep of 4 items: item 1 exits 3, item 3 runs until cancelled
    requests = submit_requests(monkeypatch)
    template = {"script": SCRIPT, "name": NAME, "working_directory": str(workdir),
                "environment": {"APP_SWEEP": "s1"}}  # fmt: skip
    parameters: list[dict[str, str]] = [
        {"PARAM_N": "0"}, {"PARAM_N": "1", "PARAM_CODE": "3"}, {"PARAM_N": "2 'quoted' $(x)"},
        {"PARAM_N": "3", "PARAM_SLEEP": "300"},
    ]  # fmt: skip
    # WHEN posted and processed
    accepted = alice.call("POST", "/v1/clusters/local/jobs:sweep",
                          {"template": template, "parameters": parameters})  # fmt: skip
    final = alice.wait(accepted["request_id"], timeout=120)
    # THEN the sweep SUCCEEDED with 4 items submitted, in one head-node command
    assert (accepted["accepted"], final["state"]) == (4, "SUCCEEDED")
    assert final["counts"] == {"SUBMITTED": 4}
    assert len(requests) == 1
    # AND its items are the tasks 0-3 of one array
    prefix = accepted["job_id_prefix"]
    ids = [f"{prefix}{i:06x}" for i in range(4)]
    jobs = [alice.call("GET", f"/v1/clusters/local/jobs/{job_id}") for job_id in ids]
    array = jobs[0]["slurm_job_id"].split("_")[0]
    assert [j["slurm_job_id"] for j in jobs] == [f"{array}_{i}" for i in range(4)]
    # WHEN item 3 runs and is cancelled
    wait_job(alice, ids[3], {"RUNNING"})
    cancel = alice.call("DELETE", f"/v1/clusters/local/jobs/{ids[3]}")
    assert alice.wait(cancel["request_id"])["state"] == "SUCCEEDED"
    # THEN each item ends on its own: 0 and 2 COMPLETED, 1 FAILED with exit 3, 3 CANCELLED
    ends = [wait_job(alice, job_id, FINAL) for job_id in ids]
    assert [(j["state"], j["exit_code"]) for j in ends[:3]] == [
        ("COMPLETED", 0), ("FAILED", 3), ("COMPLETED", 0),
    ]  # fmt: skip
    assert ends[3]["state"] == "CANCELLED"
    # AND the output of one item is its own, its variables exactly as given (no shell)
    fetched = alice.call("POST", f"/v1/clusters/local/jobs/{ids[2]}/output", {})
    parts = alice.wait(fetched["request_id"])["result"]["parts"]
    assert [p["data"] for p in parts if p["stream"] == "stdout"] == ["item 2 'quoted' $(x) of s1\n"]
    # AND one notification per item's terminal transition
    time.sleep(2.5)
    events = [n.message for n in drain(client("sqs"), stack.notifications_queue_url, 0)]
    about = [e for e in events if isinstance(e, dict) and e.get("type") == "job.state_changed"]
    states = Counter(e.get("job_id") for e in about if e.get("job_id") in ids)
    assert states == dict.fromkeys(ids, 1)


def test_a_job_may_depend_on_one_item_of_a_sweep(alice: BrokerClient, workdir: Path) -> None:
    # GIVEN a sweep of 2 items, and a job afterok on item 1 by its broker id
    template = {"script": "#!/bin/bash\nsleep 1; date +%s.%N > item$PARAM_N.done\n",
                "name": NAME, "working_directory": str(workdir)}  # fmt: skip
    body = {"template": template, "parameters": [{"PARAM_N": "0"}, {"PARAM_N": "1"}]}
    accepted = alice.call("POST", "/v1/clusters/local/jobs:sweep", body)
    item = f"{accepted['job_id_prefix']}{1:06x}"
    after = alice.submit_job("local", {
        "script": "#!/bin/bash\ndate +%s.%N > after.start\n", "name": NAME,
        "working_directory": str(workdir), "dependency": [{"type": "afterok", "jobs": [item]}],
    })["request_id"]  # fmt: skip
    # WHEN both have run / THEN the job started after the item ended
    assert wait_job(alice, str(after), FINAL)["state"] == "COMPLETED"
    done = float((workdir / "item1.done").read_text())
    assert float((workdir / "after.start").read_text()) >= done


def test_a_sweep_larger_than_max_array_size_is_several_arrays_each_submitted_once(
    stack: LocalStack, alice: BrokerClient, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 2,500 held items (MaxArraySize 1001 here), two of them invalid
    requests = submit_requests(monkeypatch)
    template = {"script": "#!/bin/sh\ntrue\n", "name": NAME, "hold": True,
                "working_directory": str(workdir)}  # fmt: skip
    parameters: list[dict[str, Any]] = [{"PARAM_I": str(i)} for i in range(2500)]
    parameters[7] = {"PATH": "/evil"}
    parameters[2001] = {"PARAM_I": 5}
    # WHEN posted and processed
    accepted = alice.call("POST", "/v1/clusters/local/jobs:sweep",
                          {"template": template, "parameters": parameters})  # fmt: skip
    final = alice.wait(accepted["request_id"], timeout=300, max_poll=2)
    # THEN 2,498 accepted, the two listed with their fields, and all submitted
    assert (accepted["accepted"], [r["index"] for r in accepted["rejected"]]) == (2498, [7, 2001])
    assert final["counts"] == {"SUBMITTED": 2498}
    # AND Slurm holds three arrays of the chunk's 2,498 items (1,001 + 1,001 + 496 tasks),
    # each under its own token, in one head-node command
    prefix = accepted["job_id_prefix"]
    arrays = slurm_arrays(prefix)
    token = f"hpcb:{accepted['request_id']}c0"
    assert sorted(arrays) == [f"{token}a0", f"{token}a1", f"{token}a2"]
    assert [arrays[f"{token}a{k}"][1] for k in range(3)] == [1001, 1001, 496]
    assert len(requests) == 1
    # AND the chunk's p-th item is task p - 1001*k of array k (item 7 was rejected: item 1001
    # is the chunk's 1000th)
    page = alice.call("GET", f"{accepted['location']}?items_from=1000&items_limit=3")
    a0, a1 = arrays[f"{token}a0"][0], arrays[f"{token}a1"][0]
    assert [i["slurm_job_id"] for i in page["item_page"]] == [f"{a0}_999", f"{a0}_1000", f"{a1}_0"]
    # WHEN the chunk is delivered again (as after a worker died before recording outcomes),
    # and the agent is asked again for the same arrays
    body = SweepBody.model_validate({"template": template, "parameters": parameters})
    base = JobSweepMessage(request_id=accepted["request_id"], owner=ALICE, cluster="local",
                           user="hpcb-dev", chunk=0, template=body.template, indexes=[],
                           parameters=[])  # fmt: skip
    (chunk,) = sweep_chunks(base, validate_parameters(body)[0])
    (worker,) = [p for p in stack.pollers if "JobWorker" in p.name]
    taken = worker.stats().records
    client("sqs").send_message(QueueUrl=stack.queue_url("RequestsQueue"),
                               MessageBody=chunk.model_dump_json())  # fmt: skip
    again = LocalRunner().run(ClusterTarget(name="local", mode="local"), requests[0])
    deadline = time.monotonic() + 60
    while worker.stats().records == taken and time.monotonic() < deadline:
        time.sleep(0.2)
    # THEN the same arrays answer, and Slurm still holds exactly those three
    assert worker.stats().records == taken + 1
    assert {(a.job_id, a.first) for a in again.results[0].arrays or []} == {
        (arrays[f"{token}a{k}"][0], 1001 * k) for k in range(3)
    }
    assert slurm_arrays(prefix) == arrays
    assert alice.get_request(accepted["request_id"])["counts"] == {"SUBMITTED": 2498}


def test_a_packed_batch_runs_its_runs_as_arrays_and_each_job_with_its_own_variables(
    alice: BrokerClient, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a batch asking to pack: 3 jobs differing only in PARAM_N, then a different one
    requests = submit_requests(monkeypatch)
    same = {"script": '#!/bin/bash\necho "packed $PARAM_N"\n', "name": NAME,
            "working_directory": str(workdir)}  # fmt: skip
    jobs = [{**same, "environment": {"PARAM_N": str(i)}} for i in range(3)]
    jobs.append({"script": "#!/bin/bash\necho alone\n", "name": NAME,
                 "working_directory": str(workdir)})  # fmt: skip
    # WHEN posted and processed
    accepted = alice.call("POST", "/v1/clusters/local/jobs:batch", {"jobs": jobs, "pack": True})
    final = alice.wait(accepted["request_id"], timeout=120)
    # THEN all 4 are in Slurm: the run as tasks 0-2 of one array, the other as a job of its own
    assert final["counts"] == {"SUBMITTED": 4}
    ids = [f"{accepted['job_id_prefix']}{i:06x}" for i in range(4)]
    ends = [wait_job(alice, job_id, FINAL) for job_id in ids]
    array = ends[0]["slurm_job_id"].split("_")[0]
    assert [j["slurm_job_id"] for j in ends[:3]] == [f"{array}_{i}" for i in range(3)]
    assert "_" not in ends[3]["slurm_job_id"]
    assert {j["state"] for j in ends} == {"COMPLETED"}
    assert sum(len(r.jobs) for r in requests) == 2
    # AND each packed job saw its own variables
    fetched = alice.call("POST", f"/v1/clusters/local/jobs/{ids[1]}/output", {})
    parts = alice.wait(fetched["request_id"])["result"]["parts"]
    assert [p["data"] for p in parts if p["stream"] == "stdout"] == ["packed 1\n"]
