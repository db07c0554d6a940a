"""The admin API of caller-to-user mappings, and default deny, through genuine API Gateway REST
proxy events (broker.local.apigw -> broker.api.handler.lambda_handler) on in-memory stores.

The principal travels URL-encoded in the query string (an ARN holds '/', which API Gateway
decodes in a path before routing): these tests send it with every reserved character
percent-encoded, as a client's URL encoder does.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from werkzeug.test import Client, TestResponse

from broker.agent.protocol import AgentRequest
from broker.api import services as api_services
from broker.api.handler import lambda_handler
from broker.jobs.accept import RequestService
from broker.jobs.dispatch import Dispatcher
from broker.jobs.models import slurm_token
from broker.local.apigw import ApiGatewayApp, ApiRoute
from broker.notifications.announcer import Announcer
from broker.users.service import UserService
from tests.fakes import (
    FakeDirectory,
    FakeQueue,
    InMemoryStore,
    InMemoryUserStore,
    RecordingNotifier,
    ScriptedRunner,
    submitted,
)

ADMIN = "arn:aws:iam::123456789012:user/ops/admin"
ALICE = "arn:aws:iam::123456789012:user/team/alice"
BOB = "arn:aws:sts::123456789012:assumed-role/Researcher/bob"
SCRIPT = "#!/bin/bash\necho hello\n"
MAPPING = "/v1/admin/clusters/local/users/mapping"


class Api:
    """A client of the handler; ``as_`` is the caller (the local principal header), ``query``
    the query string (each value URL-encoded, '/' as %2F)."""

    def __init__(self, store: InMemoryStore, queue: FakeQueue, users: UserService) -> None:
        route = ApiRoute(
            resource="/{proxy+}", method="ANY", handler=lambda_handler, function_name="ApiFunction"
        )
        self.client = Client(ApiGatewayApp([route], default_principal=ALICE))
        self.store, self.queue, self.users = store, queue, users

    def call(
        self, method: str, path: str, as_: str, body: Any = None, **query: str
    ) -> TestResponse:
        encoded = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        return self.client.open(
            path + (f"?{encoded}" if encoded else ""), method=method,
            json=body, headers={"X-Hpcb-Local-Principal": as_},
        )  # fmt: skip


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Api:
    store, queue = InMemoryStore(), FakeQueue()
    users = UserService(InMemoryUserStore(), admins=[ADMIN])
    service = RequestService(store, queue, FakeDirectory(), users)
    monkeypatch.setattr(api_services, "request_service", lambda: service)
    monkeypatch.setattr(api_services, "user_service", lambda: users)
    return Api(store, queue, users)


def map_user(api: Api, principal: str, user: str, cluster: str = "local") -> TestResponse:
    path = f"/v1/admin/clusters/{cluster}/users/mapping"
    return api.call("PUT", path, ADMIN, {"user": user}, principal=principal)


# -- only administrators ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "query"),
    [
        ("GET", "/v1/admin/clusters/local/users", None, {}),
        ("GET", MAPPING, None, {"principal": ALICE}),
        ("PUT", MAPPING, {"user": "alice"}, {"principal": ALICE}),
        ("DELETE", MAPPING, None, {"principal": ALICE}),
        # Invalid calls too: a 422 would tell that the route exists.
        ("PUT", MAPPING, {"user": "root", "extra": 1}, {}),
        ("GET", "/v1/admin/clusters/9-bad/users", None, {"limit": "0"}),
        ("POST", "//v1/admin/clusters/local/users", {"x": 1}, {}),
    ],
)
def test_everyone_but_an_admin_gets_the_404_of_a_missing_route(
    api: Api, method: str, path: str, body: Any, query: dict[str, str]
) -> None:
    # GIVEN alice, who is no administrator (and no mapping exists)
    missing = api.call("GET", "/v1/nothing-here", ALICE)
    # WHEN she calls an admin route, validly or not
    answer = api.call(method, path, ALICE, body, **query)
    # THEN the same answer as a route that does not exist, and nothing was written
    assert (answer.status_code, answer.get_json()) == (404, missing.get_json())
    assert answer.get_json()["error"]["code"] == "ROUTE_NOT_FOUND"
    assert api.call("GET", MAPPING, ADMIN, principal=ALICE).status_code == 404


# -- the admin's CRUD ------------------------------------------------------------------------


def test_an_admin_maps_reads_and_unmaps_a_principal_whose_arn_has_slashes(api: Api) -> None:
    # GIVEN an admin / WHEN she maps alice (ARN with '/', sent as %2F in the query)
    put = map_user(api, ALICE, "hpcbtest-a")
    # THEN 200 with the mapping, recorded with who wrote it, and the ARN intact
    assert put.status_code == 200, put.get_json()
    body = put.get_json()
    assert (body["principal"], body["user"], body["created_by"]) == (ALICE, "hpcbtest-a", ADMIN)
    # AND it reads back, then unmaps (the removed mapping answered), then is gone
    assert api.call("GET", MAPPING, ADMIN, principal=ALICE).get_json() == body
    assert api.call("DELETE", MAPPING, ADMIN, principal=ALICE).get_json() == body
    gone = api.call("GET", MAPPING, ADMIN, principal=ALICE)
    again = api.call("DELETE", MAPPING, ADMIN, principal=ALICE)
    assert (gone.status_code, again.status_code) == (404, 404)
    assert gone.get_json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"user": "root"}, "body.user"), ({"user": "x", "uid": 0}, "body.uid"),
     ({"user": "Alice"}, "body.user"), ({"user": "x", "uid": 999}, "body.uid")],
)  # fmt: skip
def test_an_admin_cannot_map_root_or_a_low_uid(api: Api, body: Any, field: str) -> None:
    # GIVEN a body naming root, an invalid name or a uid below 1000 / WHEN PUT
    answer = api.call("PUT", MAPPING, ADMIN, body, principal=ALICE)
    # THEN 422 naming the field; nothing mapped
    assert answer.status_code == 422
    assert [f["field"] for f in answer.get_json()["error"]["fields"]] == [field]
    assert api.users.list("local", limit=10, next_token=None) == ([], None)


def test_a_malformed_principal_is_422(api: Api) -> None:
    # GIVEN a principal that is no IAM ARN / WHEN an admin PUTs it / THEN 422 on the query
    answer = api.call("PUT", MAPPING, ADMIN, {"user": "x"}, principal="alice; rm -rf /")
    assert answer.status_code == 422
    assert answer.get_json()["error"]["fields"][0]["field"] == "query.principal"


def test_an_admin_pages_through_a_clusters_mappings(api: Api) -> None:
    # GIVEN five principals mapped on local and one elsewhere
    principals = [f"arn:aws:iam::123456789012:user/u{i}" for i in range(5)]
    for i, principal in enumerate(principals):
        assert map_user(api, principal, f"u{i}").status_code == 200
    assert map_user(api, BOB, "bob", cluster="other").status_code == 200
    # WHEN listed two at a time, following next_token
    seen: list[str] = []
    query: dict[str, str] = {"limit": "2"}
    while True:
        page = api.call("GET", "/v1/admin/clusters/local/users", ADMIN, **query).get_json()
        seen.extend(m["principal"] for m in page["mappings"])
        if not page.get("next_token"):
            break
        query = {"limit": "2", "next_token": page["next_token"]}
    # THEN local's five, in principal order, once each
    assert seen == sorted(principals)


def test_a_page_token_is_good_for_its_cluster_only(api: Api) -> None:
    # GIVEN a token from local's listing
    for i in range(3):
        map_user(api, f"arn:aws:iam::123456789012:user/u{i}", f"u{i}")
    token = api.call("GET", "/v1/admin/clusters/local/users", ADMIN, limit="1").get_json()
    # WHEN used on another cluster's listing / THEN 422 INVALID_NEXT_TOKEN
    answer = api.call(
        "GET", "/v1/admin/clusters/other/users", ADMIN, next_token=token["next_token"]
    )
    assert answer.status_code == 422
    assert answer.get_json()["error"]["code"] == "INVALID_NEXT_TOKEN"


# -- default deny ------------------------------------------------------------------------------


def test_an_unmapped_caller_gets_403_not_mapped_and_nothing_is_recorded(api: Api) -> None:
    # GIVEN bob, not mapped on local / WHEN he submits a job and a batch
    job = api.call("POST", "/v1/clusters/local/jobs", BOB, {"script": SCRIPT})
    batch = api.call("POST", "/v1/clusters/local/jobs:batch", BOB, {"jobs": [{"script": SCRIPT}]})
    # THEN 403 NOT_MAPPED in the one error schema, saying whom to ask
    for answer in (job, batch):
        assert answer.status_code == 403
        error = answer.get_json()["error"]
        assert error["code"] == "NOT_MAPPED"
        assert ADMIN in error["message"]
        assert "administrator" in error["message"]
    # AND no request record, no job record, nothing queued
    assert api.store.records == {}
    assert api.store.jobs == {}
    assert api.queue.sent == []


def test_unmapping_denies_the_callers_next_cancel_and_output(api: Api) -> None:
    # GIVEN alice mapped, her job in Slurm as 42, then her mapping removed
    map_user(api, ALICE, "hpcbtest-a")
    request_id = api.call("POST", "/v1/clusters/local/jobs", ALICE, {"script": SCRIPT}).get_json()[
        "request_id"
    ]
    api.store.record_submitted(request_id, "42")
    api.call("DELETE", MAPPING, ADMIN, principal=ALICE)
    queued = len(api.queue.sent)
    # WHEN she cancels it or asks for its output
    cancel = api.call("DELETE", "/v1/clusters/local/jobs/42", ALICE)
    output = api.call("POST", "/v1/clusters/local/jobs/42/output", ALICE, {"stream": "stdout"})
    # THEN 403 NOT_MAPPED, and nothing more was queued
    assert (cancel.status_code, output.status_code) == (403, 403)
    assert len(api.queue.sent) == queued


def test_the_worker_submits_as_the_user_the_admin_mapped(api: Api) -> None:
    # GIVEN alice mapped to hpcbtest-a through the admin API, and her job accepted
    map_user(api, ALICE, "hpcbtest-a")
    answer = api.call("POST", "/v1/clusters/local/jobs", ALICE, {"script": SCRIPT})
    assert answer.status_code == 202
    (message,) = api.queue.sent
    # WHEN the worker handles the queued message
    runner = ScriptedRunner(answers=[submitted(slurm_token(message.request_id), "42")])
    worker = Dispatcher(
        api.store, FakeDirectory(), runner.runner_for, Announcer(api.store, RecordingNotifier())
    )
    assert worker.handle(message) == "succeeded"
    # THEN the agent ran sbatch as hpcbtest-a, and the job's view says so
    (call,) = runner.calls
    assert isinstance(call, AgentRequest)
    assert [job.user for job in call.jobs or []] == ["hpcbtest-a"]
    view = api.call("GET", f"/v1/clusters/local/jobs/{message.request_id}", ALICE).get_json()
    assert view["user"] == "hpcbtest-a"
