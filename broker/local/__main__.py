"""``python -m broker.local up|down|status|notifications`` — run the broker locally.

``up`` loads the local Slurm client environment (``export KEY=VALUE`` lines, e.g. ``SLURM_CONF``)
if the file exists, starts :class:`~broker.local.stack.LocalStack` with the local-mode overrides,
prints the API address, schedules, topics and a curl example, writes ``.run/local-stack.json``
(pid, URLs, the notifications inbox) and runs in the foreground until SIGINT/SIGTERM, then stops
cleanly and removes the file. Schedules tick every ``--schedule-seconds`` (default 2 s, or
``HPCB_LOCAL_SCHEDULE_SECONDS``; 0: the template's own rate), so job states move while you watch.

``down`` signals the running one and waits (bounded); ``status`` prints the run file and whether
its process is alive; ``notifications [--follow]`` reads (and consumes) what the functions
published to the template's SNS topics, one JSON line per notification.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from broker.local.apigw import DEFAULT_PRINCIPAL, PRINCIPAL_HEADER
from broker.local.env_file import read_env_file
from broker.local.template import LocalStackError, load_template
from broker.local.users import add_users_parser

if TYPE_CHECKING:
    from broker.local.stack import LocalStack

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DEFAULT_RUN_FILE: Final = REPO_ROOT / ".run" / "local-stack.json"
# Written by scripts/slurm.sh (its PREFIX); only read here.
DEFAULT_SLURM_ENV: Final = Path("/var/tmp/hpc-broker/slurm/env")  # noqa: S108
LOCAL_OVERRIDES: Final = {
    "HPCB_CLUSTERS_MODE": "local",
    "HPCB_LOCAL_CLUSTERS": "local",
    "POWERTOOLS_TRACE_DISABLED": "true",
    # The schedule ticks every --schedule-seconds here, so one sweep per tick (0: a single
    # sweep) instead of the deployed 50 s of sweeps within each once-a-minute invocation.
    "HPCB_SWEEP_WINDOW_SECONDS": "0",
    # template.yaml gives the job worker 120 and the sweeper 60 (to fit its 120 s Lambda
    # timeout); every handler shares this process's environment, and nothing enforces Lambda
    # timeouts locally, so both get the job worker's value.
    "HPCB_AGENT_TIMEOUT_SECONDS": "120",
}
# Local default: a schedule every 2 s instead of the template's minute, so states move visibly.
SCHEDULE_SECONDS_ENV: Final = "HPCB_LOCAL_SCHEDULE_SECONDS"
DEFAULT_SCHEDULE_SECONDS: Final = 2.0
# moto's answers do not depend on credentials; boto3 only needs some to sign with.
_MOTO_CREDENTIALS: Final = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
_FOLLOW_WAIT_S: Final = 20.0

logger = logging.getLogger("broker.local")


def template_overrides(template_path: Path) -> dict[str, str]:
    """Local-mode overrides, plus ``POWERTOOLS_METRICS_NAMESPACE`` from the template's globals."""
    overrides = dict(LOCAL_OVERRIDES)
    glob = load_template(template_path).globals_function
    variables = (glob.get("Environment") or {}).get("Variables") or {}
    namespace = variables.get("POWERTOOLS_METRICS_NAMESPACE")
    if isinstance(namespace, str):
        overrides["POWERTOOLS_METRICS_NAMESPACE"] = namespace
    return overrides


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_local_stack(pid: int) -> bool:
    # A stale run file's pid may belong to an unrelated process by now: only signal ours.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _pid_alive(pid)  # no /proc (not Linux): trust the run file
    return b"broker.local" in cmdline


