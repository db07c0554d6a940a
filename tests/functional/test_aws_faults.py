"""Transient AWS failures (throttling, conflicts, 5xx, the network) on the real adapters.

moto never throttles nor conflicts, so the DynamoDB and SQS clients are wrapped in a
fault-injecting ``FaultyClient`` (tests/functional/aws_faults.py) that raises what AWS would,
once, before the call reaches moto. Everything else is the real thing: the API handler behind
API Gateway events, the job worker on SQS events, DynamoDB and SQS on a moto server.

What must hold for each kind: the API answers 503 with Retry-After and the ErrorResponse body
(never 500, never AWS's text); a worker fails the SQS record so it comes back (never FAILED);
a cancelled transaction left nothing half-written; the same call passes once the fault passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoStore
from broker.adapters.sqs import SqsRequestQueue
from broker.api import idempotency
from broker.api import services as api_services
from broker.api.handler import lambda_handler
from broker.errors import NotFoundError
from broker.jobs.accept import RequestService
from broker.jobs.dispatch import Dispatcher
from broker.jobs.models import JobSpec, slurm_token
from broker.jobs.records import JobState
from broker.local.apigw import ApiGatewayApp, ApiRoute
from broker.local.context import LambdaContext
from broker.local.pollers import build_sqs_event
from broker.notifications.announcer import Announcer
from broker.ports import Limits
from broker.requests.states import RequestState
from broker.settings import api_settings, job_worker_settings
from tests.conftest import REGION, AwsResources
from tests.fakes import EveryoneAs, FakeDirectory, RecordingNotifier, ScriptedRunner, submitted
from tests.functional.aws_faults import AWS_TEXT, TRANSIENT_FAULTS, FaultyClient
from workers import job_worker

ALICE = "arn:aws:iam::123456789012:user/alice"
SCRIPT = "#!/bin/bash\necho hi\n"
#: The broker codes a transient AWS failure may carry.
TRANSIENT_CODES = {"THROTTLED", "WRITE_CONFLICT", "AWS_UNAVAILABLE", "AWS_UNREACHABLE"}
KINDS = pytest.mark.parametrize("fault", TRANSIENT_FAULTS.values(), ids=TRANSIENT_FAULTS)


@dataclass
class World:
    """The adapters on moto, their clients wrapped, and the API and job worker on top."""

    resources: AwsResources
    ddb: FaultyClient
    sqs: FaultyClient
    store: DynamoStore
    service: RequestService
    runner: ScriptedRunner
    http: Client

    def post(self, path: str, body: Any) -> TestResponse:
        return self.http.post(path, json=body, headers={"X-Hpcb-Local-Principal": ALICE})

    def get(self, path: str) -> TestResponse:
        return self.http.get(path, headers={"X-Hpcb-Local-Principal": ALICE})

    def queued(self) -> dict[str, Any]:
        """The requests queue's messages as a job worker's SQS event."""
        url = self.resources.provisioned.queue_url("RequestsQueue")
        answer = self.sqs.client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, AttributeNames=["All"]
        )
        arn = self.resources.provisioned.attribute("RequestsQueue", "Arn")
        return build_sqs_event(answer.get("Messages", []), queue_arn=arn, region=REGION)

    def work(self) -> dict[str, Any]:
        """One job worker invocation on what is queued."""
        context = LambdaContext.for_invocation(
            function_name="JobWorkerFunction", timeout_s=150, memory_mb=512, region=REGION,
            account_id="123456789012",
        )  # fmt: skip
        answer: dict[str, Any] = job_worker.lambda_handler(self.queued(), context)
        return answer

    def backlog(self) -> tuple[int, int]:
        """The back-pressure counters (cluster, caller)."""
        return self.store.backlog("CLUSTER", "local"), self.store.backlog("OWNER", ALICE)


@pytest.fixture
def world(aws_resources: AwsResources, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("HPCB_TABLE_NAME", aws_resources.ref("RequestsTable"))
    monkeypatch.setenv("HPCB_RETRY_BASE_SECONDS", "0")
    monkeypatch.setenv("HPCB_TOPIC_ARN", aws_resources.ref("NotificationsTopic"))
    job_worker_settings.cache_clear()
    ddb, sqs = FaultyClient(client("dynamodb")), FaultyClient(client("sqs"))
    store = DynamoStore(ddb, aws_resources.ref("RequestsTable"))
    queue = SqsRequestQueue(sqs, aws_resources.provisioned.queue_url("RequestsQueue"))
    limits = Limits(cluster_backlog=100, owner_inflight=100)
    service = RequestService(store, queue, FakeDirectory(), limits=limits, users=EveryoneAs())
    runner = ScriptedRunner()
    announcer = Announcer(store, RecordingNotifier())
    dispatcher = Dispatcher(
        store,
        FakeDirectory(),
        runner.runner_for,
        announcer,
    )
    monkeypatch.setattr(api_services, "request_service", lambda: service)
    monkeypatch.setattr(job_worker, "dispatcher", lambda: dispatcher)
    monkeypatch.setattr(job_worker, "request_queue", lambda: queue)
    route = ApiRoute(
        resource="/{proxy+}", method="ANY", handler=lambda_handler, function_name="ApiFunction"
    )
    http = Client(ApiGatewayApp([route], default_principal=ALICE))
    return World(aws_resources, ddb, sqs, store, service, runner, http)


def assert_transient_answer(answer: TestResponse, codes: set[str] = TRANSIENT_CODES) -> None:
    """503, Retry-After, the ErrorResponse body, and nothing of AWS's text."""
    assert answer.status_code == 503
    assert int(answer.headers["Retry-After"]) > 0
    error = answer.get_json()["error"]
    assert error["code"] in codes
    assert error["transient"] is True
    assert AWS_TEXT not in answer.get_data(as_text=True)
    assert "hpcb-private-table" not in answer.get_data(as_text=True)


