"""Job lifecycle figures on the real local Slurm, beside the per-job polling baseline.

Measured in one run (``make bench`` runs it after the API benchmark):
- head-node commands and duration of one sweep with 1, 100 and 1,000 active jobs, against the
  naive design that asks the head node about each job (one command per job per poll; its time
  measured on up to 50 jobs and scaled);
- DynamoDB item writes for one job's whole life (POST to COMPLETED, events published),
  counted from botocore's own call events;
- notification latency: Slurm's end time of a job -> SNS publish time of its event, p50/p99,
  at the local sweep interval and at the deployed one (15 s).
Sweep and notification figures use the same stack and the same handlers as Lambda would.
"""

from __future__ import annotations

import os

# Powertools reads these when broker.observability is first imported (below): set them first,
# as template.yaml does in AWS and tests/conftest.py does for the tests.
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "HpcBrokerBench")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "hpc-broker-bench")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bench.api_latency import percentile
from broker import wiring
from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoStore
from broker.adapters.local_directory import LocalClusterDirectory
from broker.adapters.sns import SnsNotifier
from broker.agent.protocol import AgentJob, AgentRequest, AgentResponse
from broker.batches.models import BatchItem, batch_ids
from broker.batches.outcomes import item_outcome
from broker.client import BrokerClient
from broker.jobs.models import JobSpec, slurm_token
from broker.local.env_file import read_env_file
from broker.local.notifications import drain
from broker.local.stack import LocalStack
from broker.notifications.announcer import Announcer
from broker.ports import ClusterTarget, CommandRunner
from broker.requests.models import RequestRecord
from broker.requests.states import RequestState
from broker.runners.local import LocalRunner
from broker.schema import utcnow
from broker.sweep.status import Sweeper

ROOT = Path(__file__).resolve().parent.parent
NAME = "hpcb-bench-life"
OWNER = "arn:aws:iam::000000000000:user/bench"
TARGET = ClusterTarget(name="local", mode="local")


