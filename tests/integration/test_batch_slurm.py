"""A burst through the HTTP API onto the real local Slurm: every accepted item reaches Slurm
exactly once (counted from Slurm's own job list), each chunk in exactly one head-node command
(counted at the runner that starts the agent).

2,000 held jobs, end to end; `make bench` measures 10,000 beside the baselines.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator

import pytest

from broker.agent.protocol import AgentRequest, AgentResponse
from broker.batches.accept import chunk_items
from broker.batches.models import BatchItem
from broker.client.raw import RawClient as BrokerClient
from broker.jobs.models import JobSpec, slurm_token
from broker.local.stack import LocalStack
from broker.ports import ClusterTarget
from broker.runners.local import LocalRunner
from tests.conftest import local_stack

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

ALICE = "arn:aws:iam::000000000000:user/alice"
ITEMS = 2000
NAME = "it-burst"


@pytest.fixture(scope="module")
def stack(slurm: dict[str, str]) -> Iterator[LocalStack]:
    env = {"POWERTOOLS_LOG_LEVEL": "WARNING"}
    with local_stack(slurm, schedules_enabled=False, env=env) as running:
        yield running
    subprocess.run(["scancel", "--name", NAME], check=False)


def slurm_tokens() -> Counter[str]:
    """How many Slurm jobs carry each broker token (squeue: held jobs stay there)."""
    out = subprocess.run(["squeue", "-h", "-a", "-t", "all", "-o", "%k"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return Counter(line.strip() for line in out.splitlines() if line.startswith("hpcb:"))


def submit_commands(monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """The tokens of each head-node ``submit`` command from now on (the real agent still runs:
    this only watches the local runner, which the worker threads of the stack share)."""
    commands: list[set[str]] = []
    run = LocalRunner.run

    def watched(self: LocalRunner, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        if request.op == "submit":
            commands.append({job.token for job in request.jobs})
        return run(self, target, request)

    monkeypatch.setattr(LocalRunner, "run", watched)
    return commands


def test_a_burst_reaches_slurm_exactly_once(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 2,000 held jobs, and 3 invalid items among them
    commands = submit_commands(monkeypatch)
    alice = BrokerClient(stack.api_url, principal=ALICE)
    jobs = [{"script": "#!/bin/sh\ntrue\n", "name": NAME, "hold": True,
             "working_directory": "/tmp"} for _ in range(ITEMS)]  # fmt: skip
    for bad in (10, 200, 1999):
        jobs[bad] = {"script": "no shebang"}
    # WHEN posted as one batch and processed
    accepted = alice.call("POST", "/v1/clusters/local/jobs:batch", {"jobs": jobs})
    final = alice.wait(accepted["request_id"], timeout=600, max_poll=2)
    # THEN 1,997 accepted, the 3 listed, and the batch ended with every item submitted
    assert (accepted["accepted"], accepted["rejected_count"]) == (ITEMS - 3, 3)
    assert [r["index"] for r in accepted["rejected"]] == [10, 200, 1999]
    assert final["state"] == "SUCCEEDED"
    assert final["counts"] == {"SUBMITTED": ITEMS - 3}
    # AND Slurm holds exactly one job per accepted item: no duplicate, none lost
    prefix = accepted["job_id_prefix"]
    expected = {f"hpcb:{prefix}{i:06x}" for i in range(ITEMS) if i not in (10, 200, 1999)}
    tokens = slurm_tokens()
    assert {t for t in tokens if t.startswith(f"hpcb:{prefix}")} == expected
    assert all(tokens[t] == 1 for t in expected)
    # AND each chunk the accept made went to Slurm in exactly one head-node command, whole
    # (the worker may carry several chunks drained together in one command; never a chunk in
    # two, which would be a retry)
    spec = JobSpec.model_validate(jobs[0])
    items = [BatchItem(index=i, job_id=f"{prefix}{i:06x}", spec=spec)
             for i in range(ITEMS) if i not in (10, 200, 1999)]  # fmt: skip
    chunks = [{slurm_token(item.job_id) for item in chunk} for chunk in chunk_items(items)]
    assert [sum(1 for c in commands if chunk & c) for chunk in chunks] == [1] * len(chunks)
    assert all(chunk <= command for chunk in chunks for command in commands if chunk & command)
    assert sum(len(command) for command in commands) == ITEMS - 3
    # AND the worker took each chunk's message once
    (worker,) = [p for p in stack.pollers if "JobWorker" in p.name]
    assert worker.stats().records == len(chunks)
    # AND a page of items shows their Slurm ids
    page = alice.call("GET", f"{accepted['location']}?items_from=0&items_limit=12")
    assert [i["index"] for i in page["item_page"]] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert all(i["slurm_job_id"] and i["state"] == "PENDING" for i in page["item_page"])
    assert page["next_items_from"] == 12
