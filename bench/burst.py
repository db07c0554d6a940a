"""Burst submission on the real local Slurm: N held jobs through the HTTP API, beside two baselines.

Measured in one run, on the same Slurm:
- ``raw_sbatch_s``: the same jobs by a plain ``sbatch`` loop in bash (one process per job, no
  broker): the physical limit of one-by-one submission on this machine;
- ``accept_s``: the one ``POST /v1/clusters/local/jobs:batch`` call, until its 202;
- ``all_submitted_s``: from that POST until the batch request is SUCCEEDED, i.e. every job is in
  Slurm *and* its Slurm id is recorded in DynamoDB (what a client polling the batch sees);
- ``naive_s``: the seed samples' design, one synchronous head-node command per job through the
  same runner (the agent), measured on a sample and scaled to N - said so in the output;
- head-node commands (agent runs), and the AWS calls of the API and worker handlers by operation,
  counted from botocore's events (the SQS polling of Lambda's event-source mapping, emulated
  here by pollers with clients of their own, is Lambda's and not counted);
- the CPU seconds of the moto process (the local emulator of DynamoDB and SQS, not AWS's cost);
- duplicates and lost jobs, counted from Slurm's own job list (tokens in the job comments);
- ``sweep_*``: the same N jobs as one ``POST .../jobs:sweep`` (a template and N parameter sets),
  which the broker packs into job arrays (one per MaxArraySize tasks): accept, every item holding
  its Slurm id ``<array>_<task>`` (``sweep_all_submitted_s``), the arrays all in Slurm (the last
  head-node command's end, ``sweep_in_slurm_s``), head-node commands, duplicates and lost (from
  squeue's tasks);
- ``status_*``: two runs of the status sweep (the sweeper function) over the N active jobs,
  unpacked beside packed: the first records Slurm's word on each new job (a sweep's pending items
  are recorded by their arrays: nothing to write), the second is steady;
- ``sweep_items_read``, ``sweep_items_with_their_task``: after the timing, every item read back
  through the API's item pages, and how many of their Slurm ids are tasks squeue lists.

Jobs are trivial and held, so the figures are about submission; everything is cancelled at the end.
Each phase starts on a controller that has forgotten the earlier phases' jobs (``settle``: up to
MinJobAge, 5 min here), so neither the loop nor the broker pays for the other's 10,000 jobs.
"""

from __future__ import annotations

import os

# Powertools reads these when broker.observability is first imported (below).
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "HpcBrokerBench")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "hpc-broker-bench")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

import argparse
import json
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3

from broker import wiring
from broker.adapters.aws import client
from broker.adapters.dynamodb.table import request_key
from broker.agent.protocol import AgentJob, AgentRequest, AgentResponse
from broker.client import BrokerClient
from broker.jobs.models import JobSpec
from broker.local.env_file import read_env_file
from broker.local.stack import LocalStack, moto_cpu_seconds
from broker.ports import ClusterTarget
from broker.runners.local import LocalRunner

ROOT = Path(__file__).resolve().parent.parent
NAME = "hpcb-bench-burst"
RAW_NAME = "hpcb-bench-raw"
NAIVE_NAME = "hpcb-bench-naive"
SWEEP_NAME = "hpcb-bench-sweep"
OWNER = "arn:aws:iam::000000000000:user/bench"
SCRIPT = "#!/bin/sh\ntrue\n"
SERVICES = ("dynamodb", "sqs", "sns", "s3")


