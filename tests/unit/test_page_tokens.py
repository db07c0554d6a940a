"""next_token values: opaque, tamper-evident, bound to the caller and the query (no network)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from broker.api.tokens import PageTokens
from broker.errors import InvalidNextTokenError
from broker.local.template import load_template

KEY = b"k" * 32
ALICE = "arn:aws:iam::123456789012:user/alice"
BOB = "arn:aws:sts::123456789012:assumed-role/Researcher/bob"
QUERY = {"route": "jobs", "cluster": "local", "state": ["RUNNING"], "name": None}
PAGE = base64.urlsafe_b64encode(b'{"pk": {"S": "JOB#r1"}}').decode()


@pytest.fixture
def tokens() -> PageTokens:
    return PageTokens(KEY)


def test_a_token_opens_to_the_page_key_it_sealed(tokens: PageTokens) -> None:
    # GIVEN a page key sealed for a caller and a query
    token = tokens.seal(PAGE, caller=ALICE, query=QUERY)
    # WHEN opened by the same caller for the same query / THEN the page key
    assert token is not None
    assert tokens.open(token, caller=ALICE, query=dict(reversed(QUERY.items()))) == PAGE


def test_no_page_key_gives_no_token_and_no_token_no_page(tokens: PageTokens) -> None:
    # GIVEN the last page / WHEN sealed / THEN no token; and no token opens to no page key
    assert tokens.seal(None, caller=ALICE, query=QUERY) is None
    assert tokens.open(None, caller=ALICE, query=QUERY) is None


@pytest.mark.parametrize(
    "token",
    ["", "abc", "!!!", ".", f"{PAGE}.", f".{'A' * 43}", f"{PAGE}.not base64!", PAGE],
    ids=["empty", "short", "junk", "dot", "no-tag", "no-page", "bad-tag", "unsigned"],
)
def test_a_malformed_token_is_invalid(tokens: PageTokens, token: str) -> None:
    # GIVEN a token this API never issued / WHEN opened / THEN InvalidNextTokenError
    with pytest.raises(InvalidNextTokenError):
        tokens.open(token, caller=ALICE, query=QUERY)


def test_a_token_with_another_page_key_is_invalid(tokens: PageTokens) -> None:
    # GIVEN a genuine token whose page key was replaced (the tag kept)
    tag = tokens.seal(PAGE, caller=ALICE, query=QUERY).rpartition(".")[2]  # type: ignore[union-attr]
    forged = base64.urlsafe_b64encode(b'{"pk": {"S": "JOB#r2"}}').decode()
    # WHEN opened / THEN invalid
    with pytest.raises(InvalidNextTokenError):
        tokens.open(f"{forged}.{tag}", caller=ALICE, query=QUERY)


def test_a_token_with_an_altered_tag_is_invalid(tokens: PageTokens) -> None:
    # GIVEN a genuine token with one character of its tag changed
    token = tokens.seal(PAGE, caller=ALICE, query=QUERY)
    assert token is not None
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    # WHEN opened / THEN invalid
    with pytest.raises(InvalidNextTokenError):
        tokens.open(altered, caller=ALICE, query=QUERY)


def test_a_token_issued_to_another_caller_is_invalid(tokens: PageTokens) -> None:
    # GIVEN Alice's token / WHEN Bob sends it / THEN invalid
    token = tokens.seal(PAGE, caller=ALICE, query=QUERY)
    with pytest.raises(InvalidNextTokenError):
        tokens.open(token, caller=BOB, query=QUERY)


@pytest.mark.parametrize(
    "other",
    [
        {**QUERY, "state": ["PENDING"]},
        {**QUERY, "cluster": "other"},
        {**QUERY, "name": "j1"},
        {"route": "clusters"},
    ],
    ids=["state", "cluster", "name", "route"],
)
def test_a_token_issued_for_another_query_is_invalid(
    tokens: PageTokens, other: dict[str, object]
) -> None:
    # GIVEN a token for one listing / WHEN sent with other filters or another route
    token = tokens.seal(PAGE, caller=ALICE, query=QUERY)
    # THEN invalid
    with pytest.raises(InvalidNextTokenError):
        tokens.open(token, caller=ALICE, query=other)


def test_a_token_sealed_with_another_key_is_invalid(tokens: PageTokens) -> None:
    # GIVEN a token of another deployment (another key) / WHEN opened here / THEN invalid
    token = PageTokens(b"z" * 32).seal(PAGE, caller=ALICE, query=QUERY)
    with pytest.raises(InvalidNextTokenError):
        tokens.open(token, caller=ALICE, query=QUERY)


def test_a_short_key_is_refused() -> None:
    # GIVEN a key under 32 bytes / WHEN used / THEN refused
    with pytest.raises(ValueError, match="32 bytes"):
        PageTokens(b"short")


def test_only_the_api_function_reads_the_page_token_secret_and_only_that_secret() -> None:
    # GIVEN template.yaml
    template = load_template(Path(__file__).resolve().parents[2] / "template.yaml")
    secret = template.resources["PageTokenSecret"]
    functions = {f.logical_id: f for f in template.of_type("AWS::Serverless::Function")}
    # WHEN the functions' secret permissions and environments are read
    # (each function's own role, issue 13; SAM policy templates are gone)
    readers = {
        name: (statement["Action"], statement["Resource"])
        for name in functions
        for policy in template.resources[f"{name}Role"].properties["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        if "secretsmanager" in str(statement["Action"])
    }
    named_in = {
        name
        for name, function in functions.items()
        if "HPCB_PAGE_TOKEN_SECRET"
        in function.properties.get("Environment", {}).get("Variables", {})
    }
    # THEN a generated secret, readable by the API function alone, on that secret alone
    assert secret.type == "AWS::SecretsManager::Secret"
    assert secret.properties["GenerateSecretString"]["PasswordLength"] >= 32
    assert readers == {"ApiFunction": ("secretsmanager:GetSecretValue", {"Ref": "PageTokenSecret"})}
    assert named_in == {"ApiFunction"}
    assert "secretsmanager" not in str(template.globals_function)
