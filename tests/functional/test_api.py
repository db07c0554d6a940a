"""The API Lambda handler behind genuine API Gateway REST proxy events (no sockets, no AWS).

Requests go through broker.local.apigw (the same event building the local stack uses) into
broker.api.handler.lambda_handler; the service behind it is wired to in-memory fakes.
"""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from broker.api import app as api_app
from broker.api.handler import lambda_handler
from broker.errors import TransientError
from broker.local.apigw import ApiGatewayApp, ApiRoute
from broker.models import MAX_SCRIPT_BYTES
from broker.service import RequestService
from broker.states import RequestState
from tests.fakes import FakeDirectory, FakeQueue, InMemoryRequestStore

ALICE = "arn:aws:iam::123456789012:user/alice"
BOB = "arn:aws:sts::123456789012:assumed-role/Researcher/bob"
SCRIPT = "#!/bin/bash\necho hello\n"


class Api:
    """A test client that speaks to the handler through API Gateway events."""

    def __init__(self, store: InMemoryRequestStore, queue: FakeQueue) -> None:
        route = ApiRoute(
            resource="/{proxy+}", method="ANY", handler=lambda_handler, function_name="ApiFunction"
        )
        self.client = Client(ApiGatewayApp([route], default_principal=ALICE))
        self.store = store
        self.queue = queue

    def post(self, path: str, body: Any, principal: str = ALICE) -> TestResponse:
        return self.client.post(path, json=body, headers={"X-Hpcb-Local-Principal": principal})

    def get(self, path: str, principal: str = ALICE) -> TestResponse:
        return self.client.get(path, headers={"X-Hpcb-Local-Principal": principal})


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Api:
    store, queue = InMemoryRequestStore(), FakeQueue()
    service = RequestService(store, queue, FakeDirectory())
    monkeypatch.setattr(api_app, "request_service", lambda: service)
    return Api(store, queue)


def test_submit_answers_202_with_request_id_and_location(api: Api) -> None:
    # GIVEN a valid job / WHEN posted
    answer = api.post("/v1/clusters/local/jobs", {"script": SCRIPT, "name": "hello"})
    # THEN 202, the request id, ACCEPTED, and a Location to poll
    assert answer.status_code == 202
    body = answer.get_json()
    assert body["status"] == "ACCEPTED"
    assert answer.headers["Location"] == f"/v1/requests/{body['request_id']}"
    assert body["location"] == answer.headers["Location"]
    # AND the request was queued once, owned by the authenticated caller
    assert [m.request_id for m in api.queue.sent] == [body["request_id"]]
    assert api.queue.sent[0].owner == ALICE


def test_get_right_after_post_sees_the_request(api: Api) -> None:
    # GIVEN a just-accepted job
    request_id = api.post("/v1/clusters/local/jobs", {"script": SCRIPT}).get_json()["request_id"]
    # WHEN read at once / THEN 200 ACCEPTED (never 404)
    answer = api.get(f"/v1/requests/{request_id}")
    assert answer.status_code == 200
    body = answer.get_json()
    assert (body["state"], body["cluster"], body["attempts"]) == ("ACCEPTED", "local", 0)
    assert "owner" not in body
    assert "spec" not in body


def test_another_principal_gets_404_for_a_request(api: Api) -> None:
    # GIVEN alice's request
    request_id = api.post("/v1/clusters/local/jobs", {"script": SCRIPT}).get_json()["request_id"]
    # WHEN bob reads it / THEN 404, same as a request that does not exist
    mine = api.get(f"/v1/requests/{request_id}", principal=BOB)
    missing = api.get("/v1/requests/r" + "0" * 28, principal=BOB)
    assert mine.status_code == missing.status_code == 404
    assert mine.get_json()["error"]["code"] == missing.get_json()["error"]["code"] == "NOT_FOUND"


def test_owner_comes_from_the_request_context_not_the_body(api: Api) -> None:
    # GIVEN a body that tries to set an owner
    answer = api.post("/v1/clusters/local/jobs", {"script": SCRIPT, "owner": BOB})
    # THEN it is rejected as an unknown field
    assert answer.status_code == 422
    assert answer.get_json()["error"]["fields"][0]["field"] == "body.owner"


