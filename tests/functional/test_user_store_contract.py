"""Store contract of the caller-to-user mappings: the DynamoDB adapter (moto over HTTP) and the
in-memory fake answer the same way."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoUserStore
from broker.ports import UserStore
from broker.schema import utcnow
from broker.users.models import UserMapping
from tests.conftest import AwsResources
from tests.fakes import InMemoryUserStore

ALICE = "arn:aws:iam::123456789012:user/team/alice"
BOB = "arn:aws:sts::123456789012:assumed-role/Researcher/bob"
ADMIN = "arn:aws:iam::123456789012:user/admin"


@pytest.fixture(params=["dynamodb", "memory"])
def users(request: pytest.FixtureRequest) -> Iterator[UserStore]:
    if request.param == "memory":
        yield InMemoryUserStore()
        return
    resources: AwsResources = request.getfixturevalue("aws_resources")
    yield DynamoUserStore(client("dynamodb"), resources.ref("RequestsTable"))


def mapping(principal: str = ALICE, user: str = "alice", cluster: str = "local") -> UserMapping:
    return UserMapping(
        cluster=cluster, principal=principal, user=user, uid=1500, created_at=utcnow(),
        created_by=ADMIN,
    )  # fmt: skip


def test_a_mapping_reads_back_identically(users: UserStore) -> None:
    # GIVEN a mapping of a principal whose ARN has '/' in it / WHEN written and read
    written = mapping()
    users.put_mapping(written)
    # THEN every field round-trips
    assert users.get_mapping("local", ALICE) == written


def test_no_mapping_reads_as_none(users: UserStore) -> None:
    # GIVEN alice mapped on local only / WHEN bob, or alice on another cluster, is read
    users.put_mapping(mapping())
    # THEN None: a mapping is per principal and per cluster
    assert users.get_mapping("local", BOB) is None
    assert users.get_mapping("other", ALICE) is None


def test_a_put_replaces_the_previous_mapping(users: UserStore) -> None:
    # GIVEN alice mapped to alice / WHEN mapped again to another user
    users.put_mapping(mapping())
    users.put_mapping(mapping(user="alice2"))
    # THEN the last write is the mapping
    found = users.get_mapping("local", ALICE)
    assert found is not None
    assert found.user == "alice2"


def test_delete_returns_the_removed_mapping_then_none(users: UserStore) -> None:
    # GIVEN alice mapped / WHEN deleted twice
    users.put_mapping(mapping())
    first = users.delete_mapping("local", ALICE)
    second = users.delete_mapping("local", ALICE)
    # THEN the first answers the mapping, the second None, and it is gone
    assert first is not None
    assert first.user == "alice"
    assert second is None
    assert users.get_mapping("local", ALICE) is None


def test_listing_pages_through_one_clusters_mappings_by_principal(users: UserStore) -> None:
    # GIVEN five principals mapped on local, and one on another cluster
    principals = [f"arn:aws:iam::123456789012:user/u{i}" for i in range(5)]
    for i, principal in enumerate(principals):
        users.put_mapping(mapping(principal, f"u{i}"))
    users.put_mapping(mapping(BOB, "bob", cluster="other"))
    # WHEN listed two at a time
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page, token = users.list_mappings("local", limit=2, next_token=token)
        seen.extend(m.principal for m in page)
        pages += 1
        if token is None:
            break
    # THEN every mapping of local once, in principal order, and none of the other cluster's
    assert seen == sorted(principals)
    assert pages >= 3
