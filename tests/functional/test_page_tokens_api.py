"""next_token through the API on the real stores (moto over HTTP), keyed by the Secrets
Manager secret that template.yaml generates (provisioned in moto from the template).

A valid token round-trips through every listing route; a token that is malformed, altered,
another caller's or another query's answers 422 INVALID_NEXT_TOKEN with a plain message,
and never reaches DynamoDB (which answered 500 with its own error text before).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from werkzeug.test import Client, TestResponse

from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoStore
from broker.adapters.sqs import SqsClusterQueue, SqsRequestQueue
from broker.api import services as api_services
from broker.api.handler import lambda_handler
from broker.api.tokens import page_tokens
from broker.clusters.service import ClusterService
from broker.jobs.accept import RequestService
from broker.local.apigw import ApiGatewayApp, ApiRoute
from broker.settings import page_token_settings
from tests.conftest import AwsResources
from tests.fakes import EveryoneAs, FakeDirectory

ALICE = "arn:aws:iam::123456789012:user/alice"
BOB = "arn:aws:sts::123456789012:assumed-role/Researcher/bob"
SCRIPT = "#!/bin/bash\necho hi\n"
CONFIG = (
    "Image:\n  Os: alinux2\nHeadNode:\n  InstanceType: t3.micro\nScheduling:\n  Scheduler: slurm\n"
)
JOBS = "/v1/clusters/local/jobs"


@dataclass
class Api:
    http: Client
    resources: AwsResources

    def get(self, path: str, principal: str = ALICE) -> TestResponse:
        return self.http.get(path, headers={"X-Hpcb-Local-Principal": principal})

    def post(self, path: str, body: Any, principal: str = ALICE) -> TestResponse:
        return self.http.post(path, json=body, headers={"X-Hpcb-Local-Principal": principal})

    def page(self, path: str, token: str, principal: str = ALICE) -> TestResponse:
        joiner = "&" if "?" in path else "?"
        return self.get(f"{path}{joiner}next_token={quote(token, safe='')}", principal)


@pytest.fixture
def api(aws_resources: AwsResources, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    # The key comes from the provisioned secret, as in AWS (HPCB_PAGE_TOKEN_SECRET).
    monkeypatch.setenv("HPCB_PAGE_TOKEN_SECRET", aws_resources.ref("PageTokenSecret"))
    monkeypatch.delenv("HPCB_PAGE_TOKEN_KEY", raising=False)
    page_token_settings.cache_clear()
    table = aws_resources.ref("RequestsTable")
    store = DynamoStore(client("dynamodb"), table)
    sqs = client("sqs")
    jobs = RequestService(
        store, SqsRequestQueue(sqs, aws_resources.provisioned.queue_url("RequestsQueue")),
        FakeDirectory(),
        users=EveryoneAs(),
    )  # fmt: skip
    clusters = ClusterService(
        store, SqsClusterQueue(sqs, aws_resources.provisioned.queue_url("ClusterQueue"))
    )
    monkeypatch.setattr(api_services, "request_service", lambda: jobs)
    monkeypatch.setattr(api_services, "cluster_service", lambda: clusters)
    route = ApiRoute(
        resource="/{proxy+}", method="ANY", handler=lambda_handler, function_name="ApiFunction"
    )
    yield Api(Client(ApiGatewayApp([route], default_principal=ALICE)), aws_resources)
    page_token_settings.cache_clear()


def _jobs(api: Api, count: int, principal: str = ALICE) -> list[str]:
    ids = []
    for _ in range(count):
        answer = api.post(JOBS, {"script": SCRIPT}, principal)
        assert answer.status_code == 202
        ids.append(answer.get_json()["request_id"])
    return ids


def _first_page_token(api: Api, path: str = f"{JOBS}?limit=2") -> str:
    body = api.get(path).get_json()
    token: str = body["next_token"]
    return token


def assert_invalid_token(answer: TestResponse) -> None:
    """422 INVALID_NEXT_TOKEN, a plain message, nothing of DynamoDB's."""
    assert answer.status_code == 422, answer.get_json()
    error = answer.get_json()["error"]
    assert error["code"] == "INVALID_NEXT_TOKEN"
    assert error["message"] == "next_token is not valid for this listing; start again without it"
    assert "ExclusiveStartKey" not in answer.get_data(as_text=True)


def test_the_key_is_the_secret_the_template_generates(api: Api) -> None:
    # GIVEN the provisioned secret / WHEN the API keys its tokens
    secret = client("secretsmanager").get_secret_value(
        SecretId=api.resources.ref("PageTokenSecret")
    )["SecretString"]
    # THEN the generated value (64 characters, no punctuation) is the HMAC key
    assert len(secret) == 64
    assert secret.isalnum()
    assert page_tokens()._key == secret.encode()