def test_invalid_fields_are_each_listed(api: Api) -> None:
    # GIVEN a body with three bad fields
    body = {"script": "no shebang", "nodes": 0, "partition": "a;b"}
    # WHEN posted
    answer = api.post("/v1/clusters/local/jobs", body)
    # THEN 422 VALIDATION_ERROR naming each, in the documented schema, and nothing queued
    assert answer.status_code == 422
    error = answer.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert {f["field"] for f in error["fields"]} == {"body.script", "body.nodes", "body.partition"}
    assert all(f["message"] and f["type"] for f in error["fields"])
    assert api.queue.sent == []


def test_missing_body_is_a_validation_error(api: Api) -> None:
    # GIVEN no body / WHEN posted / THEN 422 naming the body
    answer = api.client.post("/v1/clusters/local/jobs")
    assert answer.status_code == 422
    assert answer.get_json()["error"]["fields"][0]["field"].startswith("body")


def test_malformed_json_is_a_400(api: Api) -> None:
    # GIVEN a body that is not JSON / WHEN posted / THEN 400 INVALID_JSON
    answer = api.client.post(
        "/v1/clusters/local/jobs", data="{not json", content_type="application/json"
    )
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "INVALID_JSON"


def test_unknown_cluster_is_404(api: Api) -> None:
    # GIVEN a cluster that does not exist / WHEN a job is posted / THEN 404 CLUSTER_NOT_FOUND
    answer = api.post("/v1/clusters/elsewhere/jobs", {"script": SCRIPT})
    assert answer.status_code == 404
    assert answer.get_json()["error"]["code"] == "CLUSTER_NOT_FOUND"
    assert api.store.records == {}


def test_malformed_cluster_name_is_422(api: Api) -> None:
    # GIVEN a cluster name ParallelCluster could never accept / THEN 422 on the path field
    answer = api.post("/v1/clusters/9-bad_name/jobs", {"script": SCRIPT})
    assert answer.status_code == 422
    assert answer.get_json()["error"]["fields"][0]["field"] == "path.cluster"


def test_oversized_script_is_413(api: Api) -> None:
    # GIVEN a script over the documented limit
    script = "#!/bin/sh\n" + "x" * MAX_SCRIPT_BYTES
    # WHEN posted / THEN 413 PAYLOAD_TOO_LARGE stating the limit; nothing recorded
    answer = api.post("/v1/clusters/local/jobs", {"script": script})
    assert answer.status_code == 413
    assert str(MAX_SCRIPT_BYTES) in answer.get_json()["error"]["message"]
    assert api.store.records == {}


def test_oversized_body_is_413_before_parsing(api: Api) -> None:
    # GIVEN a body over 1 MiB / WHEN posted / THEN 413
    answer = api.post("/v1/clusters/local/jobs", {"script": "#!/bin/sh\n" + "x" * (1 << 20)})
    assert answer.status_code == 413
    assert answer.get_json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_queue_outage_is_503_with_retry_after_and_a_failed_record(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a queue that is down
    api.queue.fail_with = TransientError("SQS unavailable")
    # WHEN a job is posted
    answer = api.post("/v1/clusters/local/jobs", {"script": SCRIPT})
    # THEN 503 with Retry-After, and the record is FAILED (not stuck ACCEPTED)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"].isdigit()
    assert answer.get_json()["error"]["transient"] is True
    (record,) = api.store.records.values()
    assert record.state is RequestState.FAILED


def test_unknown_route_is_a_404_in_the_error_schema(api: Api) -> None:
    # GIVEN a path no route serves / THEN 404 ROUTE_NOT_FOUND
    answer = api.get("/v1/nothing-here")
    assert answer.status_code == 404
    assert answer.get_json()["error"]["code"] == "ROUTE_NOT_FOUND"


def test_openapi_document_describes_routes_and_the_error_schema(api: Api) -> None:
    # GIVEN the API / WHEN its OpenAPI document is fetched
    answer = api.get("/v1/openapi.json")
    assert answer.status_code == 200
    doc = answer.get_json()
    # THEN both routes are there, the POST documents 202, and 422 uses our error schema
    post = doc["paths"]["/v1/clusters/{cluster}/jobs"]["post"]
    assert "202" in post["responses"]
    schema_ref = post["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_ref.endswith("/ErrorResponse")
    assert "/v1/requests/{request_id}" in doc["paths"]
    assert "/v1/openapi.json" not in doc["paths"]


def test_swagger_ui_is_served(api: Api) -> None:
    # GIVEN the API / WHEN /v1/docs is fetched / THEN an HTML page
    answer = api.get("/v1/docs")
    assert answer.status_code == 200
    assert "text/html" in answer.headers["Content-Type"]
