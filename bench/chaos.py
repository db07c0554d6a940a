"""Chaos run on the local stack and the real Slurm: a burst under injected faults, then a check
against Slurm's own job list.

The promises checked: every accepted request ends in a final state; every accepted job is in
Slurm exactly once with its Slurm id recorded, or FAILED with a reason (none lost, no
duplicate); a poison message ends in the DLQ with its request FAILED; every final transition is
notified exactly once (the stack's notifications inbox, subscribed to the SNS topic).

Injected (``broker/local/faults.py``, seeded): DynamoDB ``ProvisionedThroughputExceeded``,
``ThrottlingException`` and ``TransactionCanceledException`` (``TransactionConflict``,
``ThrottlingError``); SQS ``ServiceUnavailable`` on send, receive, delete and visibility
changes; head-node commands whose answer is lost after they ran; here: a job worker SIGKILLed
mid-batch (a process of its own, like a Lambda sandbox dying), slurmctld stopped and restarted
mid-burst, and one poison request whose submission always fails.

Jobs are trivial and held: Slurm is not the bottleneck. Everything is cancelled at the end.
``python -m bench.chaos --jobs 10000`` (``make chaos``) prints one JSON line last.
"""

from __future__ import annotations

import os

# Powertools reads these when broker.observability is first imported (below).
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "HpcBrokerChaos")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "hpc-broker-chaos")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

import argparse
import json
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from broker import wiring
from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoStore
from broker.client import LOCAL_PRINCIPAL_HEADER
from broker.local.env_file import read_env_file
from broker.local.faults import AWS_FAULTS, RUNNER_TIMEOUT, FaultInjector
from broker.local.notifications import drain
from broker.local.pollers import SqsPoller, build_sqs_event
from broker.local.stack import LocalStack
from broker.requests.states import RequestState

ROOT = Path(__file__).resolve().parent.parent
NAME = "hpcb-chaos"
OWNER = "arn:aws:iam::000000000000:user/chaos"
SCRIPT = "#!/bin/sh\ntrue\n"
POISON_MARK = "# hpcb-chaos: poison"
SLURM_RUN = Path(os.environ.get("HPCB_SLURM_PREFIX", "/var/tmp/hpc-broker/slurm")) / "run"
WORKER_KILLED = "worker.sigkill"
SLURMCTLD_RESTART = "slurmctld.restart"
#: Faults a victim worker dies at (see ``victim``).
KILL_POINTS = ("during-agent", "after-agent", "mid-records")
#: Seconds a message taken by the victim stays invisible (Lambda: the queue's 15 minutes).
VICTIM_VISIBILITY_S = 8

logger = logging.getLogger("bench.chaos")


@dataclass
class Config:
    """One chaos run."""

    jobs: int = 10_000
    batches: int = 10
    singles: int = 20
    seed: int = 1
    rate: float = 0.01
    visibility_timeout_s: int = 20
    quiesce_timeout_s: float = 600.0
    slurm_outage_s: float = 2.0
    pollers: int = 5
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="hpcb-chaos-"))


@dataclass
class Accepted:
    """What the API accepted (202) during the run."""

    batches: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (prefix, items)
    singles: list[str] = field(default_factory=list)
    poison: str | None = None
    api_retries: int = 0
    api_gave_up: int = 0

    def job_ids(self) -> list[str]:
        ids = [f"{p}{i:06x}" for p, n in self.batches.values() for i in range(n)]
        return ids + self.singles + ([self.poison] if self.poison else [])

    def request_ids(self) -> list[str]:
        return [*self.batches, *self.singles, *([self.poison] if self.poison else [])]


# -- the API, as a client that retries with an Idempotency-Key --------------------------------


