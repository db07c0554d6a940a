"""``hpcb local up|down|status``: what ``make up``/``make down`` do, from the command line.

``up`` starts the real Slurm (``scripts/slurm.sh up``, unless ``--no-slurm``), then the local
stack (``python -m broker.local up``) in the background, waits for its banner and prints the
API address. ``down`` stops the stack (and Slurm only with ``--slurm``: Slurm may be shared).
The run file (``.run/local-stack.json``, or ``$HPCB_RUN_FILE``) is how the client finds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from broker.cli.context import Context, pass_ctx
from broker.cli.output import FAILED, NOT_FOUND, TIMEOUT
from broker.client.config import DEFAULT_RUN_FILE, REPO_ROOT

SLURM_SCRIPT = REPO_ROOT / "scripts" / "slurm.sh"
DEFAULT_SLURM_ENV = (
    Path(
        os.environ.get("HPCB_SLURM_PREFIX", "/var/tmp/hpc-broker/slurm")  # noqa: S108
    )
    / "env"
)


def run_file(path: str | None) -> Path:
    """The run file: the option, else $HPCB_RUN_FILE, else the repository's ``.run/``."""
    return Path(path or os.environ.get("HPCB_RUN_FILE") or DEFAULT_RUN_FILE)


def _stack(run: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "broker.local", "--run-file", str(run), *args]
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@click.group()
def local() -> None:
    """The local stack: moto for AWS, the same handlers, real Slurm."""


@local.command()
@click.option("--api-port", default=8080, show_default=True, help="0: any free port.")
@click.option("--slurm/--no-slurm", default=True, show_default=True, help="Start Slurm too.")
@click.option("--run-file", "run_path", type=click.Path(), help="Where to record the stack.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for it.")
@click.option(
    "--user", default="hpcb-dev", show_default=True,
    help="The POSIX user the local caller runs as (scripts/local-user.sh creates hpcb-dev).",
)  # fmt: skip
@pass_ctx
def up(
    obj: Context, api_port: int, slurm: bool, run_path: str | None, timeout: float, user: str
) -> None:
    """Start the local stack in the background (log beside the run file)."""
    run = run_file(run_path)
    if _stack(run, "status").returncode == 0:
        obj.out.emit(_info(run), f"already running: {_info(run).get('api_url')}")
        return
    if slurm:
        done = subprocess.run(
            [str(SLURM_SCRIPT), "up"], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise click.ClickException(f"slurm.sh up failed: {done.stdout}{done.stderr}")
    run.parent.mkdir(parents=True, exist_ok=True)
    log = run.with_name(run.stem + ".log")
    command = [
        sys.executable, "-m", "broker.local", "--run-file", str(run), "up",
        "--api-port", str(api_port), "--moto-port", "0", "--slurm-env", str(DEFAULT_SLURM_ENV),
        "--map-user", user,
    ]  # fmt: skip
    with log.open("w") as sink:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this command, as `make up`'s setsid does
        )
    deadline = time.monotonic() + timeout
    while "Stop with" not in log.read_text(errors="replace"):
        if process.poll() is not None:
            raise click.ClickException(f"the stack exited:\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            sys.exit(TIMEOUT)
        time.sleep(0.2)
    info = _info(run)
    obj.out.emit(info, f"local stack up: {info.get('api_url')} (pid {info.get('pid')}, log {log})")


@local.command()
@click.option("--slurm", is_flag=True, help="Stop Slurm too (it may be shared: off by default).")
@click.option("--run-file", "run_path", type=click.Path())
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for it.")
@click.option("--force", is_flag=True, help="After the timeout, SIGKILL its process group.")
@pass_ctx
def down(obj: Context, slurm: bool, run_path: str | None, timeout: float, force: bool) -> None:
    """Stop the local stack."""
    run = run_file(run_path)
    pid = int(_info(run).get("pid") or 0)
    done = _stack(run, "down", "--timeout", str(timeout), timeout=timeout + 10)
    if done.returncode != 0 and force and pid > 0:
        # `hpcb local up` started it as a session leader: its group is its own and moto's.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        run.unlink(missing_ok=True)
        done = subprocess.CompletedProcess(done.args, 0, f"killed (pid {pid})\n", "")
    if slurm:
        subprocess.run([str(SLURM_SCRIPT), "down"], capture_output=True, check=False)
    message = (done.stdout + done.stderr).strip()
    obj.out.emit({"stopped": done.returncode == 0, "message": message}, message)
    if done.returncode != 0:
        sys.exit(FAILED)


@local.command()
@click.option("--run-file", "run_path", type=click.Path())
@pass_ctx
def status(obj: Context, run_path: str | None) -> None:
    """Is the local stack running? (exit 4 if not)."""
    run = run_file(run_path)
    running = _stack(run, "status").returncode == 0
    info = {**_info(run), "running": running}
    human = f"running: {info.get('api_url')} (pid {info.get('pid')})" if running else "not running"
    obj.out.emit(info, human)
    if not running:
        sys.exit(NOT_FOUND)


def _info(run: Path) -> dict[str, Any]:
    try:
        data = json.loads(run.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_inbox(run_path: str | None, *, follow: bool, wait_s: float) -> Iterator[Any]:
    """The running local stack's notifications (consumed as read)."""
    import boto3  # noqa: PLC0415 - the local inbox only

    from broker.local.notifications import drain  # noqa: PLC0415

    info = _info(run_file(run_path))
    if not info.get("notifications_queue_url"):
        raise click.ClickException("no local stack with a notifications inbox (hpcb local up)")
    sqs = boto3.client(
        "sqs",
        endpoint_url=str(info["moto_url"]),
        region_name=str(info.get("region") or "us-east-1"),
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - moto
    )
    while True:
        yield from drain(sqs, str(info["notifications_queue_url"]), wait_s=20 if follow else wait_s)
        if not follow:
            return
