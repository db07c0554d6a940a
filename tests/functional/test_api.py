"""The API Lambda handler behind genuine API Gateway REST proxy events (no sockets, no AWS).

Requests go through broker.local.apigw (the same event building the local stack uses) into
broker.api.handler.lambda_handler; the service behind it is wired to in-memory fakes.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from broker.api import services as api_services
from broker.api.handler import lambda_handler
from broker.errors import TransientError
from broker.jobs.accept import RequestService
from broker.jobs.models import MAX_SCRIPT_BYTES
from broker.jobs.records import JobState
from broker.local.apigw import ApiGatewayApp, ApiRoute
from broker.ports import Limits
from broker.requests.states import RequestState
from broker.schema import ErrorResponse
from tests.fakes import EveryoneAs, FakeDirectory, FakeQueue, InMemoryStore

ALICE = "arn:aws:iam::123456789012:user/alice"
BOB = "arn:aws:sts::123456789012:assumed-role/Researcher/bob"
SCRIPT = "#!/bin/bash\necho hello\n"


class Api:
    """A test client that speaks to the handler through API Gateway events."""

    def __init__(self, store: InMemoryStore, queue: FakeQueue) -> None:
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
    store, queue = InMemoryStore(), FakeQueue()
    service = RequestService(store, queue, FakeDirectory(), users=EveryoneAs())
    monkeypatch.setattr(api_services, "request_service", lambda: service)
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


def test_a_roles_sessions_are_one_owner_whatever_their_chosen_names(api: Api) -> None:
    # GIVEN a request by a session of an ordinary role, named "bob" by whoever assumed it
    request_id = _submit(api, principal=BOB)
    # WHEN another session of that role, named as it likes, reads it
    other = "arn:aws:sts::123456789012:assumed-role/Researcher/anything"
    # THEN it is the same owner (the role): no session name is an identity of its own
    assert api.get(f"/v1/requests/{request_id}", principal=other).status_code == 200
    assert api.queue.sent[-1].owner == "arn:aws:sts::123456789012:assumed-role/Researcher/*"


def test_identity_center_sessions_are_owners_of_their_own(api: Api) -> None:
    # GIVEN a request by alice's IAM Identity Center session (its name set by Identity Center)
    role = "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Hpc_0123456789abcdef"
    request_id = _submit(api, principal=f"{role}/alice")
    # WHEN bob's session of the same role reads it / THEN 404: one owner per person
    assert api.get(f"/v1/requests/{request_id}", principal=f"{role}/bob").status_code == 404
    assert api.get(f"/v1/requests/{request_id}", principal=f"{role}/alice").status_code == 200


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


# -- jobs ------------------------------------------------------------------------------------


def _submit(api: Api, body: dict[str, Any] | None = None, principal: str = ALICE) -> str:
    answer = api.post("/v1/clusters/local/jobs", body or {"script": SCRIPT}, principal=principal)
    assert answer.status_code == 202, answer.get_json()
    return str(answer.get_json()["request_id"])


def _in_slurm(api: Api, job_id: str, slurm_id: str) -> None:
    api.store.start_submission(job_id)
    api.store.record_submitted(job_id, slurm_id)


def test_a_submitted_job_is_visible_at_once_by_both_ids(api: Api) -> None:
    # GIVEN a job accepted and then submitted to Slurm as 555
    job_id = _submit(api, {"script": SCRIPT, "name": "sweep-1", "tags": {"project": "x"}})
    assert api.get(f"/v1/clusters/local/jobs/{job_id}").get_json()["state"] == "SUBMITTING"
    _in_slurm(api, job_id, "555")
    # WHEN read by broker id and by Slurm id
    by_broker = api.get(f"/v1/clusters/local/jobs/{job_id}").get_json()
    by_slurm = api.get("/v1/clusters/local/jobs/555").get_json()
    # THEN both give the same PENDING job with its name and tags, and no owner
    assert by_broker == by_slurm
    assert (by_broker["state"], by_broker["slurm_job_id"], by_broker["name"]) == (
        "PENDING",
        "555",
        "sweep-1",
    )
    assert by_broker["tags"] == {"project": "x"}
    assert "owner" not in by_broker


def test_jobs_are_listed_newest_first_filtered_and_paginated(api: Api) -> None:
    # GIVEN three of alice's jobs (one named 'b') and one of bob's
    ids = []
    for name in ("a", "b", "c"):
        time.sleep(0.002)
        ids.append(_submit(api, {"script": SCRIPT, "name": name}))
    _submit(api, principal=BOB)
    # WHEN alice lists them two at a time
    first = api.get("/v1/clusters/local/jobs?limit=2").get_json()
    second = api.get(f"/v1/clusters/local/jobs?limit=2&next_token={first['next_token']}").get_json()
    # THEN she sees her three, newest first, and never bob's
    assert [j["job_id"] for j in first["jobs"] + second["jobs"]] == list(reversed(ids))
    assert "next_token" not in second or second["next_token"] is None
    # AND filters by name and state work
    named = api.get("/v1/clusters/local/jobs?name=b").get_json()["jobs"]
    assert [j["job_id"] for j in named] == [ids[1]]
    states = api.get("/v1/clusters/local/jobs?state=PENDING&state=RUNNING").get_json()["jobs"]
    assert states == []


def test_an_invalid_state_filter_is_a_422(api: Api) -> None:
    # GIVEN a state that does not exist / THEN 422 naming the query field
    answer = api.get("/v1/clusters/local/jobs?state=SLEEPING")
    assert answer.status_code == 422
    assert answer.get_json()["error"]["fields"][0]["field"].startswith("query.state")


def test_someone_elses_job_is_404_for_read_cancel_and_output(api: Api) -> None:
    # GIVEN alice's job in Slurm
    job_id = _submit(api)
    _in_slurm(api, job_id, "556")
    # WHEN bob reads, cancels or fetches its output / THEN 404 each time
    assert api.get(f"/v1/clusters/local/jobs/{job_id}", principal=BOB).status_code == 404
    cancel = api.client.delete(
        f"/v1/clusters/local/jobs/{job_id}", headers={"X-Hpcb-Local-Principal": BOB}
    )
    assert cancel.status_code == 404
    output = api.post(f"/v1/clusters/local/jobs/{job_id}/output", {}, principal=BOB)
    assert output.status_code == 404


def test_cancel_answers_202_and_a_queued_job_is_cancelled_at_once(api: Api) -> None:
    # GIVEN a job still queued / WHEN cancelled
    job_id = _submit(api)
    answer = api.client.delete(f"/v1/clusters/local/jobs/{job_id}")
    # THEN 202 with a request that is already SUCCEEDED, and the job CANCELLED
    assert answer.status_code == 202
    request = api.get(answer.headers["Location"]).get_json()
    assert request["state"] == "SUCCEEDED"
    assert request["result"]["before_submission"] is True
    assert api.store.get_job(job_id).state is JobState.CANCELLED
    # AND cancelling it again is a 409
    again = api.client.delete(f"/v1/clusters/local/jobs/{job_id}")
    assert again.status_code == 409


def test_output_of_a_job_not_in_slurm_is_409(api: Api) -> None:
    # GIVEN a job still queued / WHEN its output is asked for / THEN 409
    job_id = _submit(api)
    answer = api.post(f"/v1/clusters/local/jobs/{job_id}/output", {"stream": "stdout"})
    assert answer.status_code == 409


def test_output_request_is_queued_for_a_job_in_slurm(api: Api) -> None:
    # GIVEN a job in Slurm / WHEN its stderr tail is asked for
    job_id = _submit(api)
    _in_slurm(api, job_id, "557")
    answer = api.post(f"/v1/clusters/local/jobs/{job_id}/output", {"stream": "stderr"})
    # THEN 202, and the queued message names the job and the stream
    assert answer.status_code == 202
    message = api.queue.sent[-1]
    assert message.kind == "job.output"
    assert message.query.stream == "stderr"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"array": "1-10%x"}, "body.array"),
        ({"array": "a-b"}, "body.array"),
        ({"dependency": [{"type": "afterok", "jobs": ["12;rm"]}]}, "body.dependency.0.jobs.0"),
        ({"dependency": [{"type": "whenever", "jobs": ["12"]}]}, "body.dependency.0.type"),
        ({"environment": {"LD_PRELOAD": "/x.so"}}, "body.environment"),
        ({"output": "/tmp/../etc/out"}, "body.output"),
    ],
)
def test_malformed_array_dependency_environment_and_paths_are_422(
    api: Api, body: dict[str, Any], field: str
) -> None:
    # GIVEN a malformed field / WHEN posted / THEN 422 naming it; nothing queued
    answer = api.post("/v1/clusters/local/jobs", {"script": SCRIPT, **body})
    assert answer.status_code == 422
    assert field in [f["field"] for f in answer.get_json()["error"]["fields"]]
    assert api.queue.sent == []


def test_a_full_backlog_answers_429_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a cluster whose backlog limit is 1, already reached
    store, queue = InMemoryStore(), FakeQueue()
    limits = Limits(cluster_backlog=1, owner_inflight=10, retry_after_seconds=12)
    service = RequestService(store, queue, FakeDirectory(), limits=limits, users=EveryoneAs())
    monkeypatch.setattr(api_services, "request_service", lambda: service)
    api = Api(store, queue)
    assert api.post("/v1/clusters/local/jobs", {"script": SCRIPT}).status_code == 202
    # WHEN another job is posted
    answer = api.post("/v1/clusters/local/jobs", {"script": SCRIPT})
    # THEN 429 TOO_MANY_REQUESTS with the configured Retry-After; nothing queued or recorded
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "12"
    assert answer.get_json()["error"]["code"] == "TOO_MANY_REQUESTS"
    assert len(queue.sent) == 1
    assert len(store.jobs) == 1


_JOB_JSON = b'{"script": "#!/bin/sh\\necho hi\\n"}'


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("application/json", b"\xef\xbb\xff{not utf-8", 400, "INVALID_JSON"),
        ("application/json", _JOB_JSON.decode().encode("utf-16"), 400, "INVALID_JSON"),
        ("application/json", b"[" * 100_000 + b"]" * 100_000, 400, "INVALID_JSON"),
        ("application/json", b'{"script": ' + b"[" * 33 + b"]" * 33 + b"}", 400, "INVALID_JSON"),
        ("application/json", b'{"script": "#!/bin/sh",', 400, "INVALID_JSON"),
        ("text/plain", _JOB_JSON, 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("multipart/form-data", _JOB_JSON, 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("application/x-www-form-urlencoded", b"script=x", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("application/json; charset=utf-16", _JOB_JSON, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ],
    ids=[
        "bad-utf8", "utf16", "nested-100000", "nested-33", "truncated",
        "text-plain", "multipart-no-boundary", "form", "charset-utf16",
    ],
)  # fmt: skip
def test_a_malformed_body_is_a_4xx_in_the_error_schema(
    api: Api,
    *,
    capsys: pytest.CaptureFixture[str],
    content_type: str,
    body: bytes,
    status: int,
    code: str,
) -> None:
    # GIVEN a body that is not what the API reads / WHEN posted
    answer = api.client.post(
        "/v1/clusters/local/jobs", data=body, headers={"Content-Type": content_type}
    )
    # THEN its 4xx, in the one error schema, and nothing recorded
    assert (answer.status_code, answer.get_json()["error"]["code"]) == (status, code)
    ErrorResponse.model_validate(answer.get_json())
    assert api.store.records == {}
    # AND no stack trace reaches the caller, and nothing is logged at ERROR (a client mistake)
    assert "Traceback" not in answer.get_data(as_text=True)
    assert '"level":"ERROR"' not in capsys.readouterr().out


def test_json_nested_to_the_limit_is_read(api: Api) -> None:
    # GIVEN a body nesting exactly as deep as allowed (32)
    body = b'{"script": ' + b"[" * 31 + b"]" * 31 + b"}"
    # WHEN posted / THEN it is parsed and validated as JSON (422 on the field), not refused
    answer = api.client.post(
        "/v1/clusters/local/jobs", data=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422
    assert answer.get_json()["error"]["fields"][0]["field"] == "body.script"


def test_json_with_utf8_charset_is_accepted(api: Api) -> None:
    # GIVEN a job sent as application/json; charset=UTF-8 / WHEN posted / THEN 202
    answer = api.client.post(
        "/v1/clusters/local/jobs",
        data=_JOB_JSON,
        headers={"Content-Type": "application/json; charset=UTF-8"},
    )
    assert answer.status_code == 202


def test_a_huge_output_offset_is_refused(api: Api) -> None:
    # GIVEN an output offset far beyond any file (10**30) / WHEN posted
    answer = api.post(f"/v1/clusters/local/jobs/r{'0' * 28}/output", {"offset": 10**30})
    # THEN 422 on the field: it never reaches the agent
    assert answer.status_code == 422
    assert answer.get_json()["error"]["fields"][0]["field"] == "body.offset"
    assert api.queue.sent == []
