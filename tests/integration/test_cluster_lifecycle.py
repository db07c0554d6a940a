"""Cluster lifecycle end to end on the local stack: the SIMULATED provisioning provider (the
only fake: ParallelCluster cannot provision here), the real handlers, moto over HTTP, and the
real local Slurm, on which jobs sent to the new cluster really run."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
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
CONFIG = (
    "Image:\n  Os: alinux2\nHeadNode:\n  InstanceType: t3.micro\n  Ssh:\n    KeyName: k\n"
    "Scheduling:\n  Scheduler: slurm\n  SlurmQueues:\n  - Name: q\n"
)


@pytest.fixture(scope="module")
def stack(slurm: dict[str, str]) -> Iterator[LocalStack]:
    env = {"HPCB_SWEEP_WINDOW_SECONDS": "0", "HPCB_SIMULATED_CLUSTER_SECONDS": "2"}
    with local_stack(slurm, schedule_seconds=1, notifications_inbox=True, env=env) as running:
        yield running


def wait_status(api: BrokerClient, name: str, wanted: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = api.call("GET", f"/v1/clusters/{name}")
        if view["status"] == wanted and not view["last_operation"]["pending"]:
            return view
        time.sleep(0.3)
    raise AssertionError(f"{name} not {wanted} after {timeout}s: {view}")


def test_create_run_a_job_delete(stack: LocalStack, slurm: dict[str, str]) -> None:
    api = BrokerClient(stack.api_url, principal=ALICE)
    # GIVEN a cluster created through the API (simulated provisioning, 2 s)
    accepted = api.call("POST", "/v1/clusters", {"name": "sim-one", "configuration": CONFIG})
    # WHEN jobs are sent while it is creating / THEN 409 CLUSTER_NOT_READY
    with pytest.raises(ApiError) as early:
        api.submit_job("sim-one", {"script": "#!/bin/bash\ntrue\n"})
    assert (early.value.status, early.value.body["error"]["code"]) == (409, "CLUSTER_NOT_READY")
    # WHEN it reaches CREATE_COMPLETE
    view = wait_status(api, "sim-one", "CREATE_COMPLETE")
    assert (view["provider"], view["scheduler"]) == ("local-simulation", "slurm")
    created = api.wait(accepted["request_id"], timeout=30)
    assert (created["state"], created["result"]["status"]) == ("SUCCEEDED", "CREATE_COMPLETE")
    # THEN, once an administrator has mapped alice to a user there, a job sent to it really
    # runs on this machine's Slurm
    stack.map_user("sim-one", ALICE, "hpcb-dev")
    job = api.submit_job("sim-one", {"script": "#!/bin/bash\necho on sim-one\n"})
    done = api.wait(job["request_id"], timeout=60)
    assert done["state"] == "SUCCEEDED", done
    slurm_id = done["result"]["job_id"]
    shown = subprocess.run(
        ["scontrol", "show", "job", slurm_id], capture_output=True, text=True, env=slurm,
        check=False,
    )  # fmt: skip
    assert f"hpcb:{job['request_id']}" in shown.stdout + subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "comment", "-j", slurm_id],
        capture_output=True, text=True, env=slurm, check=False,
    ).stdout  # fmt: skip
    # (the job's end is seen by the sweep before the cluster goes: deleting a cluster with
    # jobs still active leaves those jobs unswept, a known limit)
    deadline = time.monotonic() + 60
    while not api.call("GET", f"/v1/clusters/sim-one/jobs/{job['request_id']}")["final"]:
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.5)
    # WHEN it is deleted
    deleted = api.call("DELETE", "/v1/clusters/sim-one")
    wait_status(api, "sim-one", "DELETE_COMPLETE")
    assert api.wait(deleted["request_id"], timeout=30)["state"] == "SUCCEEDED"
    # THEN jobs are refused again (no such cluster) and a subscriber saw each transition once
    with pytest.raises(ApiError) as gone:
        api.submit_job("sim-one", {"script": "#!/bin/bash\ntrue\n"})
    assert gone.value.status == 404
    events = [
        n.message
        for n in drain(client("sqs"), stack.notifications_queue_url, 1)
        if isinstance(n.message, dict) and n.message.get("type") == "cluster.state_changed"
    ]
    assert [e["new_state"] for e in events if e["cluster"] == "sim-one"] == [
        "CREATE_COMPLETE", "DELETE_IN_PROGRESS", "DELETE_COMPLETE",
    ]  # fmt: skip


def test_a_configuration_the_validators_reject_fails_with_findings(stack: LocalStack) -> None:
    api = BrokerClient(stack.api_url, principal=ALICE)
    # GIVEN a configuration without a head node
    accepted = api.call(
        "POST", "/v1/clusters", {"name": "sim-bad", "configuration": "Image:\n  Os: alinux2\n"}
    )
    # WHEN the worker validates it / THEN FAILED with pcluster-shaped findings
    final = api.wait(accepted["request_id"], timeout=90)
    assert final["state"] == "FAILED", final
    assert final["error"]["code"] == "CONFIGURATION_REJECTED"
    assert {m["type"] for m in final["error"]["validation_messages"]} == {"ConfigSchemaValidator"}
    assert api.call("GET", "/v1/clusters/sim-bad")["status"] == "CREATE_FAILED"