# -- the API --------------------------------------------------------------------------------------


@KINDS
def test_a_submission_whose_transaction_fails_transiently_answers_503_and_writes_nothing(
    world: World, fault: Callable[[], Exception]
) -> None:
    # GIVEN DynamoDB failing the submission's transaction (request, job, both counters) once
    world.ddb.fail("transact_write_items", fault())
    # WHEN a job is posted
    answer = world.post("/v1/clusters/local/jobs", {"script": SCRIPT})
    # THEN 503 with Retry-After (not 500), and no AWS text in the answer
    assert world.ddb.failed == ["transact_write_items"]
    assert_transient_answer(answer)
    # AND nothing of the transaction was written: no record, counters untouched, nothing queued
    assert world.ddb.client.scan(TableName=world.resources.ref("RequestsTable"))["Count"] == 0
    assert world.backlog() == (0, 0)
    assert world.queued()["Records"] == []
    # AND once the fault has passed, the same call is accepted and counted once
    assert world.post("/v1/clusters/local/jobs", {"script": SCRIPT}).status_code == 202
    assert world.backlog() == (1, 1)


@pytest.mark.parametrize(
    "kind", ["throttling", "internal-server-error", "service-unavailable", "network"]
)
def test_a_queue_that_fails_transiently_answers_503(world: World, kind: str) -> None:
    # GIVEN SQS throttling, failing with a 5xx or unreachable, once
    world.sqs.fail("send_message", TRANSIENT_FAULTS[kind]())
    # WHEN a job is posted / THEN 503 with Retry-After, not 500 (the service's own code: the
    # record is written, its message is not)
    answer = world.post("/v1/clusters/local/jobs", {"script": SCRIPT})
    assert_transient_answer(answer, {"ENQUEUE_FAILED"})
    assert world.sqs.failed == ["send_message"]


@KINDS
def test_reads_that_fail_transiently_answer_503(
    world: World, fault: Callable[[], Exception]
) -> None:
    # GIVEN an accepted job, and DynamoDB failing the next read and the next query once each
    request_id = world.post("/v1/clusters/local/jobs", {"script": SCRIPT}).get_json()["request_id"]
    world.ddb.fail("get_item", fault())
    world.ddb.fail("query", fault())
    # WHEN the request is read and the jobs listed / THEN 503 each, not 500
    assert_transient_answer(world.get(f"/v1/requests/{request_id}"))
    assert_transient_answer(world.get("/v1/clusters/local/jobs"))
    # AND both work once the faults have passed
    assert world.get(f"/v1/requests/{request_id}").status_code == 200
    assert world.get("/v1/clusters/local/jobs").status_code == 200


