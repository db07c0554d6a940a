"""The caller-to-user mapping's rules: default deny, whom to ask, administrators only; and the
admin body's validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from broker.errors import NotFoundError
from broker.users.models import MappingBody, NotMappedError
from broker.users.service import UserService
from tests.fakes import InMemoryUserStore

ALICE = "arn:aws:iam::123456789012:user/alice"
ADMIN = "arn:aws:iam::123456789012:user/admin"


def test_an_unmapped_caller_is_refused_and_told_whom_to_ask() -> None:
    # GIVEN no mapping, and one administrator configured
    service = UserService(InMemoryUserStore(), admins=[ADMIN])
    # WHEN the caller's user on local is required
    with pytest.raises(NotMappedError) as refused:
        service.require("local", ALICE)
    # THEN NOT_MAPPED (403), naming the caller, the cluster and the administrator
    assert refused.value.code == "NOT_MAPPED"
    assert ALICE in refused.value.message
    assert "local" in refused.value.message
    assert ADMIN in refused.value.message


def test_a_mapped_caller_gets_its_user_on_that_cluster_only() -> None:
    # GIVEN alice mapped on local
    service = UserService(InMemoryUserStore(), admins=[ADMIN])
    service.map("local", ALICE, MappingBody(user="alice", uid=1500), by=ADMIN)
    # WHEN required on local, and on another cluster
    # THEN her user on local; another cluster is not mapped (no fallback)
    assert service.require("local", ALICE) == "alice"
    with pytest.raises(NotMappedError):
        service.require("other", ALICE)


def test_a_mapping_records_who_wrote_it() -> None:
    # GIVEN an admin mapping alice / WHEN read back / THEN the admin and the time are kept
    service = UserService(InMemoryUserStore(), admins=[ADMIN])
    service.map("local", ALICE, MappingBody(user="alice"), by=ADMIN)
    found = service.get("local", ALICE)
    assert (found.user, found.uid, found.created_by) == ("alice", None, ADMIN)


def test_unmapping_removes_and_a_second_unmap_is_not_found() -> None:
    # GIVEN alice mapped / WHEN unmapped twice
    service = UserService(InMemoryUserStore())
    service.map("local", ALICE, MappingBody(user="alice"), by=ADMIN)
    assert service.unmap("local", ALICE).user == "alice"
    # THEN the second is NotFound, and she is refused again
    with pytest.raises(NotFoundError):
        service.unmap("local", ALICE)
    with pytest.raises(NotMappedError):
        service.require("local", ALICE)


def test_only_configured_principals_are_admins() -> None:
    # GIVEN one admin / THEN exactly that ARN is an admin; with none configured, nobody is
    assert UserService(InMemoryUserStore(), admins=[ADMIN]).is_admin(ADMIN)
    assert not UserService(InMemoryUserStore(), admins=[ADMIN]).is_admin(ALICE)
    assert not UserService(InMemoryUserStore(), admins=[""]).is_admin("")
    assert not UserService(InMemoryUserStore()).is_admin(ADMIN)


@pytest.mark.parametrize(
    "body",
    [
        {"user": "root"},
        {"user": "Alice"},
        {"user": "a b"},
        {"user": "-x"},
        {"user": "x" * 33},
        {"user": "alice", "uid": 0},
        {"user": "alice", "uid": 999},
        {"user": "alice", "uid": "1500"},
        {"user": "alice", "extra": 1},
        {},
    ],
)
def test_the_admin_body_refuses_root_bad_names_and_low_uids(body: dict[str, object]) -> None:
    # GIVEN a body naming root, a name the agent would refuse, or a uid below 1000
    # WHEN validated / THEN refused
    with pytest.raises(ValidationError):
        MappingBody.model_validate(body)


def test_the_admin_body_takes_a_portable_name_and_a_uid() -> None:
    # GIVEN a valid body / WHEN validated / THEN kept as given
    body = MappingBody.model_validate({"user": "hpcb-dev", "uid": 1001})
    assert (body.user, body.uid) == ("hpcb-dev", 1001)
