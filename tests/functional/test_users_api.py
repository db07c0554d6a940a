"""Caller-to-user mappings through the API handler, on the broker's DynamoDB table (moto over
HTTP): default deny at acceptance (403 NOT_MAPPED, nothing recorded, nothing queued), the admin
routes (only for HPCB_ADMIN_PRINCIPALS; 404 ROUTE_NOT_FOUND for anyone else, as a path no
route serves), and the store itself (DynamoDB and the in-memory fake agree)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from werkzeug.test import Client, TestResponse

from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoStore
from broker.adapters.dynamodb.users import DynamoUserMappings
from broker.adapters.sqs import SqsRequestQueue
from broker.api import services as api_services
from broker.api.handler import lambda_handler
from broker.jobs.accept import RequestService
from broker.local.apigw import ApiGatewayApp, ApiRoute
from broker.ports import UserMappings
from broker.settings import identity_settings, page_token_settings
from broker.users.models import MappingBody
from broker.users.service import MappedUsers, UserAdmin
from tests.conftest import AwsResources
from tests.fakes import FakeDirectory, InMemoryUserMappings

ADMIN = "arn:aws:iam::123456789012:user/hpc-admin"
ALICE = "arn:aws:iam::123456789012:user/alice"
BOB = "arn:aws:iam::123456789012:user/bob"
ROLE = "arn:aws:sts::123456789012:assumed-role/Researchers/*"
USERS = "/v1/admin/clusters/local/users"
SCRIPT = "#!/bin/bash\necho hello\n"


class Api:
    def __init__(self, http: Client, resources: AwsResources, mappings: DynamoUserMappings) -> None:
        self.http, self.resources, self.mappings = http, resources, mappings
        self.store = DynamoStore(client("dynamodb"), resources.ref("RequestsTable"))

    def call(self, method: str, path: str, body: Any = None, who: str = ALICE) -> TestResponse:
        return self.http.open(path, method=method, json=body,
                              headers={"X-Hpcb-Local-Principal": who})  # fmt: skip

    def queued(self) -> list[dict[str, Any]]:
        url = self.resources.provisioned.queue_url("RequestsQueue")
        got = client("sqs").receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        return list(got.get("Messages", []))


@pytest.fixture
def api(aws_resources: AwsResources, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("HPCB_ADMIN_PRINCIPALS", f"{ADMIN}, arn:aws:iam::123456789012:user/ops")
    monkeypatch.setenv("HPCB_ADMIN_CONTACT", "hpc-support@example.org")
    monkeypatch.setenv("HPCB_PAGE_TOKEN_SECRET", aws_resources.ref("PageTokenSecret"))
    monkeypatch.delenv("HPCB_PAGE_TOKEN_KEY", raising=False)
    identity_settings.cache_clear()
    page_token_settings.cache_clear()
    table = aws_resources.ref("RequestsTable")
    mappings = DynamoUserMappings(client("dynamodb"), table)
    queue = SqsRequestQueue(client("sqs"), aws_resources.provisioned.queue_url("RequestsQueue"))
    service = RequestService(
        DynamoStore(client("dynamodb"), table), queue, FakeDirectory(),
        users=MappedUsers(mappings, contact="hpc-support@example.org"),
    )  # fmt: skip
    monkeypatch.setattr(api_services, "request_service", lambda: service)
    monkeypatch.setattr(api_services, "user_admin", lambda: UserAdmin(mappings))
    route = ApiRoute(
        resource="/{proxy+}", method="ANY", handler=lambda_handler, function_name="ApiFunction"
    )
    yield Api(Client(ApiGatewayApp([route], default_principal=ALICE)), aws_resources, mappings)
    identity_settings.cache_clear()
    page_token_settings.cache_clear()


def map_alice(api: Api, user: str = "alice") -> TestResponse:
    return api.call("PUT", USERS, {"principal": ALICE, "user": user}, who=ADMIN)


# -- default deny ---------------------------------------------------------------------------------


def test_an_unmapped_caller_gets_403_not_mapped_and_nothing_is_recorded(api: Api) -> None:
    # GIVEN alice, mapped to no user on cluster "local"
    # WHEN she submits a job, a batch, a cancel and an output read
    job = api.call("POST", "/v1/clusters/local/jobs", {"script": SCRIPT})
    batch = api.call("POST", "/v1/clusters/local/jobs:batch", {"jobs": [{"script": SCRIPT}]})
    cancel = api.call("DELETE", "/v1/clusters/local/jobs/r" + "0" * 28)
    output = api.call("POST", "/v1/clusters/local/jobs/r" + "0" * 28 + "/output", {})
    # THEN each is 403 NOT_MAPPED, saying whom to ask
    for answer in (job, batch, cancel, output):
        assert answer.status_code == 403, answer.get_json()
        error = answer.get_json()["error"]
        assert error["code"] == "NOT_MAPPED"
        assert "hpc-support@example.org" in error["message"]
    # AND nothing was recorded for her, nothing queued
    listed = api.store.list_jobs(ALICE, "local", states=None, name=None, since=None, until=None,
                                 limit=10, next_token=None)  # fmt: skip
    assert listed[0] == []
    assert api.queued() == []


def test_a_mapped_caller_submits_and_a_mapping_is_per_cluster(api: Api) -> None:
    # GIVEN alice mapped on "local" only
    assert map_alice(api).status_code == 200
    # WHEN she submits on "local", and on "other"
    here = api.call("POST", "/v1/clusters/local/jobs", {"script": SCRIPT})
    api.mappings.put_mapping(  # bob is mapped on "other", not alice
        UserAdmin(api.mappings).put(ADMIN, "other", MappingBody(principal=BOB, user="bob"))
    )
    # THEN "local" accepts (202), and no mapping of hers elsewhere is implied
    assert here.status_code == 202
    assert MappedUsers(api.mappings).user_for("local", ALICE) == "alice"
    assert api.mappings.get_mapping("other", ALICE) is None


def test_an_unmapped_caller_is_refused_again_at_once(api: Api) -> None:
    # GIVEN alice mapped, then unmapped by an administrator
    map_alice(api)
    removed = api.call("DELETE", f"{USERS}?principal={quote(ALICE)}", who=ADMIN)
    # WHEN she submits / THEN 403 at once (the API reads the mapping on every write)
    assert removed.status_code == 200
    assert removed.get_json()["user"] == "alice"
    answer = api.call("POST", "/v1/clusters/local/jobs", {"script": SCRIPT})
    assert answer.status_code == 403


# -- admin routes ------------------------------------------------------------------------------


def test_an_admin_maps_reads_lists_and_unmaps(api: Api) -> None:
    # WHEN the admin maps alice and a role's sessions, then reads and lists them
    put = map_alice(api)
    api.call("PUT", USERS, {"principal": ROLE, "user": "research", "uid": 4001}, who=ADMIN)
    one = api.call("GET", f"{USERS}?principal={quote(ALICE)}", who=ADMIN)
    listed = api.call("GET", USERS, who=ADMIN)
    # THEN the mapping is recorded with who made it; the list has both, by principal
    assert put.status_code == 200
    assert (put.get_json()["user"], put.get_json()["created_by"]) == ("alice", ADMIN)
    assert one.get_json()["mappings"][0]["principal"] == ALICE
    assert [(m["principal"], m["user"], m["uid"]) for m in listed.get_json()["mappings"]] == [
        (ALICE, "alice", None),
        (ROLE, "research", 4001),
    ]


def test_the_admin_list_pages_with_a_signed_token(api: Api) -> None:
    # GIVEN five mapped callers
    for n in range(5):
        api.call("PUT", USERS, {"principal": f"{ALICE}{n}", "user": f"u{n}"}, who=ADMIN)
    # WHEN listed two at a time, following next_token
    seen: list[str] = []
    path = f"{USERS}?limit=2"
    while True:
        body = api.call("GET", path, who=ADMIN).get_json()
        seen += [m["user"] for m in body["mappings"]]
        if not body["next_token"]:
            break
        path = f"{USERS}?limit=2&next_token={quote(body['next_token'], safe='')}"
    # THEN every mapping once; a token is the admin's own (another admin's use is 422)
    assert sorted(seen) == [f"u{n}" for n in range(5)]
    first = api.call("GET", f"{USERS}?limit=2", who=ADMIN).get_json()["next_token"]
    stolen = api.call("GET", f"{USERS}?limit=2&next_token={quote(first, safe='')}",
                      who="arn:aws:iam::123456789012:user/ops")  # fmt: skip
    assert stolen.status_code == 422


@pytest.mark.parametrize("who", [ALICE, BOB, ROLE.replace("*", "anyone")])
def test_admin_routes_are_absent_for_everyone_else(api: Api, who: str) -> None:
    # GIVEN a caller not named in HPCB_ADMIN_PRINCIPALS
    unknown = api.call("GET", "/v1/no-such-route", who=who)
    # WHEN they use each admin route (even to map themselves)
    answers = [
        api.call("PUT", USERS, {"principal": who, "user": "root"}, who=who),
        api.call("GET", USERS, who=who),
        api.call("GET", f"{USERS}?principal={quote(ALICE)}", who=who),
        api.call("DELETE", f"{USERS}?principal={quote(ALICE)}", who=who),
    ]
    # THEN each answers exactly as a path no route serves, and nothing was written
    for answer in answers:
        assert (answer.status_code, answer.get_json()) == (404, unknown.get_json())
    assert api.mappings.get_mapping("local", who) is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"principal": ALICE, "user": "Root"}, "body.user"),
        ({"principal": ALICE, "user": "a;id"}, "body.user"),
        ({"principal": ALICE, "user": "-u0"}, "body.user"),
        ({"principal": ALICE, "user": "alice", "uid": 0}, "body.uid"),
        ({"principal": "alice", "user": "alice"}, "body.principal"),
        ({"principal": ALICE + " x", "user": "alice"}, "body.principal"),
        ({"principal": ALICE, "user": "alice", "admin": True}, "body.admin"),
    ],
)
def test_bad_mappings_are_422_naming_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    answer = api.call("PUT", USERS, body, who=ADMIN)
    assert answer.status_code == 422
    assert field in [f["field"] for f in answer.get_json()["error"]["fields"]]


def test_unmapping_someone_unmapped_is_404(api: Api) -> None:
    answer = api.call("DELETE", f"{USERS}?principal={quote(BOB)}", who=ADMIN)
    assert answer.status_code == 404


# -- the store -------------------------------------------------------------------------------------


@pytest.fixture(params=["dynamodb", "memory"])
def mappings(request: pytest.FixtureRequest) -> UserMappings:
    if request.param == "memory":
        return InMemoryUserMappings()
    resources: AwsResources = request.getfixturevalue("aws_resources")
    return DynamoUserMappings(client("dynamodb"), resources.ref("RequestsTable"))


def test_store_puts_replaces_pages_and_deletes(mappings: UserMappings) -> None:
    admin = UserAdmin(mappings)
    for n in range(3):
        admin.put(ADMIN, "c1", MappingBody(principal=f"{ALICE}{n}", user=f"u{n}"))
    admin.put(ADMIN, "c1", MappingBody(principal=f"{ALICE}1", user="again"))
    admin.put(ADMIN, "c2", MappingBody(principal=f"{ALICE}0", user="elsewhere"))
    first, token = mappings.list_mappings("c1", limit=2, next_token=None)
    rest, end = mappings.list_mappings("c1", limit=2, next_token=token)
    assert [m.user for m in first + rest] == ["u0", "again", "u2"]
    assert end is None
    assert mappings.delete_mapping("c1", f"{ALICE}0") is True
    assert mappings.delete_mapping("c1", f"{ALICE}0") is False
    assert mappings.get_mapping("c1", f"{ALICE}0") is None
    assert mappings.get_mapping("c2", f"{ALICE}0") is not None
