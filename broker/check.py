"""Check a connected cluster, step by step: ``python -m broker.check CLUSTER``.

What a team runs after connecting a ParallelCluster cluster (README "Connect a cluster"), with
the credentials of someone who may use SSM on its head node:

1. the head node is found (the running instance carrying the cluster's ParallelCluster tags
   and ``aws:cloudformation:stack-name``: ``Ec2ClusterDirectory``, as the workers find it);
2. SSM reaches it and the agent runs (op ``ping``: the agent's and Python's versions, sbatch's);
3. Slurm answers (op ``status`` for one id: one ``squeue``, and ``sacct`` when accounting
   exists).

``--local`` checks this machine's Slurm instead (the local stack's cluster). Exit 0 when every
step passed, 1 at the first that failed (its reason printed), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TextIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from broker.adapters.ec2 import Ec2ClusterDirectory
from broker.agent.protocol import AgentRequest
from broker.errors import BrokerError
from broker.ports import ClusterTarget, CommandRunner
from broker.runners.local import LocalRunner
from broker.runners.ssm import SsmRunner

#: A Slurm id no cluster needs to hold: asking for it makes squeue (and sacct) answer.
PROBE_JOB_ID = "1"


def check(
    cluster: str,
    find: Callable[[str], ClusterTarget],
    runner: CommandRunner,
    out: TextIO = sys.stdout,
) -> bool:
    """Run the three steps, printing one line each; False at the first that fails."""

    def step(name: str, run: Callable[[], str]) -> bool:
        started = time.monotonic()
        try:
            detail = run()
        except BrokerError as exc:
            out.write(f"FAIL  {name}: {exc.code}: {exc.message}\n")
            return False
        except (BotoCoreError, ClientError) as exc:  # credentials, region, permissions
            out.write(f"FAIL  {name}: {exc}\n")
            return False
        out.write(f"ok    {name} ({time.monotonic() - started:.1f} s): {detail}\n")
        return True

    target: list[ClusterTarget] = []

    def head_node() -> str:
        target.append(find(cluster))
        return target[0].instance_id or "this machine"

    def agent() -> str:
        answer = runner.run(target[0], AgentRequest(op="ping"))
        if not answer.ok:
            code = answer.error.code if answer.error else "AGENT_FAILED"
            raise BrokerError(answer.error.message if answer.error else "no answer", code=code)
        info = answer.info
        return ", ".join(f"{k} {info.get(k, '?')}" for k in ("agent_version", "python", "sbatch"))

    def slurm() -> str:
        answer = runner.run(target[0], AgentRequest(op="status", job_ids=[PROBE_JOB_ID]))
        if not answer.ok:
            code = answer.error.code if answer.error else "AGENT_FAILED"
            raise BrokerError(answer.error.message if answer.error else "no answer", code=code)
        accounting = {True: "yes", False: "failing", None: "not asked"}[answer.accounting]
        return f"squeue answered; accounting (sacct): {accounting}"

    return (
        step("head node found", head_node)
        and step("SSM reaches it, the agent runs", agent)
        and step("Slurm answers", slurm)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker.check", description=__doc__)
    parser.add_argument("cluster", help="the cluster's name (its ParallelCluster name)")
    parser.add_argument("--region", help="AWS region (default: the environment's)")
    parser.add_argument("--profile", help="AWS profile")
    parser.add_argument(
        "--staging-bucket", help="the stack's StagingBucket output, for large answers"
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds per agent command")
    parser.add_argument("--local", action="store_true", help="this machine's Slurm")
    args = parser.parse_args(argv)
    if args.local:
        ok = check(
            args.cluster,
            lambda name: ClusterTarget(name=name, mode="local"),
            LocalRunner(timeout=args.timeout),
        )
        return 0 if ok else 1
    session = boto3.session.Session(region_name=args.region, profile_name=args.profile)
    runner = SsmRunner(
        ssm_client=session.client("ssm"),
        s3_client=session.client("s3") if args.staging_bucket else None,
        staging_bucket=args.staging_bucket,
        timeout_seconds=args.timeout,
    )
    directory = Ec2ClusterDirectory(session.client("ec2"))
    return 0 if check(args.cluster, directory.resolve, runner) else 1


if __name__ == "__main__":
    sys.exit(main())
