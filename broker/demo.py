"""``make demo``: bring the local stack up, drive the HTTP API as a client would, tear down.

Exits 0 only if every step worked: a job submitted through the API ran on the real local Slurm
(checked in Slurm's own accounting, with the request id in its comment), a job Slurm rejects
ended FAILED with Slurm's message, and another principal could not see the first request; and
the cluster round trip: a cluster created through the API (by the local stack's SIMULATED
provisioning provider: ParallelCluster cannot provision on one machine) reached
CREATE_COMPLETE, jobs sent to it ran on the real Slurm, and it was deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3

from broker.client import ApiError, BrokerClient
from broker.clusters.models import ClusterView
from broker.jobs.models import JobResult
from broker.jobs.records import JobView
from broker.local.env_file import read_env_file
from broker.local.launcher import Launched, launched_stack
from broker.local.notifications import Notification, drain

ROOT = Path(__file__).resolve().parent.parent
ALICE = "arn:aws:iam::000000000000:user/alice"
MALLORY = "arn:aws:iam::000000000000:user/mallory"


def _say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _sacct(job_id: str, env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-o", "jobid,state,exitcode,comment", "-j", job_id],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=30,
    )
    return out.stdout.strip().split("|") if out.stdout.strip() else []


def _wait_in_slurm(job_id: str, env: dict[str, str], timeout: float = 90) -> list[str]:
    """Wait until Slurm's accounting shows the job finished (sacct lags a few seconds)."""
    deadline = time.monotonic() + timeout
    row: list[str] = []
    while time.monotonic() < deadline:
        row = _sacct(job_id, env)
        if row and row[1] not in {"PENDING", "RUNNING", "COMPLETING", "REQUEUED"}:
            return row
        time.sleep(0.5)
    raise RuntimeError(f"job {job_id} not finished in Slurm after {timeout}s (last: {row})")


def _wait_job_final(client: BrokerClient, job_id: str, timeout: float = 90) -> JobView:
    """The job resource (served from the table, kept fresh by the sweeper), once final."""
    return client.wait_for_job("local", job_id, timeout=timeout)