def _read_run_file(run_file: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def curl_example(api_url: str) -> str:
    """Copy-pasteable commands: submit a job on the local cluster, then poll the request."""
    body = json.dumps({"script": "#!/bin/bash\necho hello from hpc-broker\n", "name": "hello"})
    return (
        f"  curl -sS -X POST {api_url}/v1/clusters/local/jobs \\\n"
        f"       -H 'Content-Type: application/json' \\\n"
        f"       -H '{PRINCIPAL_HEADER}: {DEFAULT_PRINCIPAL}' \\\n"
        f"       -d {shlex.quote(body)}\n"
        f"  # then, with the request_id from the answer:\n"
        f"  curl -sS {api_url}/v1/requests/<request_id>"
    )


def _notifications_queue_url(stack: LocalStack) -> str | None:
    try:
        return stack.notifications_queue_url
    except LocalStackError:
        return None


def _write_run_file(run_file: Path, stack: LocalStack, template: Path) -> None:
    run_file.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "pid": os.getpid(),
        "api_url": stack.api_url,
        "moto_url": stack.moto_url,
        "region": stack.region,
        "template": str(template),
        "started_at": time.time(),
        "topic_arns": stack.topic_arns,
        "notifications_queue_url": _notifications_queue_url(stack),
        "schedule_seconds": stack.schedule_seconds,
        "schedules": {s.name: s.describe() for s in stack.schedules},
        "table": stack.resources.get("RequestsTable"),
    }
    run_file.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def print_banner(stack: LocalStack, principal: str) -> None:
    """What is running and how to use it (``make up`` waits for the last line)."""
    print(f"hpc-broker local stack is up (pid {os.getpid()})")
    print(f"  API:  {stack.api_url}   (routes under /v1; caller = {principal})")
    print(f"  AWS:  {stack.moto_url}  (moto; AWS_ENDPOINT_URL for the aws CLI and boto3)")
    for poller in stack.pollers:
        print(f"  SQS:  {poller.name} <- {poller.queue_url}")
    for schedule in stack.schedules:
        state = "" if stack.schedules_enabled else " [timers off]"
        print(f"  Schedule: {schedule.name} {schedule.describe()}{state}")
    for logical_id, arn in stack.topic_arns.items():
        print(f"  SNS:  {logical_id} {arn}")
    inbox = _notifications_queue_url(stack)
    if inbox:
        print(f"  Notifications inbox: {inbox}")
        print("        read with `python -m broker.local notifications --follow`")
    print("Try:")
    print(curl_example(stack.api_url))
    print("Stop with Ctrl-C or `python -m broker.local down`.", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    """Run the stack in the foreground until SIGINT/SIGTERM."""
    from broker.local.stack import LocalStack  # noqa: PLC0415 - moto/werkzeug only for `up`

    run_file: Path | None = None if args.no_state_file else args.run_file
    existing = _read_run_file(run_file) if run_file else None
    if existing and _is_local_stack(int(existing.get("pid", 0))):
        print(f"already running (pid {existing['pid']}, api {existing.get('api_url')})")
        return 1
    slurm_env: Path = args.slurm_env
    if slurm_env.is_file():
        loaded = read_env_file(slurm_env)
        os.environ.update(loaded)
        logger.info("loaded %s from %s", ", ".join(sorted(loaded)), slurm_env)
    else:
        logger.warning("no Slurm env file at %s (is Slurm up? scripts/slurm.sh up)", slurm_env)

    overrides = template_overrides(args.template)
    # The local developer administers the local stack's mappings (the admin routes).
    overrides["HPCB_ADMIN_PRINCIPALS"] = args.principal
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"--env expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        overrides[key] = value

    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    if args.schedule_seconds < 0:
        print("--schedule-seconds must be >= 0 (0: the template's own schedule)", file=sys.stderr)
        return 2
    stack = LocalStack(
        args.template,
        api_port=args.api_port,
        moto_port=args.moto_port,
        env_overrides=overrides,
        principal=args.principal,
        pollers_per_mapping=args.pollers,
        schedule_seconds=args.schedule_seconds or None,
        schedules_enabled=not args.no_schedules,
    )
    try:
        stack.start()
    except (LocalStackError, OSError) as exc:
        print(f"cannot start the local stack: {exc}", file=sys.stderr)
        return 1
    try:
        _map_default_user(stack, overrides, args.principal, args.map_user)
        if run_file is not None:
            _write_run_file(run_file, stack, args.template)
        print_banner(stack, args.principal)
        while not stopping.wait(1.0):
            pass
    finally:
        stack.stop()
        if run_file is not None:
            run_file.unlink(missing_ok=True)
        print("stopped", flush=True)
    return 0


def _map_default_user(
    stack: LocalStack, overrides: dict[str, str], principal: str, user: str | None
) -> None:
    """``--map-user``: the default caller runs as ``user`` on every local cluster."""
    if user:
        for cluster in overrides.get("HPCB_LOCAL_CLUSTERS", "local").split(","):
            stack.map_user(cluster.strip(), principal, user)


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the stack recorded in the run file (SIGTERM, bounded wait)."""
    run_file: Path = args.run_file
    info = _read_run_file(run_file)
    if info is None:
        print("not running (no run file)")
        return 0
    pid = int(info.get("pid", 0))
    if pid <= 0 or not _pid_alive(pid) or not _is_local_stack(pid):
        print(f"not running (stale run file, pid {pid}); removing it")
        run_file.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            print(f"stopped (pid {pid})")
            return 0
        time.sleep(0.2)
    print(f"pid {pid} still running after {args.timeout:.0f}s", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    """Print the run file and whether the process is alive (exit 0 when running)."""
    info = _read_run_file(args.run_file)
    if info is None:
        print("not running")
        return 3
    pid = int(info.get("pid", 0))
    alive = pid > 0 and _pid_alive(pid) and _is_local_stack(pid)
    print(json.dumps({**info, "running": alive}, indent=2))
    return 0 if alive else 3


def cmd_notifications(args: argparse.Namespace) -> int:
    """Print the running stack's notifications, one JSON line each (reading consumes them)."""
    import boto3  # noqa: PLC0415 - only this command talks to AWS itself
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    from broker.local.notifications import drain  # noqa: PLC0415

    info = _read_run_file(args.run_file)
    pid = int(info.get("pid", 0)) if info else 0
    # Only liveness: the stack may also run inside another process (a test, the demo).
    if info is None or pid <= 0 or not _pid_alive(pid):
        print("not running (start it with `python -m broker.local up`)", file=sys.stderr)
        return 3
    queue_url = info.get("notifications_queue_url")
    if not queue_url:
        print("the running stack has no notifications inbox (no SNS topic?)", file=sys.stderr)
        return 1
    sqs = boto3.client(
        "sqs",
        endpoint_url=str(info["moto_url"]),
        region_name=str(info.get("region") or "us-east-1"),
        **_MOTO_CREDENTIALS,
    )
    try:
        while True:
            wait = _FOLLOW_WAIT_S if args.follow else args.wait
            for notification in drain(sqs, str(queue_url), wait_s=wait):
                print(notification.to_json(), flush=True)
            if not args.follow:
                return 0
    except KeyboardInterrupt:
        return 0
    except (BotoCoreError, ClientError) as exc:
        print(f"cannot read the inbox (has the stack stopped?): {exc}", file=sys.stderr)
        return 1


def _default_schedule_seconds() -> float:
    raw = os.environ.get(SCHEDULE_SECONDS_ENV)
    if raw is None:
        return DEFAULT_SCHEDULE_SECONDS
    try:
        return float(raw)
    except ValueError:
        logger.warning(
            "%s=%r is not a number; using %s", SCHEDULE_SECONDS_ENV, raw, DEFAULT_SCHEDULE_SECONDS
        )
        return DEFAULT_SCHEDULE_SECONDS


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m broker.local", description="Run hpc-broker on this machine."
    )
    parser.add_argument("--run-file", type=Path, default=DEFAULT_RUN_FILE, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the local stack in the foreground")
    up.add_argument("--api-port", type=int, default=8080, help="API port (0: any free port)")
    up.add_argument("--moto-port", type=int, default=5000, help="moto port (0: any free port)")
    up.add_argument("--template", type=Path, default=REPO_ROOT / "template.yaml")
    up.add_argument("--slurm-env", type=Path, default=DEFAULT_SLURM_ENV)
    up.add_argument("--principal", default=DEFAULT_PRINCIPAL, help="default caller IAM ARN")
    up.add_argument(
        "--map-user",
        metavar="USER",
        help="map the default caller to this POSIX user on every local cluster (make up: hpcb-dev)",
    )
    up.add_argument("--pollers", type=int, default=1, help="threads per SQS mapping")
    up.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment"
    )
    up.add_argument(
        "--schedule-seconds",
        type=float,
        default=_default_schedule_seconds(),
        metavar="S",
        help=f"seconds between ticks of every schedule (default {DEFAULT_SCHEDULE_SECONDS:g}, "
        f"or ${SCHEDULE_SECONDS_ENV}; 0: the template's own rate/cron)",
    )
    up.add_argument(
        "--no-schedules",
        action="store_true",
        help="do not run the schedules' timers (scheduled functions then never run by themselves)",
    )
    up.add_argument(
        "--no-state-file",
        action="store_true",
        help="do not read or write .run/local-stack.json (for stacks run by a parent process)",
    )
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop the running local stack")
    down.add_argument("--timeout", type=float, default=20.0)
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="is a local stack running?")
    status.set_defaults(func=cmd_status)

    notifications = sub.add_parser(
        "notifications", help="print what was published to the SNS topics (one JSON line each)"
    )
    notifications.add_argument(
        "--follow", action="store_true", help="keep printing new notifications until Ctrl-C"
    )
    notifications.add_argument(
        "--wait", type=float, default=1.0, help="seconds to wait for one (without --follow)"
    )
    notifications.set_defaults(func=cmd_notifications)
    add_users_parser(sub, _read_run_file)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # botocore announces where it found credentials and endpoints on every new client.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