def post(api_url: str, path: str, body: Any, accepted: Accepted) -> dict[str, Any] | None:
    """POST with an Idempotency-Key, retried on 5xx/429/409-in-progress; the 202 body or None."""
    key = uuid.uuid4().hex
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", LOCAL_PRINCIPAL_HEADER: OWNER,
               "Idempotency-Key": key}  # fmt: skip
    for attempt in range(12):
        request = urllib.request.Request(api_url + path, data=data, headers=headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:  # noqa: S310
                return dict(json.loads(answer.read()))
        except urllib.error.HTTPError as exc:
            exc.read()
            if exc.code < 500 and exc.code not in (409, 429):
                raise
        except OSError:
            pass
        accepted.api_retries += 1
        time.sleep(min(2.0, 0.2 * 2**attempt))
    accepted.api_gave_up += 1
    return None


# -- faults outside the process: a killed worker, a restarted slurmctld -----------------------


@contextmanager
def paused(poller: SqsPoller) -> Iterator[None]:
    """The in-process job worker takes no message meanwhile (the victim gets the batch)."""
    poller.stop(60)
    try:
        yield
    finally:
        poller.start()


def run_victim(stack: LocalStack, point: str) -> int:
    """A job worker in a process of its own takes what is queued and is SIGKILLed at ``point``."""
    argv = [sys.executable, "-m", "bench.chaos", "--victim", point,
            "--queue-url", stack.queue_url("RequestsQueue")]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    if done.returncode != -signal.SIGKILL:
        logger.warning("victim ended %s: %s", done.returncode, done.stderr[-2000:])
    return done.returncode


def restart_slurmctld(outage_s: float) -> None:
    """Stop slurmctld by its PID file, keep it down ``outage_s``, start it with slurm.sh up."""
    pid = int((SLURM_RUN / "slurmctld.pid").read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
        time.sleep(0.05)
    time.sleep(outage_s)
    subprocess.run([str(ROOT / "scripts" / "slurm.sh"), "up"], check=True, capture_output=True)


def victim(point: str, queue_url: str) -> None:
    """The body of the victim process: the real handler, killed at ``point`` (no cleanup)."""
    from broker.agent.protocol import AgentRequest, AgentResponse  # noqa: PLC0415
    from broker.ports import ClusterTarget  # noqa: PLC0415
    from broker.runners.local import LocalRunner  # noqa: PLC0415

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    original = LocalRunner.run
    answered = threading.Event()

    def run(runner: LocalRunner, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        if point == "during-agent":
            tokens = {job.token for job in request.jobs}
            agent = threading.Thread(target=original, args=(runner, target, request), daemon=True)
            agent.start()
            deadline = time.monotonic() + 60
            while not tokens & set(squeue_tokens()) and time.monotonic() < deadline:
                time.sleep(0.01)
            die()
        answer = original(runner, target, request)
        answered.set()
        if point == "after-agent":
            die()
        return answer

    LocalRunner.run = run  # type: ignore[method-assign,assignment]

    def after_transaction(**_: Any) -> None:
        if point == "mid-records" and answered.is_set():
            die()

    client("dynamodb").meta.events.register(
        "after-call.dynamodb.TransactWriteItems", after_transaction
    )
    from broker.local.context import LambdaContext  # noqa: PLC0415
    from workers.job_worker import lambda_handler  # noqa: PLC0415 - after the hooks

    sqs = boto3.client("sqs")
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while not any(_kind(m) == "job.batch" for m in messages) and time.monotonic() < deadline:
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=2,
            VisibilityTimeout=VICTIM_VISIBILITY_S, AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])  # fmt: skip
    # Batch chunks only: the others (the poison among them) come back after the visibility.
    messages = [m for m in messages if _kind(m) == "job.batch"]
    if not messages:
        raise SystemExit("victim: no batch chunk to take")
    event = build_sqs_event(messages, queue_arn=arn["Attributes"]["QueueArn"], region="us-east-1")
    context = LambdaContext.for_invocation(
        function_name="victim", timeout_s=150, memory_mb=512, region="us-east-1",
        account_id="000000000000",
    )  # fmt: skip
    lambda_handler(event, context)
    raise SystemExit(f"victim: {point} was never reached")


def _kind(message: dict[str, Any]) -> str | None:
    value = message.get("MessageAttributes", {}).get("kind", {}).get("StringValue")
    return str(value) if value is not None else None


# -- Slurm's own records ----------------------------------------------------------------------


def squeue_tokens() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%k"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [line.strip() for line in out.splitlines() if line.startswith("hpcb:")]


def slurm_jobs() -> dict[str, list[str]]:
    """Token -> the Slurm job ids carrying it (squeue: held jobs stay listed)."""
    out = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-n", NAME, "-o", "%i %k"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].startswith("hpcb:"):
            found.setdefault(parts[1], []).append(parts[0])
    return found


# -- the run ----------------------------------------------------------------------------------


def start_stack(config: Config, slurm_env: dict[str, str]) -> LocalStack:
    wiring.reset()
    stack = LocalStack(
        ROOT / "template.yaml",
        env_overrides={
            "HPCB_CLUSTERS_MODE": "local",
            "HPCB_LOCAL_CLUSTERS": "local",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "CRITICAL",
            # Retries within seconds, not minutes: the poison reaches the DLQ after 8 receives.
            "HPCB_RETRY_BASE_SECONDS": "1",
            "HPCB_RETRY_MAX_SECONDS": "4",
            "HPCB_DEFAULT_WORKING_DIRECTORY": config.workdir,
            **slurm_env,
        },
        schedules_enabled=False,
        access_log=False,
        pollers_per_mapping=config.pollers,
    )
    stack.start()
    stack.map_user("local", OWNER, "hpcb-dev")  # scripts/local-user.sh
    return stack


def burst(stack: LocalStack, config: Config, injector: FaultInjector) -> Accepted:
    """The poison, the single jobs, then the batches; a victim worker and a slurmctld restart
    among them."""
    accepted = Accepted()
    api = stack.api_url
    spec = {"script": SCRIPT, "name": NAME, "hold": True}
    poison = post(api, "/v1/clusters/local/jobs",
                  {**spec, "script": f"{SCRIPT}{POISON_MARK}\n"}, accepted)  # fmt: skip
    accepted.poison = poison["request_id"] if poison else None
    for _ in range(config.singles):
        single = post(api, "/v1/clusters/local/jobs", spec, accepted)
        if single:
            accepted.singles.append(single["request_id"])
    remaining = config.jobs - config.singles - 1
    sizes = [remaining // config.batches + (i < remaining % config.batches)
             for i in range(config.batches)]  # fmt: skip
    (worker,) = [p for p in stack.pollers if p.queue_url == stack.queue_url("RequestsQueue")]
    restart: threading.Thread | None = None
    rng = __import__("random").Random(config.seed)
    for number, size in enumerate(sizes):
        body = {"jobs": [spec] * size}
        if number == 1:
            point = rng.choice(KILL_POINTS)
            with paused(worker):
                answer = post(api, "/v1/clusters/local/jobs:batch", body, accepted)
                if answer and run_victim(stack, point) == -signal.SIGKILL:
                    injector.count(f"{WORKER_KILLED}.{point}")
        else:
            answer = post(api, "/v1/clusters/local/jobs:batch", body, accepted)
        if answer:
            accepted.batches[answer["request_id"]] = (answer["job_id_prefix"], answer["accepted"])
        if number == len(sizes) // 2:
            restart = threading.Thread(target=restart_slurmctld, args=(config.slurm_outage_s,))
            restart.start()
            injector.count(SLURMCTLD_RESTART)
    if restart is not None:
        restart.join()
    return accepted


def queue_depth(sqs: Any, url: str) -> int:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
             "ApproximateNumberOfMessagesDelayed"]  # fmt: skip
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(attributes.get(n, 0)) for n in names)


