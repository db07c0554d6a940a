"""Cluster operations on the local stack: API latency and cold-start imports.

- ``POST /v1/clusters`` (validate, one DynamoDB transaction for the request and the cluster
  record, one SQS send; answers 202) and ``GET /v1/clusters/{name}`` (one consistent read),
  p50/p99 over N sequential calls, beside ``POST /v1/clusters/local/jobs`` in the same run.
  The creates are real (not dry runs): the simulated provider and the sweep work meanwhile;
  the three calls are interleaved so that they share that background.
- Cold-start import time of each handler module, in a fresh interpreter (median of 5, minus
  an empty interpreter), and whether pcluster got imported.

Usage: ``python -m bench.clusters [-n 100]`` (Slurm up; the stack runs in its own process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.api_latency import summary, timed
from broker.client import BrokerClient
from broker.local.launcher import ROOT, launched_stack

BENCH = "arn:aws:iam::000000000000:user/bench"

CONFIG = (
    "Image:\n  Os: alinux2\nHeadNode:\n  InstanceType: t3.micro\n  Ssh:\n    KeyName: k\n"
    "Scheduling:\n  Scheduler: slurm\n  SlurmQueues:\n  - Name: q\n"
)
HANDLERS = ("broker.api.handler", "workers.job_worker", "workers.cluster_worker")
_PROBE = (
    "import sys, time; t = time.perf_counter(); import {module}; "
    "print((time.perf_counter() - t) * 1000, "
    "any(m.split('.')[0] == 'pcluster' for m in sys.modules))"
)


def import_times(repeats: int = 5) -> dict[str, dict[str, Any]]:
    """Median import time of each handler in a fresh interpreter, and whether pcluster loaded."""
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_METRICS_NAMESPACE": "b"}
    figures: dict[str, dict[str, Any]] = {}
    for module in HANDLERS:
        samples, pcluster = [], False
        for _ in range(repeats):
            out = subprocess.run(
                [sys.executable, "-c", _PROBE.format(module=module)], cwd=ROOT, env=env,
                capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
            samples.append(float(out[0]))
            pcluster |= out[1] == "True"
        figures[module] = {"import_ms": round(statistics.median(samples), 1), "pcluster": pcluster}
    return figures


def run(n: int, slurm_env: Path) -> dict[str, Any]:
    """Measure; return the figures."""
    figures: dict[str, Any] = {"calls": n}
    with launched_stack(
        slurm_env, ROOT / ".run" / "bench-clusters-stack.log", principal=BENCH
    ) as stack:
        client = BrokerClient(stack.url, principal=BENCH)
        for _ in range(5):  # warm up both paths (first calls build clients)
            client.list_clusters()
            client.submit_job("local", {"script": "#!/bin/bash\ntrue\n"})
        tag = f"{int(time.time()) % 100000}"
        names = [f"bench-{tag}-{i}" for i in range(n)]
        # Interleaved, so the three calls see the same background work (worker, sweep).
        posts, gets, jobs = [], [], []
        job = {"script": "#!/bin/bash\ntrue\n"}
        for name in names:
            body = {"name": name, "configuration": CONFIG}
            jobs.append(timed(lambda: client.submit_job("local", job))[0])
            posts.append(timed(lambda b=body: client.create_cluster(**b))[0])
            gets.append(timed(lambda n=name: client.get_cluster(n))[0])
        figures["post_cluster"] = summary(posts)
        figures["get_cluster"] = summary(gets)
        figures["post_job"] = summary(jobs)
    figures["imports"] = import_times()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--slurm-env", type=Path, default=Path("/var/tmp/hpc-broker/slurm/env"))
    args = parser.parse_args()
    figures = run(args.n, args.slurm_env)
    print(f"{'call':<28} {'p50 ms':>8} {'p99 ms':>8}")
    for key, label in (("post_cluster", "POST /v1/clusters"),
                       ("get_cluster", "GET /v1/clusters/{name}"),
                       ("post_job", "POST /v1/clusters/local/jobs")):  # fmt: skip
        print(f"{label:<28} {figures[key]['p50_ms']:>8} {figures[key]['p99_ms']:>8}")
    print(f"{'cold import':<28} {'ms':>8} {'pcluster':>8}")
    for module, data in figures["imports"].items():
        print(f"{module:<28} {data['import_ms']:>8} {data['pcluster']!s:>8}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
