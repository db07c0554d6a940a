"""A burst of 2,000 jobs through the local stack onto the real Slurm, under every fault kind of
``bench/chaos.py``: DynamoDB throttling and cancelled transactions, SQS errors, head-node answers
lost after the command ran, a job worker SIGKILLed mid-batch, slurmctld restarted mid-burst,
and a poison request. Checked against Slurm's own job list and the notifications inbox.

``make chaos`` runs the same with 10,000 jobs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from bench.chaos import KILL_POINTS, SLURMCTLD_RESTART, WORKER_KILLED, Config, run
from broker.local.faults import AWS_FAULTS, POISON, RUNNER_TIMEOUT

#: In `make test` as a step of its own (it restarts slurmctld), and `make chaos-test`; each check
#: below is a promise of the broker, left strict.
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.timeout(600),
]

JOBS = 2000
#: The fault plan's seed (HPCB_CHAOS_SEED for another plan).
SEED = int(os.environ.get("HPCB_CHAOS_SEED", "7"))


@pytest.fixture(scope="module")
def figures(slurm: dict[str, str]) -> dict[str, Any]:
    # GIVEN 2,000 held jobs (4 batches, 20 single jobs, one poison) sent under faults
    # WHEN the broker has gone quiet (bounded) / THEN (each test checks one promise)
    figures = run(Config(jobs=JOBS, batches=4, seed=SEED, quiesce_timeout_s=150), slurm)
    print(json.dumps(figures))  # shown with a failure
    return figures


def test_every_fault_kind_was_injected(figures: dict[str, Any]) -> None:
    injected = figures["faults"]
    kinds = {f.kind for f in AWS_FAULTS} | {RUNNER_TIMEOUT, POISON, SLURMCTLD_RESTART}
    assert kinds <= set(injected), kinds - set(injected)
    assert any(f"{WORKER_KILLED}.{point}" in injected for point in KILL_POINTS), injected


def test_every_accepted_job_is_in_slurm_once_or_failed_with_a_reason(
    figures: dict[str, Any],
) -> None:
    assert figures["jobs"] == JOBS
    assert (figures["lost"], figures["duplicates"]) == (0, 0), figures["examples"]
    assert figures["failed_without_reason"] == 0
    assert figures["failed_but_in_slurm"] == 0, figures["examples"]
    assert figures["succeeded"] + figures["failed_with_reason"] == JOBS


def test_every_accepted_request_ended(figures: dict[str, Any]) -> None:
    assert figures["requests_not_final"] == 0, figures["examples"]


def test_the_poison_request_went_through_the_dlq_and_failed(figures: dict[str, Any]) -> None:
    assert figures["poison"] == {
        "state": "FAILED",
        "error": "RETRIES_EXHAUSTED",
        "job": "SUBMIT_FAILED",
        "dead_lettered": True,
    }


def test_every_final_transition_was_notified_exactly_once(figures: dict[str, Any]) -> None:
    assert figures["notifications_expected"] > 0
    assert figures["notifications_missing"] == 0
    assert figures["notifications_duplicated"] == 0
