"""Job and DLQ worker handlers on real SQS/DynamoDB (moto over HTTP), runner scripted.

Messages are sent by the API's service, received from SQS, and turned into the Lambda event by
the local stack's event builder, exactly as the pollers do.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoStore
from broker.adapters.sqs import SqsRequestQueue
from broker.agent.protocol import AgentErrorInfo, AgentJobResult, AgentResponse
from broker.errors import RunnerTimeoutError, TransientError
from broker.jobs.accept import RequestService
from broker.jobs.dead_letters import DeadLetterService
from broker.jobs.dispatch import Dispatcher
from broker.jobs.models import JobSpec, slurm_token
from broker.jobs.records import JobState
from broker.local.context import LambdaContext
from broker.local.pollers import build_sqs_event
from broker.notifications.announcer import Announcer
from broker.requests.states import RequestState
from broker.schema import utcnow
from broker.settings import job_worker_settings
from broker.sweep.repairs import REQUEUE_AFTER
from broker.sweep.status import Sweeper
from tests.conftest import REGION, AwsResources
from tests.fakes import (
    EveryoneAs,
    FakeDirectory,
    FakeQueue,
    RecordingNotifier,
    ScriptedRunner,
    submitted,
)
from workers import dlq_worker, job_worker

OWNER = "arn:aws:iam::123456789012:user/alice"
SPEC = JobSpec(script="#!/bin/bash\necho hi\n")


@dataclass
class World:
    resources: AwsResources
    store: DynamoStore
    api: RequestService
    runner: ScriptedRunner
    sqs: Any

    def queue_url(self, logical_id: str = "RequestsQueue") -> str:
        return self.resources.provisioned.queue_url(logical_id)

    def queue_arn(self, logical_id: str = "RequestsQueue") -> str:
        return self.resources.provisioned.attribute(logical_id, "Arn")

    def receive(self, logical_id: str = "RequestsQueue") -> dict[str, Any]:
        answer = self.sqs.receive_message(
            QueueUrl=self.queue_url(logical_id),
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return build_sqs_event(
            answer.get("Messages", []), queue_arn=self.queue_arn(logical_id), region=REGION
        )


@pytest.fixture
def world(aws_resources: AwsResources, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("HPCB_TABLE_NAME", aws_resources.ref("RequestsTable"))
    monkeypatch.setenv("HPCB_RETRY_BASE_SECONDS", "0")
    monkeypatch.setenv("HPCB_TOPIC_ARN", aws_resources.ref("NotificationsTopic"))
    # These tests pin one head-node command per message (the baseline mode); the default,
    # single submissions coalesced per cluster, is covered by test_coalesced_* below.
    monkeypatch.setenv("HPCB_COALESCE_SUBMISSIONS", "false")
    job_worker_settings.cache_clear()
    store = DynamoStore(client("dynamodb"), aws_resources.ref("RequestsTable"))
    sqs = client("sqs")
    queue = SqsRequestQueue(sqs, aws_resources.provisioned.queue_url("RequestsQueue"))
    runner = ScriptedRunner()
    announcer = Announcer(store, RecordingNotifier())
    dispatcher = Dispatcher(
        store,
        FakeDirectory(),
        runner.runner_for,
        announcer,
    )
    monkeypatch.setattr(job_worker, "dispatcher", lambda: dispatcher)
    monkeypatch.setattr(job_worker, "request_queue", lambda: queue)
    monkeypatch.setattr(
        dlq_worker, "dead_letter_service", lambda: DeadLetterService(store, announcer)
    )
    return World(
        aws_resources,
        store,
        RequestService(store, queue, FakeDirectory(), users=EveryoneAs()),
        runner,
        sqs,
    )


def context() -> LambdaContext:
    return LambdaContext.for_invocation(
        function_name="JobWorkerFunction",
        timeout_s=150,
        memory_mb=512,
        region=REGION,
        account_id="123456789012",
    )


def test_a_batch_of_submissions_all_succeed(world: World) -> None:
    # GIVEN three accepted jobs and an agent that submits each
    ids = [world.api.submit_job(OWNER, "local", SPEC).request_id for _ in range(3)]
    world.runner.answers = [submitted(slurm_token(i), str(100 + n)) for n, i in enumerate(ids)]
    # WHEN the worker gets them as one SQS batch
    event = world.receive()
    result = job_worker.lambda_handler(event, context())
    # THEN no record failed and each request SUCCEEDED with its job id
    assert len(event["Records"]) == 3
    assert result == {"batchItemFailures": []}
    jobs = {i: world.store.get(i) for i in ids}
    assert all(r.state is RequestState.SUCCEEDED for r in jobs.values())
    assert sorted(r.result.job_id for r in jobs.values() if r.result) == ["100", "101", "102"]


def test_a_transient_failure_fails_only_that_record_and_comes_back(world: World) -> None:
    # GIVEN two jobs; the head node times out on the second
    first = world.api.submit_job(OWNER, "local", SPEC).request_id
    second = world.api.submit_job(OWNER, "local", SPEC).request_id
    world.runner.answers = [submitted(slurm_token(first)), RunnerTimeoutError("no answer")]
    # WHEN the worker handles the batch
    event = world.receive()
    result = job_worker.lambda_handler(event, context())
    # THEN only the second is reported failed, and it is still in progress with the error
    failed_ids = [f["itemIdentifier"] for f in result["batchItemFailures"]]
    by_request = {json.loads(r["body"])["request_id"]: r["messageId"] for r in event["Records"]}
    assert failed_ids == [by_request[second]]
    assert world.store.get(first).state is RequestState.SUCCEEDED
    retried = world.store.get(second)
    assert retried.state is RequestState.DISPATCHED
    assert retried.error is not None
    assert retried.error.code == "RUNNER_TIMEOUT"
    # AND its visibility was shortened (back-off 0 s here), so it is delivered again at once
    # (the local poller, like Lambda, deletes only the successful message)
    world.sqs.delete_message(
        QueueUrl=world.queue_url(),
        ReceiptHandle=next(
            r["receiptHandle"] for r in event["Records"] if r["messageId"] != failed_ids[0]
        ),
    )
    again = world.receive()
    assert [json.loads(r["body"])["request_id"] for r in again["Records"]] == [second]
    assert again["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"


def test_a_permanent_failure_is_recorded_and_acknowledged(world: World) -> None:
    # GIVEN a job whose cluster vanished before dispatch
    request_id = world.api.submit_job(OWNER, "local", SPEC).request_id
    dispatcher = Dispatcher(
        world.store,
        FakeDirectory(names=frozenset()),
        world.runner.runner_for,
        Announcer(world.store, RecordingNotifier()),
    )
    # WHEN the worker handles it
    job_worker.dispatcher = lambda: dispatcher  # type: ignore[assignment]
    result = job_worker.lambda_handler(world.receive(), context())
    # THEN the record is not retried, and the request FAILED with a permanent error
    assert result == {"batchItemFailures": []}
    record = world.store.get(request_id)
    assert record.state is RequestState.FAILED
    assert record.error is not None
    assert (record.error.code, record.error.transient) == ("CLUSTER_NOT_FOUND", False)


def test_a_malformed_message_is_failed_not_dropped(world: World) -> None:
    # GIVEN a message that is not a job submission
    world.sqs.send_message(QueueUrl=world.queue_url(), MessageBody='{"hello": "world"}')
    # WHEN the worker handles it / THEN it is reported failed (it will reach the DLQ)
    event = world.receive()
    result = job_worker.lambda_handler(event, context())
    assert [f["itemIdentifier"] for f in result["batchItemFailures"]] == [
        event["Records"][0]["messageId"]
    ]


def test_concurrent_invocations_each_report_their_own_failures(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN two invocations of the job worker running at once in one process (the local
    # stack's pollers are threads): the first gets a message that fails, then one that takes a
    # while; the second gets a message that succeeds, all while the first is still handling
    ids = [world.api.submit_job(OWNER, "local", SPEC).request_id for _ in range(3)]
    by_id = {json.loads(r["body"])["request_id"]: r for r in world.receive()["Records"]}
    failing, slow, fast = (by_id[i] for i in ids)
    inside, release = threading.Event(), threading.Event()

    class Dispatching:
        def handle(self, message: Any) -> str:
            if message.request_id == ids[0]:
                raise TransientError("slurmctld busy", code="SCHEDULER_UNAVAILABLE")
            if message.request_id == ids[1]:
                inside.set()
                release.wait(30)
            return "succeeded"

    monkeypatch.setattr(job_worker, "dispatcher", Dispatching)
    answers: list[Any] = []
    first = threading.Thread(target=lambda: answers.append(
        job_worker.lambda_handler({"Records": [failing, slow]}, context())))  # fmt: skip
    first.start()
    assert inside.wait(30)
    # WHEN the second invocation runs to its end meanwhile, then the first ends
    second = job_worker.lambda_handler({"Records": [fast]}, context())
    release.set()
    first.join(30)
    # THEN each reports its own outcome: the failed message is listed, so it comes back (left
    # unlisted, it would be deleted and its request never end); the others are not
    assert second == {"batchItemFailures": []}
    assert answers == [{"batchItemFailures": [{"itemIdentifier": failing["messageId"]}]}]


def test_a_dead_letter_ends_its_request_failed(world: World) -> None:
    # GIVEN a request that failed transiently, whose message then reached the DLQ
    request_id = world.api.submit_job(OWNER, "local", SPEC).request_id
    world.runner.answers = [RunnerTimeoutError("no answer")]
    job_worker.lambda_handler(world.receive(), context())
    body = json.dumps({"version": 1, "kind": "job.submit", "request_id": request_id})
    world.sqs.send_message(QueueUrl=world.queue_url("RequestsDLQ"), MessageBody=body)
    # WHEN the DLQ worker handles it
    result = dlq_worker.lambda_handler(world.receive("RequestsDLQ"), context())
    # THEN the request is FAILED with RETRIES_EXHAUSTED and the last error
    assert result == {"batchItemFailures": []}
    record = world.store.get(request_id)
    assert record.state is RequestState.FAILED
    assert record.error is not None
    assert record.error.code == "RETRIES_EXHAUSTED"
    assert "RUNNER_TIMEOUT" in record.error.message


def dead_submission(
    world: World, monkeypatch: pytest.MonkeyPatch, in_slurm: str | None
) -> tuple[str, dict[str, Any]]:
    """A submission whose sbatch ran but whose answer was lost, its message then in the DLQ as
    the job worker got it, handled by the DLQ worker, whose look-up on the head node finds the
    job as Slurm job ``in_slurm`` (None: not found); (request id, the DLQ worker's answer)."""
    request_id = world.api.submit_job(OWNER, "local", SPEC).request_id
    event = world.receive()
    world.runner.answers = [RunnerTimeoutError("no answer")]
    job_worker.lambda_handler(event, context())
    body = event["Records"][0]["body"]
    world.sqs.send_message(QueueUrl=world.queue_url("RequestsDLQ"), MessageBody=body)
    store, announcer = world.store, Announcer(world.store, RecordingNotifier())
    lookup = Dispatcher(store, FakeDirectory(), world.runner.runner_for, announcer)
    dead = DeadLetterService(store, announcer, lookup)
    monkeypatch.setattr(dlq_worker, "dead_letter_service", lambda: dead)
    token = slurm_token(request_id)
    world.runner.answers = [
        submitted(token, in_slurm, reused=True)
        if in_slurm
        else AgentResponse(ok=True, op="submit", results=[AgentJobResult(
            token=token, error=AgentErrorInfo(code="NOT_SUBMITTED", message="not found"))])
    ]  # fmt: skip
    answer: dict[str, Any] = dlq_worker.lambda_handler(world.receive("RequestsDLQ"), context())
    return request_id, answer


def test_a_dead_submission_whose_job_is_in_slurm_is_recorded_not_failed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a submission whose deliveries ran out after its sbatch ran (its answer lost)
    # WHEN the DLQ worker handles the dead letter and the head node finds it as Slurm job 100
    request_id, answer = dead_submission(world, monkeypatch, in_slurm="100")
    # THEN the look-up submitted nothing, and the job is recorded there: PENDING, request
    # SUCCEEDED (not FAILED with a job running in Slurm)
    assert answer == {"batchItemFailures": []}
    assert world.runner.calls[-1].find_only is True
    job = world.store.get_job(request_id)
    assert (job.state, job.slurm_job_id) == (JobState.PENDING, "100")
    assert world.store.get(request_id).state is RequestState.SUCCEEDED


def test_a_dead_submission_whose_job_is_not_in_slurm_fails(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a dead submission / WHEN the head node does not find its job
    request_id, answer = dead_submission(world, monkeypatch, in_slurm=None)
    # THEN the request is FAILED (RETRIES_EXHAUSTED) and its job SUBMIT_FAILED
    assert answer == {"batchItemFailures": []}
    record = world.store.get(request_id)
    assert record.state is RequestState.FAILED
    assert record.error is not None
    assert record.error.code == "RETRIES_EXHAUSTED"
    assert world.store.get_job(request_id).state is JobState.SUBMIT_FAILED


def test_a_submit_whose_message_was_lost_is_sent_again_by_the_sweep_and_submitted_once(
    world: World,
) -> None:
    # GIVEN a submit recorded in DynamoDB whose message never reached SQS (the API died)
    lost = RequestService(world.store, FakeQueue(), FakeDirectory(), users=EveryoneAs())
    request_id = lost.submit_job(OWNER, "local", SPEC).request_id
    assert world.receive()["Records"] == []
    # WHEN a sweep runs after the threshold, twice (the second while the re-send is fresh)
    later = utcnow() + REQUEUE_AFTER + timedelta(seconds=1)
    queue = SqsRequestQueue(world.sqs, world.queue_url())
    sweep = Sweeper(world.store, FakeDirectory(), world.runner.runner_for,
                    Announcer(world.store, RecordingNotifier()), now=lambda: later,
                    queue=queue)  # fmt: skip
    assert [sweep.sweep().requeued for _ in range(2)] == [1, 0]
    # AND the job worker handles what the queue now holds
    world.runner.answers = [submitted(slurm_token(request_id), "100")]
    event = world.receive()
    result = job_worker.lambda_handler(event, context())
    # THEN one message was delivered, the job is in Slurm once, and the request SUCCEEDED
    assert len(event["Records"]) == 1
    assert result == {"batchItemFailures": []}
    assert [call.op for call in world.runner.calls] == ["submit"]
    assert world.store.get(request_id).state is RequestState.SUCCEEDED
    job = world.store.get_job(request_id)
    assert (job.state, job.slurm_job_id) == (JobState.PENDING, "100")
    assert world.receive()["Records"] == []


# -- single submissions coalesced (the default) ----------------------------------------------


@pytest.fixture
def coalesced(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("HPCB_COALESCE_SUBMISSIONS", "true")
    job_worker_settings.cache_clear()
    return world


def answers(*results: AgentJobResult) -> AgentResponse:
    return AgentResponse(ok=True, op="submit", results=list(results))


def test_coalesced_singles_of_one_cluster_share_one_agent_call(coalesced: World) -> None:
    # GIVEN five single submissions accepted for one cluster
    ids = [coalesced.api.submit_job(OWNER, "local", SPEC).request_id for _ in range(5)]
    results = [AgentJobResult(token=slurm_token(i), job_id=str(200 + n)) for n, i in enumerate(ids)]
    coalesced.runner.answers = [answers(*results)]
    # WHEN the worker gets them as one SQS batch
    event = coalesced.receive()
    result = job_worker.lambda_handler(event, context())
    # THEN one head-node command submitted all five, each as its caller's user, and each
    # request SUCCEEDED with its own Slurm id
    assert len(event["Records"]) == 5
    assert result == {"batchItemFailures": []}
    (call,) = coalesced.runner.calls
    assert sorted(job.token for job in call.jobs) == sorted(slurm_token(i) for i in ids)
    assert {job.user for job in call.jobs} == {"hpcb-dev"}
    got = {i: coalesced.store.get(i).result for i in ids}
    assert {i: r.job_id for i, r in got.items() if r} == {
        i: str(200 + n) for n, i in enumerate(ids)
    }


def test_a_message_that_keeps_failing_a_grouped_command_is_then_submitted_alone(
    coalesced: World,
) -> None:
    # GIVEN two singles whose shared head-node command fails as a whole (one is a poison)
    ids = [coalesced.api.submit_job(OWNER, "local", SPEC).request_id for _ in range(2)]
    event = coalesced.receive()
    coalesced.runner.answers = [TransientError("poisoned command", code="AGENT_CRASHED")]
    assert len(job_worker.lambda_handler(event, context())["batchItemFailures"]) == 2
    # WHEN both come back on their third delivery; the poison's command fails again, the
    # other's succeeds
    for record in event["Records"]:
        record["attributes"]["ApproximateReceiveCount"] = "3"
    poison, healthy = (json.loads(r["body"])["request_id"] for r in event["Records"])
    coalesced.runner.answers = [
        TransientError("poisoned command", code="AGENT_CRASHED"),
        submitted(slurm_token(healthy), "400"),
    ]
    result = job_worker.lambda_handler(event, context())
    # THEN each had a command of its own: the healthy one SUCCEEDED, only the poison failed
    assert [len(c.jobs) for c in coalesced.runner.calls] == [2, 1, 1]
    assert [f["itemIdentifier"] for f in result["batchItemFailures"]] == [
        event["Records"][0]["messageId"]
    ]
    assert coalesced.store.get(healthy).state is RequestState.SUCCEEDED
    assert coalesced.store.get(poison).state is RequestState.DISPATCHED
    assert sorted(ids) == sorted([poison, healthy])


def test_coalesced_only_the_unsure_item_comes_back_and_is_not_submitted_twice(
    coalesced: World,
) -> None:
    # GIVEN three singles; the agent submits two, and for the third answers a transient error
    ids = [coalesced.api.submit_job(OWNER, "local", SPEC).request_id for _ in range(3)]
    unsure = AgentErrorInfo(code="SCHEDULER_UNAVAILABLE", message="slurmctld busy", transient=True)
    coalesced.runner.answers = [answers(
        AgentJobResult(token=slurm_token(ids[0]), job_id="300"),
        AgentJobResult(token=slurm_token(ids[1]), job_id="301"),
        AgentJobResult(token=slurm_token(ids[2]), error=unsure),
    )]  # fmt: skip
    # WHEN the worker handles the batch
    event = coalesced.receive()
    result = job_worker.lambda_handler(event, context())
    # THEN only the third message is reported failed (to come back), with its error recorded
    by_request = {json.loads(r["body"])["request_id"]: r["messageId"] for r in event["Records"]}
    assert result == {"batchItemFailures": [{"itemIdentifier": by_request[ids[2]]}]}
    assert [coalesced.store.get(i).state for i in ids[:2]] == [RequestState.SUCCEEDED] * 2
    retried = coalesced.store.get(ids[2])
    assert (retried.state, retried.error.code if retried.error else None) == (
        RequestState.DISPATCHED, "SCHEDULER_UNAVAILABLE",
    )  # fmt: skip
    # WHEN all three are delivered again (at-least-once), the agent finding the third in Slurm
    coalesced.runner.answers = [submitted(slurm_token(ids[2]), "302", reused=True)]
    redelivered = {"Records": event["Records"]}
    again = job_worker.lambda_handler(redelivered, context())
    # THEN the two done are skipped without an agent call, the third gets its job id once
    assert again == {"batchItemFailures": []}
    assert [len(c.jobs) for c in coalesced.runner.calls] == [3, 1]
    assert coalesced.store.get(ids[2]).result.job_id == "302"  # type: ignore[union-attr]


def test_coalesced_call_that_fails_ends_every_message_in_it(coalesced: World) -> None:
    # GIVEN two singles and a head node that does not answer
    ids = [coalesced.api.submit_job(OWNER, "local", SPEC).request_id for _ in range(2)]
    coalesced.runner.answers = [RunnerTimeoutError("no answer")]
    # WHEN the worker handles them
    result = job_worker.lambda_handler(coalesced.receive(), context())
    # THEN both come back (transient), each with the error recorded, after one call
    assert len(result["batchItemFailures"]) == 2
    assert len(coalesced.runner.calls) == 1
    for request_id in ids:
        record = coalesced.store.get(request_id)
        assert record.error is not None
        assert (record.state, record.error.code) == (RequestState.DISPATCHED, "RUNNER_TIMEOUT")


def test_coalescing_never_mixes_clusters(coalesced: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN singles for two clusters in one SQS batch, and a worker that knows both
    both = FakeDirectory(frozenset({"local", "other"}))
    queue = SqsRequestQueue(coalesced.sqs, coalesced.queue_url())
    service = RequestService(coalesced.store, queue, both, users=EveryoneAs())
    announcer = Announcer(coalesced.store, RecordingNotifier())
    worker = Dispatcher(
        coalesced.store,
        both,
        coalesced.runner.runner_for,
        announcer,
    )
    monkeypatch.setattr(job_worker, "dispatcher", lambda: worker)
    mine = [service.submit_job(OWNER, c, SPEC).request_id for c in ("local", "other", "local")]
    coalesced.runner.answers = [
        answers(*(AgentJobResult(token=slurm_token(mine[i]), job_id=f"4{i}") for i in (0, 2))),
        submitted(slurm_token(mine[1]), "41"),
    ]
    # WHEN the worker handles them
    result = job_worker.lambda_handler(coalesced.receive(), context())
    # THEN one command for "local" with its two jobs, and "other"'s job in a command of its own
    assert result == {"batchItemFailures": []}
    assert [sorted(j.token for j in c.jobs) for c in coalesced.runner.calls] == [
        sorted(slurm_token(mine[i]) for i in (0, 2)),
        [slurm_token(mine[1])],
    ]
