"""``hpcb admin users``: which POSIX user each caller runs as on a cluster (administrators only:
for anyone else the broker answers 404, and the command exits 4)."""

from __future__ import annotations

import click

from broker.cli.context import Context, pass_ctx
from broker.cli.output import table
from broker.users.models import MappingView

MAPPING_COLUMNS = ("principal", "user", "uid", "created_by", "created_at")


def mapping_rows(views: list[MappingView]) -> list[tuple[object, ...]]:
    return [(v.principal, v.user, v.uid, v.created_by, v.created_at) for v in views]


@click.group()
def admin() -> None:
    """Administration: caller-to-user mappings (HPCB_ADMIN_PRINCIPALS only)."""


@admin.group()
def users() -> None:
    """Map callers to POSIX users per cluster (default deny: unmapped callers get 403)."""


@users.command("map")
@click.argument("cluster")
@click.argument("principal")
@click.argument("user")
@click.option("--uid", type=int, help="The user's uid, for the record.")
@pass_ctx
def map_user(obj: Context, cluster: str, principal: str, user: str, uid: int | None) -> None:
    """PRINCIPAL runs as POSIX USER on CLUSTER (replacing any mapping it had there)."""
    view = obj.client.map_user(cluster, principal, user, uid)
    obj.out.emit(view, f"{view.principal} runs as {view.user} on {view.cluster}")


@users.command("unmap")
@click.argument("cluster")
@click.argument("principal")
@pass_ctx
def unmap_user(obj: Context, cluster: str, principal: str) -> None:
    """PRINCIPAL reaches nothing more on CLUSTER (403 NOT_MAPPED)."""
    view = obj.client.unmap_user(cluster, principal)
    obj.out.emit(view, f"{view.principal} no longer runs as {view.user} on {view.cluster}")


@users.command("list")
@click.argument("cluster")
@click.option("--principal", help="Only this caller's mapping.")
@pass_ctx
def list_users(obj: Context, cluster: str, principal: str | None) -> None:
    """The mappings of CLUSTER, by principal (every page)."""
    views: list[MappingView] = []
    token: str | None = None
    while True:
        page = obj.client.list_user_mappings(cluster, principal=principal, next_token=token)
        views.extend(page.mappings)
        token = page.next_token
        if not token:
            break
    if obj.out.as_json:
        obj.out.json({"mappings": views})
    else:
        obj.out.console.print(table(MAPPING_COLUMNS, mapping_rows(views)), highlight=False)
