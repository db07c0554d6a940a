"""``python -m broker.local users map|unmap|list``: the running local stack's caller-to-user
mappings (what an administrator does with the admin API in AWS; ``broker.users``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: moto's answers do not depend on credentials; boto3 only needs some to sign with.
_MOTO_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def add_users_parser(sub: Any, read_run_file: Callable[[Path], dict[str, Any] | None]) -> None:
    """The ``users`` command and its three subcommands."""
    users = sub.add_parser("users", help="map callers to POSIX users on the local clusters")
    actions = users.add_subparsers(dest="action", required=True)
    for name, text in (("map", "let a caller run as a POSIX user on a cluster"),
                       ("unmap", "remove a caller's user on a cluster"),
                       ("list", "a cluster's mappings, one JSON line each")):  # fmt: skip
        action = actions.add_parser(name, help=text)
        action.add_argument("--cluster", default="local")
        if name != "list":
            action.add_argument("--principal", required=True, help="the caller's owner ARN")
        if name == "map":
            action.add_argument("--user", required=True, help="their POSIX user")
        action.set_defaults(func=lambda args: cmd_users(args, read_run_file))


def cmd_users(
    args: argparse.Namespace, read_run_file: Callable[[Path], dict[str, Any] | None]
) -> int:
    """Run one ``users`` action against the stack of the run file (exit 0 on success)."""
    # Imported here, not when the module loads: `python -m broker.local up` builds this parser
    # before it sets the handlers' environment (Powertools reads it when it is first imported).
    import boto3  # noqa: PLC0415 - only this command talks to AWS itself

    from broker.adapters.dynamodb.users import DynamoUserMappings  # noqa: PLC0415
    from broker.errors import BrokerError  # noqa: PLC0415
    from broker.users.models import MappingBody, MappingView  # noqa: PLC0415
    from broker.users.service import UserAdmin  # noqa: PLC0415

    info = read_run_file(args.run_file)
    if info is None or not info.get("table"):
        print("not running (start it with `make up`)", file=sys.stderr)
        return 3
    ddb = boto3.client("dynamodb", endpoint_url=str(info["moto_url"]),
                       region_name=str(info.get("region") or "us-east-1"),
                       **_MOTO_CREDENTIALS)  # fmt: skip
    admin = UserAdmin(DynamoUserMappings(ddb, str(info["table"])))
    try:
        if args.action == "map":
            body = MappingBody(principal=args.principal, user=args.user)
            print(MappingView.of(admin.put("local", args.cluster, body)).model_dump_json())
        elif args.action == "unmap":
            admin.delete(args.cluster, args.principal)
            print(json.dumps({"unmapped": args.principal, "cluster": args.cluster}))
        else:
            token: str | None = None
            while True:
                page, token = admin.list(args.cluster, limit=100, next_token=token)
                for mapping in page:
                    print(MappingView.of(mapping).model_dump_json())
                if token is None:
                    break
    except BrokerError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:  # pydantic: a principal or user the broker would refuse
        print(f"invalid: {exc}", file=sys.stderr)
        return 2
    return 0
