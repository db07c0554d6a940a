"""``hpcb jobs``: submit (sbatch's options), submit-many (live progress), list, show, cancel,
output."""

from __future__ import annotations

import functools
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from broker.cli.context import Context, pass_ctx, wait_request
from broker.cli.output import FAILED, table
from broker.cli.specs import dependencies, exports, read_script, read_specs
from broker.cli.sweeps import sweep
from broker.client import BatchOutcome, BrokerClient, BulkResult
from broker.client.polling import poll_until
from broker.jobs.models import JobResult, OutputPart, OutputResult
from broker.jobs.records import JobState, JobView
from broker.requests.models import RequestView

JOB_COLUMNS = ("job_id", "name", "state", "slurm_job_id", "exit_code", "reason", "created_at")


def job_rows(jobs: list[JobView]) -> list[tuple[Any, ...]]:
    """Table rows of jobs."""
    return [
        (
            j.job_id,
            j.name,
            j.state.value,
            j.slurm_job_id,
            j.exit_code,
            j.reason,
            j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
        for j in jobs
    ]


@click.group()
def jobs() -> None:
    """Slurm jobs: submit, submit-many, sweep, list, show, cancel, output."""


jobs.add_command(sweep)


@jobs.command()
@click.argument("cluster")
@click.argument("script", type=click.Path(allow_dash=True))
@click.option("-J", "--job-name", "name", help="Job name.")
@click.option("-p", "--partition", help="Partition.")
@click.option("-A", "--account", help="Account.")
@click.option("-q", "--qos", help="Quality of service.")
@click.option("-N", "--nodes", type=int, help="Nodes.")
@click.option("-n", "--ntasks", type=int, help="Tasks.")
@click.option("-c", "--cpus-per-task", type=int, help="CPUs per task.")
@click.option("-t", "--time", "time_limit", help="Time limit (Slurm's formats).")
@click.option("--mem", help="Memory per node, e.g. 4G.")
@click.option("-a", "--array", help="Array indexes, e.g. 1-100%10.")
@click.option("-d", "--dependency", help="e.g. afterok:123:r…,afterany:456.")
@click.option("-D", "--chdir", "working_directory", help="Working directory (absolute).")
@click.option("-o", "--output", help="Standard output file pattern (absolute).")
@click.option("-e", "--error", help="Standard error file pattern (absolute).")
@click.option("--export", "export", multiple=True, help="NAME=VALUE (repeatable).")
@click.option("-H", "--hold", is_flag=True, help="Submit held.")
@click.option(
    "--wait", is_flag=True, help="Wait until the job has ended; exit 1 unless it completed."
)
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds, with --wait.")
@pass_ctx
def submit(
    obj: Context,
    /,
    cluster: str,
    script: str,
    export: tuple[str, ...],
    dependency: str | None,
    wait: bool,
    timeout: float,
    **options: Any,
) -> None:
    """Submit SCRIPT (a file, or - for standard input) to CLUSTER, with sbatch's options."""
    spec = {k: v for k, v in options.items() if v is not None and v is not False}
    spec["script"] = read_script(script)
    if env := exports(export):
        spec["environment"] = env
    if deps := dependencies(dependency):
        spec["dependency"] = deps
    accepted = obj.client.submit_job(cluster, spec)
    if not wait:
        obj.out.emit(accepted, f"accepted: job {accepted.request_id} (request {accepted.location})")
        return
    request = wait_request(obj, accepted.request_id, timeout)
    if request.state != "SUCCEEDED" or not isinstance(request.result, JobResult):
        obj.out.emit(request)
        sys.exit(FAILED)
    job = obj.client.wait_for_job(cluster, accepted.request_id, timeout=timeout)
    obj.out.emit(job, table(JOB_COLUMNS, job_rows([job])))
    if job.state is not JobState.COMPLETED:
        sys.exit(FAILED)


@jobs.command("submit-many")
@click.argument("cluster")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--script", "script_path", type=click.Path(exists=True), help="Script for rows without one."
)
@click.option("--concurrency", default=4, show_default=True, help="Batch calls at once.")
@click.option(
    "--follow/--no-follow",
    default=True,
    show_default=True,
    help="Follow until every accepted job is in Slurm.",
)
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to follow.")
@click.option(
    "--pack", is_flag=True, help="Runs of jobs differing only in their environment as arrays."
)
@pass_ctx
def submit_many(
    obj: Context,
    cluster: str,
    file: Path,
    script_path: str | None,
    concurrency: int,
    follow: bool,
    timeout: float,
    pack: bool,
) -> None:
    """Submit every job of FILE (.jsonl: one spec a line; .csv: a header of fields).

    Shows live progress (accepted / in Slurm / failed) and a summary; exit 1 if any item
    was rejected or failed.
    """
    specs = read_specs(file, read_script(script_path) if script_path else None)
    total = len(specs)
    started = time.monotonic()
    progress = Progress(
        TextColumn("{task.description:>9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=obj.out.console,
        disable=obj.out.as_json,
    )
    with progress:
        accepted_bar = progress.add_task("accepted", total=total)
        slurm_bar = progress.add_task("in Slurm", total=total)
        failed_bar = progress.add_task("failed", total=total)

        def on_batch(batch: BatchOutcome) -> None:
            if batch.accepted is not None:
                progress.advance(accepted_bar, batch.accepted.accepted)
                progress.advance(failed_bar, batch.accepted.rejected_count)
            else:
                progress.advance(failed_bar, batch.size)

        result = obj.client.submit_many(
            cluster, specs, concurrency=concurrency, on_batch=on_batch, pack=pack
        )
        local_rejects = total - sum(b.size for b in result.batches)
        progress.advance(failed_bar, local_rejects)
        accept_s = time.monotonic() - started
        counts = {"SUBMITTED": 0, "FAILED": 0, "CANCELLED": 0}
        if follow:
            counts = _follow(obj, result, progress, (slurm_bar, failed_bar), timeout)
    summary = _summary(result, counts, follow, accept_s, time.monotonic() - started)
    problems = [item for item in result.items if item.status != "accepted"]
    if obj.out.as_json:
        obj.out.json({**summary, "problems": [item.__dict__ for item in problems[:1000]]})
    else:
        rows = [(k, v) for k, v in summary.items() if k != "batches"]
        obj.out.console.print(table(("", "jobs"), rows, title="submit-many"), highlight=False)
        for item in problems[:20]:
            fields = "; ".join(f"{e.get('field', '')} {e.get('message', '')}" for e in item.errors)
            obj.out.console.print(f"  item {item.index}: {item.status} {item.error_code}: {fields}")
    if problems or counts["FAILED"] or counts["CANCELLED"]:
        sys.exit(FAILED)


def _follow(
    obj: Context, result: BulkResult, progress: Progress, bars: tuple[Any, Any], timeout: float
) -> dict[str, int]:
    """Poll each accepted batch until every item has an outcome; returns the summed counts."""
    slurm_bar, failed_bar = bars
    seen: dict[str, dict[str, int]] = {}

    def update(request: RequestView) -> RequestView:
        before = seen.get(request.request_id, {})
        now = dict(request.counts or {})
        progress.advance(slurm_bar, now.get("SUBMITTED", 0) - before.get("SUBMITTED", 0))
        failed = now.get("FAILED", 0) + now.get("CANCELLED", 0)
        progress.advance(failed_bar, failed - before.get("FAILED", 0) - before.get("CANCELLED", 0))
        seen[request.request_id] = now
        return request

    client = obj.client
    deadline = time.monotonic() + timeout
    for request_id in result.request_ids:
        poll_until(
            functools.partial(_read_batch, client, request_id, update),
            lambda r: r.state in {"SUCCEEDED", "FAILED"},
            what=f"batch {request_id}",
            timeout=max(1.0, deadline - time.monotonic()),
            backoff=client.poll_backoff(0.5, 2.0),
            sleep=client.sleep,
            rng=client.rng,
        )
    return {
        k: sum(c.get(k, 0) for c in seen.values()) for k in ("SUBMITTED", "FAILED", "CANCELLED")
    }


def _read_batch(
    client: BrokerClient, request_id: str, update: Callable[[RequestView], RequestView]
) -> RequestView:
    return update(client.get_request(request_id, items_limit=0))


def _summary(
    result: BulkResult, counts: dict[str, int], follow: bool, accept_s: float, total_s: float
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "items": len(result.items),
        "accepted": result.count("accepted"),
        "rejected": result.count("rejected"),
        "failed to send": result.count("failed"),
    }
    if follow:
        summary["in Slurm"] = counts["SUBMITTED"]
        summary["failed in Slurm"] = counts["FAILED"]
        summary["cancelled"] = counts["CANCELLED"]
    summary["batch calls"] = len(result.batches)
    summary["attempts"] = sum(b.attempts for b in result.batches)
    summary["accept seconds"] = round(accept_s, 2)
    summary["total seconds"] = round(total_s, 2)
    summary["batches"] = [
        {"request_id": b.accepted.request_id, "job_id_prefix": b.accepted.job_id_prefix}
        for b in result.batches
        if b.accepted is not None
    ]
    return summary


@jobs.command("list")
@click.argument("cluster")
@click.option("--state", "states", multiple=True, type=click.Choice([s.value for s in JobState]))
@click.option("--name", help="Only jobs of this name.")
@click.option("--limit", default=50, show_default=True, help="Jobs to show (pages as needed).")
@pass_ctx
def list_jobs(
    obj: Context, cluster: str, states: tuple[str, ...], name: str | None, limit: int
) -> None:
    """Your jobs on CLUSTER, newest first."""
    found: list[JobView] = []
    for job in obj.client.iter_jobs(
        cluster, states=states or None, name=name, limit=min(200, limit)
    ):
        found.append(job)
        if len(found) >= limit:
            break
    obj.out.emit({"jobs": found}, table(JOB_COLUMNS, job_rows(found)))


@jobs.command()
@click.argument("cluster")
@click.argument("job_id")
@pass_ctx
def show(obj: Context, cluster: str, job_id: str) -> None:
    """One job: state, Slurm's state and reason, exit code, times, array tasks."""
    obj.out.emit(obj.client.get_job(cluster, job_id))


@jobs.command()
@click.argument("cluster")
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Wait until the cancel is done.")
@click.option("--timeout", default=120.0, show_default=True)
@pass_ctx
def cancel(obj: Context, cluster: str, job_id: str, wait: bool, timeout: float) -> None:
    """Cancel a job (exit 1 if it has already ended)."""
    accepted = obj.client.cancel_job(cluster, job_id)
    if not wait:
        obj.out.emit(accepted, f"cancel accepted: request {accepted.request_id}")
        return
    request = wait_request(obj, accepted.request_id, timeout)
    obj.out.emit(request)
    if request.state != "SUCCEEDED":
        sys.exit(FAILED)


@jobs.command()
@click.argument("cluster")
@click.argument("job_id")
@click.option("--stream", type=click.Choice(["stdout", "stderr", "both"]), default=None)
@click.option("--task", type=int, help="Array task index.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job has ended.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds per fetch.")
@pass_ctx
def output(
    obj: Context,
    cluster: str,
    job_id: str,
    stream: str | None,
    task: int | None,
    follow: bool,
    timeout: float,
) -> None:
    """Print a job's output (the tail, up to 64 KiB a stream; --follow: all, as it grows)."""
    client = obj.client
    if not follow:
        result = client.output(cluster, job_id, stream=stream or "both", task=task, timeout=timeout)
        if obj.out.as_json:
            obj.out.json(result)
            return
        for part in result.parts:
            if stream is None and len(result.parts) > 1:
                obj.out.console.print(f"==> {part.stream} <==", style="bold", highlight=False)
            sys.stdout.write(_text(part))
        return
    _follow_output(obj, cluster, job_id, stream or "stdout", task, timeout)


def _follow_output(
    obj: Context, cluster: str, job_id: str, stream: str, task: int | None, timeout: float
) -> None:
    """Read the stream from offset 0 in pieces until the job is final and the file read."""
    client = obj.client
    offset, n = 0, 0
    while True:
        final = client.get_job(cluster, job_id).final
        result: OutputResult = client.output(
            cluster, job_id, stream=stream, offset=offset, task=task, timeout=timeout
        )
        part = result.parts[0] if result.parts else None
        if part is not None and part.length:
            text = _text(part)
            if obj.out.as_json:
                obj.out.json({"stream": part.stream, "offset": part.offset, "data": text})
            else:
                sys.stdout.write(text)
            sys.stdout.flush()
            offset = part.offset + part.length
            n = 0
        if final and (part is None or part.eof):
            return
        client.sleep(client.backoff.delay(n, client.rng))
        n += 1


def _text(part: OutputPart) -> str:
    if part.data is not None:
        return part.data
    if part.url:
        with urllib.request.urlopen(part.url, timeout=60) as answer:  # noqa: S310 - presigned
            return str(answer.read().decode(errors="replace"))
    return ""
