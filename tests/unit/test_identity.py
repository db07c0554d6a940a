"""The owner of an IAM caller (issue 12, "Identity"): parts of an ARN the caller chooses
(a role's session name, a federated user's name) never decide whose jobs they reach."""

from __future__ import annotations

import pytest

from broker.identity import owner_of

ACCOUNT = "arn:aws:sts::111122223333"


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:iam::111122223333:user/alice",
        "arn:aws:iam::111122223333:user/division/team/alice",
        "arn:aws:iam::111122223333:root",
        f"{ACCOUNT}:assumed-role/AWSReservedSSO_Researchers_0123456789abcdef/alice",
        "arn:aws-us-gov:iam::111122223333:user/alice",
    ],
)
def test_names_the_caller_cannot_choose_are_kept(arn: str) -> None:
    # GIVEN an IAM user, the root, or an Identity Center session (its name set by Identity
    # Center) / WHEN owned / THEN the ARN as it is
    assert owner_of(arn) == arn


def test_sessions_of_an_ordinary_role_share_one_owner() -> None:
    # GIVEN two sessions of the same role, named by whoever assumed it
    alice = owner_of(f"{ACCOUNT}:assumed-role/Researchers/alice")
    impostor = owner_of(f"{ACCOUNT}:assumed-role/Researchers/alice")
    bob = owner_of(f"{ACCOUNT}:assumed-role/Researchers/bob")
    # THEN they are one owner, the role: a chosen session name reaches nothing more
    assert alice == impostor == bob == f"{ACCOUNT}:assumed-role/Researchers/*"


def test_another_roles_sessions_are_another_owner() -> None:
    # GIVEN sessions of two roles / THEN two owners, whatever the session names
    assert owner_of(f"{ACCOUNT}:assumed-role/A/x") != owner_of(f"{ACCOUNT}:assumed-role/B/x")


def test_a_site_can_trust_the_session_names_of_its_own_roles() -> None:
    # GIVEN a role whose trust policy pins the session name (named in the setting)
    arn = f"{ACCOUNT}:assumed-role/HpcUsers-saml/alice@example.org"
    # WHEN owned with that role's pattern / THEN one owner per session
    assert owner_of(arn, ["HpcUsers-*"]) == arn
    # AND without the pattern, the role's sessions share one owner
    assert owner_of(arn, []) == f"{ACCOUNT}:assumed-role/HpcUsers-saml/*"


def test_federated_users_share_one_owner() -> None:
    # GIVEN federated users (names chosen by the caller of GetFederationToken)
    owners = {owner_of(f"{ACCOUNT}:federated-user/{name}") for name in ("alice", "bob")}
    # THEN one owner for all of them
    assert owners == {f"{ACCOUNT}:federated-user/*"}
