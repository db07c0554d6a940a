"""The client's and CLI's pure parts: batch splits, back-off, settings, spec files, exit codes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from broker.batches.models import BatchAccepted, BatchBody
from broker.cli.output import exit_code
from broker.cli.specs import dependencies, read_specs
from broker.client import (
    Backoff,
    ConnectionFailedError,
    NotFoundError,
    TooManyRequestsError,
    WaitTimeoutError,
    resolve,
    save_config,
)
from broker.client.bulk import check, split, submit_many
from broker.client.errors import ConflictError, InvalidRequestError, ServerError, is_retryable


def test_split_keeps_each_batch_within_items_and_bytes() -> None:
    # GIVEN 25 bodies of 100 bytes / WHEN split at 10 items or 1,000 bytes
    bodies = [b"x" * 100] * 25
    by_items = list(split(bodies, max_items=10, max_bytes=10**6))
    by_bytes = list(split(bodies, max_items=10_000, max_bytes=64 + 505))
    # THEN item limits and byte limits both hold, and no item is lost
    assert by_items == [(0, 10), (10, 20), (20, 25)]
    assert all(b - a == 5 for a, b in by_bytes[:-1])
    assert by_bytes[-1][1] == 25


def test_backoff_grows_to_its_cap_with_jitter_below_the_step() -> None:
    rng = random.Random(1)
    backoff = Backoff(first=1, cap=8, multiplier=2, jitter=0.5)
    delays = [backoff.delay(n, rng) for n in range(6)]
    steps = [1, 2, 4, 8, 8, 8]
    assert all(step / 2 <= d <= step for d, step in zip(delays, steps, strict=True))


def test_retryable_errors_are_throttling_server_errors_drops_and_in_progress_duplicates() -> None:
    def api(kind: type, status: int, code: str = "X") -> BaseException:
        return kind(status, {"error": {"code": code, "message": ""}}, {})

    assert is_retryable(api(TooManyRequestsError, 429))
    assert is_retryable(api(ServerError, 503))
    assert is_retryable(ConnectionFailedError("reset"))
    assert is_retryable(api(ConflictError, 409, "IDEMPOTENCY_IN_PROGRESS"))
    assert not is_retryable(api(ConflictError, 409, "CONFLICT"))
    assert not is_retryable(api(InvalidRequestError, 422))


def test_exit_codes_follow_the_documented_table() -> None:
    assert exit_code(WaitTimeoutError("t")) == 3
    assert exit_code(NotFoundError(404, {}, {})) == 4
    assert exit_code(InvalidRequestError(422, {}, {})) == 2
    assert exit_code(ServerError(500, {}, {})) == 1


def test_settings_come_from_argument_then_environment_then_file(tmp_path: Path) -> None:
    config = save_config(
        tmp_path / "c.toml", {"endpoint": "https://file/v1", "region": "eu-west-1"}
    )
    env = {"HPCB_CONFIG": str(config), "HPCB_RUN_FILE": str(tmp_path / "none")}
    assert resolve(env=env).endpoint == "https://file/v1"
    assert resolve(env=env).region == "eu-west-1"
    from_env = resolve(env={**env, "HPCB_ENDPOINT": "http://127.0.0.1:1"})
    assert (from_env.endpoint, from_env.source, from_env.local) == (
        "http://127.0.0.1:1",
        "environment",
        True,
    )
    assert resolve(endpoint="https://arg", env=env).source == "argument"
    # AND a stack name from the environment beats the file's endpoint (looked up lazily)
    stacked = resolve(env={**env, "HPCB_STACK": "prod"}, lookup_stack=False)
    assert (stacked.endpoint, stacked.stack) == (None, "prod")


def test_an_invalid_spec_is_rejected_before_sending_with_its_field() -> None:
    body, rejected = check(7, {"script": "#!/bin/bash\n", "nodes": 0})
    assert body is None
    assert rejected is not None
    assert rejected.errors[0]["field"] == "body.jobs.7.nodes"


def test_csv_rows_become_specs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("name,nodes,hold,env.STEP,dependency\na,2,true,1,afterok:12:13\n")
    assert read_specs(path, "#!/bin/sh\n") == [
        {
            "name": "a",
            "nodes": 2,
            "hold": True,
            "environment": {"STEP": "1"},
            "dependency": [{"type": "afterok", "jobs": ["12", "13"]}],
            "script": "#!/bin/sh\n",
        }
    ]


def test_a_dependency_without_ids_is_a_usage_error() -> None:
    with pytest.raises(Exception, match="TYPE:JOBID"):
        dependencies("afterok")


@pytest.mark.parametrize("pack", [False, True])
def test_submit_many_sends_batch_bodies_the_api_reads_with_pack_as_asked(pack: bool) -> None:
    # GIVEN a poster that keeps the bodies it is given (and accepts nothing)
    sent: list[bytes] = []

    def post(body: bytes, key: str) -> BatchAccepted:
        sent.append(body)
        raise InvalidRequestError(400, {}, {})

    # WHEN 3 jobs are sent, with or without pack
    specs = [{"script": "#!/bin/sh\n", "environment": {"PARAM_I": str(i)}} for i in range(3)]
    submit_many(post, specs, pack=pack)
    # THEN one body, a valid jobs:batch body with pack as asked
    (body,) = sent
    parsed = BatchBody.model_validate_json(body)
    assert (len(parsed.jobs), bool(parsed.pack)) == (3, pack)
