"""The real job worker handler, run in a process of its own that dies at a chosen point.

``python -m tests.integration.crashing_worker <event.json> <point>`` runs
``workers.job_worker.lambda_handler`` on the SQS event and, at ``point``, SIGKILLs itself, the
way a Lambda sandbox dies (timeout, out of memory, host failure): no ``finally``, no cleanup.

Points:
- ``none``: run to the end and print the handler's response as JSON;
- ``before-agent``: after the jobs were marked as being submitted, before the head-node command;
- ``during-agent``: once Slurm shows the first job of the chunk; the agent keeps running,
  orphaned, as an SSM command outlives the Lambda that sent it;
- ``after-agent``: after the agent answered (every job is in Slurm), before any record;
- ``mid-records``: after the first DynamoDB transaction recording outcomes;
- ``runner-timeout``: no kill; once Slurm shows the first job of the chunk, the runner times out
  the way ``LocalRunner`` does (it kills the agent, mid-chunk, and raises RunnerTimeoutError), so
  the outcome is unknown and the worker must leave the chunk to a redelivery.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from broker.adapters.aws import client
from broker.agent.protocol import AgentRequest, AgentResponse
from broker.errors import RunnerTimeoutError
from broker.local.context import LambdaContext
from broker.ports import ClusterTarget
from broker.runners.local import LocalRunner

POINTS = ("none", "before-agent", "during-agent", "after-agent", "mid-records", "runner-timeout")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def tokens_in_slurm(tokens: set[str]) -> int:
    out = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%k"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return sum(1 for line in out.splitlines() if line.strip() in tokens)


def install(point: str) -> None:
    original = LocalRunner.run
    state = {"answered": False}

    def run(runner: LocalRunner, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        if point == "before-agent":
            die()
        if point in {"during-agent", "runner-timeout"}:
            tokens = {job.token for job in request.jobs}
            agent = threading.Thread(target=original, args=(runner, target, request), daemon=True)
            agent.start()
            while tokens_in_slurm(tokens) == 0:
                time.sleep(0.01)
            if point == "during-agent":
                die()
            subprocess.run(["pkill", "-KILL", "-P", str(os.getpid()), "-f", "hpcb_agent"],
                           check=False)  # fmt: skip
            agent.join()
            raise RunnerTimeoutError("the agent did not answer in time (test)")
        answer = original(runner, target, request)
        state["answered"] = True
        if point == "after-agent":
            die()
        return answer

    LocalRunner.run = run  # type: ignore[method-assign,assignment]

    def after_transaction(**_: Any) -> None:
        if point == "mid-records" and state["answered"]:
            die()

    client("dynamodb").meta.events.register(
        "after-call.dynamodb.TransactWriteItems", after_transaction
    )


def main() -> None:
    event_path, point = sys.argv[1], sys.argv[2]
    if point not in POINTS:
        raise SystemExit(f"unknown point {point!r}; one of {POINTS}")
    install(point)
    from workers.job_worker import lambda_handler  # noqa: PLC0415 - after the hooks

    event = json.loads(Path(event_path).read_text())
    context = LambdaContext(
        function_name="JobWorkerFunction",
        invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:JobWorkerFunction",
        memory_limit_in_mb=512,
        timeout_s=150,
    )
    response = lambda_handler(event, context)
    print(json.dumps(response), flush=True)


if __name__ == "__main__":
    main()