class Calls:
    """AWS calls by service and operation, from botocore's ``before-call`` events."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.on = False

    def attach(self) -> None:
        for service in SERVICES:
            client(service).meta.events.register(f"before-call.{service}", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        if self.on:
            with self._lock:
                self.counts[f"{model.service_model.service_name}:{model.name}"] += 1


class HeadNodeCommands:
    """Counts the local runner's head-node commands (agent runs) made by the stack's workers."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.last_submit_end = 0.0
        self._original = LocalRunner.run

    def attach(self) -> None:
        original = self._original

        def run(runner: LocalRunner, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
            self.count += 1
            started = time.perf_counter()
            try:
                return original(runner, target, request)
            finally:
                self.seconds += time.perf_counter() - started
                if request.op == "submit":
                    self.last_submit_end = time.perf_counter()

        LocalRunner.run = run  # type: ignore[method-assign,assignment]

    def detach(self) -> None:
        LocalRunner.run = self._original  # type: ignore[method-assign]


def slurmctld_cpu_seconds() -> float:
    """User + system CPU seconds of slurmctld so far (Linux /proc; 0 if not found)."""
    found = subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True, text=True,
                           check=False)  # fmt: skip
    pids = found.stdout
    total = 0.0
    for pid in pids.split():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def slurm(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def tokens_in_slurm(prefix: str) -> Counter[str]:
    """How many Slurm jobs carry each token starting with ``prefix`` (held jobs stay in squeue)."""
    out = slurm("squeue", "-h", "-a", "-t", "all", "-o", "%k")
    return Counter(line.strip() for line in out.splitlines() if line.startswith(prefix))


def cancel(name: str) -> None:
    subprocess.run(["scancel", "--name", name], check=False)


def settle(timeout: float = 480.0) -> float:
    """Wait until slurmctld has forgotten the benchmark's earlier jobs; the seconds waited.

    Cancelled jobs stay in slurmctld's memory for MinJobAge (300 s here), where every later
    ``sbatch`` and ``squeue`` pays for them: without this, whichever phase runs second would be
    measured on a controller holding the first one's 10,000 jobs.
    """
    started = time.monotonic()
    names = ",".join((NAME, RAW_NAME, NAIVE_NAME, SWEEP_NAME))
    while time.monotonic() - started < timeout:
        if not slurm("squeue", "-h", "-a", "-t", "all", "-n", names, "-o", "%i").split():
            break
        time.sleep(5)
    return time.monotonic() - started


def raw_sbatch(count: int, workdir: str) -> float:
    """A plain bash loop of ``sbatch`` on the same Slurm: one process per job."""
    script = Path(workdir) / "raw.sh"
    script.write_text(SCRIPT)
    loop = (
        f"for i in $(seq {count}); do sbatch -Q --parsable --hold -J {RAW_NAME} "
        f"--comment=hpcb-raw:$i -D {workdir} {script} >/dev/null || exit 1; done"
    )
    started = time.perf_counter()
    subprocess.run(["bash", "-c", loop], check=True)
    elapsed = time.perf_counter() - started
    submitted = len(slurm("squeue", "-h", "-t", "PD", "-n", RAW_NAME, "-o", "%i").split())
    if submitted != count:
        raise SystemExit(f"raw sbatch loop: {submitted} of {count} jobs in Slurm")
    return elapsed


def naive(count: int, sample: int, workdir: str) -> dict[str, Any]:
    """One synchronous head-node command per job (the seed design), on a sample, scaled."""
    target = ClusterTarget(name="local", mode="local")
    spec = JobSpec(script=SCRIPT, name=NAIVE_NAME, hold=True, working_directory=workdir)
    runner = LocalRunner()
    started = time.perf_counter()
    for i in range(sample):
        job = AgentJob.of(f"hpcb:naive{i:06x}", spec, user="hpcb-dev")
        answer = runner.run(target, AgentRequest(op="submit", jobs=[job]))
        if not answer.ok or not answer.results[0].job_id:
            raise SystemExit(f"naive baseline: submission failed: {answer}")
    per_job = (time.perf_counter() - started) / sample
    return {"sample": sample, "per_job_ms": round(per_job * 1000, 1),
            "naive_s": round(per_job * count, 1)}  # fmt: skip


def start_stack(slurm_env: dict[str, str], pollers: int) -> LocalStack:
    wiring.reset()
    stack = LocalStack(
        ROOT / "template.yaml",
        env_overrides={
            "HPCB_CLUSTERS_MODE": "local",
            "HPCB_LOCAL_CLUSTERS": "local",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "HPCB_SWEEP_WINDOW_SECONDS": "0",
            **slurm_env,
        },
        schedules_enabled=False,
        access_log=False,
        pollers_per_mapping=pollers,
    )
    stack.start()
    stack.map_user("local", OWNER, "hpcb-dev")  # scripts/local-user.sh
    return stack


def burst(stack: LocalStack, count: int, workdir: str, calls: Calls) -> dict[str, Any]:
    """One batch POST of ``count`` held jobs, followed until every item has its Slurm id."""
    jobs = [{"script": SCRIPT, "name": NAME, "hold": True, "working_directory": workdir}
            for _ in range(count)]  # fmt: skip
    alice = BrokerClient(stack.api_url, principal=OWNER)
    calls.on = True
    emulator_before = moto_cpu_seconds()
    broker_before = time.process_time()
    slurmctld_before = slurmctld_cpu_seconds()
    started = time.perf_counter()
    accepted = alice.call("POST", "/v1/clusters/local/jobs:batch", {"jobs": jobs})
    accept_s = time.perf_counter() - started
    accept_emulator_s = moto_cpu_seconds() - emulator_before
    accept_calls = Counter(calls.counts)
    if accepted["accepted"] != count:
        raise SystemExit(f"the API accepted {accepted['accepted']} of {count}")
    # Followed in DynamoDB with a client of its own (uncounted): GETs would add API calls.
    final = _wait(stack, accepted["request_id"], timeout=max(600, count // 5))
    all_submitted_s = time.perf_counter() - started
    emulator_s = moto_cpu_seconds() - emulator_before
    broker_cpu_s = time.process_time() - broker_before
    slurmctld_s = slurmctld_cpu_seconds() - slurmctld_before
    calls.on = False
    if final["state"] != "SUCCEEDED":
        raise SystemExit(f"the batch ended {final['state']}: {final.get('counts')}")
    return {
        "accept_s": round(accept_s, 3),
        "all_submitted_s": round(all_submitted_s, 2),
        "prefix": accepted["job_id_prefix"],
        "counts": final["counts"],
        "accept_calls": accept_calls,
        "accept_emulator_s": round(accept_emulator_s, 2),
        "emulator_s": round(emulator_s, 2),
        "broker_cpu_s": round(broker_cpu_s, 2),
        "slurmctld_cpu_s": round(slurmctld_s, 2),
    }


def sweep(stack: LocalStack, count: int, workdir: str, head: HeadNodeCommands) -> dict[str, Any]:
    """One sweep POST of ``count`` held items, followed until every item has its Slurm id."""
    template = {"script": SCRIPT, "name": SWEEP_NAME, "hold": True, "working_directory": workdir}
    body = {"template": template, "parameters": [{"PARAM_I": str(i)} for i in range(count)]}
    alice = BrokerClient(stack.api_url, principal=OWNER)
    commands, seconds = head.count, head.seconds
    started = time.perf_counter()
    accepted = alice.call("POST", "/v1/clusters/local/jobs:sweep", body)
    accept_s = time.perf_counter() - started
    final = _wait(stack, accepted["request_id"], timeout=max(600, count // 5))
    all_submitted_s = time.perf_counter() - started
    in_slurm_s = head.last_submit_end - started
    if final["state"] != "SUCCEEDED" or final["counts"] != {"SUBMITTED": count}:
        raise SystemExit(f"the sweep ended {final['state']}: {final.get('counts')}")
    tasks = Counter()  # type: Counter[tuple[str, str]]
    task_ids: set[str] = set()
    for line in slurm("squeue", "-h", "-r", "-a", "-t", "all", "-o", "%F|%i|%k").splitlines():
        array, task_id, token = line.split("|", 2)
        if token.startswith(f"hpcb:{accepted['request_id']}"):
            tasks[(token, array)] += 1
            task_ids.add(task_id)
    per_token = Counter(token for token, _ in tasks)
    # Not timed: every item, read back through the API (the sweep's pages of items), holds its
    # own Slurm id, and that id is a task Slurm holds.
    answered = item_slurm_ids(alice, accepted["request_id"])
    return {
        "accept_s": round(accept_s, 3),
        "all_submitted_s": round(all_submitted_s, 2),
        "in_slurm_s": round(in_slurm_s, 2),
        "head_node_calls": head.count - commands,
        "head_node_s": round(head.seconds - seconds, 2),
        "arrays": len(tasks),
        "duplicates": sum(n - 1 for n in per_token.values()),
        "lost": count - sum(tasks.values()),
        "items_read": len(answered),
        "items_with_their_task": len(set(answered.values()) & task_ids),
        "request_id": accepted["request_id"],
        "prefix": accepted["job_id_prefix"],
    }


def item_slurm_ids(client: BrokerClient, request_id: str) -> dict[str, str]:
    """Each item's Slurm id as the API answers it, page by page (job id -> Slurm id)."""
    found: dict[str, str] = {}
    start: int | None = 0
    while start is not None:
        page = client.call("GET", f"/v1/requests/{request_id}?items_from={start}&items_limit=1000")
        found.update((v["job_id"], v["slurm_job_id"]) for v in page["item_page"]
                     if v.get("slurm_job_id"))  # fmt: skip
        start = page.get("next_items_from")
    return found


def statuses(stack: LocalStack) -> dict[str, Any]:
    """Two status sweeps in a row: the first records what Slurm says of the new jobs (held:
    their reason and Slurm state, a write each; a sweep's items: none, their arrays are their
    record while they are pending), the second is a steady one (no change)."""
    return {"first": status_sweep(stack), "steady": status_sweep(stack)}


def status_sweep(stack: LocalStack) -> dict[str, Any]:
    """One run of the sweeper function (one sweep, ``HPCB_SWEEP_WINDOW_SECONDS=0``) over the
    active jobs: seconds, head-node commands, active jobs (a sweep's items are asked for by
    their arrays; plain jobs in slices of STATUS_SLICE ids)."""
    started = time.perf_counter()
    report = stack.trigger("SweeperFunction")
    seconds = round(time.perf_counter() - started, 2)
    return {"seconds": seconds, "commands": report["head_node_commands"],
            "active_jobs": report["active_jobs"]}  # fmt: skip


def _wait(stack: LocalStack, request_id: str, timeout: float) -> dict[str, Any]:
    """Follow the batch request from its record, read with a separate (uncounted) client."""
    ddb = boto3.session.Session().client("dynamodb")
    table = os.environ["HPCB_TABLE_NAME"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = ddb.get_item(TableName=table, Key=request_key(request_id))["Item"]
        if item["state"]["S"] in {"SUCCEEDED", "FAILED", "CANCELLED"}:
            break
        time.sleep(0.05)
    return BrokerClient(stack.api_url, principal=OWNER).call("GET", f"/v1/requests/{request_id}")


def per_thousand(counts: Counter[str], jobs: int) -> dict[str, float]:
    return {op: round(n * 1000 / jobs, 1) for op, n in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slurm-env", type=Path, default=Path("/var/tmp/hpc-broker/slurm/env"))
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--naive-sample", type=int, default=100)
    parser.add_argument(
        "--pollers",
        type=int,
        default=5,
        help="concurrent job-worker invocations (Lambda's SQS mapping starts with 5)",
    )
    parser.add_argument(
        "--broker-only", action="store_true", help="skip both baselines (development runs)"
    )
    parser.add_argument(
        "--sweep-only",
        action="store_true",
        help="only the sweep (with --broker-only: no baseline; e.g. --jobs 100000)",
    )
    args = parser.parse_args()
    slurm_env = read_env_file(args.slurm_env)
    os.environ.update(slurm_env)
    workdir = tempfile.mkdtemp(prefix="hpcb-bench-")
    Path(workdir).chmod(0o777)
    count = args.jobs
    try:
        if args.broker_only:
            raw_s, baseline = (
                float("nan"),
                {"sample": 1, "per_job_ms": 0.0, "naive_s": float("nan")},
            )
        else:
            print(f"settling: {settle():.0f} s", flush=True)
            baseline = naive(count, args.naive_sample, workdir)
            print(f"naive: {baseline}", flush=True)
            cancel(NAIVE_NAME)
            raw_s = raw_sbatch(count, workdir)
            print(f"raw sbatch loop: {count} jobs in {raw_s:.1f} s", flush=True)
            cancel(RAW_NAME)
            print(f"settling before the broker's burst: {settle():.0f} s", flush=True)
        head = HeadNodeCommands()
        head.attach()
        try:
            # The sweep, on a stack (and a moto) of its own ...
            stack = start_stack(slurm_env, args.pollers)
            try:
                swept = sweep(stack, count, workdir, head)
                print(f"sweep: {swept}", flush=True)
                status_packed = statuses(stack)
            finally:
                stack.stop()
            cancel(SWEEP_NAME)
            if not args.sweep_only:
                # ... and the unpacked burst on a fresh one, once Slurm forgot the sweep.
                print(f"settling before the unpacked burst: {settle():.0f} s", flush=True)
                stack = start_stack(slurm_env, args.pollers)
                calls = Calls()
                calls.attach()
                try:
                    commands = head.count
                    result = burst(stack, count, workdir, calls)
                    result["head_node_calls"] = head.count - commands
                    status_unpacked = statuses(stack)
                finally:
                    stack.stop()
        finally:
            head.detach()
        if not args.sweep_only:
            tokens = tokens_in_slurm(f"hpcb:{result['prefix']}")
            expected = {f"hpcb:{result['prefix']}{i:06x}" for i in range(count)}
            duplicates = sum(n - 1 for t, n in tokens.items() if n > 1)
            lost = len(expected - set(tokens))
    finally:
        for name in (NAME, RAW_NAME, NAIVE_NAME, SWEEP_NAME):
            cancel(name)
    sweep_figures = {
        "sweep_accept_s": swept["accept_s"],
        "sweep_all_submitted_s": swept["all_submitted_s"],
        "sweep_in_slurm_s": swept["in_slurm_s"],
        "sweep_speedup_vs_raw": round(raw_s / swept["all_submitted_s"], 1),
        "sweep_head_node_calls": swept["head_node_calls"],
        "sweep_arrays": swept["arrays"],
        "sweep_duplicates": swept["duplicates"],
        "sweep_lost": swept["lost"],
        "sweep_items_read": swept["items_read"],
        "sweep_items_with_their_task": swept["items_with_their_task"],
        "status_packed": status_packed,
    }
    if args.sweep_only:
        print(f"sweep of {count}: accepted in {swept['accept_s']:.2f} s, every item in Slurm "
              f"and recorded in {swept['all_submitted_s']:.2f} s, {swept['head_node_calls']} "
              f"head-node commands, {swept['arrays']} arrays")  # fmt: skip
        print(f"status read of {count} active items: {status_packed}")
        print(json.dumps({"jobs": count, "raw_sbatch_s": raw_s, **sweep_figures},
                         separators=(",", ":")))  # fmt: skip
        return

    pipeline = Counter(calls.counts)
    pipeline.subtract(result["accept_calls"])
    handlers = Counter({k: v for k, v in pipeline.items() if v})
    figures = {
        "jobs": count,
        "accept_s": result["accept_s"],
        "all_submitted_s": result["all_submitted_s"],
        "raw_sbatch_s": round(raw_s, 2),
        "ratio_vs_raw": round(result["all_submitted_s"] / raw_s, 2),
        "naive_s": baseline["naive_s"],
        "naive_extrapolated_from": baseline["sample"],
        "ratio_vs_naive": round(result["all_submitted_s"] / baseline["naive_s"], 3),
        "head_node_calls": result["head_node_calls"],
        "aws_calls_per_1000_jobs": {
            "api": per_thousand(result["accept_calls"], count),
            "workers": per_thousand(handlers, count),
        },
        "duplicates": duplicates,
        "lost": lost,
        "emulator_cpu_s": {"accept": result["accept_emulator_s"], "all": result["emulator_s"]},
        "cpu_s": {
            "moto": result["emulator_s"],
            "api_and_workers": result["broker_cpu_s"],
            "slurmctld": result["slurmctld_cpu_s"],
            "cores": os.cpu_count(),
        },
        **sweep_figures,
        "status_unpacked": status_unpacked,
    }
    print()
    print(f"{'':34}{'seconds':>10}{'head-node cmds':>16}{'jobs/s':>10}")
    rows = [
        ("raw sbatch loop (no broker)", raw_s, count),
        (f"naive: 1 cmd/job (x{count // baseline['sample']} of {baseline['sample']})",
         baseline["naive_s"], count),
        ("broker: POST accepted (202)", result["accept_s"], 0),
        ("broker: all in Slurm + recorded", result["all_submitted_s"], result["head_node_calls"]),
        ("sweep: POST accepted (202)", swept["accept_s"], 0),
        ("sweep: all in Slurm + recorded", swept["all_submitted_s"], swept["head_node_calls"]),
    ]  # fmt: skip
    for label, seconds, commands in rows:
        print(f"{label:34}{seconds:>10.2f}{commands:>16}{count / seconds:>10.0f}")
    print(f"time inside head-node commands: {head.seconds:.2f} s (lock waits included)")
    print(
        f"CPU of the moto process (AWS emulator): {result['accept_emulator_s']:.2f} s during the"
        f" accept, {result['emulator_s']:.2f} s in all; API + workers (one process)"
        f" {result['broker_cpu_s']:.2f} s; slurmctld {result['slurmctld_cpu_s']:.2f} s;"
        f" {os.cpu_count()} cores"
    )
    print(f"duplicates {duplicates}, lost {lost} (from squeue's job comments); sweep: "
          f"{swept['arrays']} arrays, duplicates {swept['duplicates']}, lost {swept['lost']} "
          "(from squeue's tasks)")  # fmt: skip
    print(f"status sweeps over {count} active jobs: unpacked {status_unpacked}, packed "
          f"{status_packed}")  # fmt: skip
    print(json.dumps(figures, separators=(",", ":")))


if __name__ == "__main__":
    main()
