"""API latency on the local stack, beside the seed samples' synchronous design.

Measured in one run, on the real local Slurm, with the stack in its own process:
- hpc-broker: ``POST /v1/clusters/local/jobs`` (202 at once: validate, record, enqueue) and
  ``GET /v1/requests/{id}`` (one consistent DynamoDB read), p50/p99 over N sequential calls;
  plus the time from POST to the request's SUCCEEDED (the job is in Slurm).
- baseline: what a POST costs when the API submits synchronously inside the request, as the
  public samples do: one head-node agent call running ``sbatch`` (same agent, same Slurm,
  through the local runner - no SSM round trips, so the real seed is slower still).
- the drain of N single POSTs through the job worker (one poller, as deployed per invocation):
  coalesced (single submissions drained together for one cluster share one head-node command,
  the default) beside one command per job (HPCB_COALESCE_SUBMISSIONS=false), same run, same
  Slurm, no sweep running; head-node commands counted by an interpreter wrapper that notes each
  agent start (HPCB_LOCAL_AGENT_PYTHON).

Prints a table and a final JSON line. Usage: ``make bench`` (or python -m bench.api_latency -n 200).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from broker.agent.protocol import AgentJob, AgentRequest
from broker.client import BrokerClient
from broker.jobs.models import JobSpec
from broker.local.launcher import ROOT, launched_stack
from broker.ports import ClusterTarget
from broker.runners.local import LocalRunner

BENCH = "arn:aws:iam::000000000000:user/bench"
BENCH_NAME = "hpcb-bench"
SCRIPT = "#!/bin/bash\ntrue\n"


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of values, in the values' unit."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000, result


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 2),
        "p99_ms": round(percentile(values, 99), 2),
        "mean_ms": round(statistics.fmean(values), 2),
    }


def drain(n: int, slurm_env: Path, *, coalesce: bool, workdir: Path) -> dict[str, float]:
    """N single POSTs, then until all SUCCEEDED: jobs/s and head-node commands of the drain."""
    count = workdir / f"agent-starts-{'coalesced' if coalesce else 'single'}.txt"
    wrapper = workdir / f"python-{'coalesced' if coalesce else 'single'}"
    wrapper.write_text(f'#!/bin/sh\necho >> "{count}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = {"HPCB_COALESCE_SUBMISSIONS": str(coalesce).lower(),
           "HPCB_LOCAL_AGENT_PYTHON": str(wrapper)}  # fmt: skip
    log = ROOT / ".run" / f"bench-drain-{'coalesced' if coalesce else 'single'}.log"
    with launched_stack(slurm_env, log, principal=BENCH, env=env, schedules=False) as stack:
        client = BrokerClient(stack.url, principal=BENCH)
        spec = {"script": SCRIPT, "name": BENCH_NAME, "hold": True}
        client.wait(client.submit_job("local", spec).request_id, timeout=120)  # warm up
        before = len(count.read_text().splitlines()) if count.exists() else 0
        start = time.monotonic()
        # Posted by 8 clients at once, as a workflow engine would: the drain measures the
        # worker, not one client's round trips.
        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = list(pool.map(lambda _: client.submit_job("local", spec).request_id, range(n)))
        for request_id in ids:
            client.wait(request_id, timeout=900)
        seconds = time.monotonic() - start
        commands = len(count.read_text().splitlines()) - before
    subprocess.run(["scancel", "--name", BENCH_NAME], check=False)
    return {"seconds": round(seconds, 2), "jobs_per_s": round(n / seconds, 2),
            "head_node_commands": commands}  # fmt: skip


def run(n: int, slurm_env: Path) -> dict[str, Any]:
    """Measure everything; return the figures."""
    figures: dict[str, Any] = {"calls": n}
    with launched_stack(slurm_env, ROOT / ".run" / "bench-stack.log", principal=BENCH) as stack:
        client = BrokerClient(stack.url, principal=BENCH)
        spec = {"script": SCRIPT, "name": BENCH_NAME}
        client.submit_job("local", spec)  # warm up both handlers' cold start
        post_ms, ids = [], []
        burst_start = time.monotonic()
        for _ in range(n):
            ms, accepted = timed(lambda: client.submit_job("local", spec))
            post_ms.append(ms)
            ids.append(accepted.request_id)
        get_ms = [timed(lambda i=i: client.get_request(i))[0] for i in ids]
        figures["post"] = summary(post_ms)
        figures["get"] = summary(get_ms)
        # The burst through the worker (one poller, one agent run per job in this slice).
        for request_id in ids:
            client.wait(request_id, timeout=600)
        drained = time.monotonic() - burst_start
        figures["burst_all_succeeded_s"] = round(drained, 2)
        figures["worker_jobs_per_s"] = round(n / drained, 1)
        # Time to SUCCEEDED, one job at a time on an idle queue (poll every 20 ms).
        to_success = []
        for _ in range(20):
            start = time.perf_counter()
            request_id = client.submit_job("local", spec).request_id
            client.wait(request_id, first_poll=0.02, max_poll=0.02, timeout=60)
            to_success.append((time.perf_counter() - start) * 1000)
        figures["post_to_succeeded"] = summary(to_success)

    runner = LocalRunner()
    target = ClusterTarget(name="local", mode="local")
    baseline = []
    for i in range(min(n, 100)):
        job = AgentJob.of(
            f"hpcb:bench{i:06d}{int(time.time())}", JobSpec.model_validate(spec), user="hpcb-dev"
        )
        request = AgentRequest(op="submit", jobs=[job])
        baseline.append(timed(lambda r=request: runner.run(target, r))[0])
    figures["baseline_sync_post"] = summary(baseline)
    figures["speedup_p50"] = round(
        figures["baseline_sync_post"]["p50_ms"] / figures["post"]["p50_ms"], 1
    )
    subprocess.run(["scancel", "--name", BENCH_NAME], check=False)
    with tempfile.TemporaryDirectory(prefix="hpcb-bench-") as tmp:
        single = drain(n, slurm_env, coalesce=False, workdir=Path(tmp))
        coalesced = drain(n, slurm_env, coalesce=True, workdir=Path(tmp))
    figures["drain_jobs_per_s"] = coalesced["jobs_per_s"]
    figures["drain_head_node_commands"] = coalesced["head_node_commands"]
    figures["drain_seconds"] = coalesced["seconds"]
    figures["single_drain_jobs_per_s"] = single["jobs_per_s"]
    figures["single_drain_head_node_commands"] = single["head_node_commands"]
    figures["single_drain_seconds"] = single["seconds"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200, help="calls per measurement")
    parser.add_argument(
        "--drain-only", action="store_true", help="only the coalesced/single drain comparison"
    )
    parser.add_argument("--slurm-env", type=Path, default=Path("/var/tmp/hpc-broker/slurm/env"))
    args = parser.parse_args()
    if args.drain_only:
        with tempfile.TemporaryDirectory(prefix="hpcb-bench-") as tmp:
            single = drain(args.n, args.slurm_env, coalesce=False, workdir=Path(tmp))
            coalesced = drain(args.n, args.slurm_env, coalesce=True, workdir=Path(tmp))
        figures = {
            "calls": args.n,
            "drain_jobs_per_s": coalesced["jobs_per_s"],
            "drain_head_node_commands": coalesced["head_node_commands"],
            "single_drain_jobs_per_s": single["jobs_per_s"],
            "single_drain_head_node_commands": single["head_node_commands"],
        }
        print(json.dumps(figures))
        return
    figures = run(args.n, args.slurm_env)
    post, get, base = figures["post"], figures["get"], figures["baseline_sync_post"]
    rows = [
        ("POST /v1/clusters/local/jobs", post, base),
        ("GET /v1/requests/{id}", get, None),
        ("POST -> SUCCEEDED (job in Slurm)", figures["post_to_succeeded"], None),
    ]
    print(f"\n{'metric':<36}{'hpc-broker p50/p99 ms':>24}{'baseline p50/p99 ms':>24}")
    for name, ours, theirs in rows:
        other = f"{theirs['p50_ms']:.1f} / {theirs['p99_ms']:.1f}" if theirs else "-"
        print(f"{name:<36}{ours['p50_ms']:>12.1f} / {ours['p99_ms']:<9.1f}{other:>24}")
    print("baseline = synchronous sbatch through the agent inside the request (seed design)")
    print(
        f"burst of {figures['calls']}: all SUCCEEDED {figures['burst_all_succeeded_s']} s after "
        f"the first POST ({figures['worker_jobs_per_s']} jobs/s through one worker poller)"
    )
    print("POST -> SUCCEEDED is measured on an idle queue; it includes the 1 s batching window")
    print(f"drain of {figures['calls']} single POSTs (held jobs, no sweep):")
    print(f"  coalesced per cluster: {figures['drain_seconds']} s, "
          f"{figures['drain_jobs_per_s']} jobs/s, {figures['drain_head_node_commands']} "
          "head-node commands")  # fmt: skip
    print(f"  one command per job:   {figures['single_drain_seconds']} s, "
          f"{figures['single_drain_jobs_per_s']} jobs/s, "
          f"{figures['single_drain_head_node_commands']} head-node commands")  # fmt: skip
    print(json.dumps(figures, separators=(",", ":")))


if __name__ == "__main__":
    main()
