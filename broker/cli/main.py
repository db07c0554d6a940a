"""``hpcb``: the hpc-broker command line (click + rich), on :class:`broker.client.BrokerClient`."""

from __future__ import annotations

import sys
from typing import Any

import click

from broker.cli.context import Context, pass_ctx
from broker.cli.output import EXIT_CODES_HELP, FAILED, OK, TIMEOUT, USAGE, Output, exit_code, table
from broker.client import ClientError, WaitTimeoutError
from broker.client.config import config_path, save_config
from broker.requests.models import RequestView


class HpcbGroup(click.Group):
    """Maps the client's errors to the documented exit codes, for every subcommand."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClientError as exc:
            obj = ctx.find_object(Context)
            (obj.out if obj else Output()).error(exc)
            ctx.exit(exit_code(exc))


@click.group(cls=HpcbGroup, epilog=EXIT_CODES_HELP)
@click.option("--endpoint", envvar="HPCB_ENDPOINT", help="API base URL (ApiUrl).")
@click.option("--stack", envvar="HPCB_STACK", help="CloudFormation stack: use its ApiUrl output.")
@click.option("--region", envvar="HPCB_REGION", help="AWS region for SigV4 and the stack.")
@click.option("--profile", envvar="HPCB_PROFILE", help="AWS profile for SigV4.")
@click.option("--principal", envvar="HPCB_PRINCIPAL", help="Local stack only: act as this ARN.")
@click.option("--json", "as_json", is_flag=True, help="JSON output, for scripts.")
@click.version_option(package_name="hpc-broker", message="hpcb %(version)s")
@click.pass_context
def cli(ctx: click.Context, /, as_json: bool, **options: str | None) -> None:
    """Drive hpc-broker clusters and Slurm jobs: in AWS (SigV4) or on the local stack.

    The endpoint comes from --endpoint/--stack, HPCB_ENDPOINT/HPCB_STACK, the file written by
    `hpcb configure`, or the running local stack (`hpcb local up`).
    """
    ctx.obj = Context(options=options, out=Output(as_json=as_json))


@cli.command()
@click.option("--endpoint", help="API base URL to save.")
@click.option("--stack", help="Or: a stack name whose ApiUrl output to use.")
@click.option("--region", help="AWS region.")
@click.option("--profile", help="AWS profile.")
@click.option("--principal", help="Local stack only: IAM ARN to act as.")
@pass_ctx
def configure(obj: Context, /, **values: str | None) -> None:
    """Write the configuration file (~/.config/hpcb/config.toml, or $HPCB_CONFIG)."""
    if not values.get("endpoint") and not values.get("stack"):
        raise click.UsageError("give --endpoint or --stack")
    path = save_config(config_path(), values)
    saved = {k: v for k, v in values.items() if v}
    obj.out.emit({"path": str(path), **saved}, f"wrote {path}")


def finish_request(obj: Context, request: RequestView) -> None:
    """Print a final request; exit 1 unless it SUCCEEDED."""
    obj.out.emit(request)
    if request.state != "SUCCEEDED":
        sys.exit(FAILED)


@cli.group()
def requests() -> None:
    """Requests: what every write answers with (poll them)."""


@requests.command("show")
@click.argument("request_id")
@pass_ctx
def requests_show(obj: Context, request_id: str) -> None:
    """Show a request (state, attempts, result or error)."""
    obj.out.emit(obj.client.get_request(request_id, items_limit=0))


@requests.command("wait")
@click.argument("request_id")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds.")
@pass_ctx
def requests_wait(obj: Context, request_id: str, timeout: float) -> None:
    """Wait until a request is final; exit 1 if it FAILED, 3 on timeout."""
    finish_request(obj, obj.client.wait(request_id, timeout=timeout))


@cli.group()
def events() -> None:
    """Notifications (the local stack's inbox: what an SNS subscriber receives)."""


@events.command("tail")
@click.option("--follow", "-f", is_flag=True, help="Keep reading until interrupted.")
@click.option("--wait", "wait_s", default=2.0, show_default=True, help="Seconds to wait.")
@click.option("--run-file", type=click.Path(), help="The local stack's run file.")
@pass_ctx
def events_tail(obj: Context, follow: bool, wait_s: float, run_file: str | None) -> None:
    """Print (and consume) the notifications the local stack published, one per line."""
    from broker.cli.local import read_inbox  # noqa: PLC0415 - boto3 only for this command

    for note in read_inbox(run_file, follow=follow, wait_s=wait_s):
        message = note.message if isinstance(note.message, dict) else {"text": note.message}
        if obj.out.as_json:
            sys.stdout.write(note.to_json() + "\n")
        else:
            subject = message.get("job_id") or message.get("request_id") or message.get("cluster")
            state = message.get("new_state")
            line = table(
                ("time", "type", "id", "state"),
                [(note.timestamp, message.get("type"), subject, state)],
            )
            obj.out.console.print(line, highlight=False)
        sys.stdout.flush()


def register() -> None:
    """Attach the command groups kept in their own modules."""
    from broker.cli import admin, clusters, jobs, local  # noqa: PLC0415

    cli.add_command(admin.admin)
    cli.add_command(clusters.clusters)
    cli.add_command(jobs.jobs)
    cli.add_command(local.local)


register()


def main() -> None:
    """The console script."""
    try:
        cli.main(prog_name="hpcb", standalone_mode=True)
    except WaitTimeoutError:  # pragma: no cover - mapped by HpcbGroup; belt and braces
        sys.exit(TIMEOUT)


__all__ = ["FAILED", "OK", "TIMEOUT", "USAGE", "Context", "cli", "main", "pass_ctx"]
