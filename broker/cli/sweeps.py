"""``hpcb jobs sweep``: one script for every row of a parameter file, as Slurm job arrays."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import click

from broker.cli.context import Context, pass_ctx, wait_request
from broker.cli.output import FAILED, table
from broker.cli.specs import exports, read_jsonl, read_script


def read_parameters(path: Path) -> list[dict[str, Any]]:
    """Parameter sets from ``.csv`` (a header of variable names, one set a row; empty cells
    unset) or ``.jsonl`` (one JSON object of strings a line)."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [{k: v for k, v in row.items() if k and v} for row in csv.DictReader(handle)]
    return read_jsonl(path)


@click.command("sweep")
@click.argument("cluster")
@click.argument("script", type=click.Path(allow_dash=True))
@click.argument("parameters", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-J", "--job-name", "name", help="Job name.")
@click.option("-p", "--partition", help="Partition.")
@click.option("-t", "--time", "time_limit", help="Time limit (Slurm's formats).")
@click.option("-D", "--chdir", "working_directory", help="Working directory (absolute).")
@click.option("-o", "--output", help="Standard output file pattern (absolute; %A_%a per item).")
@click.option("--export", "export", multiple=True, help="NAME=VALUE for every item.")
@click.option("-H", "--hold", is_flag=True, help="Submit held.")
@click.option("--atomic", is_flag=True, help="Any invalid row rejects the whole sweep.")
@click.option("--wait", is_flag=True, help="Wait until every item is in Slurm (or failed).")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds, with --wait.")
@pass_ctx
def sweep(
    obj: Context,
    /,
    cluster: str,
    script: str,
    parameters: Path,
    export: tuple[str, ...],
    atomic: bool,
    wait: bool,
    timeout: float,
    **options: Any,
) -> None:
    """Run SCRIPT once per row of PARAMETERS (.csv or .jsonl) on CLUSTER: each item gets its
    row's variables; items go to Slurm as job arrays. Exit 1 if any row was rejected or,
    with --wait, any item failed to reach Slurm."""
    template = {k: v for k, v in options.items() if v is not None and v is not False}
    template["script"] = read_script(script)
    if env := exports(export):
        template["environment"] = env
    sets = read_parameters(parameters)
    accepted = obj.client.submit_sweep(cluster, template, sets, atomic=atomic)
    rows: list[tuple[str, Any]] = [
        ("request", accepted.request_id), ("accepted", accepted.accepted),
        ("rejected", accepted.rejected_count), ("job id prefix", accepted.job_id_prefix),
    ]  # fmt: skip
    problems = accepted.rejected_count
    if wait:
        request = wait_request(obj, accepted.request_id, timeout)
        counts = request.counts or {}
        rows += [("in Slurm", counts.get("SUBMITTED", 0)), ("failed", counts.get("FAILED", 0))]
        problems += counts.get("FAILED", 0) + counts.get("CANCELLED", 0)
    obj.out.emit(accepted, table(("", "sweep"), rows, title="sweep"))
    for item in accepted.rejected[:20]:
        fields = "; ".join(f"{e.field} {e.message}" for e in item.fields)
        obj.out.console.print(f"  row {item.index}: {fields}", highlight=False)
    if problems:
        sys.exit(FAILED)