class CountingRunner:
    """The local runner, counting head-node commands."""

    def __init__(self) -> None:
        self.inner = LocalRunner()
        self.commands = 0

    def run(self, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        self.commands += 1
        return self.inner.run(target, request)

    def runner_for(self, mode: Literal["ssm", "local"]) -> CommandRunner:
        return self


def start_stack(slurm_env: dict[str, str], schedule_seconds: float | None) -> LocalStack:
    wiring.reset()
    stack = LocalStack(
        ROOT / "template.yaml",
        env_overrides={
            "HPCB_CLUSTERS_MODE": "local",
            "HPCB_LOCAL_CLUSTERS": "local",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "HPCB_SWEEP_WINDOW_SECONDS": "0",
            **slurm_env,
        },
        schedule_seconds=schedule_seconds,
        schedules_enabled=schedule_seconds is not None,
        access_log=False,
    )
    stack.start()
    stack.map_user("local", OWNER, "hpcb-dev")  # scripts/local-user.sh
    return stack


def held_jobs(store: DynamoStore, count: int, workdir: str) -> list[str]:
    """``count`` held jobs, recorded as one batch and submitted by one agent call.

    Records go in as a batch's do (the batch in one transaction, each job's record with its
    outcome, 25 per transaction).
    """
    batch_id, _, ids = batch_ids(count)
    now = utcnow()
    spec = JobSpec(script="#!/bin/sh\ntrue\n", name=NAME, hold=True, working_directory=workdir)
    batch = RequestRecord(request_id=batch_id, kind="job.batch", owner=OWNER, cluster="local",
                          state=RequestState.ACCEPTED, created_at=now, updated_at=now,
                          items=count, batch_size=count, chunk_starts=[0])  # fmt: skip
    store.create_batch(batch)
    store.start_chunk(batch_id, 0, ids)
    request = AgentRequest(
        op="submit", jobs=[AgentJob.of(slurm_token(i), spec, user="hpcb-dev") for i in ids]
    )
    answer = LocalRunner(timeout=600).run(TARGET, request)
    submitted = [(r.token.split(":", 1)[1], str(r.job_id)) for r in answer.results if r.job_id]
    items = {job_id: BatchItem(index=i, job_id=job_id, spec=spec) for i, job_id in enumerate(ids)}
    outcomes = [item_outcome(batch, items[job_id], 0, slurm_job_id=slurm_id)
                for job_id, slurm_id in submitted]  # fmt: skip
    store.record_batch_outcomes(batch, outcomes)
    return [slurm_id for _, slurm_id in submitted]


def sweep_costs(counts: list[int], workdir: str) -> list[dict[str, Any]]:
    """One sweep's head-node commands and time per active-job count, and the naive baseline."""
    settings_store = DynamoStore(client("dynamodb"), _env("HPCB_TABLE_NAME"))
    notifier = SnsNotifier(client("sns"), _env("HPCB_TOPIC_ARN"))
    rows = []
    for count in counts:
        slurm_ids = held_jobs(settings_store, count, workdir)
        runner = CountingRunner()
        sweeper = Sweeper(settings_store, LocalClusterDirectory(frozenset({"local"})),
                          runner.runner_for, Announcer(settings_store, notifier))  # fmt: skip
        started = time.perf_counter()
        first = sweeper.sweep()
        first_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        second = sweeper.sweep()
        second_ms = (time.perf_counter() - started) * 1000
        sample = slurm_ids[:50]
        started = time.perf_counter()
        for slurm_id in sample:  # the naive design: one head-node command per job
            LocalRunner().run(TARGET, AgentRequest(op="status", job_ids=[slurm_id]))
        naive_ms = (time.perf_counter() - started) * 1000 / len(sample) * count
        rows.append({
            "active_jobs": count,
            "head_node_commands_per_sweep": runner.commands // 2,
            "sweep_ms": round(second_ms, 1),
            "first_sweep_writes": first.transitions + first.field_updates,
            "steady_sweep_writes": second.transitions + second.field_updates,
            "first_sweep_ms": round(first_ms, 1),
            "naive_commands_per_poll": count,
            "naive_poll_ms": round(naive_ms, 1),
        })  # fmt: skip
        subprocess.run(["scancel", "--name", NAME], check=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sweeper.sweep().active_jobs:
            time.sleep(1)
    return rows


def writes_per_lifecycle(stack: LocalStack, workdir: str) -> dict[str, int]:
    """DynamoDB item writes for one job from POST to COMPLETED with its events published."""
    counts = {"items": 0, "calls": 0}

    def count(params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name in {"PutItem", "UpdateItem", "DeleteItem"}:
            counts["items"] += 1
            counts["calls"] += 1
        elif model.name == "TransactWriteItems":
            counts["items"] += len(params["TransactItems"])
            counts["calls"] += 1

    ddb = client("dynamodb")
    # provide-client-params carries the API parameters (before-call has the wire request).
    ddb.meta.events.register("provide-client-params.dynamodb", count)
    alice = BrokerClient(stack.api_url, principal=OWNER)
    job_id = alice.submit_job("local", {"script": "#!/bin/sh\nsleep 1\n", "name": NAME,
                                        "working_directory": workdir}).request_id  # fmt: skip
    store = DynamoStore(ddb, _env("HPCB_TABLE_NAME"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job.state.final and job.notify_pending is None:
            break
        time.sleep(0.2)
    ddb.meta.events.unregister("provide-client-params.dynamodb", count)
    return counts


def notification_latency(stack: LocalStack, jobs: int, workdir: str) -> dict[str, Any]:
    """Slurm end time -> SNS publish time, over ``jobs`` short jobs run together."""
    alice = BrokerClient(stack.api_url, principal=OWNER)
    sqs = client("sqs")
    drain(sqs, stack.notifications_queue_url, 0)
    ids = {alice.submit_job("local", {"script": "#!/bin/sh\nsleep 2\n", "name": NAME,
                                      "working_directory": workdir}).request_id
           for _ in range(jobs)}  # fmt: skip
    published: dict[str, datetime] = {}
    deadline = time.monotonic() + 300
    while len(published) < jobs and time.monotonic() < deadline:
        for note in drain(sqs, stack.notifications_queue_url, 1):
            event = note.message if isinstance(note.message, dict) else {}
            if event.get("type") == "job.state_changed" and event.get("job_id") in ids:
                published[event["job_id"]] = datetime.fromisoformat(
                    note.timestamp.replace("Z", "+00:00")
                )
    store = DynamoStore(client("dynamodb"), _env("HPCB_TABLE_NAME"))
    latencies = []
    for job_id, at in published.items():
        end = store.get_job(job_id).end_time
        if end:
            ended = datetime.fromisoformat(end).astimezone(UTC)
            latencies.append((at - ended).total_seconds())
    return {
        "jobs": len(latencies),
        "p50_s": round(statistics.median(latencies), 2),
        "p99_s": round(percentile(latencies, 99), 2),
        "max_s": round(max(latencies), 2),
    }


def _env(name: str) -> str:
    return os.environ[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slurm-env", type=Path, default=Path("/var/tmp/hpc-broker/slurm/env"))
    parser.add_argument("--jobs", type=int, default=30, help="jobs for the latency figure")
    parser.add_argument("--skip-sweep", action="store_true", help="skip the sweep-cost part")
    args = parser.parse_args()
    slurm_env = read_env_file(args.slurm_env)
    workdir = tempfile.mkdtemp(prefix="hpcb-bench-")
    Path(workdir).chmod(0o777)
    figures: dict[str, Any] = {}
    if not args.skip_sweep:
        stack = start_stack(slurm_env, None)
        try:
            figures["sweep"] = sweep_costs([1, 100, 1000], workdir)
            print("sweep:", json.dumps(figures["sweep"]), flush=True)
        finally:
            stack.stop()
    for interval in (2.0, 15.0):
        stack = start_stack(slurm_env, interval)
        try:
            if interval == 2.0:
                figures["dynamodb_writes_per_job_lifecycle"] = writes_per_lifecycle(stack, workdir)
                print("writes:", figures["dynamodb_writes_per_job_lifecycle"], flush=True)
            key = f"notify_latency_sweep_{int(interval)}s"
            figures[key] = notification_latency(stack, args.jobs, workdir)
            print(f"{key}:", figures[key], flush=True)
        finally:
            stack.stop()
    subprocess.run(["scancel", "--name", NAME], check=False)

    print(f"\n{'active jobs':>12}{'cmds/sweep':>12}{'sweep ms':>10}{'naive cmds':>12}"
          f"{'naive ms':>10}{'1st writes':>12}{'steady writes':>15}")  # fmt: skip
    for row in figures.get("sweep", []):
        print(f"{row['active_jobs']:>12}{row['head_node_commands_per_sweep']:>12}"
              f"{row['sweep_ms']:>10.0f}{row['naive_commands_per_poll']:>12}"
              f"{row['naive_poll_ms']:>10.0f}{row['first_sweep_writes']:>12}"
              f"{row['steady_sweep_writes']:>15}")  # fmt: skip
    print("naive = one head-node command per job per poll (time measured on 50 jobs, scaled)")
    writes = figures["dynamodb_writes_per_job_lifecycle"]
    print(f"DynamoDB item writes per job lifecycle: {writes['items']} in {writes['calls']} calls")
    for interval in (2, 15):
        lat = figures[f"notify_latency_sweep_{interval}s"]
        print(
            f"notification latency, sweep every {interval:>2}s: p50 {lat['p50_s']} s, "
            f"p99 {lat['p99_s']} s over {lat['jobs']} jobs"
        )
    print(json.dumps(figures, separators=(",", ":")))


if __name__ == "__main__":
    main()
