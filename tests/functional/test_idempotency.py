"""Idempotency-Key on POST, through genuine API Gateway events, with Powertools' idempotency
records in the template's IdempotencyTable on moto (over HTTP)."""

from __future__ import annotations

import pytest
from werkzeug.test import Client, TestResponse

from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoStore
from broker.api import services as api_services
from broker.api.handler import lambda_handler
from broker.errors import TransientError
from broker.jobs.accept import RequestService
from broker.local.apigw import ApiGatewayApp, ApiRoute
from broker.settings import api_settings
from tests.conftest import AwsResources
from tests.fakes import EveryoneAs, FakeDirectory, FakeQueue

ALICE = "arn:aws:iam::123456789012:user/alice"
BOB = "arn:aws:iam::123456789012:user/bob"
JOB = {"script": "#!/bin/bash\necho hi\n", "name": "once"}


class Api:
    def __init__(self, queue: FakeQueue, store: DynamoStore) -> None:
        route = ApiRoute(resource="/{proxy+}", method="ANY", handler=lambda_handler,
                         function_name="ApiFunction")  # fmt: skip
        self.client = Client(ApiGatewayApp([route], default_principal=ALICE))
        self.queue = queue
        self.store = store

    def post(self, body: object, key: str | None = "k-1", principal: str = ALICE) -> TestResponse:
        headers = {"X-Hpcb-Local-Principal": principal}
        if key is not None:
            headers["Idempotency-Key"] = key
        return self.client.post("/v1/clusters/local/jobs", json=body, headers=headers)


@pytest.fixture
def api(aws_resources: AwsResources, monkeypatch: pytest.MonkeyPatch) -> Api:
    monkeypatch.setenv("HPCB_TABLE_NAME", aws_resources.ref("RequestsTable"))
    monkeypatch.setenv("HPCB_QUEUE_URL", aws_resources.provisioned.queue_url("RequestsQueue"))
    monkeypatch.setenv("HPCB_IDEMPOTENCY_TABLE", aws_resources.ref("IdempotencyTable"))
    api_settings.cache_clear()
    store = DynamoStore(client("dynamodb"), aws_resources.ref("RequestsTable"))
    queue = FakeQueue()
    service = RequestService(store, queue, FakeDirectory(), users=EveryoneAs())
    monkeypatch.setattr(api_services, "request_service", lambda: service)
    yield_api = Api(queue, store)
    return yield_api


def test_the_same_key_and_body_return_the_original_answer_once(api: Api) -> None:
    # GIVEN a job posted with an Idempotency-Key
    first = api.post(JOB)
    # WHEN the same call is sent again (a client retry after a lost answer)
    second = api.post(JOB)
    # THEN both answers are the same 202 with the same request id; the second says it replayed
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.get_json() == second.get_json()
    assert second.headers["Location"] == first.headers["Location"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    # AND the job was queued once only
    assert len(api.queue.sent) == 1


def test_the_same_key_with_another_body_is_refused(api: Api) -> None:
    # GIVEN a key already used
    api.post(JOB)
    # WHEN it comes back with a different job
    answer = api.post({**JOB, "name": "other"})
    # THEN 422 IDEMPOTENCY_KEY_REUSED, and nothing more was queued
    assert answer.status_code == 422
    assert answer.get_json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert len(api.queue.sent) == 1


def test_keys_belong_to_their_caller(api: Api) -> None:
    # GIVEN alice's key / WHEN bob uses the same key / THEN he gets his own request
    alice = api.post(JOB).get_json()["request_id"]
    bob = api.post(JOB, principal=BOB).get_json()["request_id"]
    assert alice != bob
    assert len(api.queue.sent) == 2


def test_without_a_key_every_post_is_a_new_request(api: Api) -> None:
    # GIVEN no key / WHEN posted twice / THEN two requests
    assert api.post(JOB, key=None).get_json() != api.post(JOB, key=None).get_json()
    assert len(api.queue.sent) == 2


def test_a_malformed_key_is_422(api: Api) -> None:
    # GIVEN a key with spaces / WHEN posted / THEN 422 naming the header
    answer = api.post(JOB, key="not a key!")
    assert answer.status_code == 422
    assert "header" in answer.get_json()["error"]["fields"][0]["field"]


def test_a_failed_call_is_not_remembered_under_its_key(api: Api) -> None:
    # GIVEN the queue down: the first call fails with 503
    api.queue.fail_with = TransientError("SQS unavailable")
    assert api.post(JOB).status_code == 503
    # WHEN the client retries with the same key once the queue is back
    api.queue.fail_with = None
    answer = api.post(JOB)
    # THEN the job is accepted this time (the failure was not replayed)
    assert answer.status_code == 202
    assert "Idempotent-Replayed" not in answer.headers
    assert len(api.queue.sent) == 1
