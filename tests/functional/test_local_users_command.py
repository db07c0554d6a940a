"""``python -m broker.local users map|unmap|list`` against a stack's table (moto over HTTP, as the
running local stack's run file names it)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.local.__main__ import build_parser
from broker.local.apigw import DEFAULT_PRINCIPAL
from broker.local.users import cmd_users
from tests.conftest import REGION, AwsResources

ALICE = "arn:aws:iam::000000000000:user/team/alice"


@pytest.fixture
def run_info(aws_resources: AwsResources) -> dict[str, Any]:
    """What the run file of a running stack says (moto, region, table)."""
    return {"moto_url": aws_resources.url, "region": REGION,
            "table_name": aws_resources.ref("RequestsTable")}  # fmt: skip


def users(info: dict[str, Any] | None, *argv: str) -> int:
    """The command as ``python -m broker.local users ...`` parses it, on ``info``'s stack."""
    return cmd_users(build_parser().parse_args(["users", *argv]), info)


def test_map_list_unmap_round_trip(
    run_info: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a running stack / WHEN alice is mapped to hpcbtest-a, then listed
    assert (
        users(run_info, "map", "--principal", ALICE, "--user", "hpcbtest-a", "--uid", "1500") == 0
    )
    assert users(run_info, "list") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # THEN the mapping was written (by the local command) and is listed
    assert [(m["principal"], m["user"], m["uid"]) for m in lines[1:]] == [
        (ALICE, "hpcbtest-a", 1500)
    ]
    assert lines[0]["created_by"] == "local-command"
    # AND unmapping removes it; a second unmap is refused (exit 1)
    assert users(run_info, "unmap", "--principal", ALICE) == 0
    assert users(run_info, "unmap", "--principal", ALICE) == 1


def test_the_default_principal_is_the_local_developer(
    run_info: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN no --principal / WHEN mapped / THEN the local API's default caller is
    assert users(run_info, "map", "--user", "hpcb-dev") == 0
    assert json.loads(capsys.readouterr().out)["principal"] == DEFAULT_PRINCIPAL


@pytest.mark.parametrize(
    "argv",
    [
        ("map", "--user", "root"),
        ("map", "--user", "hpcb-dev", "--uid", "0"),
        ("map",),
        ("map", "--principal", "alice", "--user", "hpcb-dev"),
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(
    run_info: dict[str, Any], argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN root, uid 0, no user, or a principal that is no ARN / WHEN mapped / THEN exit 2
    assert users(run_info, *argv) == 2
    capsys.readouterr()
    assert users(run_info, "list") == 0
    assert capsys.readouterr().out == ""


def test_without_a_running_stack_it_says_so() -> None:
    # GIVEN no run file / WHEN listing / THEN exit 3
    assert users(None, "list") == 3
