"""A job worker killed at any point of a chunk, then the message delivered again: every job is in
the real Slurm exactly once (counted from squeue's job comments) and every record is complete.

The worker is the real handler in a process of its own (tests/integration/crashing_worker.py),
SIGKILLed the way a Lambda sandbox dies; AWS is moto over HTTP; Slurm is the real local one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoStore
from broker.adapters.dynamodb.users import DynamoUserMappings
from broker.adapters.sqs import SqsRequestQueue
from broker.batches.models import BatchBody, JobBatchMessage
from broker.jobs.accept import RequestService
from broker.jobs.records import JobState
from broker.local.pollers import build_sqs_event
from broker.local.template import load_template, read_functions
from broker.ports import Limits
from broker.requests.models import QUEUE_MESSAGE
from broker.requests.states import RequestState
from broker.users.models import MappingBody
from broker.users.service import UserAdmin
from tests.conftest import REGION, ROOT, TEMPLATE, AwsResources
from tests.fakes import EveryoneAs, FakeDirectory

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

ALICE = "arn:aws:iam::123456789012:user/alice"
NAME = "it-crash"
JOBS = 120


@pytest.fixture
def world(aws_resources: AwsResources, slurm: dict[str, str], tmp_path: Path) -> Any:
    functions = read_functions(load_template(TEMPLATE), aws_resources.provisioned.resolver)
    (worker,) = [f for f in functions if f.logical_id == "JobWorkerFunction"]
    env = {
        **os.environ,
        **worker.environment,
        **slurm,
        "HPCB_CLUSTERS_MODE": "local",
        "HPCB_LOCAL_CLUSTERS": "local",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "HPCB_DEFAULT_WORKING_DIRECTORY": str(tmp_path),
    }
    tmp_path.chmod(0o777)
    yield World(aws_resources, env, tmp_path)
    subprocess.run(["scancel", "--name", NAME], check=False)


class World:
    def __init__(self, resources: AwsResources, env: dict[str, str], workdir: Path) -> None:
        self.resources = resources
        self.env = env
        self.workdir = workdir
        self.store = DynamoStore(client("dynamodb"), resources.ref("RequestsTable"))
        self.queue_url = resources.provisioned.queue_url("RequestsQueue")
        self.queue_arn = resources.provisioned.attribute("RequestsQueue", "Arn")
        # The worker (a process of its own) reads alice's user from the table, as in AWS.
        mappings = DynamoUserMappings(client("dynamodb"), resources.ref("RequestsTable"))
        UserAdmin(mappings).put("admin", "local", MappingBody(principal=ALICE, user="hpcb-dev"))

    def accept(self, count: int) -> tuple[str, str, dict[str, Any]]:
        """A batch of ``count`` held jobs accepted; (batch id, job id prefix, its one message)."""
        queue = SqsRequestQueue(client("sqs"), self.queue_url)
        limits = Limits(cluster_backlog=10_000, owner_inflight=10_000)
        service = RequestService(
            self.store, queue, FakeDirectory(), limits=limits, users=EveryoneAs()
        )
        spec = {"script": "#!/bin/sh\ntrue\n", "name": NAME, "hold": True,
                "working_directory": str(self.workdir)}  # fmt: skip
        accepted = service.submit_batch(ALICE, "local", BatchBody.model_validate(
            {"jobs": [spec] * count}))  # fmt: skip
        received = client("sqs").receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
        (message,) = received["Messages"]
        assert isinstance(QUEUE_MESSAGE.validate_json(message["Body"]), JobBatchMessage)
        return accepted.request_id, accepted.job_id_prefix, message

    def deliver(self, message: dict[str, Any], point: str) -> subprocess.CompletedProcess[str]:
        """The worker handler on one delivery of ``message``, dying at ``point``."""
        event = build_sqs_event([message], queue_arn=self.queue_arn, region=REGION)
        path = self.workdir / "event.json"
        path.write_text(json.dumps(event))
        return subprocess.run(
            [sys.executable, "-m", "tests.integration.crashing_worker", str(path), point],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip


def slurm_tokens(prefix: str) -> Counter[str]:
    out = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%k"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return Counter(line.strip() for line in out.splitlines() if line.startswith(f"hpcb:{prefix}"))


def assert_exactly_once(world: World, batch_id: str, prefix: str, count: int) -> None:
    """Slurm has one job per item; the batch and every job record agree with Slurm."""
    tokens = slurm_tokens(prefix)
    assert set(tokens) == {f"hpcb:{prefix}{i:06x}" for i in range(count)}
    assert max(tokens.values()) == 1, [t for t, n in tokens.items() if n > 1]
    batch = world.store.get(batch_id)
    assert batch.state is RequestState.SUCCEEDED
    assert batch.counts == {"SUBMITTED": count}
    jobs = world.store.jobs_by_id([f"{prefix}{i:06x}" for i in range(count)])
    assert {job.state for job in jobs.values()} == {JobState.PENDING}
    out = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%i %k"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    slurm_ids = dict(reversed(line.split()) for line in out.splitlines() if prefix in line)
    assert all(job.slurm_job_id == slurm_ids[f"hpcb:{job.job_id}"] for job in jobs.values())


@pytest.mark.parametrize("point", ["before-agent", "during-agent", "after-agent", "mid-records"])
def test_a_worker_killed_at_any_point_then_redelivered_makes_no_duplicate(
    world: World, point: str
) -> None:
    # GIVEN a chunk of 120 held jobs, taken from the queue by a worker
    batch_id, prefix, message = world.accept(JOBS)
    # WHEN the worker is killed at this point
    killed = world.deliver(message, point)
    assert killed.returncode == -9, killed.stderr[-2000:]
    in_slurm = sum(slurm_tokens(prefix).values())
    if point == "before-agent":
        assert in_slurm == 0
    elif point in {"after-agent", "mid-records"}:
        assert in_slurm == JOBS
    # AND SQS delivers the message again (its visibility timeout ran out) to a healthy worker
    redelivered = world.deliver(message, "none")
    # THEN it succeeds, and each job is in Slurm exactly once with its record complete
    assert redelivered.returncode == 0, redelivered.stderr[-2000:]
    assert json.loads(redelivered.stdout.splitlines()[-1]) == {"batchItemFailures": []}
    assert_exactly_once(world, batch_id, prefix, JOBS)


def test_a_runner_timeout_with_unknown_outcome_makes_no_duplicate(world: World) -> None:
    # GIVEN a chunk of 250 held jobs (one message), submitted one sbatch at a time (~1.5 s)
    world.env["HPCB_SUBMIT_CONCURRENCY"] = "1"
    count = 250
    batch_id, prefix, message = world.accept(count)
    # WHEN the runner times out once the first job is in Slurm (and kills the agent, mid-chunk)
    first = world.deliver(message, "runner-timeout")
    # THEN the worker reports the record failed (to be delivered again), not lost or failed
    assert first.returncode == 0, first.stderr[-2000:]
    assert len(json.loads(first.stdout.splitlines()[-1])["batchItemFailures"]) == 1
    assert world.store.get(batch_id).state is not RequestState.FAILED
    # AND part of the chunk reached Slurm before the agent died (the outcome really was unknown)
    assert 0 < sum(slurm_tokens(prefix).values()) < count
    # WHEN the message is delivered again
    world.env["HPCB_SUBMIT_CONCURRENCY"] = "4"
    again = world.deliver(message, "none")
    # THEN every job is in Slurm exactly once
    assert again.returncode == 0, again.stderr[-2000:]
    assert_exactly_once(world, batch_id, prefix, count)
