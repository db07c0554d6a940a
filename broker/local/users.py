"""``python -m broker.local users map|unmap|list``: the caller-to-user mappings of the running
local stack (what an administrator does with ``/v1/admin/clusters/{cluster}/users``).

It writes the stack's table directly (its moto endpoint and table name are in the run file), so
it works whoever the stack's administrators are. ``up --map-user USER`` maps the stack's default
principal the same way as it starts.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Final

from broker.local.apigw import DEFAULT_PRINCIPAL

#: Who the local command writes mappings as (``created_by``).
LOCAL_ADMIN: Final = "local-command"
# moto's answers do not depend on credentials; boto3 only needs some to sign with.
_MOTO_CREDENTIALS: Final = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _service(info: dict[str, Any]) -> Any:
    """The users service on the running stack's table."""
    import boto3  # noqa: PLC0415 - only these commands talk to AWS themselves

    from broker.adapters.dynamodb import DynamoUserStore  # noqa: PLC0415
    from broker.users.service import UserService  # noqa: PLC0415

    dynamodb = boto3.client(
        "dynamodb", endpoint_url=str(info["moto_url"]),
        region_name=str(info.get("region") or "us-east-1"), **_MOTO_CREDENTIALS,
    )  # fmt: skip
    return UserService(DynamoUserStore(dynamodb, str(info["table_name"])))


def _run(args: argparse.Namespace, service: Any) -> None:
    """One action; prints JSON lines. Raises BrokerError or ValueError (a bad argument)."""
    from broker.users.models import PRINCIPAL_PATTERN, MappingBody  # noqa: PLC0415

    if args.action == "list":
        token: str | None = None
        while True:
            page, token = service.list(args.cluster, limit=100, next_token=token)
            for mapping in page:
                print(mapping.model_dump_json())
            if token is None:
                return
    if not re.fullmatch(PRINCIPAL_PATTERN, args.principal):
        raise ValueError(f"not an IAM principal ARN: {args.principal!r}")
    if args.action == "unmap":
        print(service.unmap(args.cluster, args.principal).model_dump_json())
        return
    if args.user is None:
        raise ValueError("users map needs --user")
    body = MappingBody.model_validate({"user": args.user, "uid": args.uid})
    print(service.map(args.cluster, args.principal, body, by=LOCAL_ADMIN).model_dump_json())


def cmd_users(args: argparse.Namespace, info: dict[str, Any] | None) -> int:
    """Map, unmap or list users on the running stack: 0 done, 1 refused (e.g. nothing to
    unmap), 2 bad arguments, 3 not running."""
    from broker.errors import BrokerError  # noqa: PLC0415

    if info is None or not info.get("table_name"):
        print("not running (start it with `make up`)", file=sys.stderr)
        return 3
    try:
        _run(args, _service(info))
    except BrokerError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        print(f"invalid: {exc}", file=sys.stderr)
        return 2
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``users`` sub-command (its ``func`` takes the arguments and the run file's data)."""
    users: argparse.ArgumentParser = sub.add_parser(
        "users", help="map callers to POSIX users on a cluster (admin)"
    )
    users.add_argument("action", choices=["map", "unmap", "list"])
    users.add_argument("--cluster", default="local", help="cluster name (default: local)")
    users.add_argument(
        "--principal", default=DEFAULT_PRINCIPAL, help="caller IAM ARN (default: the local one)"
    )
    users.add_argument("--user", help="POSIX user (map)")
    users.add_argument("--uid", type=int, default=None, help="its uid, if known (map)")
    return users