def quiesce(
    stack: LocalStack, store: DynamoStore, accepted: Accepted, timeout: float
) -> tuple[float, dict[str, Any]]:
    """Wait (bounded) until every accepted request is final and both queues are empty; the
    seconds waited and what was still open then."""
    sqs = boto3.client("sqs")
    queues = [stack.queue_url("RequestsQueue"), stack.queue_url("RequestsDLQ")]
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        open_requests = [r for r in accepted.request_ids() if not store.get(r).state.final]
        depths = [queue_depth(sqs, q) for q in queues]
        if not open_requests and not any(depths):
            break
        if int(time.monotonic() - started) % 10 == 0:
            logger.warning(
                "waiting: %d request(s) open, queue depths %s", len(open_requests), depths
            )
        time.sleep(0.5)
    return time.monotonic() - started, {"open_requests": open_requests[:5], "queues": depths}


def check(stack: LocalStack, store: DynamoStore, accepted: Accepted) -> dict[str, Any]:  # noqa: PLR0912
    """Compare the records, Slurm's job list and the notifications; the figures."""
    in_slurm = slurm_jobs()
    job_ids = accepted.job_ids()
    jobs = store.jobs_by_id(job_ids)
    figures: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}

    def bad(kind: str, job_id: str, n: int = 1) -> None:
        figures[kind] += n
        examples.setdefault(kind, [])
        if len(examples[kind]) < 5:
            examples[kind].append(job_id)

    for job_id in job_ids:
        slurm_ids = in_slurm.get(f"hpcb:{job_id}", [])
        if len(slurm_ids) > 1:
            bad("duplicates", job_id, len(slurm_ids) - 1)
        job = jobs.get(job_id)
        if job is None or not (job.slurm_job_id or job.state.final):
            # No outcome (still SUBMITTING, or no record yet): lost unless still in progress.
            bad("lost", f"{job_id}: {job.state.value if job else 'no record'}, {slurm_ids}")
        elif job.slurm_job_id is not None:
            if job.slurm_job_id in slurm_ids:
                figures["succeeded"] += 1
            else:
                bad("lost", job_id)  # recorded, but not in Slurm (or another id)
        elif job.reason:
            figures["failed_with_reason"] += 1
            if slurm_ids:
                bad("failed_but_in_slurm", f"{job_id}: {job.reason}")
        else:
            bad("failed_without_reason", job_id)
    requests = {r: store.get(r) for r in accepted.request_ids()}
    for request_id, record in requests.items():
        if not record.state.final:
            bad("requests_not_final", request_id)
        elif record.state is RequestState.FAILED and record.error is None:
            bad("requests_failed_without_reason", request_id)
    poison = requests.get(accepted.poison or "")
    # Notifications: one per final request, one per job in a final state, for what we accepted.
    expected = Counter({("request", r, rec.state.value) for r, rec in requests.items()
                        if rec.state.final})  # fmt: skip
    expected.update({("job", j, job.state.value) for j, job in jobs.items() if job.state.final})
    seen: Counter[tuple[str, str, str]] = Counter()
    ours = set(requests) | set(jobs)
    for note in drain(boto3.client("sqs"), stack.notifications_queue_url, wait_s=2):
        message = note.message if isinstance(note.message, dict) else {}
        kind = "request" if message.get("type") == "request.finished" else "job"
        ref = str(message.get("request_id") or message.get("job_id"))
        if ref in ours:
            seen[(kind, ref, str(message.get("new_state")))] += 1
    missing = sum(max(0, n - seen[k]) for k, n in expected.items())
    duplicated = sum(max(0, n - expected[k]) for k, n in seen.items())
    for kind, counts, others in (("notifications_missing", expected, seen),
                                 ("notifications_duplicated", seen, expected)):  # fmt: skip
        for key, n in counts.items():
            if n > others[key] and len(examples.setdefault(kind, [])) < 5:
                examples[kind].append(" ".join(key))
    return {
        "jobs": len(job_ids),
        "requests": len(requests),
        "succeeded": figures["succeeded"],
        "lost": figures["lost"],
        "duplicates": figures["duplicates"],
        "failed_with_reason": figures["failed_with_reason"],
        "failed_without_reason": figures["failed_without_reason"],
        "failed_but_in_slurm": figures["failed_but_in_slurm"],
        "requests_not_final": figures["requests_not_final"],
        "notifications_expected": sum(expected.values()),
        "notifications_missing": missing,
        "notifications_duplicated": duplicated,
        "poison": {
            "state": poison.state.value if poison else None,
            "error": poison.error.code if poison and poison.error else None,
            "job": jobs[accepted.poison].state.value if accepted.poison in jobs else None,
        },
        "examples": examples,
    }