def _notification_for(stack: Launched, job_id: str, timeout: float = 30) -> Notification | None:
    """The job's state-change event, as the local inbox (an SNS subscriber) received it."""
    if stack.notifications_queue_url is None:
        return None
    sqs = boto3.client(
        "sqs",
        endpoint_url=stack.moto_url,
        region_name=stack.region,
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - moto
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for note in drain(sqs, stack.notifications_queue_url, wait_s=1):
            message = note.message if isinstance(note.message, dict) else {}
            if message.get("type") == "job.state_changed" and message.get("job_id") == job_id:
                return note
    return None


DEMO_CLUSTER = "demo-cluster"
DEMO_CONFIGURATION = """Image:
  Os: alinux2
HeadNode:
  InstanceType: t3.micro
  Ssh:
    KeyName: demo
Scheduling:
  Scheduler: slurm
  SlurmQueues:
  - Name: queue1
    ComputeResources:
    - Name: t3micro
      InstanceType: t3.micro
      MinCount: 0
      MaxCount: 4
"""


def _cluster_status(client: BrokerClient, wanted: str, timeout: float = 60) -> ClusterView:
    view = client.wait_for_cluster(DEMO_CLUSTER, wanted, timeout=timeout)
    if view.status != wanted:
        raise RuntimeError(f"{DEMO_CLUSTER} not {wanted} (last: {view})")
    return view


def cluster_round_trip(client: BrokerClient, env: dict[str, str]) -> bool:
    """Create a (simulated) cluster, wait for it, run jobs on it for real, delete it."""
    t0 = time.monotonic()
    body = {"name": DEMO_CLUSTER, "configuration": DEMO_CONFIGURATION}
    accepted = client.create_cluster(**body)
    _say(f"POST /v1/clusters -> 202 {accepted} ({(time.monotonic() - t0) * 1000:.0f} ms)")
    mapping = client.map_user(DEMO_CLUSTER, ALICE, "hpcb-dev")  # alice administers this stack
    _say(f"PUT /v1/admin/clusters/{DEMO_CLUSTER}/users -> {mapping.principal} runs as "
         f"{mapping.user} there")  # fmt: skip
    try:
        client.submit_job(DEMO_CLUSTER, {"script": "#!/bin/bash\ntrue\n"})
        _say("FAIL: a job was accepted for a cluster still being created")
        return False
    except ApiError as exc:
        error = exc.body["error"]
        _say(f"a job while it is creating -> {exc.status} {error['code']} "
             f"({error.get('cluster_status')})")  # fmt: skip
        ok = bool(exc.status == 409 and error["code"] == "CLUSTER_NOT_READY")
    view = _cluster_status(client, "CREATE_COMPLETE")
    _say(f"GET /v1/clusters/{DEMO_CLUSTER} -> {view.status} (provider {view.provider}, "
         f"pcluster {view.version}) after {time.monotonic() - t0:.1f}s")  # fmt: skip
    created = client.wait(accepted.request_id, timeout=30)
    ok &= created.state == "SUCCEEDED"
    script = '#!/bin/bash\necho "hello from $SLURM_CLUSTER_NAME via ' + DEMO_CLUSTER + '"\n'
    jobs = [client.submit_job(DEMO_CLUSTER, {"script": script, "name": f"on-{i}"})
            for i in range(3)]  # fmt: skip
    for job in jobs:
        final = client.wait(job.request_id, timeout=120)
        if final.state != "SUCCEEDED" or not isinstance(final.result, JobResult):
            _say(f"FAIL: job {job.request_id} on {DEMO_CLUSTER}: {final}")
            return False
        row = _wait_in_slurm(final.result.job_id, env)
        _say(f"job {final.result.job_id} on {DEMO_CLUSTER}: sacct state={row[1]} "
             f"comment={row[3]}")  # fmt: skip
        ok &= bool(row[1] == "COMPLETED" and row[3] == f"hpcb:{job.request_id}")
    deleted = client.delete_cluster(DEMO_CLUSTER)
    _say(f"DELETE /v1/clusters/{DEMO_CLUSTER} -> 202 {deleted.request_id}")
    view = _cluster_status(client, "DELETE_COMPLETE")
    ok &= client.wait(deleted.request_id, timeout=30).state == "SUCCEEDED"
    _say(f"cluster {view.status}; round trip {time.monotonic() - t0:.1f}s")
    return ok


def run(slurm_env_file: Path) -> bool:
    """The demo; True when every check passed."""
    env = dict(os.environ)
    ok = True
    log_path = ROOT / ".run" / "demo-stack.log"
    started = time.monotonic()
    with launched_stack(slurm_env_file, log_path, principal=ALICE) as stack:
        client = BrokerClient(stack.url, principal=ALICE)
        _say(
            f"local stack up at {stack.url} in {time.monotonic() - started:.1f}s "
            f"(log: {log_path.relative_to(ROOT)})"
        )
        env.update(read_env_file(slurm_env_file))

        script = '#!/bin/bash\necho "hello from $(hostname), job $SLURM_JOB_ID"\nsleep 1\n'
        t0 = time.monotonic()
        accepted = client.submit_job("local", {"script": script, "name": "demo-hello"})
        _say(
            f"POST /v1/clusters/local/jobs -> 202 {accepted} "
            f"({(time.monotonic() - t0) * 1000:.0f} ms)"
        )
        final = client.wait(accepted.request_id, timeout=120)
        _say(
            f"GET {accepted.location} -> {final.state} after {final.attempts} "
            f"attempt(s): {final.result or final.error}"
        )
        if final.state != "SUCCEEDED" or not isinstance(final.result, JobResult):
            return False
        job_id = final.result.job_id
        row = _wait_in_slurm(job_id, env)
        _say(f"sacct says job {job_id}: state={row[1]} exit={row[2]} comment={row[3]}")
        ok &= row[1] == "COMPLETED" and row[3] == f"hpcb:{accepted.request_id}"
        _say(f"POST to job finished in Slurm: {time.monotonic() - t0:.1f}s")
        job = _wait_job_final(client, accepted.request_id)
        _say(
            f"GET /v1/clusters/local/jobs/{accepted.request_id} -> {job.state} "
            f"exit={job.exit_code} start={job.start_time} end={job.end_time}"
        )
        ok &= job.state == "COMPLETED" and job.exit_code == 0
        note = _notification_for(stack, accepted.request_id)
        if note is None:
            _say("FAIL: no notification for the finished job")
            ok = False
        else:
            _say(f"SNS notification a subscriber received: attributes={note.message_attributes}")
            _say(f"  message={json.dumps(note.message, sort_keys=True)}")

        try:
            BrokerClient(client.endpoint, principal=MALLORY).get_request(accepted.request_id)
            _say("FAIL: another principal could read the request")
            ok = False
        except ApiError as exc:
            _say(f"another principal reading it -> {exc.status} (not revealed)")
            ok &= exc.status == 404

        bad = client.submit_job("local", {"script": "#!/bin/bash\ntrue\n", "partition": "nope"})
        rejected = client.wait(bad.request_id, timeout=120)
        _say(f"a job for partition 'nope' -> {rejected.state}: {rejected.error}")
        code = rejected.error.code if rejected.error else None
        ok &= rejected.state == "FAILED" and code == "SCHEDULER_REJECTED"

        try:
            client.submit_job("local", {"script": "#!/bin/bash\n", "nodes": 0, "name": "a b"})
            ok = False
        except ApiError as exc:
            fields = [f["field"] for f in exc.body["error"]["fields"]]
            _say(f"an invalid body -> {exc.status} {exc.body['error']['code']} fields={fields}")
            ok &= exc.status == 422
        ok &= cluster_round_trip(client, env)
        return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slurm-env", default="/var/tmp/hpc-broker/slurm/env", type=Path)
    args = parser.parse_args()
    ok = run(args.slurm_env)
    _say("DEMO PASSED" if ok else "DEMO FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