@KINDS
def test_an_idempotency_table_that_fails_transiently_answers_503(
    world: World, monkeypatch: pytest.MonkeyPatch, fault: Callable[[], Exception]
) -> None:
    # GIVEN the Idempotency-Key table failing once (Powertools wraps the error in its own)
    monkeypatch.setenv("HPCB_QUEUE_URL", world.resources.provisioned.queue_url("RequestsQueue"))
    monkeypatch.setenv("HPCB_IDEMPOTENCY_TABLE", world.resources.ref("IdempotencyTable"))
    api_settings.cache_clear()
    idempotency._once.cache_clear()
    keys = FaultyClient(client("dynamodb"))
    monkeypatch.setattr(idempotency, "client", lambda service: keys)
    keys.fail("put_item", fault())
    try:
        # WHEN a job is posted with a key
        answer = world.http.post(
            "/v1/clusters/local/jobs", json={"script": SCRIPT},
            headers={"X-Hpcb-Local-Principal": ALICE, "Idempotency-Key": "k-1"},
        )  # fmt: skip
        # THEN 503 with Retry-After (not 500), nothing of AWS's text, nothing accepted
        assert keys.failed == ["put_item"]
        assert_transient_answer(answer)
        assert world.backlog() == (0, 0)
    finally:
        idempotency._once.cache_clear()
        api_settings.cache_clear()


# -- the job worker -------------------------------------------------------------------------------


@KINDS
def test_a_worker_whose_outcome_transaction_fails_transiently_retries_and_never_fails(
    world: World, fault: Callable[[], Exception]
) -> None:
    # GIVEN an accepted job that the agent submits (the agent de-duplicates by token, so the
    # second delivery gets the same Slurm job), and DynamoDB failing the transaction that
    # records the outcome (job PENDING + alias + both counters + nothing else) once
    request_id = world.service.submit_job(ALICE, "local", JobSpec(script=SCRIPT)).request_id
    token = slurm_token(request_id)
    world.runner.answers = [submitted(token, "700"), submitted(token, "700", reused=True)]
    world.ddb.fail("transact_write_items", fault())
    # WHEN the worker handles the message
    result = world.work()
    # THEN the record is reported failed, so SQS delivers it again
    assert world.ddb.failed == ["transact_write_items"]
    assert len(result["batchItemFailures"]) == 1
    # AND the request is not FAILED: still in progress, with a transient error
    record = world.store.get(request_id)
    assert record.state is RequestState.DISPATCHED
    assert record.error is not None
    assert (record.error.code in TRANSIENT_CODES, record.error.transient) == (True, True)
    assert AWS_TEXT not in record.error.message
    # AND nothing of the transaction was written: the job is SUBMITTING, no alias, counted once
    assert world.store.get_job(request_id).state is JobState.SUBMITTING
    with pytest.raises(NotFoundError):
        world.store.find_job("local", "700")
    assert world.backlog() == (1, 1)
    # WHEN it is delivered again (back-off 0 s here) with the fault passed
    again = world.work()
    # THEN it succeeds: one job, PENDING, found by its Slurm id, counted out exactly once
    assert again == {"batchItemFailures": []}
    assert world.store.get(request_id).state is RequestState.SUCCEEDED
    assert world.store.find_job("local", "700").job_id == request_id
    assert world.store.get_job(request_id).state is JobState.PENDING
    assert world.backlog() == (0, 0)


@KINDS
def test_a_worker_whose_first_write_fails_transiently_retries_and_never_fails(
    world: World, fault: Callable[[], Exception]
) -> None:
    # GIVEN an accepted job, and DynamoDB failing the worker's first write (dispatch) once
    request_id = world.service.submit_job(ALICE, "local", JobSpec(script=SCRIPT)).request_id
    world.runner.answers = [submitted(slurm_token(request_id), "701")]
    world.ddb.fail("update_item", fault())
    # WHEN the worker handles the message
    result = world.work()
    # THEN the record is reported failed (retried), the request is not FAILED, Slurm untouched
    assert len(result["batchItemFailures"]) == 1
    assert world.store.get(request_id).state is not RequestState.FAILED
    assert world.runner.calls == []
    # AND the redelivery submits it
    assert world.work() == {"batchItemFailures": []}
    assert world.store.get(request_id).state is RequestState.SUCCEEDED
