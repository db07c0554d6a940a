"""``hpcb clusters``: the ParallelCluster lifecycle through the broker."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from broker.cli.context import Context, pass_ctx, wait_request
from broker.cli.output import FAILED, table
from broker.clusters.models import ClusterView
from broker.schema import AcceptedResponse

CLUSTER_COLUMNS = ("name", "status", "fleet", "operation", "pending", "region", "version")


def cluster_rows(views: list[ClusterView]) -> list[tuple[object, ...]]:
    """Table rows of clusters."""
    return [
        (
            v.name,
            v.status.value,
            v.compute_fleet_status.value if v.compute_fleet_status else None,
            v.last_operation.operation,
            v.last_operation.pending,
            v.region,
            v.version,
        )
        for v in views
    ]


def _accepted_or_wait(obj: Context, accepted: AcceptedResponse, wait: bool, timeout: float) -> None:
    """Print the 202, or wait for the request and print it (exit 1 unless SUCCEEDED)."""
    if not wait:
        obj.out.emit(accepted, f"accepted: request {accepted.request_id}")
        return
    request = wait_request(obj, accepted.request_id, timeout)
    obj.out.emit(request)
    if request.state != "SUCCEEDED":
        sys.exit(FAILED)


_config = click.option(
    "-c",
    "--config",
    "config",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="ParallelCluster 3 configuration (YAML).",
)
_wait = click.option("--wait", is_flag=True, help="Wait for the operation; exit 1 if it failed.")
_timeout = click.option("--timeout", default=3600.0, show_default=True, help="Seconds.")


@click.group()
def clusters() -> None:
    """Clusters: create, update, delete, list, describe, fleet."""


@clusters.command()
@click.argument("name")
@_config
@click.option("--region", "cluster_region", help="AWS region (default: the broker's).")
@click.option("--dryrun", is_flag=True, help="Validate only.")
@click.option("--no-rollback", is_flag=True, help="Keep a failed stack for inspection.")
@_wait
@_timeout
@pass_ctx
def create(
    obj: Context,
    name: str,
    config: Path,
    cluster_region: str | None,
    dryrun: bool,
    no_rollback: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Create cluster NAME from a configuration file."""
    accepted = obj.client.create_cluster(
        name,
        config.read_text(encoding="utf-8"),
        region=cluster_region,
        dryrun=dryrun or None,
        rollback_on_failure=False if no_rollback else None,
    )
    _accepted_or_wait(obj, accepted, wait, timeout)


@clusters.command()
@click.argument("name")
@_config
@click.option("--dryrun", is_flag=True, help="List the changes only.")
@click.option("--force", is_flag=True, help="Apply even if update validators object.")
@_wait
@_timeout
@pass_ctx
def update(
    obj: Context, name: str, config: Path, dryrun: bool, force: bool, wait: bool, timeout: float
) -> None:
    """Update cluster NAME with a new configuration."""
    accepted = obj.client.update_cluster(
        name,
        config.read_text(encoding="utf-8"),
        dryrun=dryrun or None,
        force_update=force or None,
    )
    _accepted_or_wait(obj, accepted, wait, timeout)


@clusters.command()
@click.argument("name")
@_wait
@_timeout
@pass_ctx
def delete(obj: Context, name: str, wait: bool, timeout: float) -> None:
    """Delete cluster NAME."""
    _accepted_or_wait(obj, obj.client.delete_cluster(name), wait, timeout)


@clusters.command("list")
@pass_ctx
def list_clusters(obj: Context) -> None:
    """Your clusters."""
    views: list[ClusterView] = []
    token: str | None = None
    while True:
        page = obj.client.list_clusters(next_token=token)
        views.extend(page.clusters)
        token = page.next_token
        if not token:
            break
    obj.out.emit({"clusters": views}, table(CLUSTER_COLUMNS, cluster_rows(views)))


@clusters.command()
@click.argument("name")
@click.option("--refresh", is_flag=True, help="Ask ParallelCluster (a request) first.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds, with --refresh.")
@pass_ctx
def describe(obj: Context, name: str, refresh: bool, timeout: float) -> None:
    """One cluster: status, version, head node, fleet, last operation, failures."""
    if refresh:
        accepted = obj.client.refresh_cluster(name)
        request = obj.client.wait(accepted.request_id, timeout=timeout)
        if request.state != "SUCCEEDED":
            obj.out.emit(request)
            sys.exit(FAILED)
    obj.out.emit(obj.client.get_cluster(name))


@clusters.command()
@click.argument("action", type=click.Choice(["start", "stop"]))
@click.argument("name")
@_wait
@_timeout
@pass_ctx
def fleet(obj: Context, action: str, name: str, wait: bool, timeout: float) -> None:
    """Start or stop cluster NAME's compute fleet."""
    status = "START_REQUESTED" if action == "start" else "STOP_REQUESTED"
    _accepted_or_wait(obj, obj.client.set_fleet(name, status), wait, timeout)
