"""Batch submission on real SQS/DynamoDB (moto over HTTP) with a scripted head-node agent:
per-item validation, chunked queueing, one agent call per chunk, exact counts across
redeliveries, back-pressure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from werkzeug.test import Client

from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoStore
from broker.adapters.sqs import SqsRequestQueue
from broker.agent.protocol import AgentErrorInfo, AgentJobResult, AgentRequest, AgentResponse
from broker.api import services as api_services
from broker.api.handler import lambda_handler
from broker.batches import accept as service_module
from broker.batches.models import JobBatchMessage
from broker.jobs.accept import RequestService
from broker.jobs.dead_letters import DeadLetterService
from broker.jobs.dispatch import Dispatcher
from broker.jobs.records import JobState
from broker.local.apigw import ApiGatewayApp, ApiRoute
from broker.local.context import LambdaContext
from broker.local.pollers import build_sqs_event
from broker.notifications.announcer import Announcer
from broker.ports import ClusterTarget, Limits
from broker.requests.models import QUEUE_MESSAGE, AnyMessage
from broker.requests.states import RequestState
from broker.schema import utcnow
from broker.settings import job_worker_settings
from broker.sweep.repairs import BATCH_LOST_AFTER, LOST_CHUNK_REASON
from broker.sweep.status import Sweeper
from tests.conftest import AwsResources
from tests.fakes import EveryoneAs, FakeDirectory, FakeQueue, RecordingNotifier
from tests.functional.aws_faults import FaultyClient, cancelled
from workers import dlq_worker, job_worker

ALICE = "arn:aws:iam::123456789012:user/alice"
SCRIPT = "#!/bin/bash\ntrue\n"


class FakeSlurm:
    """An agent that submits every job (ids from 1000), remembering tokens like the real one."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.calls: list[AgentRequest] = []
        self.reject: set[int] = set()
        self.unsure: set[int] = set()

    def run(self, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        self.calls.append(request)
        results = []
        if request.find_only:
            return AgentResponse(ok=True, op="submit", results=[self._found(j.token)
                                                                for j in request.jobs])  # fmt: skip
        for job in request.jobs:
            index = int(job.token[-6:], 16)
            if index in self.reject | self.unsure:
                error = AgentErrorInfo(code="SCHEDULER_REJECTED", message="nope",
                                       transient=index in self.unsure)  # fmt: skip
                results.append(AgentJobResult(token=job.token, error=error))
                continue
            reused = job.token in self.tokens
            if not reused:
                self.tokens[job.token] = str(1000 + len(self.tokens))
            results.append(
                AgentJobResult(token=job.token, job_id=self.tokens[job.token], reused=reused)
            )
        return AgentResponse(ok=True, op="submit", results=results)

    def _found(self, token: str) -> AgentJobResult:
        """The answer of a look-up (``find_only``): the job carrying the token, or none."""
        if int(token[-6:], 16) in self.unsure:
            error = AgentErrorInfo(code="SCHEDULER_UNAVAILABLE", message="?", transient=True)
            return AgentJobResult(token=token, error=error)
        if token in self.tokens:
            return AgentJobResult(token=token, job_id=self.tokens[token], reused=True)
        error = AgentErrorInfo(code="NOT_SUBMITTED", message="no job carries the token")
        return AgentJobResult(token=token, error=error)

    def runner_for(self, mode: str) -> FakeSlurm:
        return self


@dataclass
class World:
    store: DynamoStore
    api: Client
    slurm: FakeSlurm
    worker: Dispatcher
    sqs: Any
    queue_url: str

    def post(self, body: dict[str, Any], **headers: str) -> Any:
        return self.api.post("/v1/clusters/local/jobs:batch", json=body, headers=headers)

    def drain(self) -> list[AnyMessage]:
        messages: list[AnyMessage] = []
        while True:
            answer = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
            if not answer.get("Messages"):
                return messages
            for raw in answer["Messages"]:
                messages.append(QUEUE_MESSAGE.validate_json(raw["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=raw["ReceiptHandle"])


@pytest.fixture
def world(aws_resources: AwsResources, monkeypatch: pytest.MonkeyPatch) -> World:
    store = DynamoStore(client("dynamodb"), aws_resources.ref("RequestsTable"))
    queue_url = aws_resources.provisioned.queue_url("RequestsQueue")
    queue = SqsRequestQueue(client("sqs"), queue_url)
    limits = Limits(cluster_backlog=5000, owner_inflight=5000)
    service = RequestService(store, queue, FakeDirectory(), limits=limits, users=EveryoneAs())
    monkeypatch.setattr(api_services, "request_service", lambda: service)
    route = ApiRoute(resource="/{proxy+}", method="ANY", handler=lambda_handler,
                     function_name="ApiFunction")  # fmt: skip
    api = Client(ApiGatewayApp([route], default_principal=ALICE))
    slurm = FakeSlurm()
    worker = Dispatcher(store, FakeDirectory(), slurm.runner_for,  # type: ignore[arg-type]
                        Announcer(store, RecordingNotifier()),)  # fmt: skip
    return World(store, api, slurm, worker, client("sqs"), queue_url)


def jobs(count: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"script": SCRIPT, "name": f"sweep-{i}", **extra} for i in range(count)]


def test_a_batch_is_accepted_with_invalid_items_listed(world: World) -> None:
    # GIVEN 30 jobs, two of them invalid
    body = jobs(30)
    body[3]["nodes"] = 0
    body[17]["partition"] = "a;b"
    # WHEN posted
    answer = world.post({"jobs": body})
    # THEN 202: 28 accepted, the two listed with their fields, job ids computable from the prefix
    assert answer.status_code == 202
    accepted = answer.get_json()
    assert (accepted["accepted"], accepted["rejected_count"]) == (28, 2)
    assert [(r["index"], r["fields"][0]["field"]) for r in accepted["rejected"]] == [
        (3, "body.jobs.3.nodes"), (17, "body.jobs.17.partition"),
    ]  # fmt: skip
    prefix = accepted["job_id_prefix"]
    assert world.store.get_job(f"{prefix}{0:06x}").state is JobState.SUBMITTING
    # AND the request shows 28 items, none finished, and a page of them
    view = world.api.get(f"{accepted['location']}?items_limit=5").get_json()
    assert (view["kind"], view["items"], view["counts"]) == ("job.batch", 28, {})
    assert [i["index"] for i in view["item_page"]] == [0, 1, 2, 4]
    assert view["next_items_from"] == 5


def test_an_atomic_batch_with_an_invalid_item_is_rejected_whole(world: World) -> None:
    # GIVEN an atomic batch with one bad item / WHEN posted
    body = jobs(5)
    body[2]["array"] = "x"
    answer = world.post({"jobs": body, "atomic": True})
    # THEN 422 naming the item's field, and nothing queued
    assert answer.status_code == 422
    error = answer.get_json()["error"]
    assert error["code"] == "BATCH_REJECTED"
    assert [f["field"] for f in error["fields"]] == ["body.jobs.2.array"]
    assert world.drain() == []


def test_more_than_10000_items_is_422(world: World) -> None:
    # GIVEN 10,001 items / THEN 422 on body.jobs
    answer = world.post({"jobs": jobs(10_001)})
    assert answer.status_code == 422
    assert answer.get_json()["error"]["fields"][0]["field"] == "body.jobs"


def test_a_body_over_5_mib_is_413(world: World) -> None:
    # GIVEN a batch body over 5 MiB / THEN 413 before anything is parsed
    big = [{"script": "#!/bin/sh\n" + "y" * 60_000}] * 100  # 6 MB
    answer = world.post({"jobs": big})
    assert answer.status_code == 413


def test_the_worker_submits_each_chunk_in_one_agent_call_and_counts_exactly(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN chunks of 50 (moto's transactions cost O(table): see broker/local/moto_patches.py),
    # and an accepted batch of 250 jobs, one of which Slurm rejects
    monkeypatch.setattr(service_module, "CHUNK_ITEMS", 50)
    accepted = world.post({"jobs": jobs(250)}).get_json()
    world.slurm.reject = {7}
    messages = world.drain()
    # WHEN the worker handles every chunk, and then every chunk a second time (redelivery)
    for message in messages + messages:
        world.worker.handle(message)
    # THEN chunks were few (<= CHUNK_ITEMS jobs each) and at most one agent call per chunk
    assert all(isinstance(m, JobBatchMessage) for m in messages)
    assert len(messages) == len(world.slurm.calls) == 5
    assert max(len(m.items) for m in messages if isinstance(m, JobBatchMessage)) <= 50
    # AND every job reached Slurm exactly once, and the counts are exact despite the redelivery
    assert len(world.slurm.tokens) == 249
    batch = world.store.get(accepted["request_id"])
    assert batch.counts == {"SUBMITTED": 249, "FAILED": 1}
    assert batch.state is RequestState.SUCCEEDED
    failed = world.store.get_job(f"{accepted['job_id_prefix']}{7:06x}")
    assert failed.state is JobState.SUBMIT_FAILED
    assert world.store.backlog("CLUSTER", "local") == 0


def test_chunks_drained_together_share_one_agent_call_and_each_message_ends_on_its_own(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a batch of 5 chunks of 20 drained in one SQS batch; Slurm rejects item 7 for good
    # and cannot say yet for item 45 (chunk 2)
    monkeypatch.setattr(service_module, "CHUNK_ITEMS", 20)
    accepted = world.post({"jobs": jobs(100)}).get_json()
    world.slurm.reject, world.slurm.unsure = {7}, {45}
    messages = world.drain()
    event = build_sqs_event(
        [{"MessageId": f"m-{i}", "ReceiptHandle": f"h-{i}", "Body": m.model_dump_json(),
          "Attributes": {"ApproximateReceiveCount": "1"}} for i, m in enumerate(messages)],
        queue_arn="arn:aws:sqs:us-east-1:123456789012:requests", region="us-east-1",
    )  # fmt: skip
    queue = FakeQueue()
    monkeypatch.setenv("HPCB_TABLE_NAME", world.store._table)
    monkeypatch.setenv("HPCB_TOPIC_ARN", "arn:aws:sns:us-east-1:123456789012:unused")
    job_worker_settings.cache_clear()
    monkeypatch.setattr(job_worker, "dispatcher", lambda: world.worker)
    monkeypatch.setattr(job_worker, "request_queue", lambda: queue)
    # WHEN the job worker handles the SQS batch
    answer = job_worker.lambda_handler(event, worker_context())
    # THEN one agent call carried all 100 jobs
    assert len(messages) == 5
    assert [len(call.jobs) for call in world.slurm.calls] == [100]
    # AND only chunk 2's message comes back (with back-off), for its one unsure item
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m-2"}]}
    assert [delay[1] for delay in queue.delays] == ["h-2"]
    batch = world.store.get(accepted["request_id"])
    assert batch.counts == {"SUBMITTED": 98, "FAILED": 1}
    assert world.store.get_job(f"{accepted['job_id_prefix']}{45:06x}").state is JobState.SUBMITTING
    # WHEN chunk 2 comes back alone and Slurm now takes item 45
    world.slurm.unsure = set()
    answer = job_worker.lambda_handler(build_sqs_event(
        [{"MessageId": "m-2", "ReceiptHandle": "h-2b", "Body": messages[2].model_dump_json(),
          "Attributes": {"ApproximateReceiveCount": "2"}}],
        queue_arn="arn:aws:sqs:us-east-1:123456789012:requests", region="us-east-1",
    ), worker_context())  # fmt: skip
    # THEN the batch ends with every item counted once, and nothing was submitted twice
    assert answer == {"batchItemFailures": []}
    assert [len(call.jobs) for call in world.slurm.calls] == [100, 1]
    assert world.store.get(accepted["request_id"]).counts == {"SUBMITTED": 99, "FAILED": 1}
    assert world.store.get(accepted["request_id"]).state is RequestState.SUCCEEDED
    assert len(world.slurm.tokens) == 99


def worker_context() -> LambdaContext:
    return LambdaContext.for_invocation(function_name="JobWorkerFunction", timeout_s=150,
                                        memory_mb=512, region="us-east-1",
                                        account_id="123456789012")  # fmt: skip


def test_a_chunk_redelivered_after_sbatch_but_before_the_records_makes_no_duplicate(
    world: World,
) -> None:
    # GIVEN a chunk whose first attempt ran sbatch for all its jobs and then died
    accepted = world.post({"jobs": jobs(50)}).get_json()
    (message,) = world.drain()
    assert isinstance(message, JobBatchMessage)
    world.slurm.run(ClusterTarget(name="local", mode="local"), _agent_request(message))
    # WHEN the message is delivered again
    world.worker.handle(message)
    # THEN every job is recorded with the job sbatch already made; none was submitted twice
    assert len(world.slurm.tokens) == 50
    batch = world.store.get(accepted["request_id"])
    assert batch.counts == {"SUBMITTED": 50}
    job = world.store.get_job(message.items[0].job_id)
    assert job.slurm_job_id == world.slurm.tokens[f"hpcb:{message.items[0].job_id}"]


def test_a_batch_past_the_backlog_limit_is_429(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a cluster backlog limit of 100 with 60 waiting
    store = world.store
    queue = SqsRequestQueue(world.sqs, world.queue_url)
    tight = RequestService(store, queue, FakeDirectory(),
                           limits=Limits(cluster_backlog=100, owner_inflight=1000,
                                         retry_after_seconds=30), users=EveryoneAs())  # fmt: skip
    monkeypatch.setattr(api_services, "request_service", lambda: tight)
    assert world.post({"jobs": jobs(60)}).status_code == 202
    # WHEN 50 more arrive / THEN 429 with Retry-After, nothing recorded for them
    answer = world.post({"jobs": jobs(50)})
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "30"
    assert store.backlog("CLUSTER", "local") == 60


def _agent_request(message: JobBatchMessage) -> AgentRequest:
    from broker.agent.protocol import AgentJob  # noqa: PLC0415

    return AgentRequest(
        op="submit",
        jobs=[AgentJob.of(f"hpcb:{i.job_id}", i.spec, user="hpcb-dev") for i in message.items],
    )


def test_idempotency_key_replays_a_batch(world: World, monkeypatch: pytest.MonkeyPatch,
                                         aws_resources: AwsResources) -> None:  # fmt: skip
    # GIVEN idempotency configured and a batch posted with a key
    from broker.settings import api_settings  # noqa: PLC0415

    monkeypatch.setenv("HPCB_TABLE_NAME", aws_resources.ref("RequestsTable"))
    monkeypatch.setenv("HPCB_QUEUE_URL", world.queue_url)
    monkeypatch.setenv("HPCB_IDEMPOTENCY_TABLE", aws_resources.ref("IdempotencyTable"))
    api_settings.cache_clear()
    first = world.post({"jobs": jobs(20)}, **{"Idempotency-Key": "sweep-42"})
    # WHEN the client retries the same call
    second = world.post({"jobs": jobs(20)}, **{"Idempotency-Key": "sweep-42"})
    # THEN the same batch comes back, replayed, and only 20 jobs were queued
    assert first.get_json() == second.get_json()
    assert second.headers["Idempotent-Replayed"] == "true"
    queued = world.drain()
    assert sum(len(m.items) for m in queued if isinstance(m, JobBatchMessage)) == 20
    assert json.dumps(first.get_json())


def test_a_chunk_whose_outcome_transactions_are_cancelled_ends_in_one_delivery(
    world: World, aws_resources: AwsResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a chunk of 50 jobs (two outcome transactions), and DynamoDB cancelling three of its
    # outcome transactions in a row (a conflict on the batch's shared counts, then throttling),
    # as it does when chunks of one batch are closed at once
    monkeypatch.setattr("broker.adapters.dynamodb.batches.OUTCOME_BACKOFF_S", 0.0, raising=False)
    accepted = world.post({"jobs": jobs(50)}).get_json()
    (message,) = world.drain()
    faulty = FaultyClient(client("dynamodb"))
    faulty.fail(
        "transact_write_items",
        cancelled("None", "TransactionConflict", "None"),
        cancelled("None", "None", "TransactionConflict"),
        cancelled("ThrottlingError", "None", "None"),
    )
    store = DynamoStore(faulty, aws_resources.ref("RequestsTable"))
    worker = Dispatcher(store, FakeDirectory(), world.slurm.runner_for,  # type: ignore[arg-type]
                        Announcer(store, RecordingNotifier()))  # fmt: skip
    # WHEN the worker handles it once
    outcome = worker.handle(message)
    # THEN the delivery succeeds (no receive spent on a retry): every job recorded once, counts
    # exact, the batch ended, no reservation left
    assert outcome == "succeeded"
    assert faulty.failed == ["transact_write_items"] * 3
    batch = world.store.get(accepted["request_id"])
    assert batch.counts == {"SUBMITTED": 50}
    assert batch.state is RequestState.SUCCEEDED
    assert world.store.backlog("CLUSTER", "local") == 0


def test_a_dead_lettered_chunk_fails_its_items_and_the_batch_still_ends(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a batch of two chunks; the first is submitted, the second exhausts its deliveries
    monkeypatch.setattr(service_module, "CHUNK_ITEMS", 10)
    accepted = world.post({"jobs": jobs(20)}).get_json()
    first, second = world.drain()
    world.worker.handle(first)
    # WHEN the DLQ worker handles the dead chunk (nothing looked up in Slurm)
    assert dead_letter(world, second, monkeypatch, lookup=None) == {"batchItemFailures": []}
    # THEN its 10 items are SUBMIT_FAILED, the others untouched, and the batch ended with counts
    assert isinstance(second, JobBatchMessage)
    states = {world.store.get_job(i.job_id).state for i in second.items}
    assert states == {JobState.SUBMIT_FAILED}
    batch = world.store.get(accepted["request_id"])
    assert batch.counts == {"SUBMITTED": 10, "FAILED": 10}
    assert batch.state is RequestState.SUCCEEDED
    # AND no back-pressure reservation is left behind
    assert world.store.backlog("CLUSTER", "local") == 0
    assert world.store.backlog("OWNER", ALICE) == 0


#: ``dead_letter``'s default look-up: the world's dispatcher (and its fake Slurm).
WORLD_WORKER: Any = object()


def dead_letter(
    world: World, message: AnyMessage, monkeypatch: pytest.MonkeyPatch, lookup: Any = WORLD_WORKER
) -> Any:
    """The DLQ worker on one dead letter, asking ``lookup`` what is in Slurm (default: the
    world's dispatcher; None: nothing is looked up): its answer."""
    slurm = world.worker if lookup is WORLD_WORKER else lookup
    dead = DeadLetterService(world.store, Announcer(world.store, RecordingNotifier()), slurm)
    monkeypatch.setattr(dlq_worker, "dead_letter_service", lambda: dead)
    event = build_sqs_event(
        [{"MessageId": "m-1", "ReceiptHandle": "h-1", "Body": message.model_dump_json()}],
        queue_arn="arn:aws:sqs:us-east-1:123456789012:dlq",
        region="us-east-1",
    )
    context = LambdaContext.for_invocation(function_name="DlqWorkerFunction", timeout_s=30,
                                           memory_mb=512, region="us-east-1",
                                           account_id="123456789012")  # fmt: skip
    return dlq_worker.lambda_handler(event, context)


def test_a_dead_lettered_chunk_records_its_jobs_in_slurm_and_fails_only_the_others(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a chunk of 10 whose deliveries ran out after sbatch had made 6 of its jobs (their
    # outcome writes kept failing): 6 in Slurm, no record of any
    accepted = world.post({"jobs": jobs(10)}).get_json()
    (message,) = world.drain()
    assert isinstance(message, JobBatchMessage)
    first_six = message.model_copy(update={"items": message.items[:6]})
    world.slurm.run(ClusterTarget(name="local", mode="local"), _agent_request(first_six))
    # WHEN the DLQ worker handles the dead chunk
    assert dead_letter(world, message, monkeypatch) == {"batchItemFailures": []}
    # THEN the 6 in Slurm are recorded PENDING with their Slurm ids; only the 4 others failed
    records = [world.store.get_job(item.job_id) for item in message.items]
    assert [r.state for r in records] == [JobState.PENDING] * 6 + [JobState.SUBMIT_FAILED] * 4
    assert [r.slurm_job_id for r in records[:6]] == [
        world.slurm.tokens[f"hpcb:{item.job_id}"] for item in message.items[:6]
    ]
    assert all(r.reason for r in records[6:])
    # AND nothing was submitted by the look-up, the batch ended with exact counts, no reservation
    assert len(world.slurm.tokens) == 6
    assert world.slurm.calls[-1].find_only is True
    batch = world.store.get(accepted["request_id"])
    assert (batch.state, batch.counts) == (RequestState.SUCCEEDED, {"SUBMITTED": 6, "FAILED": 4})
    assert world.store.backlog("CLUSTER", "local") == 0


def test_a_dead_lettered_chunk_the_head_node_cannot_look_up_is_retried_not_failed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a dead chunk of 10, all in Slurm, and a head node that cannot tell about item 3
    world.post({"jobs": jobs(10)})
    (message,) = world.drain()
    assert isinstance(message, JobBatchMessage)
    world.slurm.run(ClusterTarget(name="local", mode="local"), _agent_request(message))
    world.slurm.unsure = {3}
    # WHEN the DLQ worker handles it
    answer = dead_letter(world, message, monkeypatch)
    # THEN the dead letter fails (it comes back), and no item was failed
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}
    records = world.store.jobs_by_id([item.job_id for item in message.items])
    assert JobState.SUBMIT_FAILED not in {r.state for r in records.values()}
    # WHEN it comes back and the head node answers / THEN all 10 are recorded from Slurm
    world.slurm.unsure = set()
    assert dead_letter(world, message, monkeypatch) == {"batchItemFailures": []}
    assert {world.store.get_job(i.job_id).state for i in message.items} == {JobState.PENDING}


def test_items_cancelled_while_queued_never_reach_slurm_and_count_as_cancelled(
    world: World,
) -> None:
    # GIVEN a queued batch of 30 jobs, two of which are cancelled before any worker runs
    accepted = world.post({"jobs": jobs(30)}).get_json()
    prefix = accepted["job_id_prefix"]
    for index in (3, 17):
        answer = world.api.delete(f"/v1/clusters/local/jobs/{prefix}{index:06x}")
        assert answer.status_code == 202, answer.get_json()
    # WHEN the worker handles the chunk
    (message,) = world.drain()
    world.worker.handle(message)
    # THEN the two are not in Slurm, the 28 others are, and the counts say so
    cancelled = {f"hpcb:{prefix}{i:06x}" for i in (3, 17)}
    assert len(world.slurm.tokens) == 28
    assert not cancelled & set(world.slurm.tokens)
    batch = world.store.get(accepted["request_id"])
    assert batch.counts == {"SUBMITTED": 28, "CANCELLED": 2}
    assert batch.state is RequestState.SUCCEEDED
    assert world.store.get_job(f"{prefix}{3:06x}").state is JobState.CANCELLED
    assert world.store.get_job(f"{prefix}{5:06x}").batch_chunk == 0


def test_a_chunk_never_sent_is_failed_by_the_sweep_and_a_late_delivery_submits_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a batch of two chunks of 10; only the first message is delivered (the second was
    # lost: the API died while sending)
    monkeypatch.setattr(service_module, "CHUNK_ITEMS", 10)
    accepted = world.post({"jobs": jobs(20)}).get_json()
    first, second = world.drain()
    assert world.worker.handle(first) == "succeeded"
    assert world.store.backlog("CLUSTER", "local") == 10
    # WHEN the sweep runs past the threshold
    later = utcnow() + BATCH_LOST_AFTER + timedelta(seconds=1)
    sweep = Sweeper(world.store, FakeDirectory(), world.slurm.runner_for,  # type: ignore[arg-type]
                    Announcer(world.store, RecordingNotifier()), now=lambda: later)  # fmt: skip
    report = sweep.sweep()
    # THEN the batch ended with the lost chunk's items FAILED, and no reservation is left
    assert (report.chunks_lost, report.items_lost) == (1, 10)
    batch = world.store.get(accepted["request_id"])
    assert (batch.state, batch.counts) == (RequestState.SUCCEEDED, {"SUBMITTED": 10, "FAILED": 10})
    assert isinstance(second, JobBatchMessage)
    lost = world.store.get_job(second.items[0].job_id)
    assert (lost.state, lost.reason) == (JobState.SUBMIT_FAILED, LOST_CHUNK_REASON)
    assert world.store.backlog("CLUSTER", "local") == world.store.backlog("OWNER", ALICE) == 0
    # WHEN the lost message is delivered after all
    assert world.worker.handle(second) == "skipped"
    # THEN nothing is submitted for it, and the counts do not change
    assert [len(c.jobs) for c in world.slurm.calls if c.op == "submit"] == [10]
    assert len(world.slurm.tokens) == 10
    assert world.store.get(accepted["request_id"]).counts == {"SUBMITTED": 10, "FAILED": 10}
    # AND a later sweep claims nothing more
    assert sweep.sweep().chunks_lost == 0