def run(config: Config, slurm_env: dict[str, str]) -> dict[str, Any]:
    """One chaos run on a fresh local stack; the figures (see ``check``), faults by kind."""
    os.environ.update(slurm_env)
    Path(config.workdir).chmod(0o777)
    rates = {fault.kind: config.rate for fault in AWS_FAULTS} | {RUNNER_TIMEOUT: config.rate * 5}
    injector = FaultInjector(config.seed, rates, first_within=6)
    stack = start_stack(config, slurm_env)
    try:
        requests_queues = {stack.queue_url("RequestsQueue"), stack.queue_url("RequestsDLQ")}
        pollers = [p for p in stack.pollers if p.queue_url in requests_queues]
        injector.attach([client("dynamodb"), client("sqs"), *(p.sqs_client for p in pollers)])
        injector.poison_marker = POISON_MARK
        injector.attach_runner()
        # A failed delete or visibility change returns a message after the queue's visibility
        # timeout: 15 minutes (both queues) as deployed, shortened so a run ends in minutes. A
        # message whose handling outlives it is delivered again meanwhile (at-least-once). The
        # pollers are stopped meanwhile: a receive takes the queue's timeout when it starts,
        # so a long poll begun before the change gave the first message 15 minutes (seed 11:
        # the poison, whose visibility change then failed, stayed hidden past the run).
        for poller in pollers:
            poller.stop(60)
        for queue in ("RequestsQueue", "RequestsDLQ"):
            boto3.client("sqs").set_queue_attributes(
                QueueUrl=stack.queue_url(queue),
                Attributes={"VisibilityTimeout": str(config.visibility_timeout_s)},
            )
        for poller in pollers:
            poller.start()
        dlq = next(p for p in stack.pollers if p.queue_url == stack.queue_url("RequestsDLQ"))
        dead_letters = watch(dlq)
        store = DynamoStore(boto3.client("dynamodb"), os.environ["HPCB_TABLE_NAME"])
        started = time.monotonic()
        injector.enabled = True
        accepted = burst(stack, config, injector)
        burst_s = time.monotonic() - started
        logger.warning("burst done in %.1f s: %s", burst_s, injector.report())
        quiet_s, still_open = quiesce(stack, store, accepted, config.quiesce_timeout_s)
        injector.enabled = False
        figures = check(stack, store, accepted)
        figures["poison"]["dead_lettered"] = accepted.poison in dead_letters
        figures.update(
            seconds={"burst": round(burst_s, 1), "to_quiescence": round(burst_s + quiet_s, 1)},
            api={"retries": accepted.api_retries, "gave_up": accepted.api_gave_up},
            faults=injector.report(),
            at_the_end=still_open,
            pollers={p.name.split("-", 2)[-1]: p.stats_dict()["records"] for p in pollers},
            handler_errors=sum(p.stats().handler_errors for p in pollers),
            seed=config.seed,
        )
        return figures
    finally:
        injector.enabled = False
        injector.detach_runner()
        stack.stop()
        wiring.reset()
        subprocess.run(["scancel", "--name", NAME], check=False)