def test_a_token_round_trips_through_the_jobs_listing(api: Api) -> None:
    # GIVEN three jobs
    ids = _jobs(api, 3)
    # WHEN listed two at a time, following next_token
    first = api.get(f"{JOBS}?limit=2").get_json()
    second = api.page(f"{JOBS}?limit=2", first["next_token"]).get_json()
    # THEN every job once, newest first, and no token on the last page
    listed = [j["job_id"] for j in first["jobs"] + second["jobs"]]
    assert listed == list(reversed(ids))
    assert second.get("next_token") is None


def test_a_token_round_trips_with_filters_and_another_page_size(api: Api) -> None:
    # GIVEN three jobs, listed with a state filter two at a time
    ids = _jobs(api, 3)
    path = f"{JOBS}?state=SUBMITTING&limit=2"
    token = _first_page_token(api, path)
    # WHEN the next page is asked with the same filters and another page size
    second = api.page(f"{JOBS}?state=SUBMITTING&limit=5", token)
    # THEN it is the rest
    assert second.status_code == 200
    assert [j["job_id"] for j in second.get_json()["jobs"]] == [ids[0]]


def test_a_token_round_trips_through_the_clusters_listing(api: Api) -> None:
    # GIVEN three clusters being created
    for name in ("alpha", "beta", "gamma"):
        assert api.post("/v1/clusters", {"name": name, "configuration": CONFIG}).status_code == 202
    # WHEN listed one at a time, following next_token
    names: list[str] = []
    body = api.get("/v1/clusters?limit=1").get_json()
    while True:
        names += [c["name"] for c in body["clusters"]]
        if not body.get("next_token"):
            break
        body = api.page("/v1/clusters?limit=1", body["next_token"]).get_json()
    # THEN each once
    assert sorted(names) == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize(
    "token", ["abc", "x" * 2048, "eyJwayI6IDF9"], ids=["short", "long", "unsigned"]
)
def test_a_malformed_token_is_422(api: Api, token: str) -> None:
    # GIVEN jobs to list / WHEN a token this API never issued is sent / THEN 422
    _jobs(api, 1)
    assert_invalid_token(api.page(JOBS, token))


def test_a_token_outside_the_documented_alphabet_is_a_422_on_the_field(api: Api) -> None:
    # GIVEN jobs to list / WHEN a next_token the OpenAPI pattern forbids is sent
    _jobs(api, 1)
    answer = api.page(JOBS, "%%%")
    # THEN 422, the schema's own refusal of that field (before any signature check)
    assert answer.status_code == 422
    assert answer.json["error"]["code"] == "VALIDATION_ERROR"
    assert "next_token" in json.dumps(answer.json["error"])


def test_a_crafted_start_key_never_reaches_dynamodb(api: Api) -> None:
    # GIVEN a start key of another owner's partition, as the old unsigned tokens carried it
    key = {"pk": {"S": "JOB#r0"}, "sk": {"S": "JOB"}, "gsi1pk": {"S": f"JOBS#{BOB}#local"}}
    crafted = base64.urlsafe_b64encode(json.dumps(key).encode()).decode()
    # WHEN sent as next_token / THEN 422 (before: DynamoDB's error as a 500/503)
    assert_invalid_token(api.page(JOBS, crafted))


def test_a_tampered_token_is_422(api: Api) -> None:
    # GIVEN a genuine token whose page key was changed (its tag kept)
    _jobs(api, 3)
    page, _, tag = _first_page_token(api).rpartition(".")
    key = json.loads(base64.urlsafe_b64decode(page))
    key["pk"]["S"] = "JOB#r0000000000000000000000000000"
    forged = base64.urlsafe_b64encode(json.dumps(key).encode()).decode()
    # WHEN sent / THEN 422
    assert_invalid_token(api.page(f"{JOBS}?limit=2", f"{forged}.{tag}"))


def test_a_token_issued_to_another_caller_is_422(api: Api) -> None:
    # GIVEN Alice's token, and Bob's own jobs
    _jobs(api, 3)
    _jobs(api, 3, BOB)
    token = _first_page_token(api)
    # WHEN Bob sends it / THEN 422
    assert_invalid_token(api.page(f"{JOBS}?limit=2", token, BOB))


@pytest.mark.parametrize(
    "path",
    [
        f"{JOBS}?limit=2&state=RUNNING",
        f"{JOBS}?limit=2&name=other",
        f"{JOBS}?limit=2&since=2020-01-01T00:00:00Z",
        "/v1/clusters/other/jobs?limit=2",
        "/v1/clusters?limit=2",
    ],
    ids=["state", "name", "since", "cluster", "clusters-route"],
)
def test_a_token_issued_for_another_query_is_422(api: Api, path: str) -> None:
    # GIVEN a token of the unfiltered jobs listing on cluster local
    _jobs(api, 3)
    token = _first_page_token(api)
    # WHEN sent with other filters, for another cluster, or to another route / THEN 422
    assert_invalid_token(api.page(path, token))