def watch(poller: SqsPoller) -> set[str]:
    """Request ids of the messages the DLQ worker is given (a set that fills as it runs)."""
    seen: set[str] = set()
    handler = poller.handler

    def recording(event: dict[str, Any], context: Any) -> Any:
        for record in event.get("Records", []):
            with suppress(ValueError, AttributeError):
                seen.add(str(json.loads(record["body"]).get("request_id")))
        return handler(event, context)

    poller.handler = recording
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slurm-env", type=Path, default=Path("/var/tmp/hpc-broker/slurm/env"))
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.01, help="AWS faults per eligible call")
    parser.add_argument("--quiesce-timeout", type=float, default=600.0)
    parser.add_argument("--victim", choices=KILL_POINTS, help=argparse.SUPPRESS)
    parser.add_argument("--queue-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.victim:
        victim(args.victim, args.queue_url)
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # Injected receive and delete errors are expected: the pollers' warnings would drown the run.
    logging.getLogger("broker.local.pollers").setLevel(logging.ERROR)
    config = Config(
        jobs=args.jobs,
        batches=args.batches,
        seed=args.seed,
        rate=args.rate,
        quiesce_timeout_s=args.quiesce_timeout,
    )
    figures = run(config, read_env_file(args.slurm_env))
    print(json.dumps(figures, separators=(",", ":")))


if __name__ == "__main__":
    main()
